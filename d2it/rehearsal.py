"""`d2it study rehearse`: a study's own Snakemake DAG, every rule and every job, executed at the
study's model sizes and image geometry in a folder of its own, so that a defect at paper scale
shows here, not hours into a cluster job.

Only these are cut (CUTS names each with its reason):
- the data: a generated stand-in at the study's resolution (class sub-folders, or a flat folder
  for one class), prepared with `d2it data prepare` as a user would;
- counts: training steps and batch, sample counts, sampling steps, bootstrap rounds, to the least
  that runs every code path (a checkpoint, an accumulation round, guidance, a snapshot);
- weights that cannot be downloaded here: stand-ins (d2it/standins.py) of the real files' layout.
Every table, figure and verdict it makes says REHEARSAL (the study's `mark` key). It writes
only in its folder (default rehearsal/<study>), never under the checkout's results/ or runs/.

A kill test follows the DAG: the training of the study's largest spec is killed with SIGKILL after
its first checkpoint and run again, and its final EMA tensors must hash as an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from PIL import Image
from tqdm import tqdm

from d2it import standins
from d2it import study as studies
from d2it.config import set_key
from d2it.data.folder import in_heldout
from d2it.data.synth import render
from d2it.errors import D2itError
from d2it.files import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
D2IT = [sys.executable, "-m", "d2it.cli"]

# (dotted key, value, why): applied to the resolved study; a key a study lacks is skipped
CUTS = [
    ("train.steps", 2, "two steps: the second after a checkpointed, accumulated first"),
    ("train.batch_size", 2, "the global batch of two rows ..."),
    ("train.batch_gpu", 1, "... one per micro-batch: one accumulation round per step"),
    ("train.ckpt_every", 2, "one checkpoint, at the end (the kill test resumes from another)"),
    ("train.keep_ckpts", 0, "disk: a 675M model's checkpoint with AdamW's state is 10.8 GB"),
    ("train.log_every", 1, "every step logged"),
    ("dvae.train.steps", 2, "as train.steps"),
    ("dvae.train.batch_size", 2, "as train.batch_size"),
    ("dvae.train.batch_gpu", 1, "as train.batch_gpu"),
    ("dvae.train.ckpt_every", 2, "as train.ckpt_every"),
    ("dvae.train.keep_ckpts", 0, "as train.keep_ckpts"),
    ("dvae.train.log_every", 1, "as train.log_every"),
    ("sampling.n", 4, "two batches of two samples: FD needs more than one"),
    ("sampling.batch_size", 2, "two batches"),
    ("sampling.steps", 2, "the respaced sampler's first and last step"),
    ("sampling.grain_calibration", 2, "the grain model's calibration runs, on two maps"),
    ("metrics.bootstrap", 2, "FD's bootstrap runs twice (each round a 2048-d matrix root)"),
    ("metrics.classifier.epochs", 1, "the class-score classifier trains once over the data"),
]
CLASSES = 8  # a stand-in's classes at most: the latent caches encode every image at 256 px
PER_CLASS = 2  # training images per class ...
MIN_TRAIN = 8  # ... and 8 at least: a training-split reference (FFHQ's) is scored with
#                precision / recall, whose 3 nearest neighbours need 4 images or more
HELDOUT = 8  # held-out images: reconstructions, ground-truth grain maps, reference statistics
FRACTION = 0.25  # the stand-in's held-out fraction (ImageNet's 1 % of a few dozen is none)


def cut(study: dict) -> tuple[dict, list[dict]]:
    """The resolved study with the rehearsal's cuts (in place) and the list of them."""
    name = study["name"]
    made = []

    def put(key: str, value, why: str) -> None:
        node = study
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(key.split(".")[-1], value) != value:
            made.append({"key": key, "was": node[key.split(".")[-1]], "now": value, "why": why})
            set_key(study, key, value)

    put("mark", "rehearsal", "every table, figure and verdict says REHEARSAL")
    for key, value, why in CUTS:
        put(key, value, why)
    for spec_name, spec in study["specs"].items():  # a spec's own training settings
        for key, value, why in CUTS:
            if key.startswith("train.") and key.split(".")[1] in (spec.get("train") or {}):
                put(f"specs.{spec_name}.{key}", value, why)
    if study["data"]["classes"] > CLASSES:
        put("data.classes", CLASSES,
            f"the stand-in's {CLASSES} classes: each DVAE encodes every image at the study's "
            "resolution (~0.4 TFLOP each); the label table is the only size this changes")
    classes = study["data"]["classes"]
    for fig_name, figure in study["figures"].items():
        if "at_steps" in figure:
            put(f"figures.{fig_name}.at_steps", [1, 2], "a snapshot half-way and one at the end")
        if figure.get("classes"):
            picked = list(range(min(len(figure["classes"]), classes)))
            put(f"figures.{fig_name}.classes", picked, "as many of the stand-in's classes")
            put(f"figures.{fig_name}.per_row", 2, "two samples per class")
            put(f"figures.{fig_name}.n", 2 * len(picked), "two samples per class")
        elif figure.get("n"):
            put(f"figures.{fig_name}.n", 4, "as sampling.n")
    for table_name, table in study["tables"].items():
        for row_name, row in table["rows"].items():
            if row.get("n"):
                put(f"tables.{table_name}.rows.{row_name}.n", 4, "as sampling.n")
    # Where a job reads and writes: the folder's own (relative paths; Snakemake runs in it)
    put("paths.runs", "runs", "the rehearsal's folder")
    put("paths.results", "results", "the rehearsal's folder")
    put("data.manifest", f"data/{name}/manifest.json", "the stand-in, prepared here")
    put("grain.thresholds", f"data/{name}/thresholds.json", "the stand-in's")
    put("metrics.reference_dir", f"data/{name}/reference", "the stand-in's")
    if str(study["metrics"]["reference"]).endswith(".npz"):
        put("metrics.reference", f"data/{name}/{Path(study['metrics']['reference']).name}",
            "an ADM reference batch stand-in")
    if study["tracking"]["uri"]:
        put("tracking.uri", "sqlite:///mlflow.db", "the rehearsal's own store")
    if study["data"]["synth"] is None:
        put("data.num_workers", 0, "a handful of images: worker processes only add start-up")
    return study, made


