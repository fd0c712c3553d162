"""Learning-rate and EMA schedules against their closed forms."""
import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from d2it.schedules import lr_factor, power_ema_fn, power_exponent


def test_lr_warmup_is_linear_then_constant_or_cosine_to_zero():
    assert [lr_factor(s, 100, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert lr_factor(10, 100, 0, "constant") == 1
    assert lr_factor(4, 100, 4, "cosine") == 1  # the first step after the warm-up
    assert lr_factor(52, 100, 4, "cosine") == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(99, 100, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 95 / 96)))
    assert lr_factor(99, 100, 4, "cosine") < 1e-3


@pytest.mark.parametrize("std", [0.05, 0.1, 0.2])
def test_power_exponent_solves_edm2s_relation(std):
    gamma = power_exponent(std)
    assert ((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) ** 0.5 == pytest.approx(std)
    if std == 0.1:
        assert gamma == pytest.approx(6.94, abs=0.01)  # EDM2's table


def test_power_ema_weighs_each_step_as_the_closed_form():
    """After t updates with weights theta_1..theta_t the average is sum_s w_s theta_s with
    w_s = (1 - (1 - 1/s)^(gamma+1)) (s/t)^(gamma+1): the initialisation has no weight, the weights
    sum to 1, and their relative std over s/t is the requested one."""
    std, t = 0.1, 400
    gamma = power_exponent(std)
    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, avg_fn=power_ema_fn(std), use_buffers=True)
    thetas = torch.randn(t, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for theta in thetas:
        model.weight.data.fill_(theta.item())
        ema.update_parameters(model)
    s = torch.arange(1, t + 1, dtype=torch.float64)
    w = (1 - (1 - 1 / s) ** (gamma + 1)) * (s / t) ** (gamma + 1)
    assert w.sum().item() == pytest.approx(1, abs=1e-12)
    assert ema.module.weight.item() == pytest.approx((w * thetas).sum().item(), rel=1e-5)
    mean = (w * s / t).sum()
    assert ((w * (s / t - mean) ** 2).sum().sqrt().item()) == pytest.approx(std, rel=0.02)
