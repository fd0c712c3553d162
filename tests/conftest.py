from pathlib import Path

import numpy as np
import pytest
import torch

from d2it import study as studies
from d2it.data.folder import ImageFolderDataset
from d2it.data.manifest import Manifest
from d2it.data.synth import synthesize
from d2it.files import write_json_atomic
from d2it.grain import compute_thresholds
from tests_support import N_HELDOUT, N_TRAIN, tiny_study


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small embedded dataset with its thresholds; returns the manifest path."""
    root = tmp_path_factory.mktemp("data") / "synth"
    synthesize(root, seed=0, resolution=32, n_train=N_TRAIN, n_heldout=N_HELDOUT)
    manifest = Manifest.load(root / "manifest.json")
    loader = torch.utils.data.DataLoader(ImageFolderDataset(manifest, "train", 32), batch_size=64)
    table = compute_thresholds(loader, 4, 256, 0.01, manifest.digest())
    write_json_atomic(root / "thresholds.json", table)
    return root / "manifest.json"


@pytest.fixture(scope="session")
def study(tmp_path_factory, dataset) -> dict:
    """The tiny study, resolved (schema defaults filled)."""
    root = tmp_path_factory.mktemp("study")
    return studies.resolve(tiny_study(root, dataset), "tiny study")


@pytest.fixture(scope="session")
def trained(study):
    """(study, plan, DVAE run) with the r = 0.5 DVAE briefly trained where the plan puts it."""
    from d2it.stage1 import train_dvae

    plan = studies.plan(study)
    run = plan.dvae(0.5, 0)
    train_dvae(study, 0.5, 0, run.folder)
    return study, plan, run


@pytest.fixture(scope="session")
def latent_cache(trained) -> Path:
    """The trained DVAE's latent cache folder."""
    from d2it.stage1 import encode_latents

    study, plan, run = trained
    encode_latents(study, run.folder, run.folder / "latents")
    return run.folder / "latents"


@pytest.fixture(scope="session")
def models(trained, latent_cache):
    """Tiny DiT, D²iT and grain models trained a few steps on the cache (wiring, not quality):
    {kind: run folder}. Shared: tests that break a run copy it first."""
    from d2it.stage2 import train_model

    study, plan, _ = trained
    runs = {"dit": plan.model("dit", 0), "d2it": plan.model("d2it", 0),
            "grain": plan.model("dgt", 0, 0.5)}
    for kind, run in runs.items():
        summary = train_model(study, run.spec, 0, latent_cache, run.folder,
                              0.5 if kind == "grain" else None)
        assert summary["steps"] == 3 and np.isfinite(summary["final"]["loss"])
    return {kind: run.folder for kind, run in runs.items()}
