"""`train.batch_gpu: auto`: the per-GPU batch chosen by bisection over the divisors of the
per-process share, AdamW's state counted before it exists, and a probe that leaves no trace."""
import itertools

import pytest
import torch

from d2it import batch_fit
from d2it.errors import D2itError
from d2it.stage1 import DVAETask, run_record


def test_divisors_are_every_divisor_ascending():
    for n in (1, 7, 12, 96, 256, 1000):
        assert batch_fit.divisors(n) == [d for d in range(1, n + 1) if n % d == 0]


def test_bisection_finds_the_largest_fitting_size_in_few_probes():
    sizes = batch_fit.divisors(240)
    for limit in range(0, 250):
        probed = []

        def fits(rows):
            probed.append(rows)
            return rows <= limit

        expected = max((s for s in sizes if s <= limit), default=None)
        assert batch_fit.largest_fitting(sizes, fits) == expected
        assert len(probed) <= len(sizes).bit_length()


def test_chosen_batch_is_the_largest_divisor_under_a_linear_memory_model():
    gib = 2**30
    need = lambda rows: 3 * gib + rows * 0.5 * gib  # noqa: E731 - weights + activations per row
    assert batch_fit.choose_batch_gpu(256, 40 * gib, "cuda:0", need) == 64  # 74 rows would fit
    assert batch_fit.choose_batch_gpu(96, 40 * gib, "cuda:0", need) == 48
    with pytest.raises(D2itError, match=r"one row of the batch needs 3.5 GiB, more than the "
                                        r"2.0 GiB usable of cuda:0"):
        batch_fit.choose_batch_gpu(256, 2 * gib, "cuda:0", need)


def test_unallocated_optimiser_state_is_what_adamw_allocates_at_its_first_step():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.LayerNorm(20),
                                torch.nn.Linear(20, 3))
    opts = {"model": torch.optim.AdamW(model.parameters())}
    predicted = batch_fit.unallocated_optimiser_bytes(opts)
    model(torch.randn(4, 10)).sum().backward()
    opts["model"].step()
    allocated = sum(t.numel() * t.element_size() for state in opts["model"].state.values()
                    for key, t in state.items() if key != "step")
    assert predicted == allocated > 0
    assert batch_fit.unallocated_optimiser_bytes(opts) == 0  # nothing left to allocate


def test_probe_leaves_weights_buffers_and_gradients_as_they_were(study):
    """A DVAE with its PatchGAN (BatchNorm statistics change in a training forward)."""
    study = {**study, "dvae": {**study["dvae"], "gan_weight": 0.1, "gan_start": 5}}
    task = DVAETask(study, run_record(study, 0.5, 0))
    opts = {name: torch.optim.AdamW(module.parameters()) for name, module in task.phases.items()}
    before = {name: {k: v.clone() for k, v in module.state_dict().items()}
              for name, module in task.modules.items()}
    assert any("running_mean" in k for k in before["disc"])  # the check below can fail
    need = batch_fit.step_bytes(task, opts, 4, 9, torch.device("cpu"), bf16=False,
                                peak=lambda: 0)
    assert need == batch_fit.unallocated_optimiser_bytes(opts) > 0
    for name, module in task.modules.items():
        for k, v in module.state_dict().items():
            assert torch.equal(v, before[name][k]), (name, k)
    params = itertools.chain(*(m.parameters() for m in task.modules.values()))
    assert all(p.grad is None for p in params)


def test_on_a_cpu_auto_takes_the_whole_share():
    cfg = {"batch_size": 32, "steps": 10, "bf16": True}
    assert batch_fit.fit_batch_gpu(None, {}, cfg, 2, torch.device("cpu")) == 16
