"""Training and sampling throughput of DiT and D²iT at one size, through the training loss the
runs use (DiT's hybrid loss, multi-grained noise, dynamic grain loss) on random latents.

    python benchmarks/stage2_throughput.py [--size XL] [--batch 32] [--latent 32] [--steps 20]

Prints per kind: parameters, training images/s (forward, backward, AdamW step; bf16 autocast on
CUDA), peak GPU memory, and the sampling forward passes' images/s. The paper's claim to check: D²iT
costs about what DiT does at the same size.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from d2it import study as studies
from d2it.data.latents import CacheWriter, LatentCache
from d2it.models import architecture, build
from d2it.stage2 import TASKS
from d2it.train import Shard, autocast

CHANNELS, CLASSES = 4, 1000  # the paper's latents and ImageNet's labels


def study_of(size: str) -> dict:
    """A study holding a dit and a d2it spec of this size, with the schema's (paper) defaults."""
    specs = {"dit": {"kind": "dit", "size": size}, "d2it": {"kind": "d2it", "size": size}}
    return studies.resolve({"name": "throughput", "specs": specs}, "stage2_throughput")


def synthetic_cache(folder: Path, n: int, size: int, fine_ratio: float) -> tuple:
    """A latent cache of n random rows (two views) in `folder`, and those rows as a batch."""
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(n, 2, CHANNELS, size, size, generator=g),
             torch.rand(n, 2, size // 2, size // 2, generator=g) < fine_ratio,
             torch.randint(0, CLASSES, (n,), generator=g))
    writer = CacheWriter(folder, {"train": n}, views=2, channels=CHANNELS, size=size)
    writer.add("train", *batch)
    writer.finish({"num_classes": CLASSES, "dvae_run": None, "dvae_digest": None})
    return LatentCache(folder), batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device) -> float:
    for _ in range(3):  # warm-up: kernels chosen, allocator filled
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def make_task(study: dict, kind: str, cache: LatentCache, device):
    torch.manual_seed(0)
    arch = architecture(study["specs"][kind], cache.latent, CLASSES,
                        study["diffusion"]["learn_sigma"])
    task = TASKS[kind](build(arch), study["specs"][kind], cache, study["diffusion"])
    task.to(device)
    return task


def train_seconds(task, batch, bf16: bool, steps: int, device) -> float:
    """Seconds per training step: the task's loss, backward and an AdamW step."""
    model, shard = task.model.train(), Shard(0, len(batch[0]), device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = torch.arange(len(batch[0]))

    def train_step():
        shard.begin(0, rows)
        with autocast(device, bf16):
            _, loss, _ = next(task.losses(batch, 0, shard))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(train_step, steps, device)


def forward_seconds(task, kind: str, batch, steps: int, device) -> float:
    """Seconds per sampling forward pass (bf16 autocast on CUDA), one view of the batch."""
    model = task.model.eval()
    z, grain, y = batch[0][:, 0], batch[1][:, 0], batch[2]
    t = torch.randint(0, 1000, (len(z),), device=device)
    extra = (grain,) if kind == "d2it" else ()

    @torch.no_grad()
    def forward():
        with autocast(device, True):
            model(z, t, y, *extra)

    return timed(forward, steps, device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default=None, help="model size (default: XL on CUDA, tiny on the CPU)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px at f = 8)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fine-ratio", type=float, default=0.5)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("XL" if device.type == "cuda" else "tiny")
    study = study_of(size)
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"{device} ({where}), size {size}, batch {args.batch}, "
          f"latent {args.latent}x{args.latent}x{CHANNELS}, fine ratio {args.fine_ratio}")
    with tempfile.TemporaryDirectory() as tmp:
        cache, batch = synthetic_cache(Path(tmp) / "latents", args.batch, args.latent,
                                       args.fine_ratio)
        batch = [t.to(device) for t in batch]
        for kind in ("dit", "d2it"):
            task = make_task(study, kind, cache, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            train_s = train_seconds(task, batch, study["train"]["bf16"], args.steps, device)
            memory = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
                      else float("nan"))
            sample_s = forward_seconds(task, kind, batch, args.steps, device)
            params = sum(p.numel() for p in task.model.parameters())
            print(f"{kind:>5}: {params / 1e6:7.1f} M params | train {args.batch / train_s:8.1f} "
                  f"img/s ({1e3 * train_s:6.1f} ms/step, peak {memory:5.1f} GiB) | "
                  f"sampling forward {args.batch / sample_s:8.1f} img/s")
            del task
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
