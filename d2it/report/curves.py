"""Figures of many samples, each with its CSV beside: Fig. 5 (reconstruction vs generation over
fine-grain ratios), Fig. 6 (FD and the class score over training steps) and the grain model's maps
against the ground truth."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from d2it.errors import D2itError  # noqa: E402
from d2it.files import atomic, read_json, write_text_atomic  # noqa: E402
from d2it.report import marks  # noqa: E402


def _metrics(path: Path, what: str) -> dict:
    if not path.is_file():
        raise D2itError(f"{what}: no metrics {path} (run the study's metrics jobs)")
    return read_json(path, "metrics file", "rerun its `d2it metrics` job")


def _sample_metrics(ss) -> dict:
    """FD (under its protocol key) and, where measured, the class score of one sample set."""
    found = _metrics(ss.metrics, ss.name)
    keys = found["keys"]
    out = {"fd_key": keys["fd"], "fd": found[keys["fd"]], "protocol": found["protocol"]}
    if "class_acc" in keys:
        out["class_acc"] = found["class_acc"]
    return out


def fig6_table(plan) -> pd.DataFrame:
    """One row per (spec, seed, training step) of Fig. 6."""
    from d2it.study import spec_label

    rows = [{"spec": spec, "model": spec_label(plan.study, spec), "seed": ss.run.seed,
             "step": ss.train_step, "sample_set": ss.name, **_sample_metrics(ss)}
            for spec, ss in zip(plan.curve_specs["fig6"], plan.curves["fig6"])]
    return pd.DataFrame(rows)


def fig5_table(plan) -> pd.DataFrame:
    """One row per (fine ratio, seed) of Fig. 5: the DVAE's reconstruction rFD and PSNR beside the
    FD of the D²iT model trained on its latents."""
    rows = []
    for ss in plan.curves["fig5"]:
        dvae = plan.dvae_of(ss.run)
        recon = _metrics(plan.recon_json(dvae), f"the DVAE of {ss.name}")
        rfd_key = next(k for k in recon if k.startswith(("rfd_", "rfid")))
        rows.append({"fine_ratio": ss.run.fine_ratio, "seed": ss.run.seed,
                     "rfd_key": rfd_key, "rfd": recon[rfd_key], "psnr_db": recon["psnr"],
                     "sample_set": ss.name, **_sample_metrics(ss)})
    return pd.DataFrame(rows).sort_values(["fine_ratio", "seed"]).reset_index(drop=True)


def _save(fig, table: pd.DataFrame, png: Path, mark: str | None) -> dict:
    png = Path(png)
    marks.stamp(fig, mark)
    with atomic(png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    csv = png.with_suffix(".csv")
    write_text_atomic(csv, table.to_csv(index=False))
    return {"figure": str(png), "csv": str(csv), "rows": len(table)}


def fig6(plan, png: Path) -> dict:
    """FD (and the class score) against training steps, one line per model; bands are the 95 %
    interval over seeds where there are several."""
    table = fig6_table(plan)
    panels = ["fd"] + (["class_acc"] if "class_acc" in table else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        sns.lineplot(table, x="step", y=metric, hue="model", style="model", markers=True,
                     errorbar=("ci", 95), ax=ax)
        ax.set_xlabel("training steps")
        ax.set_ylabel(table["fd_key"].iloc[0] + " (lower is better)" if metric == "fd"
                      else "class score: samples recognised as their class")
        ax.legend(title="model")
    fig.suptitle(marks.title(plan.study["mark"], f"Fig. 6: convergence, study {plan.name} "
                             f"({table['protocol'].iloc[0][:60]}...)"), fontsize=9)
    return _save(fig, table, png, plan.study["mark"])


def fig5(plan, png: Path) -> dict:
    """Reconstruction (rFD of each DVAE) and generation (FD of the D²iT trained on it) against the
    fine-grain ratio."""
    table = fig5_table(plan)
    long = pd.concat([
        table.assign(metric=f"reconstruction ({table['rfd_key'].iloc[0]})", value=table["rfd"]),
        table.assign(metric=f"generation ({table['fd_key'].iloc[0]})", value=table["fd"])])
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(long, x="fine_ratio", y="value", hue="metric", style="metric", markers=True,
                 errorbar=("ci", 95), ax=ax)
    ax.set_xlabel("fine-grain ratio of the DVAE")
    ax.set_ylabel("Fréchet distance (lower is better)")
    ax.legend(title="quality")
    ax.set_title(marks.title(plan.study["mark"], f"Fig. 5: fine-grain ratio sweep, study "
                             f"{plan.name}"))
    return _save(fig, table, png, plan.study["mark"])


def grain_maps_table(predicted: Path, ground_truth: Path) -> pd.DataFrame:
    """Per sample: its source (predicted / ground truth), class and fine fraction."""
    parts = []
    for source, path in (("ground truth", ground_truth), ("predicted", predicted)):
        data = np.load(path)
        parts.append(pd.DataFrame({"source": source, "class": data["labels"],
                                   "fine_fraction": data["grain"].reshape(len(data["grain"]),
                                                                          -1).mean(1)}))
    return pd.concat(parts, ignore_index=True)


def grain_maps(predicted: Path, ground_truth: Path, png: Path,
               class_names: list[str] | None = None, mark: str | None = None) -> dict:
    """The grain model against the ground truth: fine fraction per class (box plots) and how often
    each position is fine (one heat map per source)."""
    table = grain_maps_table(predicted, ground_truth)
    if class_names:
        table["class"] = [class_names[c] for c in table["class"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), width_ratios=[2, 1, 1])
    sns.boxplot(table, x="class", y="fine_fraction", hue="source", ax=axes[0])
    axes[0].set_xlabel("class")
    axes[0].set_ylabel("fine fraction of the grain map")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend(title="grain maps")
    for ax, (source, path) in zip(axes[1:], (("ground truth", ground_truth),
                                            ("predicted", predicted))):
        frequency = np.load(path)["grain"].mean(0)
        sns.heatmap(frequency, vmin=0, vmax=1, cmap="coolwarm", square=True, ax=ax,
                    cbar_kws={"label": "fraction of samples fine here"})
        ax.set_title(f"{source}: fine frequency per position")
        ax.set_xlabel("grain column")
        ax.set_ylabel("grain row")
    fig.suptitle(marks.title(mark, "Grain maps: the Dynamic Grain Transformer vs held-out "
                             "ground truth"))
    summary = table.groupby(["class", "source"])["fine_fraction"].mean().unstack()
    return _save(fig, summary.reset_index(), png, mark)
