"""Learning-rate and EMA schedules of the training loop.

DiT trains at a constant rate with a constant EMA decay (0.9999), which the paper-scale studies
keep. Short runs gain from a warm-up, a decay to zero, and an EMA whose length grows with the run:
at a constant 0.999 the initial weights still hold 5 % of the average at step 3000.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def lr_factor(step: int, steps: int, warmup: int, decay: str) -> float:
    """Multiplier of the base rate at optimiser step `step` (0-based) of `steps`: a linear warm-up
    over `warmup` steps, then constant or a cosine decay to 0 at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    if decay == "cosine":
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr decay {decay!r}")


def power_exponent(std: float) -> float:
    """EDM2's exponent gamma of the power-function EMA whose relative standard deviation is
    `std`: the largest real root of (gamma + 1) = std^2 (gamma + 2)^2 (gamma + 3)."""
    s2 = std**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[abs(roots.imag) < 1e-9].real
    gamma = real[real > -1]
    if len(gamma) == 0:
        raise ValueError(f"no power-function EMA has relative std {std} (at most about 0.28)")
    return float(gamma.max())


def power_ema_fn(std: float):
    """An AveragedModel `avg_fn`: at the t-th average (t = num_averaged + 1) the weight of the old
    average is (1 - 1/t)^(gamma + 1), so the average weighs the weights of step s by s^gamma
    (EDM2, Karras et al. 2024, eq. 4-5) and never keeps the initialisation."""
    gamma = power_exponent(std)

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        t = float(num_averaged) + 1
        beta = (1 - 1 / t) ** (gamma + 1)
        return averaged + (current - averaged) * (1 - beta)

    return avg_fn
