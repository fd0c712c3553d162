"""Learnability sweep: does a study's tiny model learn its data, and under which settings best?

Each candidate of a sweep file (default `benchmarks/learnability.yaml`) is the study with the
file's `start` keys and then its own (`set`) changed (dotted key -> value, as `--set` takes
them). For each candidate and each of its specs (`dit`, `d2it`) the sweep runs the study's own
jobs through the `d2it` CLI: data, thresholds,
DVAE (with its reconstructions' class score, the decode ceiling), latents, the grain model for
D²iT, training seed 0, one sample set of `sampling.n` samples and its metrics. It prints one row
per (candidate, spec): the class score with its 95 % interval beside both ceilings, fd_effnet,
training steps and minutes, and the job-minutes of the whole chain; and writes them with the sample
grids under results/<study>/learnability/.

    python benchmarks/learnability.py [--only narrow,base] [--jobs 2] [--config config/cpu.yaml]

Runs live under runs/learn/ (the study name `learn`), the generated data under data/learn/<look>/,
both named by what made them: a candidate that shares a dataset or a run with another reuses it,
and a repeated sweep only runs what is missing. With --jobs 2 two chains run side by side, one
thread each (the CPU study's setting); a run shared by both is made once (a file lock).
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

from d2it import study as study_mod
from d2it.config import digest
from d2it.errors import D2itError
from d2it.files import read_json, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
STUDY = "learn"
JOB_MINUTES = ROOT / "runs" / STUDY / "job-minutes.json"


def derived_study(config: Path, changes: dict, specs: list[str]) -> dict:
    """The study of one candidate: the config with its changes, its data under data/learn/<look>/,
    and one table row per spec (seed 0) instead of the study's tables and figures."""
    raw = yaml.safe_load(config.read_text())
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    raw["tables"] = {"table2": {"seeds": [0], "rows": {spec: {"spec": spec} for spec in specs}}}
    raw["figures"] = {}  # (fig6's steps may be past a candidate's shorter run)
    resolved = study_mod.resolve(copy.deepcopy(raw), f"{config} with {changes}")
    look = digest({"synth": resolved["data"]["synth"],
                   "resolution": resolved["data"]["resolution"]})[:10]
    folder = f"data/{STUDY}/{look}"
    raw["name"] = STUDY
    raw["data"]["manifest"] = f"{folder}/manifest.json"
    raw["grain"]["thresholds"] = f"{folder}/thresholds.json"
    raw["metrics"]["reference_dir"] = f"{folder}/reference"
    return raw


class Chain:
    """The jobs of one candidate, run through the CLI, each skipped when its output exists. Each
    job's minutes are kept by output (runs/learn/job-minutes.json), so a chain that reuses a run
    made by another candidate still counts what it cost."""

    def __init__(self, name: str, config: Path, threads: int, log: Path):
        self.name, self.config, self.log = name, config, log
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.outputs: list[str] = []

    def run(self, *args: str, output: Path) -> None:
        self.outputs.append(str(output))
        if output.exists():
            return
        command = [sys.executable, "-m", "d2it.cli", *args, "--config", str(self.config)]
        start = time.perf_counter()
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(command, cwd=ROOT, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: `{' '.join(args)}` failed ({done.returncode}); "
                               f"see {self.log}")
        with locked("job-minutes"):
            times = read_json(JOB_MINUTES, "job minutes") if JOB_MINUTES.exists() else {}
            times[str(output)] = (time.perf_counter() - start) / 60
            write_json_atomic(JOB_MINUTES, times)

    @property
    def minutes(self) -> float:
        """Job-minutes of every job this chain needed (NaN if one was made outside the sweep)."""
        times = read_json(JOB_MINUTES, "job minutes") if JOB_MINUTES.exists() else {}
        return sum(times.get(o, float("nan")) for o in dict.fromkeys(self.outputs))


