"""The device layer: torchrun's process group, the speed switches (compile, bf16 autocast) and
what a job reports of its memory and generators."""
from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


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


def seed_all(seed: int) -> None:
    """Seed every generator a job draws from (torch seeds itself randomly per process otherwise)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
