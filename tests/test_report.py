"""Paper tables: the paper's values verbatim beside ours, ours only under protocol-named columns."""
import json

import numpy as np
import pytest
import torch

from baselines.dit import dit
from d2it.errors import D2itError
from d2it.metrics.extractors import metric_key
from d2it.metrics.extractors import Extractor
from d2it import study as studies
from d2it.report.paper import PAPER
from d2it.report.tables import paper_table
from tests_support import tiny_study


EFFNET = Extractor("effnet-lite0", "effnet", ("pool", "logits"), None, None, False)
INCEPTION = Extractor("inception-v3-compat", "inception", ("2048", "logits_unbiased"), None, None,
                      True)


def write_metrics(path, fd, extractor=EFFNET, n=1000):
    keys = {m: metric_key(m, extractor, n) for m in ("fd", "is", "kid", "precision", "recall")}
    data = {keys["fd"]: fd, keys["fd"] + "_ci95": [fd - 1, fd + 1], keys["is"]: 2.0,
            keys["kid"]: 0.1, keys["precision"]: 0.5, keys["recall"]: 0.4, "keys": keys,
            "protocol": "test protocol", "reference": {"file": "ref.npz", "split": "train"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def table2_plan(tmp_path, dataset):
    """The tiny study with the paper's four Table 2 rows (guided rows on the same specs)."""
    rows = {"dit_xl": {"spec": "dit"}, "d2it_xl": {"spec": "d2it"},
            "dit_xl_g": {"spec": "dit", "cfg_scale": 1.5},
            "d2it_xl_g": {"spec": "d2it", "cfg_scale": 1.5}}
    return studies.plan(studies.resolve(tiny_study(tmp_path, dataset,
                                                   tables={"table2": {"rows": rows}}), "t"))


def test_table_puts_paper_values_and_ours_in_separate_named_columns(table2_plan):
    for i, row in enumerate(table2_plan.table_rows("table2")):
        write_metrics(row.sample_sets[0].metrics, 100.0 + i)
    full = paper_table(table2_plan, "table2")
    table = full.dropna(subset=["ours"])
    assert list(table["method"]) == [row["method"] for row in PAPER["table2"]["rows"].values()]
    assert list(table["paper FID-50K"]) == [9.62, 5.74, 2.27, 1.73]  # the paper's, verbatim
    # each paper number with the budget it came from: DiT's rows are DiT's 7M-step models
    assert list(table["paper_train_steps"]) == [7000000, "unknown", 7000000, "unknown"]
    assert table["paper_autoencoder"][1] == "D²iT's DVAE"
    # DiT-XL/2 at 400K steps, a budget this harness can match, as a sourced reference row
    (reference,) = full[full["ours"].isna()].to_dict(orient="records")
    assert reference["paper FID-50K"] == 19.5 and reference["paper_train_steps"] == 400000
    assert "facebookresearch/DiT" in reference["paper_protocol"]
    assert np.isnan(reference["fd_effnet_1k"])  # no number of ours beside it
    # FLOPs per forward beside the parameters: DiT-tiny/2 is 4 blocks of width 128 at 64 tokens
    assert table["ours_gflops"][0] == pytest.approx(0.1108, abs=1e-4)
    assert table["ours_gflops"][1] > 0 and table["ours_gflops"][1] != table["ours_gflops"][0]
    assert list(table["fd_effnet_1k"]) == [100.0, 101.0, 102.0, 103.0]
    assert list(table["fd_effnet_1k_ci95_low"]) == [99.0, 100.0, 101.0, 102.0]
    assert "fid50k" not in table.columns  # an EfficientNet FD never goes under an FID name
    # the spec, by its name
    assert list(table["ours"][:2]) == ["DiT-tiny/2", "D²iT-tiny (3+1, r=0.5)"]
    assert list(table["cfg_scale"]) == [1.0, 1.0, 1.5, 1.5]


def test_inception_at_the_paper_count_gets_the_paper_metric_name(table2_plan):
    for row in table2_plan.table_rows("table2"):
        write_metrics(row.sample_sets[0].metrics, 5.0, INCEPTION, 50_000)
    table = paper_table(table2_plan, "table2").dropna(subset=["ours"])
    assert list(table["fid50k"]) == [5.0] * 4


def test_rows_over_seeds_report_mean_and_spread(tmp_path, dataset):
    rows = {"d2it_xl": {"spec": "d2it", "seeds": [0, 1, 2]}}
    plan = studies.plan(studies.resolve(tiny_study(tmp_path, dataset,
                                                   tables={"table2": {"rows": rows}}), "t"))
    (row,) = plan.table_rows("table2")
    assert [ss.run.seed for ss in row.sample_sets] == [0, 1, 2]
    for fd, ss in zip((10.0, 12.0, 17.0), row.sample_sets):
        write_metrics(ss.metrics, fd)
    table = paper_table(plan, "table2").dropna(subset=["ours"])
    assert table["fd_effnet_1k"].item() == pytest.approx(13.0)
    assert table["fd_effnet_1k_std"].item() == pytest.approx(np.std([10, 12, 17], ddof=1))
    assert table["seeds"].item() == "0 1 2"
    # the interval of the mean: 13 -+ t(0.975, 2) * sqrt(13) / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 * np.sqrt(13) / np.sqrt(3)
    assert table["fd_effnet_1k_ci95_low"].item() == pytest.approx(13 - half, rel=1e-6)
    assert table["fd_effnet_1k_ci95_high"].item() == pytest.approx(13 + half, rel=1e-6)


def test_class_score_rows_carry_both_ceilings(table2_plan):
    """The classifier's accuracy on real held-out images, and on the decodes of them by the row's
    own DVAE (here r = 1 for DiT, r = 0.5 for D²iT); a DVAE without them is named."""
    table2_plan.study["specs"]["dit"]["fine_ratio"] = 1.0
    table2_plan = studies.plan(table2_plan.study)
    rows = table2_plan.table_rows("table2")
    for i, row in enumerate(rows):
        path = row.sample_sets[0].metrics
        write_metrics(path, 100.0)
        data = json.loads(path.read_text())
        data["keys"]["class_acc"] = "class_acc"
        data |= {"class_acc": 0.5, "class_acc_ci95": [0.4, 0.6], "class_acc_ceiling": 0.99}
        path.write_text(json.dumps(data))
    with pytest.raises(D2itError, match="no reconstruction metrics .* row 'dit_xl'"):
        paper_table(table2_plan, "table2")
    for ratio, decoded in ((1.0, 0.9), (0.5, 0.8)):
        dvae = table2_plan.dvae(ratio, 0)
        table2_plan.recon_json(dvae).parent.mkdir(parents=True, exist_ok=True)
        table2_plan.recon_json(dvae).write_text(json.dumps({"class_acc_decoded": decoded}))
    table = paper_table(table2_plan, "table2")
    table = table.dropna(subset=["ours"])
    assert list(table["class_acc_ceiling"]) == [0.99] * 4
    assert list(table["class_acc_ceiling_decoded"]) == [0.9, 0.8, 0.9, 0.8]


def test_rows_report_the_fine_fraction_sampled_and_trained_on(tmp_path, dataset):
    """From each seed's sampling record: the maps' fine fraction (mean over seeds) beside the
    fraction the model trained on."""
    rows = {"d2it_xl": {"spec": "d2it", "seeds": [0, 1]}}
    plan = studies.plan(studies.resolve(tiny_study(tmp_path, dataset,
                                                   tables={"table2": {"rows": rows}}), "t"))
    (row,) = plan.table_rows("table2")
    for fraction, ss in zip((0.48, 0.54), row.sample_sets):
        write_metrics(ss.metrics, 10.0)
        data = json.loads(ss.metrics.read_text())
        data["sampling"] = {"fine_fraction": fraction, "gt_fine_fraction_train": 0.5}
        ss.metrics.write_text(json.dumps(data))
    table = paper_table(plan, "table2").dropna(subset=["ours"])
    assert table["fine_fraction"].item() == pytest.approx(0.51)
    assert table["fine_fraction_train"].item() == 0.5


def test_missing_metrics_are_named(table2_plan):
    rows = table2_plan.table_rows("table2")
    for row in rows[1:]:
        write_metrics(row.sample_sets[0].metrics, 1.0)
    with pytest.raises(D2itError, match=r"table2: no metrics .*dit-tiny.* for row 'dit_xl'"):
        paper_table(table2_plan, "table2")
    with pytest.raises(D2itError, match="has no table 'table9'"):
        paper_table(table2_plan, "table9")


def test_paper_dit_sizes_match_the_official_parameter_count():
    """The paper's DiT-XL 675 M is DiT-XL/2 as the official code builds it (675,129,632)."""
    with torch.device("meta"):  # shapes only
        xl = sum(p.numel() for p in dit("XL/2").parameters())
    for row in PAPER["table2"]["rows"].values():
        if row["method"].startswith("DiT-XL"):
            assert row["params_M"] == round(xl / 1e6)


def test_class_rows_take_each_class_in_turn():
    from d2it.report.figures import class_rows

    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    picked = class_rows(np.arange(9), labels, per_class=2)
    assert list(labels[picked]) == [0, 0, 1, 1, 2, 2]
    assert list(picked) == [1, 3, 2, 5, 0, 4]  # the first of each class, in sample order
    with pytest.raises(D2itError, match=r"classes \[0, 1, 2\] have fewer than 4 samples"):
        class_rows(np.arange(9), labels, per_class=4)


@pytest.mark.parametrize("kind", ["dit", "d2it"])
def test_sample_figures_name_classes_and_show_grain_maps_of_d2it_only(tmp_path, kind):
    from d2it.report.figures import samples_figure

    n = 20
    images = np.full((n, 8, 8, 3), 128, np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images, labels=np.arange(n) % 5,
             grain=np.zeros((n, 4, 4), bool))
    (tmp_path / "s.json").write_text(json.dumps({"kind": kind}))
    out = samples_figure(tmp_path / "s.npz", tmp_path / "f.png", by_class=True, columns=4,
                         class_names=[f"c{i}" for i in range(5)], title="Fig. 4")
    assert out == {"figure": str(tmp_path / "f.png"), "images": 20, "kind": kind}
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_grain_maps_figure_compares_sources_per_class_and_position(tmp_path):
    from d2it.report.curves import grain_maps

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    gt = rng.random((40, 4, 4)) < 0.5
    predicted = np.zeros((40, 4, 4), bool)
    predicted[:, :2] = True  # the top half always fine: fraction 0.5, rows 0-1 frequency 1
    for name, grain in (("gt", gt), ("pred", predicted)):
        np.savez(tmp_path / f"{name}.npz", arr_0=np.zeros((40, 8, 8, 3), np.uint8),
                 labels=labels, grain=grain)
    out = grain_maps(tmp_path / "pred.npz", tmp_path / "gt.npz", tmp_path / "g.png",
                     ["a", "b", "c", "d"])
    assert out["rows"] == 4 and (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "g.csv").read_text().splitlines()
    assert summary[0] == "class,ground truth,predicted"
    first = summary[1].split(",")
    assert first[0] == "a" and float(first[2]) == 0.5
    assert float(first[1]) == pytest.approx(gt[labels == 0].mean())


def test_publish_copies_a_finished_study_and_refuses_an_unfinished_one(tmp_path):
    """`d2it report publish`: every target copied with its sha256 in PUBLISHED.json; a study with
    a target missing is refused by name, and what was published before stays as it was."""
    from d2it.files import sha256_file
    from d2it.report.publish import publish

    plan = studies.plan(studies.resolve(tiny_study(tmp_path, tmp_path / "m.json"), "tiny"))
    for i, target in enumerate(plan.targets()):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"made {i}\n")
    scratch = plan.results_dir / "runs-only.npz"  # not a result: not published
    scratch.write_text("x")
    to = tmp_path / "published"
    publish(plan, to)
    manifest = json.loads((to / "tiny" / "PUBLISHED.json").read_text())
    assert set(manifest["files"]) == {t.relative_to(plan.results_dir).as_posix()
                                      for t in plan.targets()}
    for name, digest in manifest["files"].items():
        assert sha256_file(to / "tiny" / name) == digest == sha256_file(plan.results_dir / name)
    before = {p: p.read_bytes() for p in (to / "tiny").rglob("*") if p.is_file()}
    plan.verdict_md.unlink()
    with pytest.raises(D2itError, match="not finished: .*verdict.md is missing"):
        publish(plan, to)
    assert {p: p.read_bytes() for p in (to / "tiny").rglob("*") if p.is_file()} == before


def test_publish_keeps_what_was_made_outside_the_workflow(tmp_path):
    """A fresh clone's run has no bench or learnability files: publishing it keeps the last
    published ones (and lists them), while a results folder that has them replaces them."""
    from d2it.files import sha256_file
    from d2it.report.publish import publish

    plan = studies.plan(studies.resolve(tiny_study(tmp_path, tmp_path / "m.json"), "tiny"))
    for target in plan.targets():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("made\n")
    to = tmp_path / "published"
    old = to / "tiny"
    (old / "learnability").mkdir(parents=True)
    (old / "learnability" / "sweep.csv").write_text("old sweep\n")
    (old / "bench.json").write_text("{\"old\": 1}\n")
    (old / "table9.csv").write_text("a stale table\n")  # made by the workflow once: not kept
    (plan.results_dir / "bench.json").write_text("{\"new\": 1}\n")
    publish(plan, to)
    manifest = json.loads((old / "PUBLISHED.json").read_text())
    assert (old / "learnability" / "sweep.csv").read_text() == "old sweep\n"
    assert (old / "bench.json").read_text() == "{\"new\": 1}\n"
    assert not (old / "table9.csv").exists()
    assert manifest["files"]["learnability/sweep.csv"] == sha256_file(old / "learnability"
                                                                      / "sweep.csv")
    assert "bench.json" in manifest["files"]
