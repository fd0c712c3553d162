"""Sampling: N images from a stage-2 run's EMA weights, written as an ADM-compatible .npz and a PNG grid.

Sample i draws its label, grain map and noise from generators seeded by (seed, stream, i) only, so
the sample set is the same whatever the batch size or number of processes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from d2it.data.manifest import write_json_atomic
from d2it.diffusion import GaussianDiffusion, guided
from d2it.errors import D2itError
from d2it.grain import multigrain_noise, project_coarse, randn
from d2it.report.figures import write_grid
from d2it.stage1 import load_dvae, to_uint8
from d2it.stage2 import SECTION, build_model, load_cache
from d2it.train import Distributed, autocast, load_final


def generators(seed: int, stream: str, indices) -> list[torch.Generator]:
    def one(i):
        key = hashlib.sha256(f"{seed}:{stream}:{i}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))
    return [one(i) for i in indices]


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def load_stage2(run_dir: Path, cache: dict) -> tuple[torch.nn.Module, dict]:
    weights, run = load_final(run_dir)
    config = {SECTION[run["kind"]]: run["model"], "diffusion": run["diffusion"]}
    model = build_model(run["kind"], config, cache)
    model.load_state_dict(weights)
    return model.eval(), run


def _sampler(config: dict, learn_sigma: bool):
    d = config["diffusion"]
    diffusion = GaussianDiffusion.dit(d["timesteps"], d["sampling_steps"], learn_sigma)
    return diffusion.ddpm_sample if d["sampler"] == "ddpm" else diffusion.ddim_sample


def _with_guidance(model, config: dict, num_classes: int):
    scale = config["diffusion"]["cfg_scale"]
    if scale == 1:
        return model
    if model.y_embedder.embedding_table.num_embeddings == num_classes:
        raise D2itError(f"diffusion.cfg_scale = {scale} needs a class-conditional model trained with class dropout")
    return guided(model, num_classes, scale, config["diffusion"]["cfg_channels"])


class SampleJob:
    """Everything needed to draw samples i in idx: models, sampler, grain source, per-sample seeds."""

    def __init__(self, config: dict, run_dir: Path, cache_path: Path, grain_run: Path | None, device: torch.device):
        self.cache = cache = load_cache(cache_path)
        model, run = load_stage2(run_dir, cache)
        self.kind, self.s, self.device = run["kind"], config["sample"], device
        if self.kind == "grain":
            raise D2itError(f"{run_dir} is a grain model; sample a dit or d2it run")
        self.source = self.s["grain_source"] if self.kind == "d2it" else "gt"  # DiT ignores the map
        if self.source == "predicted":
            if grain_run is None:
                raise D2itError("sample.grain_source = predicted needs --grain-run (a trained grain model)")
            self.grain_model = load_stage2(grain_run, cache)[0].to(device)
        self.params = {"params_M": _millions(model)} | (
            {"grain_params_M": _millions(self.grain_model)} if self.source == "predicted" else {})
        self.dvae = load_dvae(Path(cache["dvae_run"]))[0].to(device)
        self.num_classes, (_, _, self.channels, self.size, _) = cache["num_classes"], cache["latents"]["train"].shape
        self.config, self.sampler = config, _sampler(config, run["diffusion"]["learn_sigma"])
        self.model = _with_guidance(model.to(device), config, self.num_classes)
        self.fine_rate = cache["grain"]["train"].float().mean().item()
        self.multigrain = self.kind == "d2it" and run["model"]["multigrain_noise"]

    def grain(self, idx, labels) -> torch.Tensor:
        side, seeds = self.size // 2, generators(self.s["seed"], "grain", idx)
        if self.source == "gt":  # held-out images' maps, in order
            heldout = self.cache["grain"]["heldout"][:, 0]
            return heldout[torch.tensor(idx) % len(heldout)].to(self.device)
        if self.source == "random":  # each region fine with the dataset's fine fraction
            return torch.stack([torch.rand(side, side, generator=g) < self.fine_rate for g in seeds]).to(self.device)
        sampler = _sampler(self.config, self.grain_model.out_channels == 2)
        x = sampler(lambda x, t: self.grain_model(x, t, labels), lambda sh: randn(sh, seeds).to(self.device),
                    (len(idx), 1, side, side))
        return x[:, 0] > 0

    @torch.no_grad()
    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images N x H x W x 3, labels and grain maps of samples idx."""
        labels = torch.stack([torch.randint(self.num_classes, (), generator=g)
                              for g in generators(self.s["seed"], "label", idx)]).to(self.device)
        grain = self.grain(idx, labels)
        gens = generators(self.s["seed"], "noise", idx)
        if self.multigrain:
            noise_fn, project = (lambda sh: multigrain_noise(sh, grain.cpu(), gens).to(self.device),
                                 lambda x: project_coarse(x, grain))
        else:
            noise_fn, project = (lambda sh: randn(sh, gens).to(self.device)), (lambda x: x)
        extra = {"grain": grain} if self.kind == "d2it" else {}

        def model(x, t):
            with autocast(self.device, self.s["bf16"]):
                return self.model(x, t, labels, **extra).float()  # the sampler's arithmetic stays fp32

        z = self.sampler(model, noise_fn, (len(idx), self.channels, self.size, self.size), project)
        images = to_uint8(self.dvae.decode(z / self.cache["scale_factor"])).permute(0, 2, 3, 1)
        return images.cpu(), labels.cpu(), grain.cpu()


