"""What a study costs before it runs: FLOPs per forward of each network, GPU-hours of each run
and sample set.

FLOPs are counted by torch.utils.flop_counter (as `d2it bench` does) on one forward of the network
built on the meta device, so nothing is allocated and no weights are read. A training step costs
three forwards (the backward about two); a sampling step one, two with classifier-free guidance.
GPU-hours divide the FLOPs by a GPU's dense bf16 peak at an assumed model-FLOPs utilisation.
The DVAE's perceptual and GAN losses and the metrics' feature extraction are left out.
"""
from __future__ import annotations

import json
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from d2it.models import build, dvae_architecture, latent_geometry

# Data-sheet dense bf16 peaks (TFLOP/s) of the GPUs `d2it bench` knows by name.
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1,
               "A10G": 125.0, "RTX 4090": 165.2}
# GPU-hours are H100-hours at 25 %: DiT-XL/2 at batch 64, bf16 eager, trained at 340 img/s on one
# H200 (README benchmarks), which is 24 % of this peak at 712 GFLOP per image and step.
PEAK_FLOPS = PEAK_TFLOPS["H100"] * 1e12
MFU = 0.25
ASSUMES = "H100 bf16 peak 989 TFLOP/s at 25 % MFU; DVAE losses' networks and metrics left out"


def _inputs(arch: dict) -> tuple:
    """One image's inputs to a network of this architecture (on the current device)."""
    if arch["kind"] == "dvae":
        side = arch["resolution"]
        coarse = latent_geometry(arch["preset"], side)["size"] // 2  # one cell per 2x2 latents
        return torch.zeros(1, 3, side, side), torch.ones(1, coarse, coarse, dtype=torch.bool)
    side = arch["input_size"]
    x = torch.zeros(1, arch["in_channels"], side, side)
    t = torch.zeros(1, dtype=torch.long)
    y = torch.zeros(1, dtype=torch.long)
    if arch["kind"] == "d2it":
        return x, t, y, torch.ones(1, side // 2, side // 2, dtype=torch.bool)
    return x, t, y


@cache
def _forward_flops(arch_json: str) -> float:
    arch = json.loads(arch_json)
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        build(arch)(*_inputs(arch))
    return float(counter.get_total_flops())


def forward_flops(arch: dict) -> float:
    """FLOPs of one forward of one image through the network of `arch`."""
    return _forward_flops(json.dumps(arch, sort_keys=True))


def gpu_hours(flops: float) -> float:
    return flops / (PEAK_FLOPS * MFU) / 3600


def rounded(hours: float) -> float:
    """Three significant digits: tiny studies cost thousandths of an hour."""
    return float(f"{hours:.3g}")


def run_flops(run, resolution: int) -> float:
    """FLOPs of a training run: three forwards per image and step."""
    if run.stage == "dvae":
        arch = dvae_architecture(run.identity["dvae"]["preset"], resolution, run.fine_ratio)
    else:
        arch = run.identity["model"]["arch"]
    train = run.identity["train"]
    return 3 * forward_flops(arch) * train["batch_size"] * train["steps"]


def sample_set_flops(ss) -> float:
    """FLOPs of a sample set: one forward per sample and step (two with guidance), and the grain
    model's unguided sampling of the maps of a D²iT set."""
    s = ss.settings
    guided = 2 if s["cfg_scale"] > 1 else 1
    flops = forward_flops(ss.run.identity["model"]["arch"]) * s["n"] * s["steps"] * guided
    if ss.grain_run is not None:
        flops += forward_flops(ss.grain_run.identity["model"]["arch"]) * s["n"] * s["steps"]
    return flops


def plan_cost(plan) -> dict:
    """GPU-hours of a study's training runs (DVAEs apart) and sample sets, and the part of them
    that the training seeds beyond the first add."""
    resolution = plan.study["data"]["resolution"]
    first = min((run.seed for run in plan.runs.values()), default=0)
    hours = {"dvae": 0.0, "train": 0.0, "sample": 0.0, "beyond_first_seed": 0.0}
    for run in plan.runs.values():
        found = gpu_hours(run_flops(run, resolution))
        hours["dvae" if run.stage == "dvae" else "train"] += found
        hours["beyond_first_seed"] += found if run.seed != first else 0.0
    for ss in plan.sample_sets.values():
        found = gpu_hours(sample_set_flops(ss))
        hours["sample"] += found
        hours["beyond_first_seed"] += found if ss.run.seed != first else 0.0
    total = hours["dvae"] + hours["train"] + hours["sample"]
    return {"study": plan.name, "runs": len(plan.runs), "sample_sets": len(plan.sample_sets),
            "gpu_hours": {k: rounded(v) for k, v in {**hours, "total": total}.items()},
            "gpu_hours_assume": ASSUMES}
