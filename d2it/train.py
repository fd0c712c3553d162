"""The one training loop (EDM2-style): every model of the harness trains through `train`.

A task supplies its modules, a dataset and, per step, one loss per optimiser phase (one phase for
diffusion models; generator then discriminator for a DVAE with a GAN). The loop owns optimisers,
EMA, deterministic data order, atomic checkpoints, resume, signals, NaN stops and logging, so a
killed run re-started with the same command continues from its newest checkpoint and ends with the
same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from d2it.batch_fit import fit_batch_gpu
from d2it.config import digest
from d2it.files import atomic, read_json, write_json_atomic
from d2it.errors import D2itError
from d2it.rng import generator
from d2it.schedules import lr_factor, power_ema_fn
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

    def losses(self, batch, step: int, shard: "Shard") -> Iterator[tuple[str, torch.Tensor, dict]]:
        """Yield (phase, loss, logged values) of one micro-batch in order; the loop accumulates each
        phase's gradients and steps its optimiser after the step's last micro-batch. Losses are
        means over the micro-batch's rows. Draw randomness through `shard`, so numbers do not depend
        on the number of processes or the per-GPU batch."""


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batches of steps start..total-1. Epoch e is a permutation seeded by (seed, e), so the
    batch of any step is known without replaying the ones before it. Of each global batch of
    `batch_size` rows, rank r of `world` processes takes rows r, r + world, ... and splits them into
    `rounds` micro-batches of `batch_size / (world * rounds)` rows (gradient accumulation)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0,
                 world: int = 1, rounds: int = 1):
        if n < batch_size:
            raise D2itError(f"dataset has {n} items, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.total = start, total
        self.rank, self.world, self.rounds = rank, world, rounds
        self.per_epoch = n // batch_size
        self.batch_gpu = batch_size // (world * rounds)

    def __len__(self) -> int:
        return (self.total - self.start) * self.rounds

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.total):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                gen = torch.Generator().manual_seed(self.seed * 100003 + e)
                epoch, perm = e, torch.randperm(self.n, generator=gen)
            mine = perm[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world]
            for r in range(self.rounds):
                yield mine[r * self.batch_gpu:(r + 1) * self.batch_gpu].tolist()


def batch_split(batch_size: int, batch_gpu: int | None, world: int) -> tuple[int, int]:
    """(per-GPU batch, accumulation rounds) of a global batch over `world` processes (EDM2)."""
    if batch_size % world:
        raise D2itError(f"train.batch_size {batch_size} is not a multiple of the {world} processes")
    batch_gpu = batch_gpu or batch_size // world
    if batch_size % (batch_gpu * world):
        raise D2itError(f"train.batch_size {batch_size} is not a multiple of train.batch_gpu "
                        f"{batch_gpu} x {world} processes")
    return batch_gpu, batch_size // (batch_gpu * world)


def seed_all(seed: int) -> None:
    """Seed every generator a job draws from (torch seeds itself randomly per process otherwise)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def claim_run_dir(out: Path, record: dict, write: bool = True) -> None:
    """Write the run's record to out/run.json; refuse a folder that holds another run (another
    identity, or the same one made from other input files)."""
    claim = {"identity": record["identity"], "inputs": record.get("inputs", {})}
    path = out / "run.json"
    if path.exists():
        old = read_json(path, "run record", "move the folder away to start the run afresh")
        if old.get("digest") != digest(claim):
            before = old.get("record", {})
            before = {"identity": before.get("identity"), "inputs": before.get("inputs", {})}
            changes = "; ".join(_diff(before, claim)[:5])
            raise D2itError(f"{out} holds a run of a different config ({changes}): choose another "
                            "--out or delete the folder")
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"digest": digest(claim),
                                 "identity_digest": digest(record["identity"]), "record": record})


def lock_run_dir(out: Path):
    """An exclusive lock on a run folder for as long as the returned file stays open: a second
    trainer in the same folder (after a stale Snakemake lock and --unlock, or a SLURM requeue
    while the old job still runs) is refused instead of interleaving with the first. The kernel
    drops the lock with its process, so a killed or requeued job never leaves a stale one."""
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise D2itError(f"{out}: {holder} is training in this folder; wait for it to end or "
                        "stop it") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    return lock


