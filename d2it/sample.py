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
from PIL import Image
from tqdm import tqdm

from d2it.data.manifest import write_json_atomic
from d2it.diffusion import GaussianDiffusion, guided
from d2it.errors import D2itError
from d2it.grain import multigrain_noise, project_coarse, randn
from d2it.stage1 import load_dvae, to_uint8
from d2it.stage2 import SECTION, build_model, load_cache
from d2it.train import load_final


def generators(seed: int, stream: str, indices) -> list[torch.Generator]:
    def one(i):
        key = hashlib.sha256(f"{seed}:{stream}:{i}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))
    return [one(i) for i in indices]


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


def sample_grain_maps(grain_model, config: dict, labels, seeds_gen, side: int) -> torch.Tensor:
    """The Dynamic Grain Transformer's maps: diffusion over the ±1 map, thresholded at 0 (no guidance)."""
    sampler = _sampler(config, grain_model.out_channels == 2)
    x = sampler(lambda x, t: grain_model(x, t, labels), lambda shape: randn(shape, seeds_gen), (len(labels), 1, side, side))
    return x[:, 0] > 0


@torch.no_grad()
def sample(config: dict, run_dir: Path, cache_path: Path, out: Path, grain_run: Path | None = None) -> dict:
    cache = load_cache(cache_path)
    model, run = load_stage2(run_dir, cache)
    kind, s = run["kind"], config["sample"]
    if kind == "grain":
        raise D2itError(f"{run_dir} is a grain model; sample a dit or d2it run")
    source = s["grain_source"]
    if kind == "d2it" and source == "predicted":
        if grain_run is None:
            raise D2itError("sample.grain_source = predicted needs --grain-run (a trained grain model)")
        grain_model, _ = load_stage2(grain_run, cache)
    dvae, _ = load_dvae(Path(cache["dvae_run"]))
    num_classes, (_, _, channels, size, _) = cache["num_classes"], cache["latents"]["train"].shape
    sampler = _sampler(config, run["diffusion"]["learn_sigma"])
    guided_model = _with_guidance(model, config, num_classes)
    fine_rate = cache["grain"]["train"].float().mean().item()
    heldout = cache["grain"]["heldout"][:, 0]
    multigrain = kind == "d2it" and run["model"]["multigrain_noise"]
    images, labels_all, grains_all = [], [], []
    for start in tqdm(range(0, s["n"], s["batch_size"]), desc=f"sample {kind}", unit="batch"):
        idx = range(start, min(s["n"], start + s["batch_size"]))
        labels = torch.stack([torch.randint(num_classes, (), generator=g) for g in generators(s["seed"], "label", idx)])
        if kind == "dit" or source == "gt":
            grain = heldout[torch.tensor(idx) % len(heldout)]
        elif source == "random":  # keeps the dataset's fine fraction
            grain = torch.stack([torch.rand(size // 2, size // 2, generator=g) < fine_rate
                                 for g in generators(s["seed"], "grain", idx)])
        else:
            grain = sample_grain_maps(grain_model, config, labels, generators(s["seed"], "grain", idx), size // 2)
        gens = generators(s["seed"], "noise", idx)
        shape = (len(idx), channels, size, size)
        if kind == "d2it":
            fn = lambda x, t: guided_model(x, t, labels, grain=grain)  # noqa: E731
        else:
            fn = lambda x, t: guided_model(x, t, labels)  # noqa: E731
        noise_fn = (lambda sh: multigrain_noise(sh, grain, gens)) if multigrain else (lambda sh: randn(sh, gens))
        project = (lambda x: project_coarse(x, grain)) if multigrain else (lambda x: x)
        z = sampler(fn, noise_fn, shape, project)
        images.append(to_uint8(dvae.decode(z / cache["scale_factor"])).permute(0, 2, 3, 1))
        labels_all.append(labels)
        grains_all.append(grain)
    arr = torch.cat(images).numpy()
    labels, grains = torch.cat(labels_all).numpy(), torch.cat(grains_all).numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, arr_0=arr, labels=labels, grain=grains)
    os.replace(tmp, out)
    grid_path = out.with_suffix(".png")
    write_grid(arr[:64], grains[:64], grid_path)
    result = {"samples": str(out), "grid": str(grid_path), "n": len(arr), "kind": kind, "run": str(run_dir),
              "grain_source": source if kind == "d2it" else None, "fine_fraction": float(grains.mean()),
              "gt_fine_fraction_train": fine_rate, "seed": s["seed"], "cfg_scale": config["diffusion"]["cfg_scale"],
              "sampler": config["diffusion"]["sampler"], "sampling_steps": config["diffusion"]["sampling_steps"]}
    write_json_atomic(out.with_suffix(".json"), result)
    return result


def overlay(image: np.ndarray, grain: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image tinted red where the grain is fine and blue where it is coarse (as the paper's Fig. 3)."""
    factor = image.shape[0] // grain.shape[0]
    mask = np.kron(grain.astype(np.uint8), np.ones((factor, factor), np.uint8)).astype(bool)
    tint = np.where(mask[..., None], np.array([255, 0, 0]), np.array([0, 0, 255]))
    return ((1 - alpha) * image + alpha * tint).round().astype(np.uint8)


def write_grid(images: np.ndarray, grains: np.ndarray, path: Path, columns: int = 8, zoom: int = 4) -> None:
    """Pairs of (sample, sample with its grain map) in rows of `columns` pairs."""
    cells = [np.concatenate([im, overlay(im, g)], 1) for im, g in zip(images, grains)]
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)
