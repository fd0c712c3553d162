"""The one training loop (EDM2-style): every model of the harness trains through `train`.

A task supplies its modules, a dataset and, per step, one loss per optimiser phase (one phase for
diffusion models; generator then discriminator for a DVAE with a GAN). The loop owns optimisers,
EMA, deterministic data order, atomic checkpoints, resume, signals, NaN stops and logging, so a
killed run re-started with the same command continues from its newest checkpoint and ends with the
same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from d2it.batch_fit import fit_batch_gpu
from d2it.device import (Distributed, compile_network, memory, on_gpu, rng_state, seed_all,
                         set_rng_state)
from d2it.errors import D2itError
from d2it.files import save_torch_atomic, write_json_atomic
from d2it.run_folder import Checkpoints, claim_run_dir, lock_run_dir, snapshot_path
from d2it.schedules import lr_factor, power_ema_fn
from d2it.task import EpochBatches, RowDraws, Task, batch_split, phase_losses
from d2it.tracking import Tracker, git_commit

log = logging.getLogger(__name__)


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


@dataclass
class _State:
    """What the loop carries from step to step, and what a checkpoint holds of it."""
    task: Task
    optimisers: dict[str, torch.optim.Optimizer]
    ema: AveragedModel | None
    batch_gpu: int
    step: int = 0
    elapsed: float = 0.0

    def checkpoint(self) -> dict:
        return {"step": self.step, "elapsed": self.elapsed, "rng": rng_state(),
                "batch_gpu": self.batch_gpu,
                "modules": {n: m.state_dict() for n, m in self.task.modules.items()},
                "optimisers": {n: o.state_dict() for n, o in self.optimisers.items()},
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def resume(self, checkpoint: dict | None, out: Path, world: int) -> None:
        if checkpoint is None:
            return
        for name, module in self.task.modules.items():
            module.load_state_dict(checkpoint["modules"][name])
        for name, opt in self.optimisers.items():
            opt.load_state_dict(checkpoint["optimisers"][name])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        set_rng_state(checkpoint["rng"])
        self.step = checkpoint["step"]
        self.elapsed = checkpoint["elapsed"]
        log.info("%s: resuming from step %d", out, self.step)
        if checkpoint.get("batch_gpu") not in (None, self.batch_gpu):
            # Same global batch, so the same run, but per-micro-batch statistics (the PatchGAN's
            # BatchNorm, the adaptive GAN weight) now see other rows.
            log.warning("%s: per-GPU batch %d x %d processes, was %d", out, self.batch_gpu, world,
                        checkpoint["batch_gpu"])


def _optimisers(task: Task, settings: dict, fused: bool) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per phase, over that phase's module."""
    return {name: torch.optim.AdamW(module.parameters(), lr=settings["lr"],
                                    betas=tuple(settings["betas"]),
                                    weight_decay=settings["weight_decay"], fused=fused)
            for name, module in task.phases.items()}


def _accumulate(state: _State, micro_batches, draws: RowDraws, settings: dict, rounds: int,
                dist: Distributed, sums: dict, unchecked: list) -> set[str]:
    """Forward and backward of one step's `rounds` micro-batches, gradients accumulated and
    all-reduced in the last round; returns the phases that have gradients."""
    stepped = set()
    for r in range(rounds):
        batch = [b.to(dist.device) for b in next(micro_batches)]
        first = dist.rank + dist.world * r * state.batch_gpu  # this micro-batch's first row
        rows = torch.arange(first, settings["batch_size"], dist.world)[:state.batch_gpu]
        draws.begin(state.step, rows)
        with dist.sync(r == rounds - 1):
            for phase, loss, logged in phase_losses(state.task, batch, state.step, draws,
                                                    dist.device, settings["bf16"]):
                unchecked.append((state.step, phase, loss.detach()))
                if phase not in stepped:
                    state.optimisers[phase].zero_grad(set_to_none=True)
                    stepped.add(phase)
                (loss / rounds).backward()
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().float() / rounds
    return stepped