def standin_images(src: Path, study: dict) -> None:
    """A stand-in image folder at the study's resolution: class sub-folders of JPEGs (ImageNet)
    or a flat folder of PNGs (FFHQ), with HELDOUT of them in `d2it data prepare`'s held-out
    split (the split is by path hash: names are drawn until both quotas are met)."""
    side = study["data"]["resolution"]
    classes = study["data"]["classes"]
    per_class = max(PER_CLASS, -(-MIN_TRAIN // classes))
    train = {c: 0 for c in range(classes)}
    heldout = 0
    index = 0
    tmp = src.with_name(src.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier attempt's images
    tmp.mkdir(parents=True)
    with tqdm(total=classes * per_class + HELDOUT, desc="stand-in images", unit="img") as bar:
        while min(train.values()) < per_class or heldout < HELDOUT:
            label = index % classes
            rel = (f"n{label:08d}/{index:05d}.JPEG" if classes > 1 else f"{index:05d}.png")
            index += 1
            held = in_heldout(rel, FRACTION)
            if (held and heldout >= HELDOUT) or (not held and train[label] >= per_class):
                continue
            image, _, _ = render(0, "train", index, side)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / rel, quality=95)
            heldout += held
            train[label] += not held
            bar.update()
    os.replace(tmp, src)


def standin_weights(folder: Path, study: dict) -> list[dict]:
    """Stand-ins of the weights and reference batch the study reads, at the paths it reads them
    from; returns what was made."""
    made = []
    metrics = study["metrics"]
    weights = folder / "standins"
    weights.mkdir(parents=True, exist_ok=True)
    if metrics["extractor"] == "inception":
        path = weights / "weights-inception-2015-12-05-6726825d.pth"
        if not path.exists():
            standins.inception_weights(path)
        metrics["inception_weights"] = str(path.resolve())
        made.append({"for": "metrics.inception_weights", "file": str(path)})
    if study["dvae"]["perceptual"] == "lpips":
        lpips = weights / "weights-vgg16-lpips.pth"
        vgg = weights / "vgg16-397923af.pth"
        if not (lpips.exists() and vgg.exists()):
            standins.lpips_weights(lpips, vgg)
        metrics["lpips_weights"] = str(lpips.resolve())
        metrics["vgg16_weights"] = str(vgg.resolve())
        made += [{"for": "metrics.lpips_weights", "file": str(lpips)},
                 {"for": "metrics.vgg16_weights", "file": str(vgg)}]
    reference = folder / metrics["reference"]
    if reference.suffix == ".npz":
        if not reference.exists():
            from d2it.data.folder import ImageFolderDataset, load_all
            from d2it.data.manifest import Manifest

            held = ImageFolderDataset(Manifest.load(folder / study["data"]["manifest"]),
                                      "heldout", study["data"]["resolution"])
            images = load_all(held, "reference batch")[0].permute(0, 2, 3, 1).numpy()
            standins.adm_reference(reference, images)
        made.append({"for": "metrics.reference", "file": str(reference)})
    return made


def _snakemake(folder: Path, config: Path, cores: int, targets: list[str]) -> dict:
    """Snakemake over the study's DAG in `folder`; its output streams to the console and to
    snakemake.log. Returns the job counts per rule it planned and its wall time."""
    command = [str(Path(sys.executable).with_name("snakemake")), "--snakefile",
               str(REPO / "Snakefile"), "--directory", str(folder), "--configfile", str(config),
               "--cores", str(cores), *targets]
    # unbuffered: Snakemake's progress reaches the console as it happens, not in 8 kB blocks
    env = {**os.environ, "D2IT_USAGE": str(folder / "usage.jsonl"), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc, open(folder / "snakemake.log", "a") as f:
        for line in proc.stdout:
            f.write(line)
            lines.append(line.rstrip("\n"))
            print(line, end="", file=sys.stderr)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise D2itError(f"rehearsal: Snakemake failed (exit {proc.returncode}); its log is "
                        f"{folder / 'snakemake.log'}, each job's under {folder / 'logs'}")
    return {"jobs": job_stats(lines), "seconds": round(seconds, 1), "command": command}


def job_stats(lines: list[str]) -> dict[str, int]:
    """The job counts per rule of Snakemake's "Job stats" table (the last one printed)."""
    found = {}
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            found = {}
            for row in lines[i + 1:]:
                parts = row.split()
                if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                    found[parts[0]] = int(parts[1])
                elif parts and parts[0] == "total":
                    break
    return found


RULES = {("data", "synth"): "synth_data", ("grain", "thresholds"): "grain_thresholds",
         ("train", "dvae"): "train_dvae", ("eval", "recon"): "eval_recon",
         ("encode",): "encode_latents", ("train", "model"): "train_model", ("sample",): "sample",
         ("metrics",): "sample_metrics", ("report", "recon"): "dvae_table",
         ("report", "table"): "paper_table", ("report", "curve"): "curve_figure",
         ("report", "grain-maps"): "grain_maps_figure", ("report", "verdict"): "verdict",
         ("report", "samples"): "samples_figure", ("data", "prepare"): "(stand-in) data prepare"}


def usage_by_rule(ledger: Path) -> dict[str, dict]:
    """Per rule: commands run, their seconds in all and the peak resident memory of any."""
    found = {}
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    for entry in map(json.loads, lines):
        argv = entry["argv"]
        rule = RULES.get(tuple(argv[:2])) or RULES.get(tuple(argv[:1])) or " ".join(argv[:2])
        row = found.setdefault(rule, {"commands": 0, "seconds": 0.0, "peak_rss_mib": 0.0,
                                      "failed": 0})
        row["commands"] += 1
        row["seconds"] = round(row["seconds"] + entry["seconds"], 1)
        row["peak_rss_mib"] = max(row["peak_rss_mib"], entry["peak_rss_mib"])
        row["failed"] += entry["exit"] != 0
    return found


def ema_digest(final: Path) -> str:
    """sha256 over a final.pt's EMA tensors (names and bytes, in name order)."""
    ema = torch.load(final, map_location="cpu", weights_only=False)["ema"]
    h = hashlib.sha256()
    for name in sorted(ema):
        h.update(name.encode())
        h.update(ema[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def kill_test(folder: Path, config: Path, spec: str, steps: int) -> dict:
    """Train `spec` (seed 0) for `steps` steps, checkpointing each, twice: once straight, once
    killed with SIGKILL as soon as its first checkpoint is on disk and then run again. Both
    final.pt's EMA tensors must hash alike. The folders are removed afterwards (disk)."""
    base = folder / "killtest"
    sets = ["--set", f"train.steps={steps}", "--set", "train.ckpt_every=1"]
    command = [*D2IT, "train", "model", "--config", str(config), "--spec", spec, "--seed", "0",
               *sets]
    ledger = base / "usage.jsonl"  # its own: the rules' figures stay the workflow's
    env = {**os.environ, "D2IT_USAGE": str(ledger)}
    runs = {name: base / name for name in ("straight", "killed")}
    for out in runs.values():
        shutil.rmtree(out, ignore_errors=True)
    log_path = base / "killtest.log"
    base.mkdir(parents=True, exist_ok=True)
    ledger.unlink(missing_ok=True)
    with open(log_path, "w") as f:  # in the folder: the study's paths are relative to it
        subprocess.run([*command, "--out", str(runs["straight"])], check=True, env=env,
                       cwd=folder, stdout=f, stderr=subprocess.STDOUT)
    digests = {"straight": ema_digest(runs["straight"] / "final.pt")}
    shutil.rmtree(runs["straight"])  # disk: one XL run's files at a time

    # Killed after its first checkpoint, then the same command again
    with open(log_path, "a") as f:
        proc = subprocess.Popen([*command, "--out", str(runs["killed"])], env=env, cwd=folder,
                                stdout=f, stderr=subprocess.STDOUT)
    checkpoints = runs["killed"] / "checkpoints"
    while proc.poll() is None and not any(checkpoints.glob("ckpt-*.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = sorted(p.name for p in checkpoints.glob("ckpt-*.pt"))
    if (runs["killed"] / "final.pt").exists() or not killed_at:
        raise D2itError(f"kill test: the run ended before it could be killed after a checkpoint "
                        f"({log_path}); give it more steps")
    with open(log_path, "a") as f:
        subprocess.run([*command, "--out", str(runs["killed"])], check=True, env=env,
                       cwd=folder, stdout=f, stderr=subprocess.STDOUT)
    resumed = "resuming from step" in log_path.read_text()
    digests["killed"] = ema_digest(runs["killed"] / "final.pt")
    shutil.rmtree(runs["killed"])
    finished = [json.loads(line) for line in ledger.read_text().splitlines()]  # not the killed
    return {"spec": spec, "steps": steps, "killed_with": killed_at[-1], "resumed": resumed,
            "ema_sha256": digests, "equal": len(set(digests.values())) == 1,
            "seconds": {"straight": finished[0]["seconds"], "resumed": finished[1]["seconds"]},
            "peak_rss_mib": {"straight": finished[0]["peak_rss_mib"],
                             "resumed": finished[1]["peak_rss_mib"]}}


def largest_spec(plan) -> str:
    """The trained spec with the most parameters (the kill test's)."""
    specs = {run.spec for run in plan.runs.values() if run.stage in ("dit", "d2it")}
    return max(sorted(specs), key=lambda s: studies.parameters(plan.study, s))


def rehearse(config: str | Path, overrides: list[str] = (), folder: Path | None = None,
             cores: int = 2, targets: tuple[str, ...] = (), kill: bool = True,
             kill_steps: int = 2) -> dict:
    """Rehearse the study of `config` (with `key=value` overrides) in `folder` (default
    rehearsal/<name>); writes rehearsal.json and rehearsal.md there and returns the summary."""
    study = studies.load(config, overrides)
    folder = Path(folder or Path("rehearsal") / study["name"]).resolve()
    for kept in ("results", "runs"):
        if folder.is_relative_to(Path(kept).resolve()):
            raise D2itError(f"{folder}: a rehearsal never writes under {kept}/; choose a folder "
                            "outside it")
    folder.mkdir(parents=True, exist_ok=True)
    study, cuts = cut(study)

    # Data and weights: stand-ins, prepared as a user would
    if study["data"]["synth"] is None:
        manifest = folder / study["data"]["manifest"]
        src = folder / "standins" / "images"
        if not src.exists():
            standin_images(src, study)
        if not manifest.exists():
            subprocess.run([*D2IT, "data", "prepare", "--src", str(src), "--out", str(manifest),
                            "--heldout-fraction", str(FRACTION)], check=True, cwd=folder,
                           env={**os.environ, "D2IT_USAGE": str(folder / "usage.jsonl")})
    weights = standin_weights(folder, study)
    config_file = folder / "study.yaml"
    write_text_atomic(config_file, yaml.safe_dump(study, sort_keys=False))

    # The DAG, then the kill test
    ran = _snakemake(folder, config_file, cores, list(targets))
    plan = studies.plan(studies.load(config_file))
    try:
        killed = kill_test(folder, config_file, largest_spec(plan), kill_steps) if kill else None
    except subprocess.CalledProcessError as e:
        raise D2itError(f"kill test: `d2it {' '.join(e.cmd[3:6])}` failed (exit {e.returncode}); "
                        f"its log is {folder / 'killtest' / 'killtest.log'}") from None
    summary = {"study": study["name"], "config": str(config), "folder": str(folder),
               "targets": list(targets) or ["all"], "cuts": cuts, "standins": weights,
               "jobs": ran["jobs"], "snakemake_seconds": ran["seconds"],
               "usage": usage_by_rule(folder / "usage.jsonl"), "kill_test": killed}
    write_json_atomic(folder / "rehearsal.json", summary)
    write_text_atomic(folder / "rehearsal.md", markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"# REHEARSAL of study `{summary['study']}` ({summary['config']})", "",
             f"Targets: {' '.join(summary['targets'])}. Snakemake's wall time: "
             f"{summary['snakemake_seconds'] / 60:.1f} min.", "",
             "| rule | jobs | commands | seconds | peak RSS (MiB) |", "|---|---|---|---|---|"]
    rules = list(summary["jobs"]) + [r for r in summary["usage"] if r not in summary["jobs"]]
    for rule in rules:
        use = summary["usage"].get(rule, {})
        lines.append(f"| {rule} | {summary['jobs'].get(rule, '')} | {use.get('commands', '')} | "
                     f"{use.get('seconds', '')} | {use.get('peak_rss_mib', '')} |")
    lines += ["", "## Cuts", ""]
    lines += [f"- `{c['key']}`: {c['was']} → {c['now']} ({c['why']})" for c in summary["cuts"]]
    lines += ["", "## Stand-ins", ""]
    lines += [f"- `{s['for']}`: {s['file']}" for s in summary["standins"]]
    if summary["kill_test"]:
        k = summary["kill_test"]
        lines += ["", "## Kill test", "",
                  f"`{k['spec']}`, {k['steps']} steps, killed (SIGKILL) after {k['killed_with']}, "
                  f"resumed: {k['resumed']}; EMA sha256 straight {k['ema_sha256']['straight'][:16]}"
                  f", killed and resumed {k['ema_sha256']['killed'][:16]}: "
                  f"**{'equal' if k['equal'] else 'DIFFERENT'}**. Straight run "
                  f"{k['seconds']['straight']:.0f} s at {k['peak_rss_mib']['straight']:.0f} MiB "
                  f"peak RSS; the resumed run {k['seconds']['resumed']:.0f} s at "
                  f"{k['peak_rss_mib']['resumed']:.0f} MiB."]
    return "\n".join(lines) + "\n"