def _indices(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Sample indices drawn by `rank`: every world-th batch."""
    return [i for b in range(0, n, batch_size)[rank::world] for i in range(b, min(n, b + batch_size))]


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sample(config: dict, run_dir: Path, cache_path: Path, out: Path, grain_run: Path | None = None) -> dict:
    """Write N samples to `out` (.npz: arr_0, labels, grain) with a PNG grid and a JSON beside it.
    Under torchrun each process draws every world-th batch; rank 0 merges the parts in order."""
    dist = Distributed()
    job = SampleJob(config, run_dir, cache_path, grain_run, dist.device)
    s, out = config["sample"], Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    starts = range(0, s["n"], s["batch_size"])[dist.rank::dist.world]
    if not starts:
        raise D2itError(f"{s['n']} samples in batches of {s['batch_size']} leave process {dist.rank} of "
                        f"{dist.world} without a batch: lower sample.batch_size")
    parts = [job.batch(range(i, min(s["n"], i + s["batch_size"])))
             for i in tqdm(starts, desc=f"sample {job.kind}", unit="batch", disable=not dist.main)]
    arrays = {k: torch.cat([p[j] for p in parts]).numpy() for j, k in enumerate(("arr_0", "labels", "grain"))}
    if dist.world > 1:
        _save_npz(out.with_name(f"{out.stem}.part{dist.rank}.npz"), **arrays)
        dist.barrier()
        if not dist.main:
            return {}
        loaded = [np.load(out.with_name(f"{out.stem}.part{r}.npz")) for r in range(dist.world)]
        held = np.concatenate([_indices(s["n"], s["batch_size"], r, dist.world) for r in range(dist.world)])
        order = np.argsort(held)
        arrays = {k: np.concatenate([part[k] for part in loaded])[order] for k in ("arr_0", "labels", "grain")}
        for r in range(dist.world):
            out.with_name(f"{out.stem}.part{r}.npz").unlink()
    _save_npz(out, **arrays)
    grid = out.with_suffix(".png")
    write_grid(arrays["arr_0"][:64], arrays["grain"][:64], grid)
    d = config["diffusion"]
    result = {"samples": str(out), "grid": str(grid), "n": len(arrays["arr_0"]), "kind": job.kind, "run": str(run_dir),
              **job.params,
              "grain_source": job.source if job.kind == "d2it" else None,
              "fine_fraction": float(arrays["grain"].mean()), "gt_fine_fraction_train": job.fine_rate,
              "seed": s["seed"], "cfg_scale": d["cfg_scale"], "sampler": d["sampler"],
              "sampling_steps": d["sampling_steps"], "bf16": s["bf16"] and dist.device.type == "cuda",
              "world_size": dist.world}
    write_json_atomic(out.with_suffix(".json"), result)
    return result
