"""Sampling: N images from a stage-2 run's EMA weights, written as an ADM-compatible .npz and a PNG
grid. Runs are self-describing: the network, the latent scale and the DVAE that decodes come from
the run's final.pt.

Sample i draws its label, grain map and noise from generators seeded by (seed, stream, i) only, so
the sample set is the same whatever the batch size or number of processes, and sample i of two
sets made with the same seed shares its label and noise (paired comparisons between rows).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from d2it.config import digest
from d2it.data.latents import LatentCache
from d2it.files import atomic, write_json_atomic
from d2it.diffusion import GaussianDiffusion, guided
from d2it.errors import D2itError
from d2it.grain import multigrain_noise, project_coarse, randn
from d2it.models import build
from d2it.report.figures import write_grid
from d2it.rng import generator
from d2it.stage1 import load_dvae, to_uint8
from d2it.train import Distributed, autocast, load_final

SETTINGS = ("sampler", "steps", "n", "cfg_scale", "cfg_channels", "grain_source", "seed", "bf16",
            "batch_size", "classes")


def generators(seed: int, stream: str, indices) -> list[torch.Generator]:
    return [generator(seed, stream, i) for i in indices]


def load_stage2(run_dir: Path, kinds: tuple[str, ...]) -> tuple[torch.nn.Module, dict]:
    """A finished stage-2 run's EMA network, in eval mode, and its record."""
    weights, record = load_final(run_dir)
    kind = record.get("arch", {}).get("kind")
    if kind not in kinds:
        raise D2itError(f"{run_dir}: a {kind or 'pre-study'} run, expected {' or '.join(kinds)}")
    model = build(record["arch"])
    model.load_state_dict(weights)
    return model.eval(), record


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _sampler(diffusion: dict, s: dict, learn_sigma: bool):
    process = GaussianDiffusion.dit(diffusion["timesteps"], s["steps"], learn_sigma)
    return process.ddpm_sample if s["sampler"] == "ddpm" else process.ddim_sample


class SampleJob:
    """Everything needed to draw samples i in idx: models, sampler, grain source, per-sample seeds."""

    def __init__(self, run_dir: Path, settings: dict, grain_run: Path | None, device: torch.device):
        model, record = load_stage2(run_dir, ("dit", "d2it"))
        self.kind, self.s, self.device = record["arch"]["kind"], settings, device
        self.latent, diffusion = record["latent"], record["identity"]["diffusion"]
        self.source = settings["grain_source"] if self.kind == "d2it" else "gt"  # DiT ignores maps
        if self.source == "predicted":
            if grain_run is None:
                raise D2itError("grain_source predicted needs a grain model run (--grain-run)")
            self.grain_model, grain_record = load_stage2(grain_run, ("grain",))
            if grain_record["identity"]["dvae"] != record["identity"]["dvae"]:
                raise D2itError(f"{grain_run}: trained on the grain maps of another DVAE than {run_dir}")
            self.grain_model.to(device)
            self.grain_sampler = _sampler(diffusion, settings, grain_record["arch"]["learn_sigma"])
        self.params = {"params_M": _millions(model)} | (
            {"grain_params_M": _millions(self.grain_model)} if self.source == "predicted" else {})
        self.dvae, dvae_record = load_dvae(Path(self.latent["dvae_run"]))
        if digest(dvae_record["identity"]) != digest(record["identity"]["dvae"]):
            raise D2itError(f"{self.latent['dvae_run']}: not the DVAE run {run_dir} was trained on")
        self.dvae.to(device)
        self.heldout = None
        if self.source == "gt" and self.kind == "d2it":  # held-out maps with their own labels
            cache = LatentCache(self.latent["cache"])
            self.heldout = (cache.array("heldout", "grain"), cache.array("heldout", "labels"))
        self.classes = self.latent["classes"]
        self.sampler = _sampler(diffusion, settings, record["arch"]["learn_sigma"])
        self.model = model.to(device)
        if settings["cfg_scale"] != 1:
            if model.y_embedder.embedding_table.num_embeddings == self.classes:
                raise D2itError(f"cfg_scale = {settings['cfg_scale']} needs a class-conditional model "
                                "trained with class dropout")
            self.model = guided(self.model, self.classes, settings["cfg_scale"],
                                settings["cfg_channels"])
        self.multigrain = self.kind == "d2it" and record["spec"]["multigrain_noise"]

    def labels(self, idx) -> torch.Tensor:
        if self.heldout is not None:  # a held-out image's map goes with that image's label
            return torch.as_tensor(self.heldout[1][np.asarray(idx) % len(self.heldout[1])])
        if self.s["classes"]:
            return torch.tensor([self.s["classes"][i % len(self.s["classes"])] for i in idx])
        return torch.stack([torch.randint(self.classes, (), generator=g)
                            for g in generators(self.s["seed"], "label", idx)])

    def grain(self, idx, labels) -> torch.Tensor:
        side = self.latent["size"] // 2
        if self.source == "gt":
            if self.heldout is None:  # DiT: the map is only drawn on the grid
                return torch.ones(len(idx), side, side, dtype=torch.bool)
            maps = self.heldout[0][np.asarray(idx) % len(self.heldout[0]), 0]
            return torch.as_tensor(maps).to(self.device)
        seeds = generators(self.s["seed"], "grain", idx)
        if self.source == "random":  # each region fine with the dataset's fine fraction
            fraction = self.latent["fine_fraction"]
            return torch.stack([torch.rand(side, side, generator=g) < fraction
                                for g in seeds]).to(self.device)
        x = self.grain_sampler(lambda x, t: self.grain_model(x, t, labels),
                               lambda sh: randn(sh, seeds).to(self.device), (len(idx), 1, side, side))
        return x[:, 0] > 0

    @torch.no_grad()
    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images N x H x W x 3, labels and grain maps of samples idx."""
        labels = self.labels(idx).to(self.device)
        grain = self.grain(idx, labels).to(self.device)
        gens = generators(self.s["seed"], "noise", idx)
        if self.multigrain:
            def noise_fn(shape):
                return multigrain_noise(shape, grain.cpu(), gens).to(self.device)

            def project(x):
                return project_coarse(x, grain)
        else:
            def noise_fn(shape):
                return randn(shape, gens).to(self.device)

            def project(x):
                return x
        extra = {"grain": grain} if self.kind == "d2it" else {}

        def model(x, t):
            with autocast(self.device, self.s["bf16"]):
                return self.model(x, t, labels, **extra).float()  # the sampler's arithmetic stays fp32

        shape = (len(idx), self.latent["channels"], self.latent["size"], self.latent["size"])
        z = self.sampler(model, noise_fn, shape, project)
        images = to_uint8(self.dvae.decode(z / self.latent["scale_factor"])).permute(0, 2, 3, 1)
        return images.cpu(), labels.cpu(), grain.cpu()


def _indices(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Sample indices drawn by `rank`: every world-th batch."""
    return [i for b in range(0, n, batch_size)[rank::world] for i in range(b, min(n, b + batch_size))]


