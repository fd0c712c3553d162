"""The stage-1 table: reconstruction quality and training cost of each DVAE."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from d2it.errors import D2itError
from d2it.report.marks import note


def rfd_key(scores: dict) -> str:
    """The name of the rFD in a `d2it eval recon` JSON: `rfd_<extractor>_<n>`, or `rfid<n>`
    under a paper protocol (metrics.extractors.metric_key)."""
    return next(k for k in scores if k.startswith(("rfd_", "rfid")))


def recon_table(metric_files: list[Path]) -> pd.DataFrame:
    """One row per `d2it eval recon` JSON, joined with its run's summary (training minutes)."""
    rows = []
    for path in metric_files:
        metrics = json.loads(Path(path).read_text())
        run = Path(metrics["run"])
        if not (run / "summary.json").exists():
            raise D2itError(f"{path}: its run's summary {run / 'summary.json'} is missing")
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"fine_ratio": metrics["fine_ratio"], "seed": metrics["seed"],
                     "fine_fraction_heldout": metrics["fine_fraction"], "psnr_db": metrics["psnr"],
                     rfd_key(metrics): metrics[rfd_key(metrics)],
                     "train_steps": summary["steps"], "train_minutes": summary["minutes"],
                     "protocol": metrics["protocol"]})
        if metrics.get("mark"):
            rows[-1] = {"mark": note(metrics["mark"]), **rows[-1]}
    return pd.DataFrame(rows).sort_values(["fine_ratio", "seed"]).reset_index(drop=True)
