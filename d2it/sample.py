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

from d2it.data.latents import LatentCache
from d2it.files import atomic, read_json, write_json_atomic
from d2it.diffusion import GaussianDiffusion, guided
from d2it.errors import D2itError
from d2it.grain import multigrain_noise, project_coarse, randn
from d2it.models import build
from d2it.report.figures import write_grid
from d2it.rng import generator
from d2it.stage1 import load_dvae, to_uint8
from d2it.study import SAMPLE_IDENTITY, grain_maps_of, run_digest
from d2it.device import Distributed, autocast, compile_network
from d2it.run_folder import fit_weights, load_final, load_snapshot, snapshot_path

SETTINGS = (*SAMPLE_IDENTITY, "batch_size", "compile")  # compile: how, not what
# Settings a sampling record holds as drawn (`draw`), which the plan's must equal.
RECORDED = ("seed", "cfg_scale", "cfg_channels", "sampler", "steps", "classes", "at_step", "n")


def generators(seed: int, stream: str, indices) -> list[torch.Generator]:
    return [generator(seed, stream, i) for i in indices]


def load_stage2(run_dir: Path, kinds: tuple[str, ...],
                at_step: int | None = None) -> tuple[torch.nn.Module, dict]:
    """A finished stage-2 run's EMA network (at the end, or as kept at step `at_step`), in eval
    mode, and its record."""
    weights, record = load_final(run_dir)
    kind = record.get("arch", {}).get("kind")
    if kind not in kinds:
        raise D2itError(f"{run_dir}: a {kind or 'pre-study'} run, expected {' or '.join(kinds)}")
    path = Path(run_dir) / "final.pt"
    if at_step is not None:
        weights = load_snapshot(run_dir, at_step)
        path = snapshot_path(run_dir, at_step)
    model = build(record["arch"])
    fit_weights(model, weights, path, kind)
    return model.eval(), record


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _sampler(diffusion: dict, s: dict, learn_sigma: bool):
    process = GaussianDiffusion.dit(diffusion["timesteps"], s["steps"], learn_sigma)
    return process.ddpm_sample if s["sampler"] == "ddpm" else process.ddim_sample