@contextmanager
def locked(key: str):
    """Hold runs/learn/locks/<key>.lock: one chain makes a shared dataset or run, the other waits
    and then finds it made."""
    path = ROOT / "runs" / STUDY / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_candidate(name: str, candidate: dict, start: dict, base: Path, out: Path,
                  threads: int) -> list[dict]:
    specs = candidate.get("specs", ["dit"])
    raw = derived_study(base, {**start, **candidate.get("set", {})}, specs)
    config = ROOT / "runs" / STUDY / "configs" / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    log = ROOT / "runs" / STUDY / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    chain = Chain(name, config, threads, log)
    study = study_mod.load(config)
    plan = study_mod.plan(study)
    manifest = Path(study["data"]["manifest"])

    # Data and thresholds (shared by every candidate of the same look)
    with locked(f"data-{manifest.parent.name}"):
        chain.run("data", "synth", output=manifest)
        chain.run("grain", "thresholds", output=Path(study["grain"]["thresholds"]))

    rows = []
    for row in plan.table_rows("table2"):
        sample_set = row.sample_sets[0]
        run = sample_set.run
        dvae = plan.dvae_of(run)
        recon = ROOT / "runs" / STUDY / "recon" / f"{dvae.folder.name}.json"
        ratio = str(run.fine_ratio)

        # Stage 1: the DVAE of the spec's fine ratio, its decode ceiling, its latents
        with locked(dvae.folder.name):
            chain.run("train", "dvae", "--fine-ratio", ratio, output=dvae.folder / "final.pt")
            chain.run("eval", "recon", "--fine-ratio", ratio, "--out", str(recon), output=recon)
            chain.run("encode", "--fine-ratio", ratio,
                      output=dvae.folder / "latents" / "meta.json")

        # Stage 2: the grain model (D²iT), the model, its samples and their metrics
        if sample_set.grain_run is not None:
            grain = sample_set.grain_run
            with locked(grain.folder.name):
                chain.run("train", "model", "--spec", grain.spec, "--fine-ratio", ratio,
                          output=grain.folder / "final.pt")
        with locked(run.folder.name):
            chain.run("train", "model", "--spec", row.spec, output=run.folder / "final.pt")
        grid = ROOT / "runs" / STUDY / "grids" / f"{sample_set.name}.png"
        metrics = ROOT / "runs" / STUDY / "metrics" / f"{sample_set.name}.json"
        with locked(sample_set.name):
            chain.run("sample", "--sample-set", sample_set.name, "--grid", str(grid),
                      output=sample_set.npz)
            chain.run("metrics", "--sample-set", sample_set.name, "--out", str(metrics),
                      output=metrics)
        shutil.copyfile(grid, out / f"{name}-{row.spec}.png")
        rows.append(result_row(name, candidate, row.spec, run, metrics, recon, chain))
    return rows


def result_row(name, candidate, spec, run, metrics, recon, chain) -> dict:
    metrics = read_json(metrics, "metrics")
    decoded = read_json(recon, "reconstruction metrics")
    summary = read_json(run.folder / "summary.json", "run summary")
    fd_key = next(k for k in metrics if k.startswith("fd_") and not k.endswith("ci95"))
    low, high = metrics["class_acc_ci95"]
    return {"candidate": name, "spec": spec, "note": candidate.get("note", ""),
            "class_acc": metrics["class_acc"], "class_acc_low": low, "class_acc_high": high,
            "ceiling_real": decoded.get("class_acc_ceiling"),
            "ceiling_decoded": decoded.get("class_acc_decoded"),
            "fd_key": fd_key, "fd": metrics[fd_key], "psnr": decoded["psnr"],
            "steps": summary["steps"], "train_min": summary["minutes"],
            "chain_min": chain.minutes, "run": run.key}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(ROOT / "benchmarks" / "learnability.yaml"))
    parser.add_argument("--config", default=str(ROOT / "config" / "cpu.yaml"))
    parser.add_argument("--only", help="comma-separated candidate names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="chains side by side")
    args = parser.parse_args(argv)

    sweep = yaml.safe_load(Path(args.sweep).read_text())
    candidates = sweep["candidates"]
    start = sweep.get("start", {})
    names = args.only.split(",") if args.only else list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        sys.exit(f"{args.sweep}: no candidate {', '.join(unknown)} "
                 f"(candidates: {', '.join(candidates)})")
    base = Path(args.config)
    study = yaml.safe_load(base.read_text())["name"]
    out = ROOT / "results" / study / "learnability"
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else os.cpu_count()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {n: pool.submit(run_candidate, n, candidates[n], start, base, out, threads)
                   for n in names}
        rows, failed = [], []
        for n, future in futures.items():
            try:
                rows += future.result()
            except (RuntimeError, D2itError) as e:  # a failed job, a candidate the schema refuses
                failed.append(f"{n}: {e}")

    # Merge with the rows of earlier sweeps; this sweep's replace theirs
    table = out / "learnability.csv"
    new = pd.DataFrame(rows)
    if table.exists() and len(new):
        old = pd.read_csv(table)
        keep = ~old.set_index(["candidate", "spec"]).index.isin(
            new.set_index(["candidate", "spec"]).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    elif table.exists():
        new = pd.read_csv(table)
    if len(new):
        new["per_chain_min"] = new["class_acc"] / new["chain_min"].clip(lower=1e-9)
        new.to_csv(table, index=False, float_format="%.4g")
        (out / "learnability.md").write_text(markdown(new))
        print(markdown(new))
    write_json_atomic(out / "failed.json", failed) if failed else None
    for message in failed:
        print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1 if failed else 0)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| candidate | spec | class score [95 % CI] | ceiling real / decoded | FD | PSNR "
             "| steps | train min | chain job-min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.candidate} | {r.spec} | {r.class_acc:.3f} [{r.class_acc_low:.3f}, "
                     f"{r.class_acc_high:.3f}] | {r.ceiling_real:.3f} / {r.ceiling_decoded:.3f} "
                     f"| {r.fd_key} {r.fd:.1f} | {r.psnr:.1f} | {r.steps} | {r.train_min:.1f} "
                     f"| {r.chain_min:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
