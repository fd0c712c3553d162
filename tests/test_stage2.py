"""Stage-2 training and sampling end to end on a tiny latent cache."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from d2it.data.latents import LatentCache
from d2it.errors import D2itError
from d2it.models import build
from d2it.report.figures import COARSE, FINE, pair
from d2it.sample import load_stage2, sample
from d2it.stage2 import D2iTTask, train_model
from d2it.task import RowDraws


def settings(study, **changes):
    return {**study["sampling"], "classes": None, **changes}


@pytest.mark.parametrize("source", ["predicted", "gt", "random"])
def test_d2it_samples_are_adm_npz_with_grain_maps(trained, models, tmp_path, source):
    study = trained[0]
    result = sample(models["d2it"], settings(study, grain_source=source), tmp_path / "s.npz",
                    grain_run=models["grain"])
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (6, 32, 32, 3)
    assert data["labels"].shape == (6,) and data["grain"].shape == (6, 8, 8)
    assert (tmp_path / "s.png").exists() and result["n"] == 6 and result["grain_source"] == source
    if source == "gt":  # held-out images' maps, each with that image's own label
        cache = LatentCache(trained[1].latents(trained[1].model("d2it", 0)))
        assert np.array_equal(data["grain"], cache.array("heldout", "grain")[:6, 0])
        assert np.array_equal(data["labels"], cache.array("heldout", "labels")[:6])


def test_predicted_maps_are_cut_at_the_training_fine_fraction(trained, models, tmp_path):
    """Cut at 0, the 3-step grain model's maps hold whatever fine fraction it drifts to; cut at
    the calibrated quantile, a set drawn with other seeds lands on the training fraction."""
    study = trained[0]
    cut = {count: sample(models["d2it"], settings(study, n=48, batch_size=48,
                                                  grain_calibration=count),
                         tmp_path / f"c{count}.npz", grain_run=models["grain"])
           for count in (0, 96)}
    train = cut[96]["gt_fine_fraction_train"]
    assert cut[0]["grain_threshold"] == 0.0 and cut[96]["grain_threshold"] != 0.0
    assert abs(cut[96]["fine_fraction"] - train) < 0.05
    assert abs(cut[96]["fine_fraction"] - train) < abs(cut[0]["fine_fraction"] - train)
    # the samples' own maps, not only the recorded fraction
    assert np.load(tmp_path / "c96.npz")["grain"].mean() == pytest.approx(cut[96]["fine_fraction"])


def test_guided_rows_guide_the_grain_model_too(trained, models, tmp_path, monkeypatch):
    """At cfg_scale > 1 the grain model also sees the null label (the unconditional branch of
    guidance); unguided, it sees only the samples' labels."""
    from d2it.models.dit import DiT

    study = trained[0]
    seen = []
    forward = DiT.forward

    def spy(self, x, t, y, force_drop_ids=None):
        if self.x_embedder.proj.in_channels == 1:  # the grain model: one channel
            seen.append(y.clone())
        return forward(self, x, t, y, force_drop_ids)

    monkeypatch.setattr(DiT, "forward", spy)
    null = study["data"]["classes"]
    for scale in (1.0, 1.5):
        seen.clear()
        sample(models["d2it"], settings(study, cfg_scale=scale, grain_calibration=0),
               tmp_path / f"g{scale}.npz", grain_run=models["grain"])
        assert seen and any((y == null).any() for y in seen) == (scale > 1)


def test_sample_set_does_not_depend_on_batching(trained, models, tmp_path):
    study = trained[0]
    a = sample(models["dit"], settings(study), tmp_path / "a.npz")
    b = sample(models["dit"], settings(study, batch_size=5), tmp_path / "b.npz")
    assert a["n"] == b["n"] == 6
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"],
                          np.load(tmp_path / "b.npz")["arr_0"])


def test_compiled_sampling_draws_the_eager_samples(trained, models, tmp_path):
    """sampling.compile changes how the network runs, not the samples: the same set compiled
    and eager differs by float noise at most (a grey level where rounding flips)."""
    import torch._dynamo

    study = trained[0]
    torch._dynamo.reset()
    eager = sample(models["dit"], settings(study, compile=False), tmp_path / "eager.npz")
    compiled = sample(models["dit"], settings(study, compile=True), tmp_path / "compiled.npz")
    assert eager["network"] == "eager (compile: false)" and compiled["network"] == "compiled"
    a = np.load(tmp_path / "eager.npz")["arr_0"].astype(int)
    b = np.load(tmp_path / "compiled.npz")["arr_0"].astype(int)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_runs_rebuild_from_their_checkpoints_alone(trained, models, latent_cache, tmp_path):
    """The network, latent scale and decoding DVAE come from final.pt: sampling reads no cache."""
    study = trained[0]
    moved = latent_cache.with_name("moved-away")
    latent_cache.rename(moved)
    try:
        result = sample(models["d2it"], settings(study, grain_source="predicted"),
                        tmp_path / "s.npz", grain_run=models["grain"])
    finally:
        moved.rename(latent_cache)
    assert result["n"] == 6
    record = torch.load(models["d2it"] / "final.pt", weights_only=False)["run"]
    assert record["arch"]["kind"] == "d2it" and record["latent"]["scale_factor"] > 0
    assert set(record["latent"]) >= {"channels", "size", "classes", "fine_fraction", "dvae_run"}


