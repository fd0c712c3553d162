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

    def losses(self, batch, step: int) -> Iterator[tuple[str, torch.Tensor, dict[str, float]]]:
        """Yield (phase, loss, logged values) in order; the loop steps each phase before resuming."""


class EpochBatches(torch.utils.data.Sampler):
    """Batch indices for steps start..total-1: epoch e is a permutation seeded by (seed, e), so the
    batch of any step is known without replaying the ones before it."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int):
        if n < batch_size:
            raise D2itError(f"dataset has {n} items, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.total):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            yield perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()


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


def claim_run_dir(out: Path, run_config: dict) -> None:
    """Record the run's config in out/run.json; refuse a folder that holds a different run."""
    record = out / "run.json"
    if record.exists():
        old = json.loads(record.read_text())
        if old["digest"] != digest(run_config):
            changes = "; ".join(_diff(old["config"], run_config)[:5])
            raise D2itError(f"{out} holds a run of a different config ({changes}): choose another --out "
                            "or delete the folder")
        return
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


def train(task: Task, cfg: dict, out: Path, run_config: dict, tracking: dict, seed: int, num_workers: int = 0) -> dict:
    """Train to cfg["steps"] (resuming from out/checkpoints); returns the summary also written to
    out/summary.json. `run_config` identifies the run: a folder holding another one is refused."""
    out = Path(out)
    claim_run_dir(out, run_config)
    ckpts = Checkpoints(out / "checkpoints", cfg["keep_ckpts"])
    for stale in ckpts.folder.glob("*.tmp"):
        stale.unlink()
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

    def checkpoint_state() -> dict:
        return {"step": step, "elapsed": elapsed, "rng": _rng_state(),
                "modules": {n: m.state_dict() for n, m in task.modules.items()},
                "optimisers": {n: o.state_dict() for n, o in optimisers.items()},
                "ema": ema.state_dict() if ema is not None else None}

    tracker = Tracker(out, tracking["uri"], tracking["experiment"], f"{task.name}:{out.name}",
                      params=run_config, tags={"d2it.task": task.name, "d2it.config_digest": digest(run_config),
                                               "d2it.git_commit": git_commit(), "d2it.out": str(out.resolve())},
                      resume_step=step)
    batches = EpochBatches(len(task.dataset), cfg["batch_size"], seed, step, cfg["steps"])
    loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=batches, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed))  # keeps global RNG untouched
    sums, count, status = {}, 0, "FAILED"
    for module in task.modules.values():
        module.train()
    try:
        with _Signals() as signals, tqdm(total=cfg["steps"], initial=step, desc=f"train {task.name}",
                                         unit="step", dynamic_ncols=True) as bar:
            start = time.perf_counter() - elapsed
            for batch in loader:
                for phase, loss, logged in task.losses(batch, step):
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
                    means = {k: v / count for k, v in sums.items()}
                    tracker.log({**means, "steps_per_s": step / max(elapsed, 1e-9)}, step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                    sums, count = {}, 0
                if step % cfg["ckpt_every"] == 0 or step == cfg["steps"] or signals.received:
                    ckpts.save(checkpoint_state(), step)
                if signals.received:
                    status = "KILLED"
                    log.warning("%s: signal %d, checkpoint at step %d saved; exiting", out, signals.received, step)
                    sys.exit(128 + signals.received)
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            tracker.finish(status)

    final = {"step": step, "model": model.state_dict(),
             "ema": ema.module.state_dict() if ema is not None else None, "run": run_config}
    tmp = out / "final.pt.tmp"
    torch.save(final, tmp)
    os.replace(tmp, out / "final.pt")
    summary = {"task": task.name, "steps": step, "minutes": elapsed / 60, "steps_per_s": step / max(elapsed, 1e-9),
               "final": json.loads(tracker.jsonl.read_text().splitlines()[-1]) if tracker.jsonl.exists() else {}}
    write_json_atomic(out / "summary.json", summary)
    tracker.finish()
    return summary


def load_final(out: Path, ema: bool = True) -> tuple[dict, dict]:
    """(weights, run config) of a finished run; the EMA weights where the run kept them."""
    path = Path(out) / "final.pt"
    if not path.exists():
        raise D2itError(f"{out}: no final.pt (is the training finished?)")
    final = torch.load(path, map_location="cpu", weights_only=False)
    return (final["ema"] if ema and final["ema"] is not None else final["model"]), final["run"]
