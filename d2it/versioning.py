"""dvc.yaml from the studies' plans: one DVC stage per study config, whose command is the study's
Snakemake run (Snakemake decides what to make; DVC records and versions what came out).

    d2it study dvc > dvc.yaml        (a test checks the committed file is what this writes)

What a user versions, by where it lives:
- in the DVC cache (`dvc push` to a remote): the final weights of every run, the generated
  dataset of a study that synthesises its own, the cached reference statistics and classifier;
- in git (`cache: false`): the entropy thresholds, tables, figures, verdicts and the numbers-only
  row metrics (`dvc metrics`) and figure CSVs (`dvc plots`).
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
# `dvc plots show` read the committed results.
"""
CODE = ["Snakefile", "workflow", "d2it"]
CURVES = ("fig5", "fig6", "grain_maps")
PLOTS = {"dvae_recon.csv": ("fine_ratio", "psnr_db", "DVAE held-out PSNR by fine ratio"),
         "fig5.csv": ("fine_ratio", "fd", "Fig. 5: generation FD by the DVAE's fine ratio"),
         "fig6.csv": ("step", "fd", "Fig. 6: FD over training steps")}


def _out(path, cache: bool) -> dict:
    return {str(path): {"cache": cache, "persist": True}}


def results(plan) -> list[Path]:
    """The result files of a study kept in git: its targets and the files written beside them."""
    files = []
    for target in plan.targets():
        files.append(target)
        if target.suffix == ".png":  # Figs. 5-6 and the grain maps keep their CSV beside
            files += [target.with_suffix(".csv")] if target.stem in CURVES else []
        if target == plan.verdict_md:
            files.append(target.with_suffix(".json"))
    return files


def stage(config: Path) -> tuple[dict, list[dict]]:
    """The DVC stage of one study config, and its plot definitions."""
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
    outs += [_out(path, cache=False) for path in results(plan)]
    rows = [_out(plan.results_dir / "rows" / table, cache=False) for table in resolved["tables"]]
    plots = [{str(plan.results_dir / name): {"x": x, "y": y, "title": f"{title} ({plan.name})"}}
             for name, (x, y, title) in PLOTS.items() if plan.results_dir / name in results(plan)]
    body = {"cmd": f"snakemake --cores all --configfile {config}", "deps": deps, "outs": outs,
            "metrics": rows}
    return {plan.name: body}, plots


def dvc_yaml(configs: list[Path]) -> str:
    """dvc.yaml for these study configs."""
    stages, plots = {}, []
    for config in configs:
        found, its_plots = stage(config)
        stages.update(found)
        plots += its_plots
    return HEADER + yaml.safe_dump({"stages": stages, "plots": plots}, sort_keys=False,
                                   width=100)
