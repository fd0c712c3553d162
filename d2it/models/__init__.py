"""Every network of the harness, built by `build(arch)` from an architecture spec: `kind` plus the
constructor's arguments. Checkpoints store it, so a run's network is rebuilt from its file alone.

| kind     | network                                               | module      |
|----------|-------------------------------------------------------|-------------|
| dit      | the DiT baseline                                      | dit.py      |
| d2it     | D²iT's Dynamic Content Transformer                    | d2it.py     |
| grain    | D²iT's Dynamic Grain Transformer (a DiT over grain maps) | dit.py   |
| dvae     | the Dynamic VAE of stage 1                            | dvae.py     |
| patchgan | the DVAE's PatchGAN discriminator                     | patchgan.py |
"""
from __future__ import annotations

import torch
import torch.nn as nn

from d2it.models import d2it, dit
from d2it.models.dvae import DVAE, PRESETS
from d2it.models.patchgan import PatchDiscriminator

BUILDERS = {
    "dit": dit.DiT,
    "d2it": d2it.DynamicContentTransformer,
    "grain": dit.DiT,
    "dvae": DVAE,
    "patchgan": PatchDiscriminator,
}


def build(arch: dict) -> nn.Module:
    """The network of an architecture spec ({"kind": ..., **constructor arguments})."""
    args = {k: v for k, v in arch.items() if k != "kind"}
    return BUILDERS[arch["kind"]](**args)


def count_parameters(arch: dict) -> int:
    """Parameters of the network, counted on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build(arch).parameters())


def latent_geometry(preset: str, resolution: int) -> dict:
    """Channels and side of the (fine-grid) latent a DVAE preset makes of images of `resolution`."""
    arch = PRESETS[preset]
    return {"channels": arch["latent_channels"], "size": resolution // arch["fine_factor"]}


def architecture(spec: dict, latent: dict, classes: int, learn_sigma: bool) -> dict:
    """The architecture spec of a study's model spec (`specs.<name>`) on latents {channels, size}.
    Unconditional data (one class) or an unconditional spec has no null class to drop labels to."""
    classes = classes if spec.get("conditional", True) else 1
    common = {"num_classes": classes, "learn_sigma": learn_sigma,
              "class_dropout_prob": spec["class_dropout"] if classes > 1 else 0.0}
    if spec["kind"] == "dit":
        depth, hidden, heads = dit.SIZES[spec["size"]]
        return {"kind": "dit", "input_size": latent["size"], "patch_size": spec["patch"],
                "in_channels": latent["channels"], "hidden_size": hidden, "depth": depth,
                "num_heads": heads, **common}
    if spec["kind"] == "d2it":
        depth, refine, hidden, heads = d2it.SIZES[spec["size"]]
        depth = spec["depth"] if spec["depth"] is not None else depth
        refine = spec["refine_depth"] if spec["refine_depth"] is not None else refine
        return {"kind": "d2it", "input_size": latent["size"], "in_channels": latent["channels"],
                "hidden_size": hidden, "depth": depth, "refine_depth": refine, "num_heads": heads,
                "routing": spec["routing"], "learnable_pos": spec["learnable_pos"], **common}
    # The grain model: one token per grain region, one channel (the ±1 map).
    return {"kind": "grain", "input_size": latent["size"] // 2, "patch_size": 1, "in_channels": 1,
            "hidden_size": spec["hidden"], "depth": spec["depth"], "num_heads": spec["heads"],
            **common}


def dvae_architecture(preset: str, resolution: int, fine_ratio: float) -> dict:
    """A DVAE; fine_ratio = 1 makes the fixed-rate VAE (no coarse head)."""
    return {"kind": "dvae", "preset": preset, "resolution": resolution, "dual": fine_ratio < 1}
