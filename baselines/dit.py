"""The DiT baseline: the official sizes as a table of constructors, and official checkpoints."""
from __future__ import annotations

import torch

from d2it.nn.dit import DiT

SIZES = {  # depth, hidden, heads
    "XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6),
    "tiny": (4, 128, 4),  # the CPU study: ~1.3M parameters at 64 tokens, ~10 steps/s at batch 32 on 2 cores
}


def dit(name: str, **kwargs) -> DiT:
    """DiT-{XL,L,B,S,tiny}/{2,4,8}, e.g. dit("XL/2", input_size=32, num_classes=1000)."""
    size, patch = name.split("/")
    depth, hidden, heads = SIZES[size]
    return DiT(depth=depth, hidden_size=hidden, patch_size=int(patch), num_heads=heads, **kwargs)


MODELS = {f"DiT-{size}/{p}": (lambda s=size, p=p, **kw: dit(f"{s}/{p}", **kw)) for size in SIZES for p in (2, 4, 8)}


def load_official(path, model: DiT) -> DiT:
    """Load a checkpoint of the official DiT code into `model`, unconverted: a released state dict
    (e.g. DiT-XL-2-256x256.pt) or a training checkpoint {"model", "ema", "opt", "args"} (EMA taken)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["ema"] if "ema" in state else state, strict=True)
    return model
