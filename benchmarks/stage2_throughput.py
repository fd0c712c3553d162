"""Training and sampling throughput of DiT and D²iT at one size, through the training loss the
runs use (DiT's hybrid loss, multi-grained noise, dynamic grain loss) on random latents.

    python benchmarks/stage2_throughput.py [--size XL] [--batch 32] [--latent 32] [--steps 20]

Prints per kind: parameters, training images/s (forward, backward, AdamW step; bf16 autocast on
CUDA), peak GPU memory, and the sampling forward passes' images/s. The paper's claim to check: D²iT
costs about what DiT does at the same size.
"""
import argparse
import time

import torch

from d2it import config
from d2it.stage2 import LatentDiffusionTask
from d2it.train import Shard, autocast


def synthetic_cache(n: int, channels: int, size: int, classes: int, fine_ratio: float) -> dict:
    g = torch.Generator().manual_seed(0)
    grain = torch.rand(n, 2, size // 2, size // 2, generator=g) < fine_ratio
    return {"latents": {"train": torch.randn(n, 2, channels, size, size, generator=g)}, "grain": {"train": grain},
            "labels": {"train": torch.randint(0, classes, (n,), generator=g)}, "num_classes": classes,
            "scale_factor": 1.0}


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
    cfg = config.validate({"dit": {"size": size}, "d2it": {"size": size}})
    cache = synthetic_cache(args.batch, 4, args.latent, 1000, args.fine_ratio)
    batch = [t.to(device) for t in (cache["latents"]["train"], cache["grain"]["train"], cache["labels"]["train"])]
    print(f"{device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"size {size}, batch {args.batch}, latent {args.latent}x{args.latent}x4, fine ratio {args.fine_ratio}")
    for kind in ("dit", "d2it"):
        torch.manual_seed(0)
        task = LatentDiffusionTask(kind, cfg, cache)
        task.to(device)
        model, shard = task.model.train(), Shard(0, 1, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            with autocast(device, cfg[kind]["train"]["bf16"]):
                _, loss, _ = next(task.losses(batch, 0, shard))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train_s = timed(train_step, args.steps, device)
        memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        z, grain, y = batch[0][:, 0], batch[1][:, 0], batch[2]
        t = torch.randint(0, 1000, (args.batch,), device=device)
        extra = (grain,) if kind == "d2it" else ()
        model.eval()

        @torch.no_grad()
        def forward():
            with autocast(device, True):
                model(z, t, y, *extra)

        sample_s = timed(forward, args.steps, device)
        params = sum(p.numel() for p in model.parameters())
        print(f"{kind:>5}: {params / 1e6:7.1f} M params | train {args.batch / train_s:8.1f} img/s "
              f"({1e3 * train_s:6.1f} ms/step, peak {memory:5.1f} GiB) | sampling forward {args.batch / sample_s:8.1f} img/s")
        del task, model, opt


if __name__ == "__main__":
    main()