def test_wrong_runs_are_refused_by_name(trained, models, tmp_path):
    study, plan, dvae = trained
    with pytest.raises(D2itError, match="a dvae run, expected dit or d2it"):
        sample(dvae.folder, settings(study), tmp_path / "s.npz")
    with pytest.raises(D2itError, match="a dit run, expected grain"):
        sample(models["d2it"], settings(study, grain_source="predicted"), tmp_path / "s.npz",
               grain_run=models["dit"])
    with pytest.raises(D2itError, match="not a DVAE run"):
        from d2it.stage1 import load_dvae
        load_dvae(models["dit"])


def test_training_refuses_a_cache_of_another_dvae(trained, latent_cache, tmp_path):
    study, plan, _ = trained
    own_dvae = {**study, "dvae": {**study["dvae"], "seed": None}}  # seed 1 trains on DVAE seed 1
    with pytest.raises(D2itError, match="made by another DVAE run"):
        train_model(own_dvae, "dit", 1, latent_cache, tmp_path / "run")


def test_a_sample_stands_untouched_beside_its_grain_map():
    image = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    grain = np.array([[True, False], [False, False]])
    cell = pair(image, grain)
    assert cell.shape == (4, 9, 3) and (cell[:, :4] == image).all() and (cell[:, 4] == 255).all()
    assert tuple(cell[0, 5]) == FINE and tuple(cell[1, 6]) == FINE  # the fine 2 x 2 region
    assert tuple(cell[0, 7]) == COARSE and tuple(cell[3, 8]) == COARSE


@pytest.fixture
def d2it_task(trained, latent_cache):
    from d2it.stage2 import run_record

    study = trained[0]

    def make(**switches):
        spec = {**study["specs"]["d2it"], **switches}
        cache = LatentCache(latent_cache)
        arch = run_record(study, "d2it", 0, cache)["arch"]
        return D2iTTask(build(arch), spec, cache, study["diffusion"])
    return make


def recorded_loss(task, maps_fn):
    """Run one training step of `task` with the diffusion's loss maps replaced by maps_fn(noise)."""
    seen = {}

    def training_maps(model_fn, x0, t, noise):
        seen["noise"] = noise
        return maps_fn(noise)

    task.diffusion.training_maps = training_maps
    batch = torch.utils.data.default_collate(task.dataset.__getitems__(list(range(8))))
    draws = RowDraws(0, 8)
    _, loss, _ = next(task.losses(batch, 0, draws))
    return loss, seen["noise"], batch


def test_multigrain_noise_switch(d2it_task):
    from d2it.grain import block_mean, expand

    shares = {}
    for on in (True, False):
        _, noise, _ = recorded_loss(d2it_task(multigrain_noise=on),
                                    lambda n: {"mse": n.square().mean(1)})
        constant_blocks = ((expand(block_mean(noise)) == noise).all(1)
                           .reshape(8, 8, 2, 8, 2).all(2).all(3))
        shares[on] = constant_blocks.float().mean().item()
    # coarse regions share one noise draw only when on
    assert shares[True] > 0.2 and shares[False] == 0


def test_dynamic_grain_loss_switch(d2it_task):
    """A unit error everywhere: the dynamic grain loss adds one mean per grain an image has (2 when
    it has both), the plain loss averages the latent grid (1)."""
    def ones(noise):
        return {"mse": torch.ones(noise.shape[0], *noise.shape[2:])}

    loss, _, batch = recorded_loss(d2it_task(dynamic_grain_loss=True), ones)
    grain = batch[1][:, 0]  # both views of an image have the same number of fine regions
    grains_per_image = grain.flatten(1).any(1).float() + (~grain).flatten(1).any(1).float()
    assert loss.item() == pytest.approx(grains_per_image.mean().item())
    assert recorded_loss(d2it_task(dynamic_grain_loss=False), ones)[0].item() == pytest.approx(1.0)


def test_d2it_parameters_are_dit_plus_routing():
    """DCT-XL = DiT-XL/2 + coarse embedder (C·D + D) + grain embedding (2D) + coarse head
    (adaLN D·2D + 2D, linear D·2C + 2C), with the same total depth."""
    from baselines.dit import dit
    from d2it.models.d2it import d2it

    d, c = 1152, 4
    extra = (c * d + d) + 2 * d + (d * 2 * d + 2 * d) + (d * 2 * c + 2 * c)
    with torch.device("meta"):  # shapes only
        count = sum(p.numel() for p in d2it("XL", input_size=32, num_classes=1000).parameters())
        baseline = sum(p.numel() for p in dit("XL/2").parameters())
    assert count == baseline + extra == 677_803_432


