"""`d2it` command line: each subcommand parses its arguments and calls the library."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from d2it.errors import D2itError


def _config(args) -> dict:
    from d2it import config

    return config.load(args.config, args.set)


def cmd_data_synth(args) -> dict:
    from d2it.data.synth import synthesize

    cfg = _config(args)
    out = Path(args.out) if args.out else Path(cfg["data"]["manifest"]).parent
    synth = cfg["data"]["synth"]
    manifest = synthesize(out, seed=synth["seed"], resolution=cfg["data"]["resolution"],
                          n_train=synth["n_train"], n_heldout=synth["n_heldout"])
    return {"manifest": str(out / "manifest.json"), "files": len(manifest.files)}


def cmd_data_prepare(args) -> dict:
    from d2it.data.folder import prepare

    manifest = prepare(Path(args.src), Path(args.out), args.heldout_fraction)
    return {"manifest": args.out, "files": len(manifest.files), "classes": len(manifest.classes)}


def cmd_grain_thresholds(args) -> dict:
    import torch

    from d2it.data.folder import ImageFolderDataset, loader_workers
    from d2it.data.manifest import Manifest, write_json_atomic
    from d2it.grain import compute_thresholds

    cfg = _config(args)
    data, grain = cfg["data"], cfg["grain"]
    manifest = Manifest.load(data["manifest"])
    dataset = ImageFolderDataset(manifest, "train", data["resolution"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=grain["batch_size"],
                                         num_workers=loader_workers(data["num_workers"]))
    table = compute_thresholds(loader, grain["region"], grain["bins"], grain["sigma"], manifest.digest())
    out = Path(args.out or grain["thresholds"])
    write_json_atomic(out, table)
    return {"thresholds": str(out), "regions": table["n_regions"],
            "median": table["values"][len(table["values"]) // 2]}


def cmd_train_dvae(args) -> dict:
    from d2it.stage1 import train_dvae

    return train_dvae(_config(args), Path(args.out))


def cmd_train_latent(args) -> dict:
    from d2it.stage2 import train_latent_model

    return train_latent_model(args.model, _config(args), Path(args.latents), Path(args.out))


def cmd_sample(args) -> dict:
    from d2it.sample import sample

    return sample(_config(args), Path(args.run_dir), Path(args.latents), Path(args.out),
                  Path(args.grain_run) if args.grain_run else None)


def cmd_metrics(args) -> dict:
    from d2it.metrics.job import evaluate_samples

    return evaluate_samples(_config(args), [Path(p) for p in args.samples], Path(args.out))


def cmd_eval_recon(args) -> dict:
    from d2it.stage1 import evaluate_recon

    return evaluate_recon(_config(args), Path(args.run_dir), Path(args.out))


def cmd_encode(args) -> dict:
    from d2it.stage1 import encode_latents

    return encode_latents(_config(args), Path(args.run_dir), Path(args.out))


def _write_table(table, out: str) -> dict:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    return {"table": out, "rows": table.to_dict(orient="records")}


def cmd_report_recon(args) -> dict:
    from d2it.report.recon import recon_table

    return _write_table(recon_table([Path(p) for p in args.metrics]), args.out)


def cmd_report_table(args) -> dict:
    from d2it.report.tables import paper_table

    return _write_table(paper_table(args.table, {Path(p).stem: Path(p) for p in args.metrics}), args.out)


def cmd_report_samples(args) -> dict:
    from d2it.report.figures import samples_figure

    return samples_figure(Path(args.samples), Path(args.out), args.by_class)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2it", description="D²iT / DiT reproduction harness")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", default="config/config.yaml", help="study config (YAML)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. grain.fine_ratio=0.25 (repeatable)")
        return sp

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    sp = with_config(data.add_parser("synth", help="write the embedded dataset"))
    sp.add_argument("--out", help="dataset folder (default: the folder of data.manifest)")
    sp.set_defaults(fn=cmd_data_synth)
    sp = data.add_parser("prepare", help="manifest for your own image folder (FFHQ flat / ImageNet classes)")
    sp.add_argument("--src", required=True, help="image folder")
    sp.add_argument("--out", required=True, help="manifest file to write")
    sp.add_argument("--heldout-fraction", type=float, default=0.1, help="share of files held out (by path hash)")
    sp.set_defaults(fn=cmd_data_prepare)

    grain = sub.add_parser("grain", help="grain maps").add_subparsers(dest="action", required=True)
    sp = with_config(grain.add_parser("thresholds", help="entropy percentile table of the training split"))
    sp.add_argument("--out", help="JSON file (default: grain.thresholds)")
    sp.set_defaults(fn=cmd_grain_thresholds)

    tr = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    sp = with_config(tr.add_parser("dvae", help="stage 1: the dynamic VAE"))
    sp.add_argument("--out", required=True, help="run folder (resumes if it holds this run)")
    sp.set_defaults(fn=cmd_train_dvae)

    for kind, text in (("dit", "the DiT baseline"), ("d2it", "D²iT's Dynamic Content Transformer"),
                       ("grain", "the Dynamic Grain Transformer")):
        sp = with_config(tr.add_parser(kind, help=f"stage 2: {text}, on a latent cache"))
        sp.add_argument("--latents", required=True, help="cache of `d2it encode`")
        sp.add_argument("--out", required=True, help="run folder (resumes if it holds this run)")
        sp.set_defaults(fn=cmd_train_latent)

    sp = with_config(sub.add_parser("sample", help="sample a stage-2 run to .npz (ADM format) + PNG grid"))
    sp.add_argument("--run-dir", required=True, help="dit or d2it run folder")
    sp.add_argument("--latents", required=True, help="the latent cache it was trained on")
    sp.add_argument("--grain-run", help="grain model run (sample.grain_source = predicted)")
    sp.add_argument("--out", required=True, help=".npz to write (the grid goes beside it as .png)")
    sp.set_defaults(fn=cmd_sample)

    sp = with_config(sub.add_parser("metrics", help="FD / IS / KID / precision / recall of a sample file"))
    sp.add_argument("--samples", required=True, nargs="+",
                    help=".npz with arr_0 (uint8 N x H x W x 3) or image folder; several (e.g. seeds) add mean and std")
    sp.add_argument("--out", required=True, help="metrics JSON")
    sp.set_defaults(fn=cmd_metrics)

    ev = sub.add_parser("eval", help="evaluate").add_subparsers(dest="what", required=True)
    sp = with_config(ev.add_parser("recon", help="PSNR and rFD of a DVAE on the held-out split"))
    sp.add_argument("--run-dir", required=True, help="DVAE run folder")
    sp.add_argument("--out", required=True, help="metrics JSON")
    sp.set_defaults(fn=cmd_eval_recon)

    sp = with_config(sub.add_parser("encode", help="cache DVAE latents, grain maps and labels for stage 2"))
    sp.add_argument("--run-dir", required=True, help="DVAE run folder")
    sp.add_argument("--out", required=True, help="cache file (.pt)")
    sp.set_defaults(fn=cmd_encode)

    rep = sub.add_parser("report", help="tables and figures").add_subparsers(dest="what", required=True)
    sp = rep.add_parser("recon", help="stage-1 table: PSNR, rFD and training minutes per fine ratio")
    sp.add_argument("metrics", nargs="+", help="metrics JSON files of `d2it eval recon`")
    sp.add_argument("--out", required=True, help="CSV to write")
    sp.set_defaults(fn=cmd_report_recon)
    sp = rep.add_parser("table", help="a paper table (d2it/report/paper.yaml) with our numbers beside the paper's")
    sp.add_argument("table", help="e.g. table2")
    sp.add_argument("metrics", nargs="+", help="`d2it metrics` JSON files, named <sample set>.json")
    sp.add_argument("--out", required=True, help="CSV to write")
    sp.set_defaults(fn=cmd_report_table)
    sp = rep.add_parser("samples", help="samples beside their grain maps (red fine, blue coarse): Figs. 3 and 4")
    sp.add_argument("--samples", required=True, help="a `d2it sample` .npz")
    sp.add_argument("--out", required=True, help="PNG to write")
    sp.add_argument("--by-class", action="store_true", help="one row per class (Fig. 4)")
    sp.set_defaults(fn=cmd_report_samples)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = args.fn(args)
    except D2itError as e:
        print(f"d2it: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
