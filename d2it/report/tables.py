"""The paper's tables with our numbers beside them: one row per study row, the paper's values under
the paper's column names, ours under keys that name their protocol (e.g. fd_effnet_1k)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from d2it.errors import D2itError

PAPER = yaml.safe_load(Path(__file__).with_name("paper.yaml").read_text(encoding="utf-8"))
OURS = ("fd", "is", "precision", "recall")  # what the paper's FID / IS / Precision / Recall measure


def paper_method(table: str, row_id: str) -> str | None:
    """The paper's name of a row (None for a table or row the paper does not have)."""
    row = PAPER.get(table, {}).get("rows", {}).get(row_id)
    return row["method"] if row else None


def _metrics(path: Path, table: str, row_id: str) -> dict:
    if not path.is_file():
        raise D2itError(f"{table}: no metrics {path} for row {row_id!r} "
                        "(run `d2it metrics` on its samples)")
    return json.loads(path.read_text())


def paper_table(plan, table: str) -> pd.DataFrame:
    """A study table: each row's metrics (mean and spread over its training seeds when several)
    beside the paper's numbers. A missing metrics file is an error, not a blank."""
    from d2it.study import describe

    paper = PAPER.get(table, {"metrics": [], "rows": {}, "protocol": None})
    rows = []
    for row in plan.table_rows(table):
        plan_row = describe(plan, row)
        sets = [_metrics(ss.metrics, table, row.id) for ss in row.sample_sets]
        keys = sets[0]["keys"]
        if any(s["keys"] != keys for s in sets):
            raise D2itError(f"{table}: row {row.id!r} mixes protocols across seeds ({keys} ...)")
        theirs = paper["rows"].get(row.id, {})
        out = {"row": row.id, "method": theirs.get("method", row.id),
               "paper_params_M": theirs.get("params_M"),
               **{f"paper {m}": theirs.get(m) for m in paper["metrics"]},
               "ours": plan_row["label"], "ours_params_M": plan_row["params"]["total"] / 1e6,
               "ours_content_params_M": plan_row["params"]["content"] / 1e6}
        for m in OURS:  # one seed: its value; several: their mean and standard deviation
            values = [s[keys[m]] for s in sets]
            out[keys[m]] = float(np.mean(values))
            out[f"{keys[m]}_std"] = float(np.std(values, ddof=1)) if len(sets) > 1 else None
        # FD's bootstrap interval covers one sample set's sampling noise, not the seeds' spread
        low, high = sets[0].get(f"{keys['fd']}_ci95") or (None, None)
        single = len(sets) == 1
        out[f"{keys['fd']}_ci95_low"] = low if single else None
        out[f"{keys['fd']}_ci95_high"] = high if single else None
        out.update(seeds=" ".join(map(str, plan_row["seeds"])), cfg_scale=plan_row["cfg_scale"],
                   grain_source=plan_row["grain_source"],
                   sampling=f"{plan_row['sampler']} {plan_row['sampling_steps']} steps",
                   protocol=sets[0]["protocol"], paper_protocol=paper["protocol"])
        rows.append(out)
    return pd.DataFrame(rows)
