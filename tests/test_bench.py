"""`d2it bench`: its JSON names every figure the README table and the closing notes read, and its
FLOP count agrees with DiT's published cost and with backward = 2 x forward."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from baselines.dit import dit
from d2it import bench


def test_dit_xl_2_forward_flops_match_the_paper():
    """DiT paper, Table 4: DiT-XL/2 costs 118.6 Gflops (multiply-adds) per 256 px image."""
    with torch.device("meta"):
        model = dit("XL/2", input_size=32, num_classes=1000)
        x, t, y = torch.randn(2, 4, 32, 32), torch.zeros(2, dtype=torch.long), torch.zeros(
            2, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t, y)
    assert counter.get_total_flops() / 2 / 2 / 1e9 == pytest.approx(118.6, rel=2e-3)


def test_training_step_costs_three_forward_passes(study, latent_cache):
    """A step's counted FLOPs (forward and backward of the loss) are about three forward passes
    of the network: the backward computes gradients of inputs and of weights."""
    from d2it.data.latents import LatentCache

    cache = LatentCache(latent_cache)
    small = bench.bench_study(study, "tiny")
    _, rows = bench.random_cache(Path(latent_cache).parent / "bench-cache", small, 4)
    task = bench.make_task(small, "dit", cache, torch.device("cpu"))
    per_image = bench.step_flops(task, rows, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        task.model(rows[0][:, 0], torch.zeros(4, dtype=torch.long), rows[2])
    assert per_image / (counter.get_total_flops() / 4) == pytest.approx(3.0, rel=0.05)


@pytest.mark.e2e
def test_bench_json_holds_every_figure(study, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "d2it.cli", "bench", "--config", str(path),
                           "--batch", "4", "--iters", "1", "--repeats", "1", "--no-compiled",
                           "--json", "--out", str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    assert printed == json.loads(out.with_suffix(".json").read_text())
    for kind in ("dit", "d2it"):
        m = printed["models"][kind]
        assert m["train_img_s"] > 0 and m["sample_img_s"] > 0 and m["peak_mem_gib"] > 0
        assert 0 < m["mfu"] < 1.5  # a measured CPU peak is a best case the step may beat
        assert m["default"]["network"].startswith("eager")  # CPU default: no compile
        assert m["batch_gpu_auto"] == 4  # a CPU takes the whole batch
    ratios = printed["ratios"]
    assert ratios["d2it_over_dit_step"] > 0
    assert set(ratios["optimised_over_fp32_eager"]) == {"dit", "d2it"}
    table = out.with_suffix(".md").read_text()
    assert "| dit |" in table and "| d2it |" in table and "D²iT / DiT step time" in table
    assert "train.batch_gpu auto for a batch of 4: dit 4, d2it 4" in table
