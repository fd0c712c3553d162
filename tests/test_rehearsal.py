"""The rehearsal: a study's DAG run with stand-ins and cut counts, its outputs marked REHEARSAL,
its kill test; and the pieces it relies on (the cuts, LPIPS stand-ins, the usage ledger,
checkpoints deleted once a run is final)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from d2it import standins
from d2it import study as studies
from d2it.data.folder import in_heldout
from d2it.rehearsal import (CLASSES, FRACTION, HELDOUT, MIN_TRAIN, PER_CLASS, cut, job_stats,
                            standin_images)

REPO = Path(__file__).resolve().parents[1]
D2IT = [sys.executable, "-m", "d2it.cli"]


@pytest.mark.parametrize("config", ["imagenet256", "ffhq256"])
def test_cuts_keep_the_paper_sizes_and_move_every_path_into_the_folder(config):
    study = studies.load(REPO / "config" / f"{config}.yaml")
    before = studies.plan(studies.load(REPO / "config" / f"{config}.yaml"))
    rehearsed, cuts = cut(study)
    assert rehearsed["mark"] == "rehearsal"
    keys = {c["key"] for c in cuts}
    # counts cut, every cut with its reason
    assert rehearsed["train"]["steps"] == 2 and rehearsed["train"]["batch_gpu"] == 1
    assert rehearsed["sampling"]["n"] == 4 and all(c["why"] for c in cuts)
    assert all(c["was"] != c["now"] for c in cuts)  # only what changes is listed
    # no architecture is touched but the label table, where the classes are cut
    plan = studies.plan(studies.resolve(rehearsed, "cut"))
    dropped = before.study["data"]["classes"] - rehearsed["data"]["classes"]
    for spec in before.study["specs"]:
        arch = studies.model_architecture(before.study, spec)
        assert (studies.model_architecture(plan.study, spec)
                == {**arch, "num_classes": rehearsed["data"]["classes"]})
        assert (studies.parameters(before.study, spec) - studies.parameters(plan.study, spec)
                == dropped * arch["hidden_size"])
    assert not any(k.startswith("specs.") for k in keys)  # no spec of these sets its training
    # relative paths only: Snakemake runs in the rehearsal's folder
    for path in (plan.runs_dir, plan.results_dir, Path(rehearsed["data"]["manifest"]),
                 Path(rehearsed["metrics"]["reference_dir"])):
        assert not path.is_absolute() and ".." not in path.parts
    if config == "imagenet256":
        assert rehearsed["data"]["classes"] == CLASSES
        assert sorted(rehearsed["figures"]["fig4"]["classes"]) == list(range(CLASSES))
        assert rehearsed["figures"]["fig6"]["at_steps"] == [1, 2]


@pytest.mark.parametrize("classes,per_class", [(3, 3), (8, PER_CLASS), (1, MIN_TRAIN)])
def test_stand_in_images_meet_both_split_quotas(tmp_path, classes, per_class):
    """HELDOUT held-out images, and per class PER_CLASS training images, MIN_TRAIN in all at
    least: FFHQ's one-class stand-in is its own metrics reference (found by its rehearsal)."""
    study = {"data": {"resolution": 32, "classes": classes}}
    standin_images(tmp_path / "images", study)
    files = sorted(p.relative_to(tmp_path / "images").as_posix()
                   for p in (tmp_path / "images").rglob("*") if p.is_file())
    held = [f for f in files if in_heldout(f, FRACTION)]
    train = [f for f in files if not in_heldout(f, FRACTION)]
    assert len(held) == HELDOUT and len(train) == classes * per_class >= MIN_TRAIN
    if classes > 1:
        assert sorted(f.split("/")[0] for f in train) == sorted(
            [f"n{c:08d}" for c in range(classes)] * per_class)
    assert Image.open(tmp_path / "images" / files[0]).size == (32, 32)


