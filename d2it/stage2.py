"""Stage 2 jobs: train the DiT baseline, D²iT's Dynamic Content Transformer and its Dynamic Grain
Transformer on a DVAE's latent cache, one task class per model kind."""
from __future__ import annotations

from pathlib import Path

import torch

from d2it.data.folder import loader_workers
from d2it.data.latents import LatentCache
from d2it.diffusion import GaussianDiffusion
from d2it.errors import D2itError
from d2it.grain import block_mean, expand, merge
from d2it.models import build
from d2it.study import model_identity, run_digest, train_settings
from d2it.device import seed_all
from d2it.train import train


def dynamic_grain_loss(loss_map: torch.Tensor, grain: torch.Tensor, coarse_weight: float,
                       fine_weight: float) -> torch.Tensor:
    """Per image, λ_c · mean over its coarse regions (each counted once, not 4x) + λ_f · mean
    over its fine positions (a grain the image lacks adds 0), then the mean over images: a mean
    over images like DiT's loss, so any split of the batch over processes gives the same gradient.
    loss_map: B x H x W on the fine grid, identical within each coarse 2x2 block."""
    coarse = ~grain
    fine = expand(grain)
    coarse_sum = (block_mean(loss_map[:, None])[:, 0] * coarse).flatten(1).sum(1)
    fine_sum = (loss_map * fine).flatten(1).sum(1)
    coarse_mean = coarse_sum / coarse.flatten(1).sum(1).clamp_min(1)
    fine_mean = fine_sum / fine.flatten(1).sum(1).clamp_min(1)
    return (coarse_weight * coarse_mean + fine_weight * fine_mean).mean()


class DiTTask:
    """The DiT baseline: DiT's hybrid loss (ε MSE + L_vlb) over the whole latent."""
    name = "dit"

    def __init__(self, model: torch.nn.Module, spec: dict, cache: LatentCache, diffusion: dict):
        self.model = self.net = model
        self.spec, self.scale = spec, cache.scale_factor
        self.modules = self.phases = {"model": model}
        self.diffusion = GaussianDiffusion.dit(diffusion["timesteps"],
                                               learn_sigma=diffusion["learn_sigma"])
        self.dataset = cache.dataset("train")
        self.views = cache.meta["views"]

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def distribute(self, wrap) -> None:
        self.net = wrap(self.model)

    def target(self, latents: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
        """x0 the model learns to generate."""
        return latents * self.scale

    def noise(self, x0: torch.Tensor, grain: torch.Tensor, draws) -> torch.Tensor:
        return draws.randn(len(x0), *x0.shape[1:])

    def forward(self, x, t, labels, grain, drop):
        return self.net(x, t, labels, force_drop_ids=drop)

    def reduce(self, loss_map: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
        return loss_map.mean()

    def losses(self, batch, step: int, draws):
        latents, grains, labels = batch
        if self.model.y_embedder.num_classes == 1:
            labels = torch.zeros_like(labels)  # an unconditional model: one class, no dropout
        n = len(latents)
        rows = torch.arange(n, device=latents.device)
        view = draws.randint(self.views, n)  # the image or its mirror
        latents, grain = latents[rows, view], grains[rows, view]
        x0 = self.target(latents, grain)
        t = draws.randint(self.diffusion.num_timesteps, n)
        drop = draws.rand(n) < self.model.y_embedder.dropout  # class dropout for guidance
        noise = self.noise(x0, grain, draws)
        maps = self.diffusion.training_maps(lambda x, tt: self.forward(x, tt, labels, grain, drop),
                                            x0, t, noise)
        parts = {k: self.reduce(m, grain) for k, m in maps.items()}
        loss = sum(parts.values())
        yield "model", loss, {**{k: v.detach() for k, v in parts.items()}, "loss": loss.detach()}


class D2iTTask(DiTTask):
    """The Dynamic Content Transformer: multi-grained noise, the grain map as an input, and the
    dynamic grain loss (each switchable for the ablations)."""
    name = "d2it"

    def noise(self, x0, grain, draws):
        if not self.spec["multigrain_noise"]:
            return super().noise(x0, grain, draws)
        fine = draws.randn(len(x0), *x0.shape[1:])
        coarse = draws.randn(len(x0), x0.shape[1], *grain.shape[1:])
        return merge(fine, coarse, grain)

    def forward(self, x, t, labels, grain, drop):
        return self.net(x, t, labels, grain, force_drop_ids=drop)

    def reduce(self, loss_map, grain):
        if not self.spec["dynamic_grain_loss"]:
            return loss_map.mean()
        return dynamic_grain_loss(loss_map, grain, self.spec["coarse_weight"],
                                  self.spec["fine_weight"])


class GrainTask(DiTTask):
    """The Dynamic Grain Transformer: a class-conditional diffusion model of the ±1 grain map."""
    name = "grain"

    def target(self, latents, grain):
        return grain[:, None].float() * 2 - 1


TASKS = {"dit": DiTTask, "d2it": D2iTTask, "grain": GrainTask}


def run_record(study: dict, spec_name: str, seed: int, cache: LatentCache,
               fine_ratio: float | None = None) -> dict:
    """A stage-2 run's record (run.json, final.pt): its identity, the architecture that rebuilds
    the network and what sampling needs from the latent cache, so sampling reads no cache."""
    identity = model_identity(study, spec_name, seed, fine_ratio)
    if "dvae" in identity and cache.meta["dvae_digest"] != run_digest(identity["dvae"]):
        raise D2itError(f"{cache.folder}: made by another DVAE run ({cache.meta['dvae_run']}) than "
                        f"specs.{spec_name} at seed {seed} trains on")
    if ("grain_maps" in identity
            and cache.meta["grain_maps_digest"] != run_digest(identity["grain_maps"])):
        raise D2itError(f"{cache.folder}: holds other grain maps than specs.{spec_name} at fine "
                        f"ratio {fine_ratio} trains on")
    if cache.num_classes != study["data"]["classes"]:
        raise D2itError(f"data.classes = {study['data']['classes']}, but the dataset of "
                        f"{cache.folder} has {cache.num_classes}")
    return {"identity": identity, "digest": run_digest(identity),
            "inputs": {"latent_cache": cache.digest},  # a resume refuses another cache
            "arch": identity["model"]["arch"],  # the network as the identity names it
            "latent": {**cache.latent, "scale_factor": cache.scale_factor,
                       "classes": cache.num_classes, "fine_fraction": cache.fine_fraction,
                       "dvae_run": cache.meta["dvae_run"], "cache": str(cache.folder)}}


def train_model(study: dict, spec_name: str, seed: int, cache_dir: Path, out: Path,
                fine_ratio: float | None = None, snapshots: tuple[int, ...] = ()) -> dict:
    """Train one spec at one seed on the latent cache of its DVAE, keeping its EMA weights at the
    steps `snapshots`."""
    cache = LatentCache(cache_dir)
    record = run_record(study, spec_name, seed, cache, fine_ratio)
    seed_all(seed)  # the model's initial weights
    task = TASKS[record["arch"]["kind"]](build(record["arch"]), study["specs"][spec_name], cache,
                                          study["diffusion"])
    tracking = {**study["tracking"], "study": study["name"]}  # runs group under the study
    return train(task, train_settings(study, spec_name), out, record, tracking, seed,
                 loader_workers(study["data"]["num_workers"]), tuple(snapshots))
