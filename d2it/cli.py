"""`d2it` command line: each subcommand parses its arguments and calls the library. Every command
reads a study (`--config`, default config/cpu.yaml) and, unless told otherwise, finds its runs and
outputs where the study's plan puts them (`d2it study plan` prints it)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

from d2it.errors import D2itError
from d2it.files import check_writable, read_json


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `d2it: error: ...`, as every other error of the CLI."""

    def error(self, message: str):
        command = self.prog.removeprefix("d2it").strip()
        print(f"d2it: error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        sys.exit(2)


class _Once(argparse.Action):
    """An option given at most once: a second --config would silently replace the first."""

    def __call__(self, parser, namespace, value, option_string=None):
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)}, {value})"
                         "; a study is one file")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, value)


def _seed(text: str) -> int:
    """A seed: an integer >= 0 (what numpy and torch accept)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; seeds are integers >= 0")
    return value


def _fine_ratio(text: str) -> float:
    """A fine ratio: the share of regions encoded fine, in [0, 1] (the schema's range)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1] (a share of regions)")
    return value


def _study(args) -> dict:
    from d2it import study

    return study.load(args.config, args.set)


def _plan(args):
    from d2it import study

    return study.plan(_study(args))


def cmd_data_synth(args) -> dict:
    from d2it.data.synth import LOOK, synthesize

    study = _study(args)
    synth = study["data"]["synth"]
    if synth is None:
        raise D2itError(f"{args.config}: data.synth is null: "
                        "this study's data is a prepared folder (`d2it data prepare`)")
    out = Path(args.out) if args.out else Path(study["data"]["manifest"]).parent
    check_writable(out)
    look = {k: synth[k] for k in LOOK}
    manifest = synthesize(out, seed=synth["seed"], resolution=study["data"]["resolution"],
                          n_train=synth["n_train"], n_heldout=synth["n_heldout"], look=look)
    return {"manifest": str(out / "manifest.json"), "files": len(manifest.files)}


def cmd_data_prepare(args) -> dict:
    from d2it.data.folder import prepare

    check_writable(args.out)
    manifest = prepare(Path(args.src), Path(args.out), args.heldout_fraction)
    return {"manifest": args.out, "files": len(manifest.files), "classes": len(manifest.classes)}


def cmd_grain_thresholds(args) -> dict:
    import torch

    from d2it.data.folder import ImageFolderDataset, loader_workers
    from d2it.data.manifest import Manifest
    from d2it.files import write_json_atomic
    from d2it.grain import compute_thresholds

    study = _study(args)
    data, grain = study["data"], study["grain"]
    check_writable(args.out or grain["thresholds"])
    manifest = Manifest.load(data["manifest"])
    dataset = ImageFolderDataset(manifest, "train", data["resolution"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=grain["batch_size"],
                                         num_workers=loader_workers(data["num_workers"]))
    table = compute_thresholds(loader, grain["region"], grain["bins"], grain["sigma"],
                               manifest.digest())
    out = Path(args.out or grain["thresholds"])
    write_json_atomic(out, table)
    return {"thresholds": str(out), "regions": table["n_regions"],
            "median": table["values"][len(table["values"]) // 2]}


def cmd_train_dvae(args) -> dict:
    from d2it.stage1 import train_dvae

    plan = _plan(args)
    out = Path(args.out) if args.out else plan.dvae(args.fine_ratio, args.seed).folder
    check_writable(out)
    return train_dvae(plan.study, args.fine_ratio, args.seed, out)


def cmd_train_model(args) -> dict:
    from d2it.stage2 import train_model

    plan = _plan(args)
    if args.spec not in plan.study["specs"]:
        raise D2itError(f"{args.config}: no spec {args.spec!r} "
                        f"(specs: {', '.join(plan.study['specs'])})")
    run = plan.model(args.spec, args.seed, args.fine_ratio)
    latents = Path(args.latents) if args.latents else plan.latents(run)
    out = Path(args.out) if args.out else run.folder
    check_writable(out)
    return train_model(plan.study, args.spec, args.seed, latents, out, args.fine_ratio,
                       plan.snapshot_steps(run))


def cmd_sample(args) -> dict:
    from d2it.sample import sample

    if args.sample_set:
        plan = _plan(args)
        found = plan.find_sample_set(args.sample_set)
        grain_run = found.grain_run.folder if found.grain_run else None
        out = Path(args.out or found.npz)
        grid = Path(args.grid) if args.grid else found.grid
        check_writable(out, grid)
        return sample(found.run.folder, found.settings, out, grain_run, grid,
                      plan.study["mark"])
    if not (args.run_dir and args.out):
        raise D2itError("give --sample-set NAME (`d2it study plan` lists them), "
                        "or --run-dir and --out")
    study = _study(args)
    check_writable(args.out, *([args.grid] if args.grid else []))
    settings = {**study["sampling"], "classes": None}
    return sample(Path(args.run_dir), settings, Path(args.out),
                  Path(args.grain_run) if args.grain_run else None,
                  Path(args.grid) if args.grid else None, study["mark"])


def cmd_metrics(args) -> dict:
    from d2it.metrics.job import evaluate_samples
    from d2it.sample import planned_record

    if args.sample_set:
        plan = _plan(args)
        found = plan.find_sample_set(args.sample_set)
        out = Path(args.out) if args.out else found.metrics
        check_writable(out)
        recon = plan.recon_of(found)
        context = {"uses": plan.uses(found), "spec": found.run.spec,
                   "at_step": found.settings.get("at_step"),
                   "recon": _recon_scores(recon) if recon and recon.exists() else {}}
        return evaluate_samples(plan.study, [found.npz], out, [planned_record(found)], context)
    if not args.out:
        raise D2itError("d2it metrics --samples needs --out (the metrics JSON to write)")
    check_writable(args.out)
    return evaluate_samples(_study(args), [Path(p) for p in args.samples], Path(args.out))


def _recon_scores(path: Path) -> dict:
    """rFD and PSNR from a DVAE's reconstruction JSON (`d2it eval recon`), by protocol-free name."""
    from d2it.report.recon import rfd_key

    found = read_json(path, "reconstruction scores", "remake them with `d2it eval recon`")
    return {"rfd": found[rfd_key(found)], "psnr_db": found["psnr"]}


def _dvae_dir(args, plan) -> Path:
    return Path(args.run_dir) if args.run_dir else plan.dvae(args.fine_ratio, args.seed).folder


def cmd_eval_recon(args) -> dict:
    from d2it.stage1 import evaluate_recon

    plan = _plan(args)
    run = _dvae_dir(args, plan)
    out = Path(args.out) if args.out else plan.recon_json(plan.dvae(args.fine_ratio, args.seed))
    check_writable(out)
    return evaluate_recon(plan.study, run, out)


def cmd_encode(args) -> dict:
    from d2it.stage1 import encode_latents

    plan = _plan(args)
    run = _dvae_dir(args, plan)
    out = Path(args.out) if args.out else run / "latents"
    check_writable(out)
    return encode_latents(plan.study, run, out)


def cmd_study_keys(args) -> None:
    from d2it.config_reference import reference

    print(reference(), end="")


def cmd_study_dvc(args) -> None:
    from d2it.versioning import dvc_yaml

    configs = sorted(Path(args.configs).glob("*.yaml"))
    print(dvc_yaml(configs), end="")


def cmd_study_anchor(args) -> dict:
    from d2it.anchor import anchor

    plan = _plan(args)
    return anchor(plan.study, Path(args.dit_checkpoint), Path(args.vae),
                  plan.runs_dir / "anchor", plan.results_dir / "anchor.json",
                  tuple(args.cfg_scale))


def cmd_study_rehearse(args) -> None:
    from d2it.rehearsal import rehearse

    summary = rehearse(args.config, args.set, Path(args.out) if args.out else None, args.cores,
                       tuple(args.targets), not args.no_kill_test, args.kill_steps)
    print((Path(summary["folder"]) / "rehearsal.md").read_text(), end="")
    if summary["kill_test"] and not summary["kill_test"]["equal"]:
        raise D2itError("kill test: the resumed run's EMA weights differ from the uninterrupted "
                        f"run's ({summary['folder']}/rehearsal.json)")


def cmd_study_plan(args) -> list[dict] | str:
    from d2it.cost import plan_cost
    from d2it.report.plan_rows import describe

    plan = _plan(args)
    rows = plan.table_rows(args.table) if args.table else plan.rows
    # the last line: what the whole study costs (every table and figure, whatever --table)
    described = [describe(plan, row) for row in rows]
    if args.format == "table":
        from d2it.report.plan_rows import plan_table

        return plan_table(described, plan_cost(plan))
    return described + [plan_cost(plan)]


def _write_table(table, out: Path) -> dict:
    from d2it.files import atomic

    with atomic(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return {"table": str(out), "rows": table.to_dict(orient="records")}


def cmd_report_recon(args) -> dict:
    from d2it.report.recon import recon_table

    return _write_table(recon_table([Path(p) for p in args.metrics]), Path(args.out))


def cmd_report_table(args) -> dict:
    from d2it.files import write_json_atomic
    from d2it.report.tables import paper_table, row_metrics

    plan = _plan(args)
    out = Path(args.out) if args.out else plan.table_csv(args.table)
    table = paper_table(plan, args.table)
    rows_dir = out.parent / "rows" / args.table  # numbers only, one file per row (DVC metrics)
    rows = row_metrics(table)
    for stale in rows_dir.glob("*.json"):
        if stale.stem not in rows:
            stale.unlink()
    for row, numbers in rows.items():
        write_json_atomic(rows_dir / f"{row}.json", numbers)
    return _write_table(table, out)


def cmd_report_verdict(args) -> dict:
    from d2it.report.verdict import write_verdict

    plan = _plan(args)
    results = write_verdict(plan, plan.verdict_md, plan.verdict_md.with_suffix(".json"))
    return {"verdict": str(plan.verdict_md),
            "claims": {r["id"]: r["verdict"] for r in results}}


def cmd_report_publish(args) -> dict:
    from d2it.files import write_json_atomic
    from d2it.report.publish import publish

    plan = _plan(args)
    result = publish(plan, Path(args.to) if args.to else plan.published_dir.parent)
    write_json_atomic(plan.results_dir / "published.json", result)  # the workflow's output
    return result


def cmd_report_curve(args) -> dict:
    from d2it.report import curves

    plan = _plan(args)
    if args.figure not in plan.curves:
        raise D2itError(f"study {plan.name!r} has no {args.figure} "
                        f"(its curve figures: {', '.join(plan.curves) or 'none'})")
    out = Path(args.out) if args.out else plan.figure_png(args.figure)
    return getattr(curves, args.figure)(plan, out)


def cmd_report_grain_maps(args) -> dict:
    from d2it.data.manifest import Manifest
    from d2it.report.curves import grain_maps

    plan = _plan(args)
    found = plan.grain_check()
    if found is None:
        raise D2itError(f"study {plan.name!r} samples no D²iT run with both predicted and "
                        "ground-truth grain maps")
    manifest = Path(plan.study["data"]["manifest"])
    names = Manifest.load(manifest).classes if manifest.is_file() else None
    out = Path(args.out) if args.out else plan.grain_maps_png
    return grain_maps(found[0].npz, found[1].npz, out, names, plan.study["mark"])


def cmd_report_samples(args) -> dict:
    from d2it.data.manifest import Manifest
    from d2it.report.figures import samples_figure

    study = _study(args)
    manifest = Path(study["data"]["manifest"])
    names = Manifest.load(manifest).classes if manifest.is_file() else None
    return samples_figure(Path(args.samples), Path(args.out), args.by_class, args.per_row,
                          names, args.title, study["mark"])


def cmd_bench(args) -> dict | None:
    from d2it import bench
    from d2it import study as studies
    from d2it.files import write_json_atomic, write_text_atomic

    study = _study(args)
    result = bench.run(study, args.size, args.batch, args.iters, args.repeats, args.compiled,
                       args.profile)
    out = Path(args.out) if args.out else studies.plan(study).results_dir / "bench"
    write_json_atomic(out.with_suffix(".json"), result)
    table = bench.markdown(result)
    write_text_atomic(out.with_suffix(".md"), table)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(table, end="")
    return None


def _with_config(sp):
    """--config and --set."""
    sp.add_argument("--config", default="config/cpu.yaml", action=_Once,
                    help="study config (YAML)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. sampling.steps=100 (repeatable)")
    return sp

def _with_dvae(sp, run_dir: bool = True):
    """--fine-ratio, --seed and (where `run_dir`) --run-dir of a DVAE."""
    sp.add_argument("--fine-ratio", type=_fine_ratio, default=0.5, help="the DVAE's fine ratio")
    sp.add_argument("--seed", type=_seed, default=0, help="training seed")
    if run_dir:
        sp.add_argument("--run-dir", help="DVAE run folder (default: the study's)")
    return sp


def _data_commands(sub) -> None:
    """`d2it` subcommands: datasets and grain thresholds."""
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    sp = _with_config(data.add_parser("synth", help="write the embedded dataset"))
    sp.add_argument("--out", help="dataset folder (default: the folder of data.manifest)")
    sp.set_defaults(fn=cmd_data_synth)
    sp = data.add_parser("prepare", help="manifest of your folder (FFHQ flat / ImageNet classes)")
    sp.add_argument("--src", required=True, help="image folder")
    sp.add_argument("--out", required=True, help="manifest file to write")
    sp.add_argument("--heldout-fraction", type=float, default=0.1,
                    help="share of files held out (by path hash)")
    sp.set_defaults(fn=cmd_data_prepare)

    grain = sub.add_parser("grain", help="grain maps").add_subparsers(dest="action", required=True)
    sp = _with_config(grain.add_parser("thresholds",
                                      help="entropy percentiles of the training split"))
    sp.add_argument("--out", help="JSON file (default: grain.thresholds)")
    sp.set_defaults(fn=cmd_grain_thresholds)


def _model_commands(sub) -> None:
    """`d2it` subcommands: training, sampling, metrics, reconstruction, encoding."""
    tr = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    sp = _with_dvae(_with_config(tr.add_parser("dvae", help="stage 1: a DVAE at one fine ratio")),
                   False)
    sp.add_argument("--out", help="run folder (default: the study's; resumes if it holds this run)")
    sp.set_defaults(fn=cmd_train_dvae)
    sp = _with_config(tr.add_parser("model",
                                   help="stage 2: a spec (dit, d2it or grain) at one seed"))
    sp.add_argument("--spec", required=True, help="a name of the study's `specs`")
    sp.add_argument("--seed", type=_seed, default=0, help="training seed")
    sp.add_argument("--fine-ratio", type=_fine_ratio,
                    help="grain specs: the grain maps' fine ratio")
    sp.add_argument("--latents", help="latent cache (default: that of the spec's DVAE)")
    sp.add_argument("--out", help="run folder (default: the study's; resumes if it holds this run)")
    sp.set_defaults(fn=cmd_train_model)

    sp = _with_config(sub.add_parser("sample", help="samples to .npz (ADM format) + PNG grid"))
    sp.add_argument("--sample-set", help="a sample set of the study (`d2it study plan`)")
    sp.add_argument("--run-dir", help="or: a dit / d2it run folder, sampled with `sampling`")
    sp.add_argument("--grain-run",
                    help="with --run-dir: the grain model run (grain_source predicted)")
    sp.add_argument("--out", help=".npz to write (default: the sample set's)")
    sp.add_argument("--grid", help="PNG grid to write (default: the sample set's, or beside --out)")
    sp.set_defaults(fn=cmd_sample)

    sp = _with_config(sub.add_parser("metrics",
                                    help="FD / IS / KID / precision / recall of samples"))
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--sample-set", help="a sample set of the study's plan (its samples, "
                       "checked against its sampling record)")
    which.add_argument("--samples", nargs="+",
                       help=".npz with arr_0 (uint8 N x H x W x 3) or image folder; "
                            "several: mean and std")
    sp.add_argument("--out", help="metrics JSON (default with --sample-set: the plan's)")
    sp.set_defaults(fn=cmd_metrics)

    ev = sub.add_parser("eval", help="evaluate").add_subparsers(dest="what", required=True)
    sp = _with_dvae(_with_config(ev.add_parser("recon", help="held-out PSNR and rFD of a DVAE")))
    sp.add_argument("--out", help="metrics JSON (default: the study's)")
    sp.set_defaults(fn=cmd_eval_recon)

    encode = sub.add_parser("encode", help="cache a DVAE's latents for stage 2")
    sp = _with_dvae(_with_config(encode))
    sp.add_argument("--out", help="cache folder (default: <DVAE run>/latents)")
    sp.set_defaults(fn=cmd_encode)


def _study_commands(sub) -> None:
    """`d2it` subcommands: plan, anchor, rehearsal, keys, dvc."""
    st = sub.add_parser("study", help="studies").add_subparsers(dest="what", required=True)
    sp = _with_config(st.add_parser("plan", help="each table row resolved: a JSON line, or "
                                   "a table for reading (--format table)"))
    sp.add_argument("--table", help="only this table's rows, e.g. table2")
    sp.add_argument("--format", choices=("json", "table"), default="json",
                    help="json: one line per row, every field (default); table: for reading")
    sp.set_defaults(fn=cmd_study_plan)
    sp = _with_config(st.add_parser("anchor", help="the official DiT-XL/2 checkpoint through "
                                   "this sampler and evaluator, beside DiT's published FID"))
    sp.add_argument("--dit-checkpoint", required=True, help="e.g. DiT-XL-2-256x256.pt")
    sp.add_argument("--vae", required=True,
                    help="SD-VAE folder (diffusers AutoencoderKL: config.json + weights)")
    sp.add_argument("--cfg-scale", type=float, nargs="+", default=[1.5, 1.0],
                    help="guidance scales (DiT's published: 1.5 -> 2.27, 1.0 -> 9.62)")
    sp.set_defaults(fn=cmd_study_anchor)
    sp = _with_config(st.add_parser("rehearse", help="the study's whole DAG at its model sizes, "
                                   "with stand-in data and weights and cut counts (REHEARSAL)"))
    sp.add_argument("targets", nargs="*", help="Snakemake targets (default: all), relative to "
                    "the rehearsal's folder, e.g. results/imagenet256/table2.csv")
    sp.add_argument("--out", help="the rehearsal's folder (default: rehearsal/<study>)")
    sp.add_argument("--cores", type=int, default=os.cpu_count(), help="Snakemake's --cores")
    sp.add_argument("--no-kill-test", action="store_true",
                    help="skip the kill test of the largest spec's training")
    sp.add_argument("--kill-steps", type=int, default=2,
                    help="the kill test's training steps (checkpointed every step)")
    sp.set_defaults(fn=cmd_study_rehearse)
    sp = st.add_parser("keys", help="every config key as Markdown (config/README.md)")
    sp.set_defaults(fn=cmd_study_keys)
    sp = st.add_parser("dvc", help="dvc.yaml: one DVC stage per study config")
    sp.add_argument("--configs", default="config", help="folder of the study configs")
    sp.set_defaults(fn=cmd_study_dvc)


def _report_commands(sub) -> None:
    """`d2it` subcommands: tables, figures, verdicts, publishing and the benchmark."""
    rep = sub.add_parser("report", help="tables and figures").add_subparsers(dest="what",
                                                                            required=True)
    sp = rep.add_parser("recon",
                        help="stage-1 table: PSNR, rFD and training minutes per fine ratio")
    sp.add_argument("metrics", nargs="+", help="metrics JSON files of `d2it eval recon`")
    sp.add_argument("--out", required=True, help="CSV to write")
    sp.set_defaults(fn=cmd_report_recon)
    sp = _with_config(rep.add_parser("table", help="a study table beside the paper's numbers"))
    sp.add_argument("table", help="e.g. table2")
    sp.add_argument("--out", help="CSV to write (default: results/<study>/<table>.csv)")
    sp.set_defaults(fn=cmd_report_table)
    sp = _with_config(rep.add_parser("verdict", help="one verdict per claim of the paper "
                                    "(results/<study>/verdict.md and .json)"))
    sp.set_defaults(fn=cmd_report_verdict)
    sp = _with_config(rep.add_parser("publish", help="copy a finished study's tables, figures, "
                                    "metric JSON and verdict to results/published/<study>/ "
                                    "(in git; DVC reads it)"))
    sp.add_argument("--to", help="folder of published studies (default: results/published)")
    sp.set_defaults(fn=cmd_report_publish)
    sp = _with_config(rep.add_parser("curve", help="Fig. 5 (fine-ratio sweep) or Fig. 6 "
                                    "(convergence), with its CSV beside"))
    sp.add_argument("figure", choices=["fig5", "fig6"])
    sp.add_argument("--out", help="PNG to write (default: results/<study>/<figure>.png)")
    sp.set_defaults(fn=cmd_report_curve)
    sp = _with_config(rep.add_parser("grain-maps", help="the grain model's maps against the "
                                    "ground truth, per class and per position"))
    sp.add_argument("--out", help="PNG to write (default: results/<study>/grain_maps.png)")
    sp.set_defaults(fn=cmd_report_grain_maps)
    sp = _with_config(rep.add_parser("samples",
                                    help="samples beside their grain maps (Figs. 3 and 4)"))
    sp.add_argument("--title", help="figure title")
    sp.add_argument("--samples", required=True, help="a `d2it sample` .npz")
    sp.add_argument("--out", required=True, help="PNG to write")
    sp.add_argument("--by-class", action="store_true", help="one row per class (Fig. 4)")
    sp.add_argument("--per-row", type=int, default=8, help="samples per row")
    sp.set_defaults(fn=cmd_report_samples)
    sp = _with_config(sub.add_parser("bench", help="training, sampling, DVAE and metric speed of "
                                    "DiT and D²iT on this device (results/<study>/bench.*)"))
    sp.add_argument("--size", default="tiny", help="model size of both kinds (tiny ... XL)")
    sp.add_argument("--batch", type=int, default=32, help="images per step on this device")
    sp.add_argument("--iters", type=int, default=10, help="training steps per timing")
    sp.add_argument("--repeats", type=int, default=5, help="timings; the median is reported")
    sp.add_argument("--no-compiled", dest="compiled", action="store_false",
                    help="skip the compiled training figure where the default runs eager")
    sp.add_argument("--profile", action="store_true",
                    help="add the top operators of one default training step per model")
    sp.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sp.add_argument("--out", help="file stem to write .json and .md to "
                                  "(default: results/<study>/bench)")
    sp.set_defaults(fn=cmd_bench)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="d2it", description="D²iT / DiT reproduction harness")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _model_commands, _study_commands, _report_commands):
        add(sub)
    return p


def _record_usage(ledger: str, argv: list[str], seconds: float, code: int) -> None:
    """One JSON line appended to `ledger` ($D2IT_USAGE, set by `d2it study rehearse`): the
    command, its wall time and its peak resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    line = json.dumps({"argv": argv, "seconds": round(seconds, 2), "exit": code,
                       "peak_rss_mib": round(peak / 1024, 1)})
    with open(ledger, "a", encoding="utf-8") as f:  # one short write: atomic under O_APPEND
        f.write(line + "\n")


def _watch_parent(pid: int, every: float = 2.0) -> None:
    """Stop this job when the Snakemake process that started it is gone (killed with -9, it
    cannot stop its jobs): SIGTERM to ourselves, so a training writes a checkpoint and exits and
    anything else ends, instead of running on unseen."""
    import threading

    def watch():
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                logging.getLogger(__name__).warning("Snakemake (pid %d) is gone; stopping", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive, another user's
                continue

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("D2IT_PARENT_PID"):  # set by the workflow for every job it starts
        _watch_parent(int(os.environ["D2IT_PARENT_PID"]))
    started = time.perf_counter()
    code = 1
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse's errors and a signalled training's exit
        code = e.code if isinstance(e.code, int) else 1
        raise
    finally:
        if os.environ.get("D2IT_USAGE"):
            _record_usage(os.environ["D2IT_USAGE"], argv, time.perf_counter() - started, code)
    return code


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = args.fn(args)
    except D2itError as e:
        print(f"d2it: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C; training catches it itself to checkpoint first
        print("d2it: interrupted", file=sys.stderr)
        return 130
    if result is None:  # the command printed its own output
        return 0
    try:
        if isinstance(result, str):  # text for reading
            print(result)
        elif isinstance(result, list):  # one JSON object per line
            for item in result:
                print(json.dumps(item, default=str, ensure_ascii=False))
        else:
            print(json.dumps(result, indent=1, default=str))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