class DiTSampling:
    """Samples i in idx of a DiT run: label, noise and the reverse chain from (seed, i) only,
    decoded by the DVAE the run trained on. DiT has no grain map: its grid shows all fine."""

    def __init__(self, run_dir: Path, model: torch.nn.Module, record: dict, settings: dict,
                 device: torch.device):
        self.s, self.device, self.latent = settings, device, record["latent"]
        self.classes = record["arch"]["num_classes"]  # 1: unconditional (data or spec)
        self.params = {"params_M": _millions(model)}
        self.dvae, dvae_record = load_dvae(Path(self.latent["dvae_run"]))
        if run_digest(dvae_record["identity"]) != run_digest(record["identity"]["dvae"]):
            raise D2itError(f"{self.latent['dvae_run']}: not the DVAE run {run_dir} was trained on")
        self.dvae.to(device)
        self.sampler = _sampler(record["identity"]["diffusion"], settings,
                                record["arch"]["learn_sigma"])
        self.model = model.to(device)
        self.params["network"] = compile_network(model, settings["compile"], device)
        if settings["cfg_scale"] != 1:
            if model.y_embedder.embedding_table.num_embeddings == self.classes:
                raise D2itError(f"cfg_scale = {settings['cfg_scale']} needs a class-conditional "
                                "model trained with class dropout")
            self.model = guided(self.model, self.classes, settings["cfg_scale"],
                                settings["cfg_channels"])

    @property
    def side(self) -> int:
        """Side of the grain map (one cell per 2x2 latent block)."""
        return self.latent["size"] // 2

    def labels(self, idx, stream: str = "label") -> torch.Tensor:
        if self.s["classes"]:
            return torch.tensor([self.s["classes"][i % len(self.s["classes"])] for i in idx])
        return torch.stack([torch.randint(self.classes, (), generator=g)
                            for g in generators(self.s["seed"], stream, idx)])

    def grain(self, idx, labels) -> torch.Tensor:
        return torch.ones(len(idx), self.side, self.side, dtype=torch.bool, device=self.device)

    def noise(self, grain: torch.Tensor, gens: list):
        """(noise of a shape, projection after each reverse step)."""
        return (lambda shape: randn(shape, gens).to(self.device)), (lambda x: x)

    def forward(self, x, t, labels, grain):
        return self.model(x, t, labels)

    @torch.no_grad()
    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images N x H x W x 3, labels and grain maps of samples idx."""
        labels = self.labels(idx).to(self.device)
        grain = self.grain(idx, labels).to(self.device)
        noise, project = self.noise(grain, generators(self.s["seed"], "noise", idx))

        def model(x, t):
            with autocast(self.device, self.s["bf16"]):
                return self.forward(x, t, labels, grain).float()  # the sampler's arithmetic is fp32

        shape = (len(idx), self.latent["channels"], self.latent["size"], self.latent["size"])
        z = self.sampler(model, noise, shape, project)
        images = to_uint8(self.dvae.decode(z / self.latent["scale_factor"])).permute(0, 2, 3, 1)
        return images.cpu(), labels.cpu(), grain.cpu()


class D2iTSampling(DiTSampling):
    """Samples of a D²iT run: a grain map per sample (predicted by the grain model, a held-out
    image's with that image's label, or random at the data's fine fraction), multi-grained noise
    with coarse blocks projected back after every step, the map given to the network."""

    def __init__(self, run_dir, model, record, settings, device, grain_run: Path | None):
        super().__init__(run_dir, model, record, settings, device)
        self.source = settings["grain_source"]
        self.multigrain = record["identity"]["model"]["multigrain_noise"]
        if self.source == "predicted":
            if grain_run is None:
                raise D2itError("grain_source predicted needs a grain model run (--grain-run)")
            self.grain_model, grain_record = load_stage2(grain_run, ("grain",))
            if grain_maps_of(grain_record["identity"]) != grain_maps_of(record["identity"]):
                raise D2itError(f"{grain_run}: trained on other grain maps than {run_dir}")
            self.grain_model.to(device)
            self.params["grain_params_M"] = _millions(self.grain_model)
            if settings["cfg_scale"] != 1 and (self.grain_model.y_embedder.embedding_table
                                               .num_embeddings > self.classes):
                # the grain map follows the row's guidance, as the content does
                self.grain_model = guided(self.grain_model, self.classes, settings["cfg_scale"])
            self.grain_sampler = _sampler(grain_record["identity"]["diffusion"], settings,
                                          grain_record["arch"]["learn_sigma"])
            self.params["grain_threshold"] = self.calibrate()
        if self.source == "gt":  # held-out maps, each with its own image's label
            cache = LatentCache(self.latent["cache"])
            self.heldout = (cache.array("heldout", "grain"), cache.array("heldout", "labels"))

    def labels(self, idx, stream: str = "label") -> torch.Tensor:
        if self.source != "gt" or self.classes == 1:
            return super().labels(idx, stream)
        labels = self.heldout[1]
        return torch.as_tensor(labels[np.asarray(idx) % len(labels)])

    def grain(self, idx, labels) -> torch.Tensor:
        if self.source == "gt":
            maps = self.heldout[0]
            return torch.as_tensor(maps[np.asarray(idx) % len(maps), 0])
        if self.source == "random":  # each region fine with the dataset's fine fraction
            fraction = self.latent["fine_fraction"]
            return torch.stack([torch.rand(self.side, self.side, generator=g) < fraction
                                for g in generators(self.s["seed"], "grain", idx)])
        return self.predicted(idx, labels, "grain") > self.params["grain_threshold"]

    def predicted(self, idx, labels, stream: str) -> torch.Tensor:
        """The grain model's continuous maps (N x side x side) of samples idx of a stream."""
        seeds = generators(self.s["seed"], stream, idx)
        shape = (len(idx), 1, self.side, self.side)
        x = self.grain_sampler(lambda x, t: self.grain_model(x, t, labels),
                               lambda sh: randn(sh, seeds).to(self.device), shape)
        return x[:, 0]

    @torch.no_grad()
    def calibrate(self) -> float:
        """Where the continuous maps are cut into fine and coarse: at the quantile of
        `grain_calibration` maps drawn for it (labels as the set's) that makes their fine fraction
        the one the content model trained on; at 0, the midpoint of the ±1 targets, when none."""
        count = self.s["grain_calibration"]
        if count == 0:
            return 0.0
        values = []
        for start in tqdm(range(0, count, self.s["batch_size"]), desc="calibrate", unit="batch"):
            idx = range(start, min(count, start + self.s["batch_size"]))
            labels = self.labels(idx, "calibration label").to(self.device)
            values.append(self.predicted(idx, labels, "calibration grain").flatten().float())
        return torch.quantile(torch.cat(values).cpu(), 1 - self.latent["fine_fraction"]).item()

    def noise(self, grain, gens):
        if not self.multigrain:
            return super().noise(grain, gens)
        return ((lambda shape: multigrain_noise(shape, grain.cpu(), gens).to(self.device)),
                (lambda x: project_coarse(x, grain)))

    def forward(self, x, t, labels, grain):
        return self.model(x, t, labels, grain=grain)


def sampling_job(run_dir: Path, settings: dict, grain_run: Path | None,
                 device: torch.device) -> DiTSampling:
    """The sampling of a DiT or D²iT run, rebuilt from its checkpoint."""
    model, record = load_stage2(run_dir, ("dit", "d2it"), settings.get("at_step"))
    if record["arch"]["kind"] == "d2it":
        return D2iTSampling(run_dir, model, record, settings, device, grain_run)
    return DiTSampling(run_dir, model, record, settings, device)


def _indices(n: int, batch_size: int, rank: int, world: int) -> list[range]:
    """The batches of sample indices process `rank` draws: every world-th batch."""
    return [range(b, min(n, b + batch_size)) for b in range(0, n, batch_size)[rank::world]]


def _save_npz(path: Path, **arrays) -> None:
    with atomic(path) as tmp:
        np.savez(tmp, **arrays)


def sample(run_dir: Path, settings: dict, out: Path, grain_run: Path | None = None,
           grid: Path | None = None, mark: str | None = None) -> dict:
    """Write N samples to `out` (.npz: arr_0, labels, grain), a JSON beside it and a PNG grid
    (`grid`, default beside it; under the study's mark). Under torchrun each process draws every
    world-th batch (none if there are fewer batches than processes); rank 0 merges the parts in
    sample order."""
    dist = Distributed()
    s = {k: settings[k] for k in SETTINGS if k != "at_step"}
    s["at_step"] = settings.get("at_step")  # a row's sampling has none
    job = sampling_job(Path(run_dir), s, grain_run, dist.device)
    return draw(job, dist, out, grid, {"run": str(run_dir),
                                       "grain_run": str(grain_run) if grain_run else None},
                mark)


def planned_record(found) -> dict:
    """The sampling record of a planned sample set (`found`: a study.SampleSet), read from the
    file the plan names and checked against the plan: samples of another run or drawn under
    other settings (a stale or swapped file) are one error naming the difference."""
    record = read_json(found.record, "sampling record", "redraw the sample set")
    expected = {"run": str(found.run.folder),
                "grain_run": str(found.grain_run.folder) if found.grain_run else None,
                **{k: found.settings.get(k) for k in RECORDED}}
    if record.get("kind") != "d2it":
        expected.pop("grain_run")
    wrong = [f"{k}: {record.get(k)!r}, planned {v!r}" for k, v in expected.items()
             if record.get(k) != v]
    if wrong:
        raise D2itError(f"{found.record}: these samples are not the planned set "
                        f"{found.name} ({'; '.join(wrong[:3])}); redraw it")
    return record


def draw(job: DiTSampling, dist: Distributed, out: Path, grid: Path | None, source: dict,
         mark: str | None = None) -> dict:
    """Draw a job's N samples into `out`, its JSON and grid; `source` says what was sampled."""
    s = job.s
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = ("arr_0", "labels", "grain")
    mine = _indices(s["n"], s["batch_size"], dist.rank, dist.world)
    parts = [job.batch(idx)
             for idx in tqdm(mine, desc="sample", unit="batch", disable=not dist.main)]
    if dist.world > 1:
        if parts:
            arrays = {k: torch.cat([p[j] for p in parts]).numpy() for j, k in enumerate(names)}
            _save_npz(out.with_name(f"{out.stem}.part{dist.rank}.npz"), **arrays)
        dist.barrier()
        if not dist.main:
            return {}
        ranks = [r for r in range(dist.world) if _indices(s["n"], s["batch_size"], r, dist.world)]
        loaded = [np.load(out.with_name(f"{out.stem}.part{r}.npz")) for r in ranks]
        held = [i for r in ranks for idx in _indices(s["n"], s["batch_size"], r, dist.world)
                for i in idx]
        order = np.argsort(held)
        arrays = {k: np.concatenate([part[k] for part in loaded])[order] for k in names}
        for r in ranks:
            out.with_name(f"{out.stem}.part{r}.npz").unlink()
    else:
        arrays = {k: torch.cat([p[j] for p in parts]).numpy() for j, k in enumerate(names)}
    _save_npz(out, **arrays)
    grid = Path(grid) if grid else out.with_suffix(".png")
    grid.parent.mkdir(parents=True, exist_ok=True)
    kind = "d2it" if isinstance(job, D2iTSampling) else "dit"
    write_grid(arrays["arr_0"][:64], arrays["grain"][:64] if kind == "d2it" else None, grid,
               mark=mark)
    result = {"samples": str(out), "grid": str(grid), "n": len(arrays["arr_0"]), "kind": kind,
              **source, **job.params,
              "grain_source": job.source if kind == "d2it" else None,
              "conditional": job.classes > 1,
              "fine_fraction": float(arrays["grain"].mean()),
              "gt_fine_fraction_train": job.latent["fine_fraction"],
              **{k: s[k] for k in ("seed", "cfg_scale", "cfg_channels", "sampler", "steps",
                                   "classes", "at_step")},
              "bf16": s["bf16"] and dist.device.type == "cuda", "world_size": dist.world}
    write_json_atomic(out.with_suffix(".json"), result)
    return result
