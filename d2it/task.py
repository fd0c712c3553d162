"""The contract between a task and the training loop: what a task supplies (`Task`), the rows each
step trains on (`EpochBatches`, `batch_split`) and their randomness (`RowDraws`), drawn so that a
run's numbers do not depend on the number of processes or the per-GPU batch."""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from d2it.device import autocast
from d2it.errors import D2itError
from d2it.rng import generator


class Task(Protocol):
    name: str
    modules: dict[str, torch.nn.Module]  # all saved; modules["model"] is the one EMA'd and exported
    phases: dict[str, torch.nn.Module]  # one optimiser per phase over that module's parameters
    dataset: torch.utils.data.Dataset

    def to(self, device: torch.device) -> None:
        """Move every module the task uses (trained or frozen) to the device."""

    def distribute(self, wrap) -> None:
        """Route forward passes through wrap(module) (DistributedDataParallel under torchrun)."""

    def losses(self, batch, step: int,
               draws: "RowDraws") -> Iterator[tuple[str, torch.Tensor, dict]]:
        """Yield (phase, loss, logged values) of one micro-batch in order; the loop accumulates each
        phase's gradients and steps its optimiser after the step's last micro-batch. Losses are
        means over the micro-batch's rows. Draw randomness through `draws`, so numbers do not depend
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


class RowDraws:
    """Per-row randomness: this micro-batch's rows of the global batch and their draws. Row p of
    the global batch (p = 0 .. batch_size - 1) draws from generators seeded by (seed, step, draw),
    whatever process and accumulation round holds it: every draw is made for the whole global
    batch on the CPU and sliced, so a run's numbers do not depend on the number of processes or
    the per-GPU batch."""

    def __init__(self, seed: int, batch_size: int, device: torch.device = torch.device("cpu")):
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.begin(0, torch.arange(batch_size))

    def begin(self, step: int, rows: torch.Tensor) -> None:
        """Start a micro-batch: global rows `rows` of step `step`."""
        self.step = step
        self.rows = rows
        self.count = 0

    def _generator(self) -> torch.Generator:
        self.count += 1
        return generator(self.seed, "train", self.step, self.count)

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


def phase_losses(task: Task, batch, step: int, draws: RowDraws, device: torch.device, bf16: bool):
    """The task's (phase, loss, logged values) of one micro-batch, each computed under autocast."""
    phases = task.losses(batch, step, draws)
    while True:
        with autocast(device, bf16):
            item = next(phases, None)
        if item is None:
            return
        yield item