def _optimise(state: _State, stepped: set[str], settings: dict) -> float:
    """The optimiser steps of `stepped` at this step's learning rate, then the EMA; returns the
    rate."""
    rate = settings["lr"] * lr_factor(state.step, settings["steps"], settings["lr_warmup"],
                                      settings["lr_decay"])
    for phase in stepped:
        for group in state.optimisers[phase].param_groups:
            group["lr"] = rate
        if settings["grad_clip"]:
            params = state.task.phases[phase].parameters()
            torch.nn.utils.clip_grad_norm_(params, settings["grad_clip"])
        state.optimisers[phase].step()
    if state.ema is not None:
        state.ema.update_parameters(state.task.modules["model"])
    return rate


def _finish(state: _State, out: Path, record: dict, ckpts: Checkpoints, summary: dict) -> None:
    """final.pt (the weights, the EMA and the run's record), then the summary (rank 0 only)."""
    model = state.task.modules["model"]
    final = {"step": state.step, "model": model.state_dict(),
             "ema": state.ema.module.state_dict() if state.ema is not None else None,
             "run": record}
    save_torch_atomic(out / "final.pt", final)
    ckpts.finished()
    write_json_atomic(out / "summary.json", summary)


def _tracker(task: Task, out: Path, record: dict, tracking: dict, dist: Distributed, step: int,
             tags: dict) -> Tracker:
    """The run's MLflow run and metrics.jsonl (rank 0 writes), resumed at `step`."""
    identity = record["identity"]
    tags = {"d2it.task": task.name, "d2it.config_digest": record["digest"],
            "d2it.git_commit": git_commit(), "d2it.out": str(out.resolve()),
            "d2it.world_size": str(dist.world), **tags}
    return Tracker(out, tracking["uri"] if dist.main else None, tracking["experiment"],
                   f"{task.name}:{out.name}", params=identity, tags=tags, resume_step=step,
                   write=dist.main, study=tracking.get("study"))


def _micro_batches(task: Task, settings: dict, seed: int, start: int, dist: Distributed,
                   rounds: int, num_workers: int):
    """This rank's micro-batches of steps start..steps-1, `rounds` per step."""
    batches = EpochBatches(len(task.dataset), settings["batch_size"], seed, start,
                           settings["steps"], dist.rank, dist.world, rounds)
    loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=batches,
                                         num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed))
    return iter(loader)


