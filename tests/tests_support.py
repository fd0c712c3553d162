"""Constants and the tiny study shared by the tests."""
import copy
from pathlib import Path

N_TRAIN, N_HELDOUT = 160, 40
TRAIN = {"steps": 3, "batch_size": 8, "ema": 0.5, "ckpt_every": 3, "log_every": 1}


def tiny_study(root: Path, dataset: Path, **sections) -> dict:
    """A tiny study over the test dataset, its runs and results under `root`: DiT, D²iT and a grain
    model on one DVAE (r = 0.5), a few steps each. `sections` replace top-level keys."""
    study = {
        "name": "tiny",
        "paths": {"runs": str(root / "runs"), "results": str(root / "results")},
        "data": {"manifest": str(dataset), "resolution": 32, "classes": 10},
        "grain": {"region": 4, "thresholds": str(dataset.parent / "thresholds.json")},
        "dvae": {"preset": "tiny", "perceptual": "none",
                 "train": {"steps": 4, "batch_size": 8, "ema": None, "log_every": 2}},
        "train": TRAIN,
        "specs": {"dit": {"kind": "dit", "size": "tiny", "fine_ratio": 0.5},
                  "d2it": {"kind": "d2it", "size": "tiny", "grain_model": "dgt"},
                  "dgt": {"kind": "grain", "depth": 1, "hidden": 32, "heads": 2}},
        "sampling": {"steps": 4, "n": 6, "batch_size": 4, "grain_calibration": 16},
        "tables": {"table2": {"rows": {"dit_xl": {"spec": "dit"}, "d2it_xl": {"spec": "d2it"}}}},
        "recon": {"fine_ratios": [0.5]},
        "metrics": {"extractor": "effnet", "reference_dir": str(root / "reference")},
        "tracking": {"uri": None},
    }
    study.update(copy.deepcopy(sections))
    return study
