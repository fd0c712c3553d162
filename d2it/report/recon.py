"""The stage-1 table: reconstruction quality and training cost of each DVAE."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from d2it.errors import D2itError


def recon_table(metric_files: list[Path], runs_root: Path) -> pd.DataFrame:
    rows = []
    for path in metric_files:
        metrics = json.loads(Path(path).read_text())
        run = Path(metrics["run"])
        summary_path = run / "summary.json" if run.is_absolute() else Path(runs_root) / run.name / "summary.json"
        if not summary_path.exists():
            raise D2itError(f"{path}: its run's summary {summary_path} is missing")
        summary = json.loads(summary_path.read_text())
        config = json.loads((summary_path.parent / "run.json").read_text())["config"]
        rows.append({"fine_ratio": config["grain"]["fine_ratio"],
                     "fine_fraction_heldout": metrics["fine_fraction"], "psnr_db": metrics["psnr"],
                     **{k: v for k, v in metrics.items() if k.startswith(("rfd_", "rfid_"))},
                     "train_steps": summary["steps"], "train_minutes": summary["minutes"],
                     "protocol": metrics["protocol"]})
    return pd.DataFrame(rows).sort_values("fine_ratio").reset_index(drop=True)
