"""Stage 2 jobs: train the DiT baseline, the Dynamic Content Transformer (D²iT) and the Dynamic
Grain Transformer on a DVAE's latent cache."""
from __future__ import annotations

from pathlib import Path

import torch

from d2it.data.folder import loader_workers
from d2it.data.manifest import sha256_file
from d2it.diffusion import GaussianDiffusion
from d2it.errors import D2itError
from d2it.grain import block_mean, expand, merge
from d2it.models.dct import dct
from d2it.nn.dit import DiT
from d2it.train import seed_all, train

KINDS = ("dit", "d2it", "grain")
SECTION = {"dit": "dit", "d2it": "d2it", "grain": "grain_model"}


def load_cache(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise D2itError(f"{path}: latent cache not found (make it with `d2it encode`)")
    return torch.load(path, map_location="cpu", weights_only=False)


def dynamic_grain_loss(loss_map: torch.Tensor, grain: torch.Tensor, coarse_weight: float, fine_weight: float):
    """λ_c · mean over coarse regions (each counted once, not 4x) + λ_f · mean over fine positions.
    loss_map: B x H x W on the fine grid, identical within each coarse 2x2 block."""
    coarse = block_mean(loss_map[:, None])[:, 0][~grain]
    fine = loss_map[expand(grain)]
    terms = [w * v.mean() for w, v in ((coarse_weight, coarse), (fine_weight, fine)) if v.numel()]
    return sum(terms)


def build_model(kind: str, config: dict, cache: dict) -> torch.nn.Module:
    """The network of one stage-2 kind, sized for the cache's latents and classes."""
    _, _, channels, size, _ = cache["latents"]["train"].shape
    classes = cache["num_classes"]
    section = config[SECTION[kind]]
    dropout = section["class_dropout"] if classes > 1 else 0.0  # unconditional (FFHQ): no null class
    common = dict(num_classes=classes, class_dropout_prob=dropout, learn_sigma=config["diffusion"]["learn_sigma"])
    if kind == "dit":
        from baselines.dit import SIZES  # the registry is the only place that knows baselines and d2it
        depth, hidden, heads = SIZES[section["size"]]
        return DiT(input_size=size, patch_size=section["patch"], in_channels=channels, hidden_size=hidden,
                   depth=depth, num_heads=heads, **common)
    if kind == "d2it":
        extra = {k: section[k] for k in ("depth", "refine_depth") if section[k] is not None}
        return dct(section["size"], input_size=size, in_channels=channels, routing=section["routing"],
                   learnable_pos=section["learnable_pos"], **extra, **common)
    return DiT(input_size=size // 2, patch_size=1, in_channels=1, hidden_size=section["hidden"],
               depth=section["depth"], num_heads=section["heads"], **common)


class LatentDiffusionTask:
    """One stage-2 model trained with DiT's hybrid loss on cached latents (or grain maps)."""

    def __init__(self, kind: str, config: dict, cache: dict):
        self.name, self.kind, self.cfg = kind, kind, config[SECTION[kind]]
        self.scale = cache["scale_factor"]
        self.model = build_model(kind, config, cache)
        self.modules = self.phases = {"model": self.model}
        self.diffusion = GaussianDiffusion.dit(config["diffusion"]["timesteps"], learn_sigma=config["diffusion"]["learn_sigma"])
        self.dataset = torch.utils.data.TensorDataset(cache["latents"]["train"], cache["grain"]["train"],
                                                      cache["labels"]["train"])
        self.net = self.model

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def distribute(self, wrap) -> None:
        self.net = wrap(self.model)

    def losses(self, batch, step: int, shard):
        latents, grains, labels = batch
        n = len(latents)
        rows, view = torch.arange(n, device=latents.device), shard.randint(latents.shape[1], n)  # identity or mirror
        z, grain = latents[rows, view] * self.scale, grains[rows, view]
        t = shard.randint(self.diffusion.num_timesteps, n)
        drop = shard.rand(n) < self.model.y_embedder.dropout  # class dropout for guidance
        if self.kind == "grain":
            x0 = grain[:, None].float() * 2 - 1
        else:
            x0 = z
        if self.kind == "d2it" and self.cfg["multigrain_noise"]:
            noise = merge(shard.randn(n, *z.shape[1:]), shard.randn(n, z.shape[1], *grain.shape[1:]), grain)
        else:
            noise = shard.randn(n, *x0.shape[1:])
        if self.kind == "d2it":
            model_fn = lambda x, tt: self.net(x, tt, labels, grain, force_drop_ids=drop)  # noqa: E731
        else:
            model_fn = lambda x, tt: self.net(x, tt, labels, force_drop_ids=drop)  # noqa: E731
        maps = self.diffusion.training_maps(model_fn, x0, t, noise)
        if self.kind == "d2it" and self.cfg["dynamic_grain_loss"]:
            parts = {k: dynamic_grain_loss(m, grain, self.cfg["coarse_weight"], self.cfg["fine_weight"])
                     for k, m in maps.items()}
        else:
            parts = {k: m.mean() for k, m in maps.items()}
        loss = sum(parts.values())
        yield "model", loss, {**{k: v.item() for k, v in parts.items()}, "loss": loss.item()}


def run_config(kind: str, config: dict, cache_path: Path) -> dict:
    return {"seed": config["seed"], "kind": kind, "model": config[SECTION[kind]],
            "diffusion": {k: config["diffusion"][k] for k in ("timesteps", "learn_sigma")},
            "latents": str(cache_path), "latents_sha256": sha256_file(cache_path)}


def train_latent_model(kind: str, config: dict, cache_path: Path, out: Path) -> dict:
    if kind not in KINDS:
        raise D2itError(f"unknown model kind {kind!r} (one of {', '.join(KINDS)})")
    cache = load_cache(cache_path)
    seed_all(config["seed"])
    task = LatentDiffusionTask(kind, config, cache)
    return train(task, config[SECTION[kind]]["train"], out, run_config(kind, config, Path(cache_path)),
                 config["tracking"], config["seed"], loader_workers(config["data"]["num_workers"]))

