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
from d2it.report.recon import rfd_key  # noqa: E402


def _metrics(path: Path, what: str) -> dict:
    if not path.is_file():
        raise D2itError(f"{what}: no metrics {path} (run the study's metrics jobs)")
    return read_json(path, "metrics file", "rerun its `d2it metrics` job")


def _sample_metrics(ss) -> dict:
    """FD (under its protocol key) with its 95 % bootstrap interval and, where measured, the class
    score with its Wilson interval, of one sample set."""
    found = _metrics(ss.metrics, ss.name)
    keys = found["keys"]
    reference = found["reference"]  # a split of the study's data, or an ADM batch (no split)
    out = {"fd_key": keys["fd"], "fd": found[keys["fd"]], "protocol": found["protocol"],
           "reference": (f"the {reference['split']} split" if reference.get("split")
                         else Path(reference["file"]).name)}
    out["fd_lo"], out["fd_hi"] = found.get(f"{keys['fd']}_ci95") or (np.nan, np.nan)
    if "class_acc" in keys:
        out["class_acc"] = found["class_acc"]
        out["class_acc_lo"], out["class_acc_hi"] = found.get("class_acc_ci95") or (np.nan, np.nan)
    return out


def _lines(ax, table: pd.DataFrame, x: str, metric: str, hue: str | None = None) -> str:
    """One line per `hue` value with a 95 % band: at each point, the interval of the mean over
    seeds where it has several, else its one set's own interval (`<metric>_lo` / `_hi`).
    Returns what the bands are, for the caption."""
    from d2it.report.stats import mean_interval

    groups = list(table.groupby(hue, sort=False)) if hue else [(None, table)]
    several = False
    for (label, part), color in zip(groups, sns.color_palette(n_colors=len(groups))):
        points = []
        for at, seeds in part.groupby(x):
            if len(seeds) > 1:
                mean, _, interval = mean_interval(seeds[metric].tolist())
                low, high = interval
                several = True
            else:
                mean, low, high = seeds[[metric, f"{metric}_lo", f"{metric}_hi"]].iloc[0]
            points.append((at, mean, low, high))
        at, mean, low, high = (np.array(v, dtype=float) for v in zip(*points))
        ax.plot(at, mean, marker="o", color=color, label=label)
        ax.fill_between(at, low, high, color=color, alpha=0.2, linewidth=0)
    return ("band: 95 % interval over seeds (of the one set where a point has one seed)"
            if several
            else "band: 95 % interval of the one set (bootstrap FD, Wilson class score)")


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
        key = rfd_key(recon)
        rows.append({"fine_ratio": ss.run.fine_ratio, "seed": ss.run.seed,
                     "rfd_key": key, "rfd": recon[key], "psnr_db": recon["psnr"],
                     "sample_set": ss.name, **_sample_metrics(ss)})
    return pd.DataFrame(rows).sort_values(["fine_ratio", "seed"]).reset_index(drop=True)


