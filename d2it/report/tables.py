"""The paper's tables with our numbers beside them: one row per study row, the paper's values under
the paper's column names, ours under keys that name their protocol (e.g. fd_effnet_1k)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from d2it.errors import D2itError
from d2it.files import read_json
from d2it.report.marks import note
from d2it.report.paper import PAPER
from d2it.report.plan_rows import describe
from d2it.report.stats import mean_interval

# What the paper's FID / IS / Precision / Recall measure, and the class score where measured.
OURS = ("fd", "is", "precision", "recall", "class_acc")
BUDGET = ("train_steps", "autoencoder", "evaluator")  # what a paper number came from


def _paper_columns(paper: dict, theirs: dict) -> dict:
    """A paper row's numbers under the paper's column names, and the budget they came from."""
    budget = {**paper.get("budget", {}), **theirs}
    return {"method": theirs.get("method"), "paper_params_M": theirs.get("params_M"),
            **{f"paper {m}": theirs.get(m) for m in paper["metrics"]},
            **{f"paper_{k}": budget.get(k) for k in BUDGET}}


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values and None not in values else None


def _metrics(path: Path, table: str, row_id: str) -> dict:
    if not path.is_file():
        raise D2itError(f"{table}: no metrics {path} for row {row_id!r} "
                        "(run `d2it metrics` on its samples)")
    return read_json(path, "metrics file", "rerun its `d2it metrics` job")


def _recon(plan, dvae, table: str, row_id: str) -> dict:
    path = plan.recon_json(dvae)
    if not path.is_file():
        raise D2itError(f"{table}: no reconstruction metrics {path} for row {row_id!r}'s DVAE "
                        "(run `d2it eval recon` on it)")
    found = read_json(path, "reconstruction metrics", "rerun its `d2it eval recon` job")
    if "class_acc_decoded" not in found:
        raise D2itError(f"{path}: no class_acc_decoded (made before the decode ceiling existed; "
                        "rerun its `d2it eval recon` job)")
    return found


def paper_table(plan, table: str) -> pd.DataFrame:
    """A study table: each row's metrics (mean and spread over its training seeds when several)
    beside the paper's numbers. A missing metrics file is an error, not a blank."""
    paper = PAPER.get(table, {"metrics": [], "rows": {}, "protocol": None})
    rows = []
    for row in plan.table_rows(table):
        plan_row = describe(plan, row)
        sets = [_metrics(ss.metrics, table, row.id) for ss in row.sample_sets]
        keys = sets[0]["keys"]
        if any(s["keys"] != keys for s in sets):
            raise D2itError(f"{table}: row {row.id!r} mixes protocols across seeds ({keys} ...)")
        theirs = paper["rows"].get(row.id, {})
        out = {"row": row.id, **_paper_columns(paper, theirs),
               "ours": plan_row["label"], "ours_params_M": plan_row["params"]["total"] / 1e6,
               "ours_content_params_M": plan_row["params"]["content"] / 1e6}
        out["method"] = out["method"] or row.id
        out["ours_grain_params_M"] = plan_row["params"]["grain"] / 1e6
        out["ours_gflops"] = sum(plan_row["gflops_per_forward"].values())  # content + grain
        for m in (m for m in OURS if m in keys):
            # One seed: its value and its set's own interval (sampling noise: FD's bootstrap, the
            # class score's binomial); several: their mean, spread and Student-t interval.
            values = [s[keys[m]] for s in sets]
            mean, sd, interval = mean_interval(values)
            if interval is None:
                interval = sets[0].get(f"{keys[m]}_ci95") or (None, None)
            out[keys[m]] = mean
            out[f"{keys[m]}_std"] = sd
            out[f"{keys[m]}_ci95_low"], out[f"{keys[m]}_ci95_high"] = interval
        if "class_acc" in keys:
            # Two ceilings: the classifier on real held-out images, and on the decodes of them by
            # the row's DVAE(s), above which no latent model can score.
            out["class_acc_ceiling"] = sets[0]["class_acc_ceiling"]
            decoded = [_recon(plan, dvae, table, row.id)["class_acc_decoded"]
                       for dvae in {ss.run.key: plan.dvae_of(ss.run) for ss in row.sample_sets}
                       .values()]
            out["class_acc_ceiling_decoded"] = sum(decoded) / len(decoded)
        # The sampled grain maps' fine fraction against the one the model trained on (DiT: 1)
        sampling = [s.get("sampling") or {} for s in sets]
        out["fine_fraction"] = _mean([s.get("fine_fraction") for s in sampling])
        out["fine_fraction_train"] = _mean([s.get("gt_fine_fraction_train") for s in sampling])
        out.update(seeds=" ".join(map(str, plan_row["seeds"])), cfg_scale=plan_row["cfg_scale"],
                   grain_source=plan_row["grain_source"],
                   sampling=f"{plan_row['sampler']} {plan_row['sampling_steps']} steps",
                   protocol=sets[0]["protocol"], paper_protocol=paper["protocol"])
        rows.append(out)
    for ref_id, theirs in paper.get("references", {}).items():
        # a published number no row of ours re-runs: the paper's columns only, and its source
        rows.append({"row": ref_id, **_paper_columns(paper, theirs), "ours": None,
                     "paper_protocol": theirs.get("source")})
    table = pd.DataFrame(rows)
    if plan.study["mark"]:
        table.insert(0, "mark", note(plan.study["mark"]))
    return table


def row_metrics(table: pd.DataFrame) -> dict[str, dict]:
    """Numbers only, per row, for `dvc metrics show / diff`: FD under its protocol key and the
    class score where measured, each as mean and 95 % interval (the CSV keeps the rest)."""
    headline = [c for c in table.columns if f"{c}_ci95_low" in table.columns
                and (c.startswith(("fid", "fd_")) or c == "class_acc")]
    rows = {}
    for record in table.dropna(subset=["ours"]).to_dict(orient="records"):
        rows[record["row"]] = {c: {"mean": record[c], "low": record[f"{c}_ci95_low"],
                                   "high": record[f"{c}_ci95_high"]} for c in headline}
    return rows