@dataclass
class Checkpoints:
    folder: Path
    keep: int

    def newest(self) -> dict | None:
        for path in sorted(self.folder.glob(CKPT_GLOB), reverse=True):
            try:
                # mapped, not read: a 675M model's checkpoint (10.8 GB) beside the live model
                # and its EMA would otherwise need 24 GB at once
                return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            except Exception as e:  # noqa: BLE001 - a damaged file: fall back to the one before
                log.warning("skipping unreadable checkpoint %s (%s)", path, e)
        return None

    def newest_step(self) -> int | None:
        """The step of the newest checkpoint file (unread), None if there is none."""
        paths = sorted(self.folder.glob(CKPT_GLOB))
        return int(paths[-1].stem.split("-")[1]) if paths else None

    def save(self, state: dict, step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{step:09d}.pt"
        with atomic(path, fsync=True) as tmp:
            torch.save(state, tmp)
        for old in sorted(self.folder.glob(CKPT_GLOB))[:-max(self.keep, 1)]:
            old.unlink()
        return path

    def finished(self) -> None:
        """final.pt is written: keep 0 deletes every checkpoint (a finished run needs none)."""
        if self.keep == 0:
            for path in self.folder.glob(CKPT_GLOB):
                path.unlink()


@dataclass
class _Signals:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) and SIGINT (Ctrl-C) ask for a checkpoint, then
    exit; a second Ctrl-C interrupts at once."""
    received: int | None = None
    _old: dict = field(default_factory=dict)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signum, self._old[signum])

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Shard:
    """This micro-batch's rows of the global batch and their randomness. Row p of the global batch
    (p = 0 .. batch_size - 1) draws from generators seeded by (seed, step, draw), whatever process
    and accumulation round holds it: every draw is made for the whole global batch on the CPU and
    sliced, so a run's numbers do not depend on the number of processes or the per-GPU batch."""

    def __init__(self, seed: int, batch_size: int, device: torch.device = torch.device("cpu")):
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.begin(0, torch.arange(batch_size))

    def begin(self, step: int, rows: torch.Tensor) -> None:
        """Start a micro-batch: global rows `rows` of step `step`."""
        self.step, self.rows, self.draws = step, rows, 0

    def _generator(self) -> torch.Generator:
        self.draws += 1
        return generator(self.seed, "train", self.step, self.draws)

    def _local(self, n: int, x: torch.Tensor) -> torch.Tensor:
        if n != len(self.rows):
            raise ValueError(f"drawing for {n} rows, the micro-batch has {len(self.rows)}")
        return x[self.rows].to(self.device)

    def rand(self, n: int, *shape) -> torch.Tensor:
        return self._local(n, torch.rand(self.batch_size, *shape, generator=self._generator()))

    def randn(self, n: int, *shape) -> torch.Tensor:
        return self._local(n, torch.randn(self.batch_size, *shape, generator=self._generator()))

    def randint(self, high: int, n: int) -> torch.Tensor:
        draw = torch.randint(high, (self.batch_size,), generator=self._generator())
        return self._local(n, draw)


