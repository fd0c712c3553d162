from pathlib import Path

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
