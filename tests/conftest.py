import copy
from pathlib import Path

import pytest
import torch
import yaml

from d2it import config as config_mod
from d2it.data.folder import ImageFolderDataset
from d2it.data.manifest import Manifest, write_json_atomic
from d2it.data.synth import synthesize
from d2it.grain import compute_thresholds
from tests_support import N_HELDOUT, N_TRAIN

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small embedded dataset with its thresholds; returns the manifest path."""
    root = tmp_path_factory.mktemp("data") / "synth"
    synthesize(root, seed=0, resolution=32, n_train=N_TRAIN, n_heldout=N_HELDOUT)
    manifest = Manifest.load(root / "manifest.json")
    loader = torch.utils.data.DataLoader(ImageFolderDataset(manifest, "train", 32), batch_size=64)
    write_json_atomic(root / "thresholds.json", compute_thresholds(loader, 4, 256, 0.01, manifest.digest()))
    return root / "manifest.json"


@pytest.fixture
def make_config(dataset, tmp_path):
    """Write a CPU-study config pointing at the test dataset, with overrides; returns its path."""
    def make(**sections) -> Path:
        cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        cfg["data"].update(manifest=str(dataset))
        cfg["grain"].update(thresholds=str(dataset.parent / "thresholds.json"))
        cfg["dvae"].update(perceptual="none")
        cfg["dvae"]["train"].update(steps=6, batch_size=8, ckpt_every=2, log_every=2)
        cfg["tracking"] = {"uri": None}
        for section, values in sections.items():
            target = cfg.setdefault(section, {})
            for key, value in values.items():
                if isinstance(value, dict):
                    target.setdefault(key, {}).update(value)
                else:
                    target[key] = value
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make


@pytest.fixture
def load_config():
    return lambda path, *overrides: config_mod.load(path, list(overrides))