@pytest.mark.e2e
@pytest.mark.parametrize("batch_size", [2, 6])
def test_two_processes_draw_the_same_sample_set(trained, models, tmp_path, batch_size):
    """torchrun with 2 gloo processes: each draws every other batch (3 batches of 2: two and one;
    one batch of 6: the second process has none); the merged set equals one process's."""
    study = trained[0]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**study,
                                    "sampling": {**study["sampling"], "batch_size": batch_size}}))
    one = sample(models["d2it"], settings(study, batch_size=batch_size), tmp_path / "one.npz",
                 grain_run=models["grain"])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2",
                           "-m", "d2it.cli", "sample", "--config", str(path),
                           "--run-dir", str(models["d2it"]),
                           "--grain-run", str(models["grain"]), "--out", str(tmp_path / "two.npz")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in ("arr_0", "labels", "grain"):
        assert np.array_equal(a[key], b[key]), key
    assert one["n"] == 6 and not list(tmp_path.glob("two.part*"))


@pytest.mark.e2e
def test_unconditional_specs_train_and_sample_without_labels(trained, latent_cache, tmp_path):
    """Table 1's models in a labelled study: one label row, no dropout, labels ignored in training
    and sampling (also with ground-truth maps), the samples marked unconditional."""
    import copy

    from d2it import study as studies

    study = copy.deepcopy(trained[0])
    study["paths"]["runs"] = str(tmp_path / "runs")
    study["specs"].update({
        "d2it_u": {**study["specs"]["d2it"], "conditional": False, "grain_model": "dgt_u"},
        "dgt_u": {**study["specs"]["dgt"], "conditional": False}})
    plan = studies.plan(study)
    d2it_u, grain_u = plan.model("d2it_u", 0), plan.model("dgt_u", 0, 0.5)
    for run, ratio in ((d2it_u, None), (grain_u, 0.5)):
        train_model(study, run.spec, 0, latent_cache, run.folder, ratio)
    model, _ = load_stage2(d2it_u.folder, ("d2it",))
    assert model.y_embedder.embedding_table.num_embeddings == 1
    # the conditional spec's table has 10 classes + the null row
    assert (studies.parameters(study, "d2it") - studies.parameters(study, "d2it_u")
            == 10 * model.y_embedder.embedding_table.embedding_dim)
    for source in ("predicted", "gt"):
        result = sample(d2it_u.folder, settings(study, grain_source=source), tmp_path / "s.npz",
                        grain_run=grain_u.folder)
        assert result["conditional"] is False
        assert not np.load(tmp_path / "s.npz")["labels"].any()


def test_unconditional_specs_refuse_guidance_and_a_conditional_grain_model(trained):
    import copy

    from d2it import study as studies

    study = copy.deepcopy(trained[0])
    study["specs"]["dit"]["conditional"] = False
    study["tables"]["table2"]["rows"]["dit_xl"]["cfg_scale"] = 1.5
    with pytest.raises(D2itError, match=r"rows.dit_xl.cfg_scale: 1.5 needs .* a conditional spec"):
        studies.check(study, "t")
    study = copy.deepcopy(trained[0])
    study["specs"]["d2it"]["conditional"] = False
    with pytest.raises(D2itError, match=r"specs.d2it.grain_model: 'dgt' has conditional: True"):
        studies.check(study, "t")


def test_runs_keep_their_ema_weights_at_the_steps_fig6_evaluates(trained, latent_cache,
                                                                  tmp_path):
    """Fig. 6 samples a run at earlier steps: the run keeps its EMA weights there, sampling at a
    step uses them (not the final weights), and a step the run did not keep is named."""
    import copy

    import torch

    from d2it import study as studies

    study = copy.deepcopy(trained[0])
    study["paths"]["runs"] = str(tmp_path / "runs")
    study["figures"] = {"fig6": {"specs": ["dit"], "at_steps": [1, 2, 3]}}
    studies.resolve(study, "t")
    plan = studies.plan(study)
    (early, middle, last) = plan.curves["fig6"]
    assert [ss.train_step for ss in plan.curves["fig6"]] == [1, 2, 3]
    assert last.settings["at_step"] is None  # the final weights: the row's own sample set
    run = early.run
    assert plan.snapshot_steps(run) == [1, 2]
    train_model(study, run.spec, 0, latent_cache, run.folder, snapshots=plan.snapshot_steps(run))
    kept = torch.load(run.folder / "snapshots" / "ema-000000001.pt", weights_only=True)
    final = torch.load(run.folder / "final.pt", weights_only=False)["ema"]
    assert kept.keys() == final.keys()
    assert any(not torch.equal(kept[k], final[k]) for k in kept)  # step 1 is not step 3
    a = sample(run.folder, early.settings, tmp_path / "a.npz")
    b = sample(run.folder, last.settings, tmp_path / "b.npz")
    assert a["at_step"] == 1 and b["at_step"] is None
    assert not np.array_equal(np.load(tmp_path / "a.npz")["arr_0"],
                              np.load(tmp_path / "b.npz")["arr_0"])
    with pytest.raises(D2itError, match=r"no weights kept at step 7 \(kept: \[1, 2\]\)"):
        sample(run.folder, {**early.settings, "at_step": 7}, tmp_path / "c.npz")