class Distributed:
    """torchrun's process group (NCCL on GPUs, gloo on CPUs), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local = int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True  # as DiT's scripts
            torch.backends.cudnn.allow_tf32 = True
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        self.main = self.rank == 0
        self.wrapped: list[torch.nn.parallel.DistributedDataParallel] = []

    def wrap(self, module: torch.nn.Module, find_unused: bool = False) -> torch.nn.Module:
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                        find_unused_parameters=find_unused)
        self.wrapped.append(ddp)
        return ddp

    def sync(self, enabled: bool) -> contextlib.ExitStack:
        """Gradient all-reduce on (the last accumulation round) or off (the rounds before it)."""
        stack = contextlib.ExitStack()
        if not enabled:
            for ddp in self.wrapped:
                stack.enter_context(ddp.no_sync())
        return stack

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged values over processes (each holds the mean of its rows)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))

    def gather(self, value) -> list:
        """Every process's `value`, in rank order."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def on_gpu(setting: bool | str, device: torch.device) -> bool:
    """A speed switch of the config: true, false or `auto` (on CUDA devices only)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_network(model: torch.nn.Module, setting: bool | str, device: torch.device) -> str:
    """torch.compile `model` in place (its state_dict keys stay as they are) where `setting`
    asks for it; returns how it runs, `compiled` or `eager (why)`, for the run's record. A graph
    that fails to compile at its first call runs eager, with Dynamo's warning saying why."""
    if not on_gpu(setting, device):
        return "eager (compile: auto on a CPU)" if setting == "auto" else "eager (compile: false)"
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # fall back to eager at the first call
        model.compile()
    except Exception as e:  # noqa: BLE001 - any failure to set up compilation means eager
        log.warning("torch.compile unavailable, training eager: %s", e)
        return f"eager (torch.compile failed: {e})"
    return "compiled"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on GPUs (the CPU study stays in fp32, as exact resume is tested there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def memory() -> dict[str, float]:
    """This process's resident memory in MiB: anonymous (what it allocated), file-backed (pages of
    mapped files it touched, e.g. its rows of a latent cache; the kernel can drop them) and peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return {"rss_anon_mib": fields.get("RssAnon"), "rss_file_mib": fields.get("RssFile"),
            "peak_rss_mib": fields.get("VmHWM")}


def _phase_losses(task: Task, batch, step: int, shard: Shard, device: torch.device, bf16: bool):
    """The task's (phase, loss, logged values) of one micro-batch, each computed under autocast."""
    phases = task.losses(batch, step, shard)
    while True:
        with autocast(device, bf16):
            item = next(phases, None)
        if item is None:
            return
        yield item


def _check_finite(losses: list, out: Path, ckpts: Checkpoints) -> None:
    """Stop at the first non-finite loss of `losses` (checked in one transfer, before anything
    is logged or saved, so the last checkpoint holds finite weights)."""
    if not losses:
        return
    finite = torch.isfinite(torch.stack([loss.float() for _, _, loss in losses])).tolist()
    if all(finite):
        return
    step, phase, loss = losses[finite.index(False)]
    kept = ckpts.newest_step()
    where = (f"the last good checkpoint (step {kept}) stays in {ckpts.folder}" if kept
             else "no checkpoint was written yet")
    raise D2itError(f"{out}: non-finite {phase} loss ({loss.item()}) at step {step + 1}; "
                    f"stopped, {where}")


def train(task: Task, cfg: dict, out: Path, record: dict, tracking: dict, seed: int,
          num_workers: int = 0, snapshots: tuple[int, ...] = ()) -> dict:
    """Train to cfg["steps"] (resuming from out/checkpoints), keeping the EMA weights at the steps
    `snapshots` (out/snapshots/); returns the summary also written to out/summary.json.
    `record` describes the run (identity, architecture, inputs): a folder holding another run is
    refused, and final.pt carries it so the run rebuilds from that file alone.
    Under torchrun every process runs this; rank 0 writes checkpoints, logs and final weights."""
    out, dist = Path(out), Distributed()
    fit = cfg["batch_gpu"] == "auto"  # sized below, once the model is on its device
    batch_gpu, rounds = batch_split(cfg["batch_size"], None if fit else cfg["batch_gpu"],
                                    dist.world)
    claim_run_dir(out, record, write=dist.main)
    lock = lock_run_dir(out) if dist.main else None  # held until this function returns
    dist.barrier()
    ckpts = Checkpoints(out / "checkpoints", cfg["keep_ckpts"])
    if dist.main:
        for stale in ckpts.folder.glob(".*.tmp*"):  # left by a killed writer
            stale.unlink()
    task.to(dist.device)
    model = task.modules["model"]
    fused = on_gpu(cfg["fused_adamw"], dist.device)
    optimisers = {name: torch.optim.AdamW(module.parameters(), lr=cfg["lr"],
                                          betas=tuple(cfg["betas"]),
                                          weight_decay=cfg["weight_decay"], fused=fused)
                  for name, module in task.phases.items()}
    ema = make_ema(model, cfg)
    if fit:  # before compiling: the eager step, measured, takes more than the compiled one
        fitted = fit_batch_gpu(task, optimisers, cfg, dist.world, dist.device)
        batch_gpu = min(dist.gather(fitted))  # every process the same micro-batch
        batch_gpu, rounds = batch_split(cfg["batch_size"], batch_gpu, dist.world)
    compiled = compile_network(model, cfg["compile"], dist.device)  # after the EMA's copy

    # Resume
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
        if state.get("batch_gpu") not in (None, batch_gpu):
            # Same global batch, so the same run, but per-micro-batch statistics (the PatchGAN's
            # BatchNorm, the adaptive GAN weight) now see other rows.
            log.warning("%s: per-GPU batch %d x %d processes, was %d", out, batch_gpu, dist.world,
                        state["batch_gpu"])
        del state  # its tensors are copied into the modules and optimisers
    task.distribute(dist.wrap)

    def checkpoint_state() -> dict:
        return {"step": step, "elapsed": elapsed, "rng": _rng_state(), "batch_gpu": batch_gpu,
                "modules": {n: m.state_dict() for n, m in task.modules.items()},
                "optimisers": {n: o.state_dict() for n, o in optimisers.items()},
                "ema": ema.state_dict() if ema is not None else None}

    # Data: this rank's micro-batches, `rounds` per step
    identity = record["identity"]
    tracker = Tracker(out, tracking["uri"] if dist.main else None, tracking["experiment"],
                      f"{task.name}:{out.name}", params=identity,
                      tags={"d2it.task": task.name, "d2it.config_digest": digest(identity),
                            "d2it.git_commit": git_commit(), "d2it.out": str(out.resolve()),
                            "d2it.world_size": str(dist.world), "d2it.network": compiled,
                            "d2it.fused_adamw": str(fused)},
                      resume_step=step, write=dist.main, study=tracking.get("study"))
    batches = EpochBatches(len(task.dataset), cfg["batch_size"], seed, step, cfg["steps"],
                           dist.rank, dist.world, rounds)
    loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=batches,
                                         num_workers=num_workers,
                                         # keeps global RNG
                                         generator=torch.Generator().manual_seed(seed))
    micro_batches = iter(loader)
    shard = Shard(seed, cfg["batch_size"], dist.device)
    sums, count, status = {}, 0, "FAILED"
    unchecked = []  # (step, phase, loss) since the last finiteness check
    for module in task.modules.values():
        module.train()
    try:
        with _Signals() as signals, tqdm(total=cfg["steps"], initial=step, unit="step",
                                         desc=f"train {task.name}", dynamic_ncols=True,
                                         disable=not dist.main) as bar:
            start = time.perf_counter() - elapsed
            while step < cfg["steps"]:
                # Accumulate gradients over the rounds; all-reduce them in the last one
                stepped = set()
                for r in range(rounds):
                    batch = [b.to(dist.device) for b in next(micro_batches)]
                    first = dist.rank + dist.world * r * batch_gpu  # this micro-batch's first row
                    shard.begin(step,
                                torch.arange(first, cfg["batch_size"], dist.world)[:batch_gpu])
                    with dist.sync(r == rounds - 1):
                        for phase, loss, logged in _phase_losses(task, batch, step, shard,
                                                                 dist.device, cfg["bf16"]):
                            unchecked.append((step, phase, loss.detach()))
                            if phase not in stepped:
                                optimisers[phase].zero_grad(set_to_none=True)
                                stepped.add(phase)
                            (loss / rounds).backward()
                            for k, v in logged.items():
                                v = torch.as_tensor(v).detach().float() / rounds
                                sums[k] = sums.get(k, 0.0) + v

                # Optimiser steps at this step's rate, EMA
                rate = cfg["lr"] * lr_factor(step, cfg["steps"], cfg["lr_warmup"], cfg["lr_decay"])
                for phase in stepped:
                    for group in optimisers[phase].param_groups:
                        group["lr"] = rate
                    if cfg["grad_clip"]:
                        params = task.phases[phase].parameters()
                        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
                    optimisers[phase].step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                count += 1
                elapsed = time.perf_counter() - start
                bar.update()

                # Snapshots (Fig. 6 evaluates the EMA weights at these steps), logging,
                # checkpoints, pre-emption
                if step in snapshots and dist.main:
                    weights = ema.module if ema is not None else model
                    with atomic(snapshot_path(out, step)) as tmp:
                        torch.save(weights.state_dict(), tmp)
                stop = dist.any(signals.received is not None)
                saving = step % cfg["ckpt_every"] == 0 or step == cfg["steps"] or stop
                logging = step % cfg["log_every"] == 0 or step == cfg["steps"]
                if saving or logging:  # the host waits for the device here only
                    _check_finite(unchecked, out, ckpts)
                    unchecked = []
                if logging:
                    means = dist.mean({k: v.item() / count for k, v in sums.items()})
                    tracker.log({**means, "lr": rate, "steps_per_s": step / max(elapsed, 1e-9)},
                                step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                    sums, count = {}, 0
                if saving:
                    if dist.main:
                        ckpts.save(checkpoint_state(), step)
                    dist.barrier()
                if stop:
                    status, signum = "KILLED", signals.received or signal.SIGTERM
                    log.warning("%s: signal %d, checkpoint at step %d saved; exiting", out, signum,
                                step)
                    sys.exit(128 + signum)
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            tracker.finish(status)
            if lock:
                lock.close()  # not when the traceback's frames are freed

    lines = tracker.jsonl.read_text().splitlines() if tracker.jsonl.exists() else []
    final_log = json.loads(lines[-1]) if lines else {}
    summary = {"task": task.name, "steps": step, "minutes": elapsed / 60,
               "steps_per_s": step / max(elapsed, 1e-9), "world_size": dist.world,
               "batch_gpu": batch_gpu, "accumulation_rounds": rounds, "device": str(dist.device),
               "network": compiled, "fused_adamw": fused,
               "memory": dist.gather(memory()), "final": final_log}
    if dist.main:
        final = {"step": step, "model": model.state_dict(),
                 "ema": ema.module.state_dict() if ema is not None else None, "run": record}
        with atomic(out / "final.pt") as tmp:
            torch.save(final, tmp)
        ckpts.finished()
        write_json_atomic(out / "summary.json", summary)
        tracker.finish()
    dist.barrier()
    if lock:
        lock.close()
    return summary


def make_ema(model: torch.nn.Module, cfg: dict) -> AveragedModel | None:
    """The EMA of the training settings: none (`ema: null`), EDM2's power-function profile
    (`ema_std`) or a constant decay (`ema`, DiT's)."""
    if cfg["ema"] is None:
        return None
    if cfg["ema_std"] is not None:
        return AveragedModel(model, avg_fn=power_ema_fn(cfg["ema_std"]), use_buffers=True)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)