def _save(fig, table: pd.DataFrame, png: Path, mark: str | None,
          series: pd.DataFrame | None = None) -> dict:
    """The figure, its table as <fig>.csv and, for `dvc plots` (which draws one series per
    column, not per value of a column), its lines one per column as <fig>_series.csv."""
    png = Path(png)
    marks.stamp(fig, mark)
    with atomic(png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    csv = png.with_suffix(".csv")
    write_text_atomic(csv, table.to_csv(index=False))
    if series is not None:
        write_text_atomic(series_csv(png), series.reset_index().to_csv(index=False))
    return {"figure": str(png), "csv": str(csv), "rows": len(table)}


def series_csv(png: Path) -> Path:
    return Path(png).with_name(f"{Path(png).stem}_series.csv")


def _fd_against(table: pd.DataFrame) -> str:
    """The FD protocol in a title's words: e.g. `fd_effnet_1k vs the train split`, or
    `fid50k vs VIRTUAL_imagenet256_labeled.npz`."""
    return f"{table['fd_key'].iloc[0]} vs {table['reference'].iloc[0]}"


def fig6(plan, png: Path) -> dict:
    """FD (and the class score) against training steps, one line per model, each with its 95 %
    band; its series: mean FD per step, one column per model."""
    table = fig6_table(plan)
    panels = ["fd"] + (["class_acc"] if "class_acc" in table else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False,
                             layout="constrained")
    for ax, metric in zip(axes[0], panels):
        bands = _lines(ax, table, "step", metric, hue="model")
        ax.set_xlabel("training steps")
        ax.set_ylabel(f"FD ({table['fd_key'].iloc[0]}, lower is better)" if metric == "fd"
                      else "class score: samples recognised as their class")
        ax.legend(title="model", loc="best")
    fig.supxlabel(bands, fontsize=8)
    fig.suptitle(marks.title(plan.study["mark"], f"Fig. 6: convergence, study {plan.name} "
                             f"({_fd_against(table)})"))
    series = table.pivot_table(index="step", columns="model", values="fd", sort=False)
    return _save(fig, table, png, plan.study["mark"], series)


def fig5(plan, png: Path) -> dict:
    """Reconstruction (rFD of each DVAE) and generation (FD of the D²iT trained on it) against the
    fine-grain ratio, each on its own axis (their scales differ), FD with its 95 % band."""
    table = fig5_table(plan)
    fig, (recon, generation) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    sns.lineplot(table, x="fine_ratio", y="rfd", marker="o", errorbar=("ci", 95), ax=recon,
                 label="DVAE reconstructions")
    recon.set_ylabel(f"rFD ({table['rfd_key'].iloc[0]}, lower is better)")
    recon.set_title("reconstruction")
    bands = _lines(generation, table.assign(model="D²iT samples"), "fine_ratio", "fd",
                   hue="model")
    generation.set_ylabel(f"FD ({table['fd_key'].iloc[0]}, lower is better)")
    generation.set_title("generation")
    generation.legend(loc="best")
    fig.supxlabel(f"reconstruction: each ratio's DVAE (no interval measured); generation "
                  f"{bands}", fontsize=8)
    for ax in (recon, generation):
        ax.set_xlabel("fine-grain ratio of the DVAE")
    fig.suptitle(marks.title(plan.study["mark"], f"Fig. 5: fine-grain ratio sweep, study "
                             f"{plan.name} ({_fd_against(table)})"))
    series = table.groupby("fine_ratio")[["rfd", "fd"]].mean()
    return _save(fig, table, png, plan.study["mark"], series)


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
    order = sorted(table["class"].unique())  # classes by index, not by first appearance
    if class_names:
        table["class"] = [class_names[c] for c in table["class"]]
        order = [class_names[c] for c in order]
    # constrained layout keeps titles, tick labels and the colour bar apart; one colour bar
    # serves both heat maps (same scale)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), width_ratios=[2.2, 1, 1.2],
                             layout="constrained")
    sns.boxplot(table, x="class", y="fine_fraction", hue="source", order=order, ax=axes[0])
    axes[0].set_xlabel("class")
    axes[0].set_ylabel("fine fraction of the grain map")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend(title="grain maps")
    axes[0].set_title("fine fraction per class")
    for ax, (source, path) in zip(axes[1:], (("ground truth", ground_truth),
                                            ("predicted", predicted))):
        frequency = np.load(path)["grain"].mean(0)
        last = source == "predicted"
        sns.heatmap(frequency, vmin=0, vmax=1, cmap="coolwarm", square=True, ax=ax, cbar=last,
                    cbar_kws={"label": "fraction of samples fine here"} if last else None)
        ax.set_title(f"{source}: how often each position is fine", fontsize=10)
        ax.set_xlabel("grain column")
        ax.set_ylabel("grain row")
    fig.suptitle(marks.title(mark, "Grain maps: the Dynamic Grain Transformer vs held-out "
                             "ground truth"))
    summary = table.groupby(["class", "source"])["fine_fraction"].mean().unstack()
    return _save(fig, summary.reset_index(), png, mark)
