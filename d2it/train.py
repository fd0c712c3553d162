"""The one training loop (EDM2-style): every model of the harness trains through `train`.

A task supplies its modules, a dataset and, per step, one loss per optimiser phase (one phase for
diffusion models; generator then discriminator for a DVAE with a GAN). The loop owns optimisers,
EMA, deterministic data order, atomic checkpoints, resume, signals, NaN stops and logging, so a
killed run re-started with the same command continues from its newest checkpoint and ends with the
same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from d2it.config import digest
from d2it.data.manifest import write_json_atomic
from d2it.errors import D2itError
from d2it.tracking import Tracker, git_commit

log = logging.getLogger(__name__)
CKPT_GLOB = "ckpt-*.pt"


class Task(Protocol):
    name: str
    modules: dict[str, torch.nn.Module]  # all saved; modules["model"] is the one EMA'd and exported
    phases: dict[str, torch.nn.Module]  # one optimiser per phase over that module's parameters
    dataset: torch.utils.data.Dataset

    def to(self, device: torch.device) -> None:
        """Move every module the task uses (trained or frozen) to the device."""

    def distribute(self, wrap) -> None:
        """Route forward passes through wrap(module) (DistributedDataParallel under torchrun)."""

    def losses(self, batch, step: int, shard: "Shard") -> Iterator[tuple[str, torch.Tensor, dict[str, float]]]:
        """Yield (phase, loss, logged values) in order; the loop steps each phase before resuming.
        Draw randomness through `shard`, so samples do not depend on the number of processes."""


class EpochBatches(torch.utils.data.Sampler):
    """Batch indices for steps start..total-1: epoch e is a permutation seeded by (seed, e), so the
    batch of any step is known without replaying the ones before it. Rank r of `world` processes
    gets rows r, r + world, ... of each global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise D2itError(f"dataset has {n} items, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.total):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            yield perm[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world].tolist()


def seed_all(seed: int) -> None:
    """Seed every generator a job draws from (torch seeds itself randomly per process otherwise)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def claim_run_dir(out: Path, run_config: dict, write: bool = True) -> None:
    """Record the run's config in out/run.json; refuse a folder that holds a different run."""
    record = out / "run.json"
    if record.exists():
        old = json.loads(record.read_text())
        if old["digest"] != digest(run_config):
            changes = "; ".join(_diff(old["config"], run_config)[:5])
            raise D2itError(f"{out} holds a run of a different config ({changes}): choose another --out "
                            "or delete the folder")
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, {"digest": digest(run_config), "config": run_config})


@dataclass
class Checkpoints:
    folder: Path
    keep: int

    def newest(self) -> dict | None:
        for path in sorted(self.folder.glob(CKPT_GLOB), reverse=True):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001 - a damaged file: fall back to the one before
                log.warning("skipping unreadable checkpoint %s (%s)", path, e)
        return None

    def save(self, state: dict, step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{step:09d}.pt"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in sorted(self.folder.glob(CKPT_GLOB))[:-self.keep]:
            old.unlink()
        return path


@dataclass
class _Signals:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) ask for a checkpoint, then exit."""
    received: int | None = None
    _old: dict = field(default_factory=dict)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class Shard:
    """This process's rows of the global batch: row j of the global batch lives on rank j % world.
    Random draws are made for the whole global batch on the CPU (every rank holds the same RNG
    state) and sliced, so a sample's randomness does not depend on the number of processes."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.rank::self.world].to(self.device)

    def rand(self, n: int, *shape) -> torch.Tensor:
        return self._local(torch.rand(n * self.world, *shape))

    def randn(self, n: int, *shape) -> torch.Tensor:
        return self._local(torch.randn(n * self.world, *shape))

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._local(torch.randint(high, (n * self.world,)))