def test_lpips_stand_ins_load_through_torch_fidelity(tmp_path):
    """The VGG16 stand-in has torchvision's VGG16's 138,357,544 parameters, and torch-fidelity's
    LPIPS loads both files strictly."""
    from d2it.perceptual import LPIPS

    heads, vgg = standins.lpips_weights(tmp_path / "weights-vgg16-lpips.pth",
                                        tmp_path / "vgg16-397923af.pth")
    assert sum(v.numel() for v in torch.load(vgg).values()) == 138_357_544
    distance = LPIPS(str(heads), str(vgg))(torch.zeros(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert distance.shape == (2,)


@pytest.mark.e2e
def test_the_usage_ledger_records_each_command(tmp_path):
    ledger = tmp_path / "usage.jsonl"
    env = {**os.environ, "D2IT_USAGE": str(ledger)}
    subprocess.run([*D2IT, "study", "keys"], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    bad = subprocess.run([*D2IT, "study", "plan", "--config", "nope.yaml"], env=env, cwd=REPO,
                         capture_output=True)
    assert bad.returncode == 2
    first, second = map(json.loads, ledger.read_text().splitlines())
    assert first["argv"] == ["study", "keys"] and first["exit"] == 0
    assert second["exit"] == 2
    assert 50 < first["peak_rss_mib"] < 4000  # a Python process with torch imported


def test_job_stats_reads_snakemakes_table():
    lines = ["Job stats:", "job              count", "-------------  -------", "all 1",
             "train_model      3", "total  4", "", "Job stats:", "job count", "sample 2",
             "total 2"]
    assert job_stats(lines) == {"sample": 2}


TINY = """
name: tinypaper
data: {manifest: data/x/manifest.json, resolution: 32, classes: 10}
grain: {region: 4, thresholds: data/x/thresholds.json}
dvae: {preset: tiny, perceptual: lpips, gan_weight: 1.0, train: {steps: 50, ema: null}}
train: {steps: 40, batch_size: 8, ema: 0.5}
specs:
  dit: {kind: dit, size: tiny, fine_ratio: 1.0}
  d2it: {kind: d2it, size: tiny, grain_model: dgt}
  dgt: {kind: grain, depth: 1, hidden: 32, heads: 2}
sampling: {steps: 10, n: 16, batch_size: 8, grain_calibration: 16}
tables:
  table2:
    rows: {dit_xl: {spec: dit}, d2it_xl: {spec: d2it}, d2it_xl_g: {spec: d2it, cfg_scale: 1.5}}
figures:
  fig6: {specs: [dit, d2it], at_steps: [20, 40]}
recon: {fine_ratios: [0.5, 1.0]}
metrics: {extractor: inception, reference: data/x/VIRTUAL_imagenet256_labeled.npz,
          reference_dir: data/x/reference}
tracking: {uri: "sqlite:///mlflow.db"}
"""


@pytest.mark.e2e
def test_a_rehearsal_runs_every_job_marks_every_output_and_resumes_a_killed_run(tmp_path):
    """A paper-shaped tiny study (Inception features against an ADM batch, LPIPS, Table 2 with
    guidance, Fig. 6): every job runs in the rehearsal's folder, and nothing under the checkout's
    results/ or runs/; tables, figures and the verdict say REHEARSAL; a model's final.pt is
    deleted once its samples are drawn; the killed run resumes to the uninterrupted EMA."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    folder = tmp_path / "rehearsal"
    proc = subprocess.run([*D2IT, "study", "rehearse", "--config", "tiny.yaml", "--out",
                           str(folder), "--kill-steps", "30"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    summary = json.loads((folder / "rehearsal.json").read_text())

    # every planned job ran: Snakemake's counts against the commands the ledger saw
    jobs = summary["jobs"]
    assert jobs["train_dvae"] == 2 and jobs["train_model"] == 3  # DiT, D²iT, grain model
    for rule, count in jobs.items():
        if rule != "all":  # the kill test's runs count apart (killtest/usage.jsonl)
            assert summary["usage"][rule]["commands"] == count, rule
            assert summary["usage"][rule]["failed"] == 0
    assert summary["usage"]["train_model"]["peak_rss_mib"] > 0

    # marked outputs
    results = folder / "results" / "tinypaper"
    table = pd.read_csv(results / "table2.csv")
    assert table["mark"].str.startswith("REHEARSAL").all()
    assert (results / "verdict.md").read_text().startswith("# REHEARSAL: Verdicts")
    assert json.loads((results / "verdict.json").read_text())["mark"].startswith("REHEARSAL")
    grid = np.asarray(Image.open(next((results / "samples").glob("*.png"))).convert("RGB"))
    assert (grid[:12, :, 0] > 150).mean() > 0.5  # the red band above the samples
    assert (results / "fig6.png").is_file()

    # model weights gone once sampled, the DVAEs' kept
    runs = folder / "runs" / "tinypaper"
    assert not list((runs / "dit").rglob("final.pt"))
    assert not list((runs / "d2it").rglob("final.pt"))
    assert len(list((runs / "dvae").rglob("final.pt"))) == 2
    kill = summary["kill_test"]
    assert kill["spec"] in ("dit", "d2it") and kill["resumed"] and kill["equal"]
    assert kill["seconds"]["resumed"] > 0 and kill["peak_rss_mib"]["straight"] > 0
    assert "REHEARSAL of study `tinypaper`" in proc.stdout

    # the study's own config is what Snakemake read
    assert yaml.safe_load((folder / "study.yaml").read_text())["mark"] == "rehearsal"
