"""DDP on the CPU (gloo) and gradient accumulation: the global batch is the spec, so 2 processes
with half the batch each, or 1 process accumulating micro-batches, train what 1 process on the
whole batch trains. Each process reads only its rows of the latent cache."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from d2it import launch
from d2it import study as studies
from d2it.config import digest
from d2it.data.latents import CacheWriter
from d2it.study import dvae_identity

pytestmark = pytest.mark.e2e  # Snakemake, torchrun or SLURM: subprocesses

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = {"steps": 3, "batch_size": 8, "ema": None, "ckpt_every": 3, "log_every": 1}


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory, study):
    path = tmp_path_factory.mktemp("ddp") / "study.yaml"
    path.write_text(yaml.safe_dump({**study, "train": TRAIN}))  # the DVAE trains as the cache's did
    return path


def job(kind, config, cache):
    if kind == "dvae":
        return ["dvae", "--config", str(config), "--fine-ratio", "0.5"]
    return ["model", "--config", str(config), "--spec", kind, "--latents", str(cache)]


def run(args, out, world=1, batch_gpu=None):
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
                if world > 1 else [])
    extra = [] if batch_gpu is None else ["--set", f"{'dvae.' if args[0] == 'dvae' else ''}"
                                                   f"train.batch_gpu={batch_gpu}"]
    proc = subprocess.run([sys.executable, *launcher, "-m", "d2it.cli", "train", *args, *extra,
                           "--out", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a, b, lr, steps):
    """Same losses, and the same weights, except where Adam amplifies rounding: its first step
    moves a weight by lr x sign(gradient), so a gradient at rounding level takes the sign that
    the reduction order gives it (seen: one DVAE weight of 9216 off by 2.9e-6 at lr 1.4e-4).
    Wrong rows or a wrong accumulation move most weights, not one in ten thousand."""
    assert losses(b)[0] == pytest.approx(losses(a)[0], rel=1e-5)  # same rows, noise, timesteps
    assert losses(b) == pytest.approx(losses(a), rel=1e-4)  # and the same updates after them
    wa, wb = (torch.load(out / "final.pt", weights_only=False)["model"] for out in (a, b))
    off = 0
    total = 0
    for key in wa:
        close = torch.isclose(wb[key], wa[key], rtol=1e-4, atol=1e-6)
        off += int((~close).sum())
        total += close.numel()
        assert (wb[key] - wa[key]).abs().max() <= 2 * lr * steps, key
    assert off <= 1e-4 * total, f"{off} of {total} weights differ"


SPLITS = [("dit", 2, 4), ("dit", 1, 2), ("dit", 2, 2), ("d2it", 2, 4), ("d2it", 1, 4),
          ("dvae", 2, 4)]


@pytest.fixture(scope="module")
def reference(ddp_config, latent_cache, tmp_path_factory):
    """One process on the whole batch of 8, per model kind."""
    outs = {}
    for kind in ("dit", "d2it", "dvae"):
        outs[kind] = tmp_path_factory.mktemp(kind) / "one"
        run(job(kind, ddp_config, latent_cache), outs[kind])
    return outs


@pytest.mark.parametrize("kind,world,batch_gpu", SPLITS)
def test_any_split_of_the_global_batch_trains_the_same(kind, world, batch_gpu, ddp_config,
                                                       latent_cache, reference, tmp_path):
    summary = run(job(kind, ddp_config, latent_cache), tmp_path / "split", world, batch_gpu)
    assert summary["world_size"] == world and summary["batch_gpu"] == batch_gpu
    assert summary["accumulation_rounds"] == 8 // (world * batch_gpu)
    resolved = studies.load(ddp_config)
    train = resolved["dvae"]["train"] if kind == "dvae" else resolved["train"]
    assert_same_training(reference[kind], tmp_path / "split", train["lr"], train["steps"])


def test_each_process_holds_only_its_rows_of_the_cache(trained, ddp_config, latent_cache, tmp_path):
    """A 2-process run on a 256 MiB cache holds no more memory than one on a 1 MiB cache, apart
    from the few rows it read: the arrays are memory-mapped, never loaded whole."""
    study, plan, dvae = trained
    rows, side = 32_768, 16
    writer = CacheWriter(tmp_path / "big", {"train": rows, "heldout": 8}, 2, 4, side)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 4096):
        writer.add("train", torch.from_numpy(rng.standard_normal((4096, 2, 4, side, side),
                                                                 dtype=np.float32)),
                   torch.from_numpy(rng.random((4096, 2, side // 2, side // 2)) < 0.5),
                   torch.from_numpy(rng.integers(0, 10, 4096)))
    writer.add("heldout", torch.zeros(8, 2, 4, side, side),
               torch.zeros(8, 2, side // 2, side // 2, dtype=torch.bool),
               torch.zeros(8, dtype=torch.long))
    writer.finish({"num_classes": 10, "dvae_run": str(dvae.folder),
                   "dvae_digest": digest(dvae_identity(study, 0.5, 0))})
    size_mib = sum(p.stat().st_size for p in (tmp_path / "big").iterdir()) / 2**20
    assert size_mib > 250
    small = run(job("dit", ddp_config, latent_cache), tmp_path / "small", world=2)["memory"]
    big = run(job("dit", ddp_config, tmp_path / "big"), tmp_path / "big-run", world=2)["memory"]
    for rank in (0, 1):
        extra = big[rank]["peak_rss_mib"] - small[rank]["peak_rss_mib"]
        # a tenth of its share at most
        assert extra < 0.1 * size_mib / 2, (rank, big[rank], small[rank])


def test_preemption_signal_to_torchrun_checkpoints_and_resumes_to_the_same_weights(
        trained, study, latent_cache, tmp_path):
    """SIGUSR1 (SLURM's pre-emption warning) sent to the torchrun agent alone, mid-run, as the
    workflow launches 2 processes: the agent forwards it, the ranks stop together after a
    checkpoint, and the rerun ends with the weights of an uninterrupted run."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**study, "train": {**TRAIN, "steps": 400,
                                                         "ckpt_every": 1000}}))
    argv = [*shlex.split(launch.command(2)), "train", *job("dit", config, latent_cache)]
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}:{ENV['PATH']}"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*argv, "--out", str(whole)], env=env, check=True, capture_output=True,
                   timeout=600)
    proc = subprocess.Popen([*argv, "--out", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 20) \
            and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run ended before the signal"
    (ckpt,) = (cut / "checkpoints").glob("ckpt-*.pt")
    stopped = int(ckpt.stem.split("-")[1])
    assert 20 <= stopped < 400, stderr[-2000:]
    subprocess.run([*argv, "--out", str(cut)], env=env, check=True, capture_output=True,
                   timeout=600)
    assert losses(cut)[-1] == pytest.approx(losses(whole)[-1], rel=1e-5)
    a, b = (torch.load(out / "final.pt", weights_only=False)["model"] for out in (whole, cut))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
