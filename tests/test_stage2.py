"""Stage-2 training and sampling end to end on a tiny latent cache."""
import numpy as np
import pytest
import torch

from d2it import config
from d2it.report.figures import overlay
from d2it.sample import sample
from d2it.stage2 import train_latent_model


@pytest.fixture(scope="module")
def study(tmp_path_factory, dataset, latent_cache, trained):
    """Tiny DiT, D²iT and grain models trained a few steps on the cache (wiring, not quality)."""
    train = {"steps": 3, "batch_size": 8, "ema": 0.5, "ckpt_every": 3, "log_every": 1}
    cfg = config.validate({**{k: v for k, v in trained[0].items()},
                           "dit": {"size": "tiny", "train": train}, "d2it": {"size": "tiny", "train": train},
                           "grain_model": {"depth": 1, "hidden": 32, "heads": 2, "train": train},
                           "diffusion": {"sampling_steps": 4}, "sample": {"n": 6, "batch_size": 4}})
    out = tmp_path_factory.mktemp("stage2")
    for kind in ("dit", "d2it", "grain"):
        summary = train_latent_model(kind, cfg, latent_cache, out / kind)
        assert summary["steps"] == 3 and np.isfinite(summary["final"]["loss"])
    return cfg, out


@pytest.mark.parametrize("source", ["predicted", "gt", "random"])
def test_d2it_samples_are_adm_npz_with_grain_maps(study, latent_cache, source):
    cfg, out = study
    cfg = {**cfg, "sample": {**cfg["sample"], "grain_source": source}}
    result = sample(cfg, out / "d2it", latent_cache, out / f"d2it-{source}.npz", grain_run=out / "grain")
    data = np.load(out / f"d2it-{source}.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (6, 32, 32, 3)
    assert data["labels"].shape == (6,) and data["grain"].shape == (6, 8, 8)
    assert (out / f"d2it-{source}.png").exists() and result["n"] == 6


def test_sample_set_does_not_depend_on_batching(study, latent_cache):
    cfg, out = study
    a = sample(cfg, out / "dit", latent_cache, out / "a.npz")
    b = sample({**cfg, "sample": {**cfg["sample"], "batch_size": 5}}, out / "dit", latent_cache, out / "b.npz")
    assert a["n"] == b["n"] == 6
    assert np.array_equal(np.load(out / "a.npz")["arr_0"], np.load(out / "b.npz")["arr_0"])


def test_overlay_colours_fine_red_and_coarse_blue():
    image = np.full((4, 4, 3), 100, np.uint8)
    grain = np.array([[True, False], [False, False]])
    tinted = overlay(image, grain, alpha=0.5)
    assert tuple(tinted[0, 0]) == (178, 50, 50) and tuple(tinted[3, 3]) == (50, 50, 178)


@pytest.fixture
def d2it_task(trained, latent_cache):
    from d2it.stage2 import LatentDiffusionTask, load_cache

    def make(**switches):
        cfg = config.validate({**trained[0], "d2it": {"size": "tiny", **switches}})
        return LatentDiffusionTask("d2it", cfg, load_cache(latent_cache))
    return make


def recorded_loss(task, maps_fn):
    """Run one training step of `task` with the diffusion's loss maps replaced by maps_fn(noise)."""
    from d2it.train import Shard

    seen = {}

    def training_maps(model_fn, x0, t, noise):
        seen["noise"] = noise
        return maps_fn(noise)

    task.diffusion.training_maps = training_maps
    batch = [tensor[:8] for tensor in task.dataset.tensors]
    _, loss, _ = next(task.losses(batch, 0, Shard()))
    return loss, seen["noise"], batch


def test_multigrain_noise_switch(d2it_task):
    from d2it.grain import block_mean, expand

    shares = {}
    for on in (True, False):
        _, noise, _ = recorded_loss(d2it_task(multigrain_noise=on), lambda n: {"mse": n.square().mean(1)})
        constant_blocks = (expand(block_mean(noise)) == noise).all(1).reshape(8, 8, 2, 8, 2).all(2).all(3)
        shares[on] = constant_blocks.float().mean().item()
    assert shares[True] > 0.2 and shares[False] == 0  # coarse regions share one noise draw only when on


def test_dynamic_grain_loss_switch(d2it_task):
    """A unit error everywhere: the dynamic grain loss adds one mean per grain (2), the plain loss
    averages the latent grid (1)."""
    def ones(noise):
        return {"mse": torch.ones(noise.shape[0], *noise.shape[2:])}

    assert recorded_loss(d2it_task(dynamic_grain_loss=True), ones)[0].item() == pytest.approx(2.0)
    assert recorded_loss(d2it_task(dynamic_grain_loss=False), ones)[0].item() == pytest.approx(1.0)


def test_d2it_parameters_are_dit_plus_routing():
    """DCT-XL = DiT-XL/2 + coarse embedder (C·D + D) + grain embedding (2D) + coarse head
    (adaLN D·2D + 2D, linear D·2C + 2C), with the same total depth."""
    from baselines.dit import dit
    from d2it.models.dct import dct

    d, c = 1152, 4
    extra = (c * d + d) + 2 * d + (d * 2 * d + 2 * d) + (d * 2 * c + 2 * c)
    count = sum(p.numel() for p in dct("XL", input_size=32, num_classes=1000).parameters())
    assert count == sum(p.numel() for p in dit("XL/2").parameters()) + extra == 677_803_432


def test_two_processes_draw_the_same_sample_set(study, latent_cache, tmp_path):
    """torchrun with 2 gloo processes: each draws every other batch; the merged set equals one process's."""
    import os
    import subprocess
    import sys

    import yaml

    cfg, out = study
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**cfg, "sample": {**cfg["sample"], "batch_size": 2}}))
    one = sample({**cfg, "sample": {**cfg["sample"], "batch_size": 2}}, out / "d2it", latent_cache, tmp_path / "one.npz",
                 grain_run=out / "grain")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "d2it.cli", "sample", "--config", str(path), "--run-dir", str(out / "d2it"),
                           "--grain-run", str(out / "grain"), "--latents", str(latent_cache),
                           "--out", str(tmp_path / "two.npz")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in ("arr_0", "labels", "grain"):
        assert np.array_equal(a[key], b[key]), key
    assert one["n"] == 6 and not list(tmp_path.glob("two.part*"))
