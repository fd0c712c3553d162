"""The per-GPU batch sized to memory (`train.batch_gpu: auto`): the largest divisor of the
per-process share of the global batch whose training step fits this GPU, the rest accumulated.
Numbers do not depend on the choice (task.RowDraws draws per row of the global batch), so the
fitted value is a speed setting, not part of a run's identity."""
import logging
import math

import torch

from d2it.errors import D2itError
from d2it.task import RowDraws, phase_losses

log = logging.getLogger(__name__)

# Of the GPU's memory, what the step may take: the rest is for the allocator's fragmentation,
# DistributedDataParallel's gradient buckets (made after the probe) and the compiled graphs.
USABLE = 0.85


def divisors(n: int) -> list[int]:
    """Divisors of n, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def largest_fitting(sizes: list[int], fits) -> int | None:
    """The largest of `sizes` (ascending) for which fits(size) holds, by bisection: memory grows
    with the batch, so a size fits when a larger one does."""
    lo, hi, best = 0, len(sizes) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(sizes[mid]):
            best, lo = sizes[mid], mid + 1
        else:
            hi = mid - 1
    return best


def unallocated_optimiser_bytes(optimisers: dict) -> int:
    """What AdamW allocates at its first step for parameters it holds no state for yet: two
    tensors the size of each parameter (exp_avg, exp_avg_sq)."""
    total = 0
    for opt in optimisers.values():
        for group in opt.param_groups:
            for p in group["params"]:
                if p not in opt.state:
                    total += 2 * p.numel() * p.element_size()
    return total


def step_bytes(task, optimisers: dict, rows: int, step: int, device: torch.device, bf16: bool,
               peak=None) -> float:
    """Peak bytes of a micro-batch of `rows` rows at training step `step` (forward and backward
    of every phase; the last step has them all, e.g. the DVAE's PatchGAN from gan_start on) plus
    the optimiser state still to come; inf when it runs out of memory. Leaves no trace:
    gradients dropped, buffers (BatchNorm statistics) as they were; tasks draw their randomness
    from the RowDraws, not the global generators.
    `peak` reads the peak since the probe began (default: CUDA's allocator)."""

    buffers = {name: [b.detach().clone() for b in module.buffers()]
               for name, module in task.modules.items()}
    batch = torch.utils.data.default_collate([task.dataset[i % len(task.dataset)]
                                              for i in range(rows)])
    draws = RowDraws(0, rows, device)
    draws.begin(step, torch.arange(rows))
    if peak is None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        peak = lambda: torch.cuda.max_memory_allocated(device)  # noqa: E731
    try:
        for _, loss, _ in phase_losses(task, [b.to(device) for b in batch], step, draws,
                                        device, bf16):
            loss.backward()
        used = peak() + unallocated_optimiser_bytes(optimisers)
    except torch.OutOfMemoryError:
        used = math.inf
    finally:
        for opt in optimisers.values():
            opt.zero_grad(set_to_none=True)
        for name, module in task.modules.items():
            for kept, b in zip(buffers[name], module.buffers()):
                b.copy_(kept)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return used


def fit_batch_gpu(task, optimisers: dict, settings: dict, world: int, device: torch.device) -> int:
    """`train.batch_gpu: auto` for the training settings: the whole per-process share on a CPU;
    on a GPU the largest divisor of it whose micro-batch at the last step fits USABLE of the
    device's memory (measured eagerly, which takes more than the compiled step)."""
    share = settings["batch_size"] // world
    if device.type != "cuda":
        return share
    usable = USABLE * torch.cuda.get_device_properties(device).total_memory
    return choose_batch_gpu(share, usable, str(device),
                            lambda rows: step_bytes(task, optimisers, rows, settings["steps"] - 1,
                                                    device, settings["bf16"]))


def choose_batch_gpu(share: int, usable: float, device: str, need) -> int:
    """The largest divisor of `share` whose need(rows) (bytes) is at most `usable`."""
    needs = {}

    def fits(rows: int) -> bool:
        needs[rows] = need(rows)
        return needs[rows] <= usable

    best = largest_fitting(divisors(share), fits)
    if best is None:
        raise D2itError(f"train.batch_gpu auto: one row of the batch needs "
                        f"{needs[1] / 2**30:.1f} GiB, more than the {usable / 2**30:.1f} GiB "
                        f"usable of {device}; use a smaller model or another device")
    log.info("per-GPU batch %d of %d (auto: %.1f of %.1f usable GiB)", best, share,
             needs[best] / 2**30, usable / 2**30)
    return best
