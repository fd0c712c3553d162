"""dvc.yaml from the studies' plans: one DVC stage per study config, whose command is the study's
Snakemake run (Snakemake decides what to make; DVC records and versions what came out).

    d2it study dvc > dvc.yaml        (a test checks the committed file is what this writes)

What a user versions, by where it lives:
- in the DVC cache (`dvc push` to a remote): the final weights of every run, the generated
  dataset of a study that synthesises its own, the cached reference statistics and classifier;
- in git (`cache: false`): the entropy thresholds and the published results
  (results/published/<study>/: tables, figures, verdicts, the numbers-only row metrics that
  `dvc metrics` reads and the curves' series CSVs that `dvc plots` reads). Snakemake's own outputs
  (results/<study>/) are in neither: they are remade from the runs.
Every output is `persist: true`: DVC must not delete weights or results before Snakemake runs,
or `dvc repro` would retrain what is already there.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from d2it import study as studies

HEADER = """\
# Written by `d2it study dvc > dvc.yaml` from config/*.yaml (d2it/versioning.py says what is
# versioned where). `dvc repro <study>` runs the study's Snakemake workflow; `dvc push` sends its
# weights, generated data and reference statistics to your remote; `dvc metrics show` and
# `dvc plots show` read the published results.
"""
CODE = ["Snakefile", "workflow", "d2it"]
CURVES = ("fig5", "fig6", "grain_maps")
SERIES = ("fig5", "fig6")  # curves with a <fig>_series.csv: one column per line


def _out(path, cache: bool) -> dict:
    return {str(path): {"cache": cache, "persist": True}}


def results(plan) -> list[Path]:
    """The result files of a study DVC plots read: its targets and the CSVs written beside."""
    files = []
    for target in plan.targets():
        files.append(target)
        if target.suffix == ".png" and target.stem in CURVES:  # Figs. 5-6 and the grain maps
            files.append(target.with_suffix(".csv"))
        if target.suffix == ".png" and target.stem in SERIES:
            files.append(target.with_name(f"{target.stem}_series.csv"))
    return files


def plots(plan) -> list[dict]:
    """`dvc plots` definitions of a study's published curves. DVC draws one series per y column
    (and per revision), so each curve is read from its series file, whose columns are its lines:
    rFD and FD for Fig. 5, one model each for Fig. 6."""
    from d2it.study import spec_label

    fig6 = list(dict.fromkeys(spec_label(plan.study, spec)
                              for spec in plan.curve_specs.get("fig6", [])))
    ratio = "fine-grain ratio of the DVAE"
    fd = "Fréchet distance (lower is better)"
    wanted = {
        "dvae_recon.csv": ("fine_ratio", ["psnr_db"], ratio, "held-out PSNR (dB)",
                           "DVAE held-out PSNR by fine ratio"),
        "fig5_series.csv": ("fine_ratio", ["rfd", "fd"], ratio, fd,
                            "Fig. 5: reconstruction rFD and generation FD by fine ratio"),
        "fig6_series.csv": ("step", fig6, "training steps", fd,
                            "Fig. 6: FD over training steps, per model")}
    made = {path.name for path in results(plan) if (plan.published_dir / path.name).is_file()}
    return [{str(plan.published_dir / name): {
                "x": x, "y": y if len(y) > 1 else y[0], "x_label": x_label, "y_label": y_label,
                "template": "linear", "title": f"{title} ({plan.name})"}}
            for name, (x, y, x_label, y_label, title) in wanted.items() if name in made]


def stage(config: Path) -> tuple[dict, list[dict], list[str]]:
    """The DVC stage of one study config, its plot definitions and its metrics files (top-level
    entries: they lie inside the stage's published folder, which is its output). Metrics and
    plots are listed only where published in this checkout, as DVC warns of each missing one."""
    resolved = studies.load(config)
    plan = studies.plan(resolved)
    data, metrics = resolved["data"], resolved["metrics"]
    deps = [str(config), *CODE]
    outs = []
    if data["synth"] is None:
        deps.append(data["manifest"])  # prepared by the user from their copy of the dataset
    else:
        outs.append(_out(Path(data["manifest"]).parent, cache=True))
    if metrics["reference"].endswith(".npz"):
        deps.append(metrics["reference"])  # an ADM reference batch, downloaded by the user
    outs.append(_out(resolved["grain"]["thresholds"], cache=False))
    outs.append(_out(metrics["reference_dir"], cache=True))
    outs += [_out(run.folder / "final.pt", cache=True) for run in plan.runs.values()]
    outs.append(_out(plan.published_dir, cache=False))
    body = {"cmd": f"snakemake --cores all publish --configfile {config}", "deps": deps,
            "outs": outs}
    if not plan.published_dir.is_dir():  # DVC warns of every metrics file it cannot read
        return {plan.name: body}, [], []
    rows = [str(plan.published_dir / "rows" / table) for table in resolved["tables"]]
    return {plan.name: body}, plots(plan), rows


def dvc_yaml(configs: list[Path]) -> str:
    """dvc.yaml for these study configs."""
    stages, plots, metrics = {}, [], []
    for config in configs:
        found, its_plots, its_metrics = stage(config)
        stages.update(found)
        plots += its_plots
        metrics += its_metrics
    body = {"stages": stages, "metrics": metrics, "plots": plots}
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=100, allow_unicode=True)