def _save_npz(path: Path, **arrays) -> None:
    with atomic(path) as tmp:
        np.savez(tmp, **arrays)


def sample(run_dir: Path, settings: dict, out: Path, grain_run: Path | None = None,
           grid: Path | None = None) -> dict:
    """Write N samples to `out` (.npz: arr_0, labels, grain), a JSON beside it and a PNG grid
    (`grid`, default beside it). Under torchrun each process draws every world-th batch; rank 0
    merges the parts in order."""
    dist = Distributed()
    s = {k: settings[k] for k in SETTINGS}
    job = SampleJob(Path(run_dir), s, grain_run, dist.device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    starts = range(0, s["n"], s["batch_size"])[dist.rank::dist.world]
    if not starts:
        raise D2itError(f"{s['n']} samples in batches of {s['batch_size']} leave process {dist.rank} "
                        f"of {dist.world} without a batch: lower the sampling batch_size")
    parts = [job.batch(range(i, min(s["n"], i + s["batch_size"])))
             for i in tqdm(starts, desc=f"sample {job.kind}", unit="batch", disable=not dist.main)]
    names = ("arr_0", "labels", "grain")
    arrays = {k: torch.cat([p[j] for p in parts]).numpy() for j, k in enumerate(names)}
    if dist.world > 1:
        _save_npz(out.with_name(f"{out.stem}.part{dist.rank}.npz"), **arrays)
        dist.barrier()
        if not dist.main:
            return {}
        loaded = [np.load(out.with_name(f"{out.stem}.part{r}.npz")) for r in range(dist.world)]
        held = np.concatenate([_indices(s["n"], s["batch_size"], r, dist.world)
                               for r in range(dist.world)])
        order = np.argsort(held)
        arrays = {k: np.concatenate([part[k] for part in loaded])[order] for k in names}
        for r in range(dist.world):
            out.with_name(f"{out.stem}.part{r}.npz").unlink()
    _save_npz(out, **arrays)
    grid = Path(grid) if grid else out.with_suffix(".png")
    grid.parent.mkdir(parents=True, exist_ok=True)
    write_grid(arrays["arr_0"][:64], arrays["grain"][:64], grid)
    result = {"samples": str(out), "grid": str(grid), "n": len(arrays["arr_0"]), "kind": job.kind,
              "run": str(run_dir), "grain_run": str(grain_run) if grain_run else None, **job.params,
              "grain_source": job.source if job.kind == "d2it" else None,
              "fine_fraction": float(arrays["grain"].mean()),
              "gt_fine_fraction_train": job.latent["fine_fraction"],
              **{k: s[k] for k in ("seed", "cfg_scale", "cfg_channels", "sampler", "steps", "classes")},
              "bf16": s["bf16"] and dist.device.type == "cuda", "world_size": dist.world}
    write_json_atomic(out.with_suffix(".json"), result)
    return result
