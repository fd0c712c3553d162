"""The paper's tables with our numbers beside them: one row per paper row, the paper's values under
the paper's column names, ours under keys that name their protocol (e.g. fd_effnet_1k)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from d2it.errors import D2itError

PAPER = yaml.safe_load(Path(__file__).with_name("paper.yaml").read_text(encoding="utf-8"))
OURS = ("fd", "is", "precision", "recall")  # what the paper's FID / IS / Precision / Recall columns measure


def sample_sets(table: str) -> list[str]:
    """The sample sets a table compares with the paper's rows."""
    return [row["ours"] for row in _spec(table)["rows"]]


def _spec(table: str) -> dict:
    if table not in PAPER:
        raise D2itError(f"no paper table {table!r} (known: {', '.join(PAPER)})")
    return PAPER[table]


def paper_table(table: str, metrics: dict[str, Path]) -> pd.DataFrame:
    """`metrics`: sample-set name -> `d2it metrics` JSON. Missing sets are an error, not a blank."""
    spec, rows = _spec(table), []
    for row in spec["rows"]:
        if row["ours"] not in metrics:
            raise D2itError(f"{table}: no metrics for sample set {row['ours']!r} (row {row['method']})")
        path = Path(metrics[row["ours"]])
        ours = json.loads(path.read_text())
        sampling = ours.get("sampling") or {}
        keys = ours["keys"]
        low, high = ours.get(f"{keys['fd']}_ci95") or (None, None)
        out = {"method": row["method"], "paper_params_M": row.get("params_M"),
               **{f"paper {m}": row[m] for m in spec["metrics"]},
               "ours": row["ours"], "ours_params_M": sampling.get("params_M"),
               **{keys[m]: ours[keys[m]] for m in OURS},
               f"{keys['fd']}_ci95_low": low, f"{keys['fd']}_ci95_high": high,
               "cfg_scale": sampling.get("cfg_scale"), "grain_source": sampling.get("grain_source"),
               "protocol": ours["protocol"], "paper_protocol": spec["protocol"]}
        rows.append(out)
    return pd.DataFrame(rows)
