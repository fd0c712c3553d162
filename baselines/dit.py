"""The DiT baseline's official registry (DiT-XL/2 ... DiT-S/8, facebookresearch/DiT's `DiT_models`)
and its checkpoints, on the network of d2it.models.dit."""
from __future__ import annotations

import torch

from d2it.models.dit import SIZES, DiT


def dit(name: str, **kwargs) -> DiT:
    """DiT-{XL,L,B,S,tiny}/{2,4,8}, e.g. dit("XL/2", input_size=32, num_classes=1000)."""
    size, patch = name.split("/")
    depth, hidden, heads = SIZES[size]
    return DiT(depth=depth, hidden_size=hidden, patch_size=int(patch), num_heads=heads, **kwargs)


MODELS = {f"DiT-{size}/{p}": (lambda s=size, p=p, **kw: dit(f"{s}/{p}", **kw))
          for size in SIZES for p in (2, 4, 8)}


def official_state(path) -> dict:
    """The weights of a checkpoint of the official DiT code, unconverted: a released state dict
    (e.g. DiT-XL-2-256x256.pt) or a training checkpoint {"model", "ema", "opt", "args"} (EMA
    taken)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["ema"] if "ema" in state else state


def load_official(path, model: DiT, state: dict | None = None) -> DiT:
    """Load a checkpoint of the official DiT code into `model` (`state`: its weights, already
    read with official_state)."""
    model.load_state_dict(official_state(path) if state is None else state, strict=True)
    return model