class Distributed:
    """torchrun's process group (NCCL on GPUs, gloo on CPUs), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as DiT's scripts
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        self.main = self.rank == 0

    def shard(self) -> Shard:
        return Shard(self.rank, self.world, self.device)

    def wrap(self, module: torch.nn.Module, find_unused: bool = False) -> torch.nn.Module:
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged values over processes (each holds the mean of its rows)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on GPUs (the CPU study stays in fp32, as exact resume is tested there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def train(task: Task, cfg: dict, out: Path, run_config: dict, tracking: dict, seed: int, num_workers: int = 0) -> dict:
    """Train to cfg["steps"] (resuming from out/checkpoints); returns the summary also written to
    out/summary.json. `run_config` identifies the run: a folder holding another one is refused.
    Under torchrun every process runs this; rank 0 writes checkpoints, logs and the final weights."""
    out, dist = Path(out), Distributed()
    if cfg["batch_size"] % dist.world:
        raise D2itError(f"batch_size {cfg['batch_size']} is not divisible by the {dist.world} processes")
    claim_run_dir(out, run_config, write=dist.main)
    dist.barrier()
    ckpts = Checkpoints(out / "checkpoints", cfg["keep_ckpts"])
    if dist.main:
        for stale in ckpts.folder.glob("*.tmp"):
            stale.unlink()
    task.to(dist.device)
    model = task.modules["model"]
    optimisers = {name: torch.optim.AdamW(module.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                          weight_decay=cfg["weight_decay"])
                  for name, module in task.phases.items()}
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
           if cfg["ema"] is not None else None)

    seed_all(seed + 1)  # distinct from the model-init seed; restored from the checkpoint on resume
    step, elapsed = 0, 0.0
    state = ckpts.newest()
    if state is not None:
        for name, module in task.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in optimisers.items():
            opt.load_state_dict(state["optimisers"][name])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        step, elapsed = state["step"], state["elapsed"]
        log.info("%s: resuming from step %d", out, step)
    task.distribute(dist.wrap)

    def checkpoint_state() -> dict:
        return {"step": step, "elapsed": elapsed, "rng": _rng_state(),
                "modules": {n: m.state_dict() for n, m in task.modules.items()},
                "optimisers": {n: o.state_dict() for n, o in optimisers.items()},
                "ema": ema.state_dict() if ema is not None else None}

    tracker = Tracker(out, tracking["uri"] if dist.main else None, tracking["experiment"], f"{task.name}:{out.name}",
                      params=run_config, tags={"d2it.task": task.name, "d2it.config_digest": digest(run_config),
                                               "d2it.git_commit": git_commit(), "d2it.out": str(out.resolve()),
                                               "d2it.world_size": str(dist.world)},
                      resume_step=step, write=dist.main)
    batches = EpochBatches(len(task.dataset), cfg["batch_size"], seed, step, cfg["steps"], dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=batches, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed))  # keeps global RNG untouched
    shard, sums, count, status = dist.shard(), {}, 0, "FAILED"
    for module in task.modules.values():
        module.train()
    try:
        with _Signals() as signals, tqdm(total=cfg["steps"], initial=step, desc=f"train {task.name}", unit="step",
                                         dynamic_ncols=True, disable=not dist.main) as bar:
            start = time.perf_counter() - elapsed
            for batch in loader:
                batch = [b.to(dist.device) for b in batch]
                phases = task.losses(batch, step, shard)
                while True:
                    with autocast(dist.device, cfg["bf16"]):
                        item = next(phases, None)
                    if item is None:
                        break
                    phase, loss, logged = item
                    if not torch.isfinite(loss):
                        raise D2itError(f"{out}: non-finite {phase} loss ({loss.item()}) at step {step}; stopped, "
                                        f"the last good checkpoint stays in {ckpts.folder}")
                    optimisers[phase].zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg["grad_clip"]:
                        torch.nn.utils.clip_grad_norm_(task.phases[phase].parameters(), cfg["grad_clip"])
                    optimisers[phase].step()
                    for k, v in logged.items():
                        sums[k] = sums.get(k, 0.0) + v
                if ema is not None:
                    ema.update_parameters(model)
                step, count = step + 1, count + 1
                elapsed = time.perf_counter() - start
                bar.update()
                if step % cfg["log_every"] == 0 or step == cfg["steps"]:
                    means = dist.mean({k: v / count for k, v in sums.items()})
                    tracker.log({**means, "steps_per_s": step / max(elapsed, 1e-9)}, step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                    sums, count = {}, 0
                stop = dist.any(signals.received is not None)
                if step % cfg["ckpt_every"] == 0 or step == cfg["steps"] or stop:
                    if dist.main:
                        ckpts.save(checkpoint_state(), step)
                    dist.barrier()
                if stop:
                    status, signum = "KILLED", signals.received or signal.SIGTERM
                    log.warning("%s: signal %d, checkpoint at step %d saved; exiting", out, signum, step)
                    sys.exit(128 + signum)
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            tracker.finish(status)

    summary = {"task": task.name, "steps": step, "minutes": elapsed / 60, "steps_per_s": step / max(elapsed, 1e-9),
               "world_size": dist.world, "device": str(dist.device),
               "final": json.loads(tracker.jsonl.read_text().splitlines()[-1]) if tracker.jsonl.exists() else {}}
    if dist.main:
        final = {"step": step, "model": model.state_dict(),
                 "ema": ema.module.state_dict() if ema is not None else None, "run": run_config}
        tmp = out / "final.pt.tmp"
        torch.save(final, tmp)
        os.replace(tmp, out / "final.pt")
        write_json_atomic(out / "summary.json", summary)
        tracker.finish()
    dist.barrier()
    return summary


def load_final(out: Path, ema: bool = True) -> tuple[dict, dict]:
    """(weights, run config) of a finished run; the EMA weights where the run kept them."""
    path = Path(out) / "final.pt"
    if not path.exists():
        raise D2itError(f"{out}: no final.pt (is the training finished?)")
    final = torch.load(path, map_location="cpu", weights_only=False)
    return (final["ema"] if ema and final["ema"] is not None else final["model"]), final["run"]
