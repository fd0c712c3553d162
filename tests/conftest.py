from pathlib import Path

import pytest
import torch

from d2it import config as config_mod
from d2it.data.folder import ImageFolderDataset
from d2it.data.manifest import Manifest, write_json_atomic
from d2it.data.synth import synthesize
from d2it.grain import compute_thresholds
from tests_support import N_HELDOUT, N_TRAIN


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small embedded dataset with its thresholds; returns the manifest path."""
    root = tmp_path_factory.mktemp("data") / "synth"
    synthesize(root, seed=0, resolution=32, n_train=N_TRAIN, n_heldout=N_HELDOUT)
    manifest = Manifest.load(root / "manifest.json")
    loader = torch.utils.data.DataLoader(ImageFolderDataset(manifest, "train", 32), batch_size=64)
    write_json_atomic(root / "thresholds.json", compute_thresholds(loader, 4, 256, 0.01, manifest.digest()))
    return root / "manifest.json"


@pytest.fixture(scope="session")
def trained(tmp_path_factory, dataset):
    """(config, folder) with a DVAE run briefly trained on the test dataset in folder/run."""
    from d2it.stage1 import train_dvae

    cfg = config_mod.validate({"data": {"manifest": str(dataset), "resolution": 32},
                               "grain": {"region": 4, "thresholds": str(dataset.parent / "thresholds.json")},
                               "dvae": {"preset": "tiny", "perceptual": "none",
                                        "train": {"steps": 4, "batch_size": 8, "ema": None}},
                               "tracking": {"uri": None}})
    out = tmp_path_factory.mktemp("dvae")
    train_dvae(cfg, out / "run")
    return cfg, out


@pytest.fixture(scope="session")
def latent_cache(trained):
    from d2it.stage1 import encode_latents

    cfg, out = trained
    encode_latents(cfg, out / "run", out / "cache.pt")
    return out / "cache.pt"