def train(task: Task, settings: dict, out: Path, record: dict, tracking: dict, seed: int,
          num_workers: int = 0, snapshots: tuple[int, ...] = ()) -> dict:
    """Train to settings["steps"] (resuming from out/checkpoints), keeping the EMA weights at the
    steps `snapshots` (out/snapshots/); returns the summary also written to out/summary.json.
    `record` describes the run (identity, architecture, inputs): a folder holding another run is
    refused, and final.pt carries it so the run rebuilds from that file alone.
    Under torchrun every process runs this; rank 0 writes checkpoints, logs and final weights."""
    out = Path(out)
    dist = Distributed()
    fit = settings["batch_gpu"] == "auto"  # sized below, once the model is on its device
    batch_gpu, rounds = batch_split(settings["batch_size"], None if fit else settings["batch_gpu"],
                                    dist.world)
    claim_run_dir(out, record, write=dist.main)
    lock = lock_run_dir(out) if dist.main else None  # held until this function returns
    dist.barrier()
    ckpts = Checkpoints(out / "checkpoints", settings["keep_ckpts"])
    if dist.main:
        ckpts.remove_partial()

    # Model, optimisers, EMA, per-GPU batch, compilation
    task.to(dist.device)
    model = task.modules["model"]
    fused = on_gpu(settings["fused_adamw"], dist.device)
    optimisers = _optimisers(task, settings, fused)
    ema = make_ema(model, settings)
    if fit:  # before compiling: the eager step, measured, takes more than the compiled one
        fitted = fit_batch_gpu(task, optimisers, settings, dist.world, dist.device)
        batch_gpu = min(dist.gather(fitted))  # every process the same micro-batch
        batch_gpu, rounds = batch_split(settings["batch_size"], batch_gpu, dist.world)
    compiled = compile_network(model, settings["compile"], dist.device)  # after the EMA's copy

    # Resume: the newest checkpoint, if any, else seeds distinct from the model-init seed
    seed_all(seed + 1)
    state = _State(task, optimisers, ema, batch_gpu)
    state.resume(ckpts.newest(), out, dist.world)
    task.distribute(dist.wrap)

    # Data: this rank's micro-batches, `rounds` per step; a tracker resumed at the same step
    tracker = _tracker(task, out, record, tracking, dist, state.step,
                       {"d2it.network": compiled, "d2it.fused_adamw": str(fused)})
    micro_batches = _micro_batches(task, settings, seed, state.step, dist, rounds, num_workers)
    draws = RowDraws(seed, settings["batch_size"], dist.device)
    sums, count, status = {}, 0, "FAILED"
    unchecked = []  # (step, phase, loss) since the last finiteness check
    for module in task.modules.values():
        module.train()
    try:
        with _Signals() as signals, tqdm(total=settings["steps"], initial=state.step, unit="step",
                                         desc=f"train {task.name}", dynamic_ncols=True,
                                         disable=not dist.main) as bar:
            start = time.perf_counter() - state.elapsed
            while state.step < settings["steps"]:
                stepped = _accumulate(state, micro_batches, draws, settings, rounds, dist, sums,
                                      unchecked)
                rate = _optimise(state, stepped, settings)
                state.step += 1
                count += 1
                state.elapsed = time.perf_counter() - start
                bar.update()
                step = state.step

                # Snapshots (Fig. 6 evaluates the EMA weights at these steps)
                if step in snapshots and dist.main:
                    weights = ema.module if ema is not None else model
                    save_torch_atomic(snapshot_path(out, step), weights.state_dict())

                # Logging, checkpoints, pre-emption
                stop = dist.any(signals.received is not None)
                saving = step % settings["ckpt_every"] == 0 or step == settings["steps"] or stop
                logging = step % settings["log_every"] == 0 or step == settings["steps"]
                if saving or logging:  # the host waits for the device here only
                    _check_finite(unchecked, out, ckpts)
                    unchecked = []
                if logging:
                    means = dist.mean({k: v.item() / count for k, v in sums.items()})
                    rate_log = {"lr": rate, "steps_per_s": step / max(state.elapsed, 1e-9)}
                    tracker.log({**means, **rate_log}, step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                    sums, count = {}, 0
                if saving:
                    if dist.main:
                        ckpts.save(state.checkpoint(), step)
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

    # Final weights and summary
    summary = {"task": task.name, "steps": state.step, "minutes": state.elapsed / 60,
               "steps_per_s": state.step / max(state.elapsed, 1e-9), "world_size": dist.world,
               "batch_gpu": batch_gpu, "accumulation_rounds": rounds, "device": str(dist.device),
               "network": compiled, "fused_adamw": fused, "memory": dist.gather(memory()),
               "final": tracker.last()}
    if dist.main:
        _finish(state, out, record, ckpts, summary)
        tracker.finish()
    dist.barrier()
    if lock:
        lock.close()
    return summary


def make_ema(model: torch.nn.Module, settings: dict) -> AveragedModel | None:
    """The EMA of the training settings: none (`ema: null`), EDM2's power-function profile
    (`ema_std`) or a constant decay (`ema`, DiT's)."""
    if settings["ema"] is None:
        return None
    if settings["ema_std"] is not None:
        return AveragedModel(model, avg_fn=power_ema_fn(settings["ema_std"]), use_buffers=True)
    average = get_ema_multi_avg_fn(settings["ema"])
    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