def snapshot_path(out: Path, step: int) -> Path:
    return Path(out) / "snapshots" / f"ema-{step:09d}.pt"


def load_snapshot(out: Path, step: int) -> dict:
    """The EMA weights (the weights without EMA) a run kept at `step`."""
    path = snapshot_path(out, step)
    if not path.is_file():
        kept = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("ema-*.pt"))
        raise D2itError(f"{out}: no weights kept at step {step} (kept: {kept or 'none'}); a run "
                        "keeps the steps its study named when it trained: retrain it")
    return _load_weights(path, weights_only=True)


def _load_weights(path: Path, weights_only: bool):
    """torch.load of a run's file, whose damage (truncated by a kill or a full disk, or not a
    torch file) is one error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise D2itError(f"{path}: unreadable ({reason}); retrain the run or restore the "
                        "file") from None


def fit_weights(model: torch.nn.Module, weights: dict, path: Path, kind: str) -> None:
    """Load `weights` (read from `path`) into `model`, built from the run's record; weights of
    another network (a file swapped or edited) are one error naming the file."""
    own = model.state_dict()
    wrong = sorted(k for k in own.keys() | weights.keys()
                   if k not in own or k not in weights or own[k].shape != weights[k].shape)
    if wrong:
        raise D2itError(f"{path}: its weights do not fit the {kind} network its record describes "
                        f"({len(wrong)} tensors missing, extra or of another shape, e.g. "
                        f"{wrong[0]}); retrain the run or restore the file")
    model.load_state_dict(weights)


def load_final(out: Path, ema: bool = True) -> tuple[dict, dict]:
    """(weights, run record) of a finished run; the EMA weights where the run kept them."""
    path = Path(out) / "final.pt"
    if not path.exists():
        raise D2itError(f"{out}: no final.pt (is the training finished?)")
    final = _load_weights(path, weights_only=False)
    if not isinstance(final, dict) or not {"model", "ema", "run"} <= final.keys():
        raise D2itError(f"{path}: not a final.pt of this harness (no model, ema and run record)")
    return (final["ema"] if ema and final["ema"] is not None else final["model"]), final["run"]
