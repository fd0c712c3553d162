from collections import Counter
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
from tests_support import (HELD, INTERRUPTED, N_HELDOUT, N_TRAIN, ONE_LINE, SEEN, WARNED,
                           tiny_study)


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


def pytest_terminal_summary(terminalreporter):
    """The bad-input suite's totals: what a user saw in each case (issue 25 asks for 0
    tracebacks, 0 silently wrong results, one-line errors with exit 2, nothing left behind).
    A case whose test failed with no error seen (a wrong result, or a check that failed before
    the outcome was recorded) counts as silently wrong."""
    cases = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []) if r.when == "call" and "bad_input" in r.keywords]
    if not cases:
        return
    failed = {r.nodeid for r in cases if r.failed}
    leftovers = Counter(o for _, o in SEEN if "left behind" in o)
    outcomes = Counter(o for _, o in SEEN if "left behind" not in o)
    errors = {test for test, o in SEEN if o in (ONE_LINE, INTERRUPTED, WARNED)}
    out = terminalreporter
    out.section("bad input: what a user saw")
    if out.verbosity > 0:  # -v: each case and what it saw
        for test, outcome in SEEN:
            out.write_line(f"{test.split('::', 1)[1][:60]:60s}  {outcome}")
    out.write_line(f"{len(cases)} tests, {len(failed)} failed")
    for outcome, n in outcomes.most_common():
        out.write_line(f"{n:5d}  {outcome}")
    tracebacks = sum(n for o, n in outcomes.items() if o.startswith("traceback"))
    clean = (ONE_LINE, HELD, WARNED, INTERRUPTED)
    messy = sum(n for o, n in outcomes.items() if o not in clean) - tracebacks
    left = sum(n for o, n in leftovers.items() if o != "nothing left behind")
    checked = sum(leftovers.values())
    silent = len(failed - errors)
    out.write_line(f"tracebacks {tracebacks}, messy errors {messy}, silently wrong {silent}, "
                   f"left behind {left} of {checked} checked")
