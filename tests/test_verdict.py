"""Verdicts: the rule on constructed intervals, paired differences against hand computations, and
a study's claims judged from its metrics files."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from d2it import study as studies
from d2it.errors import D2itError
from d2it.report.stats import holm, p_value_beats, p_value_matches, paired_difference
from d2it.report.verdict import (FAILS, HOLDS, OPEN, beats, decide, matches, verdicts,
                                 write_verdict)
from d2it.study import spec_label
from test_report import write_metrics
from tests_support import tiny_study


def test_rule_on_clear_win_clear_loss_and_overlap():
    # A - B of a distance (lower is better)
    assert beats((-3.0, -1.0), lower_is_better=True) == HOLDS
    assert beats((1.0, 3.0), lower_is_better=True) == FAILS
    assert beats((-1.0, 2.0), lower_is_better=True) == OPEN
    # of a score (higher is better)
    assert beats((0.1, 0.2), lower_is_better=False) == HOLDS
    assert beats((-0.2, -0.1), lower_is_better=False) == FAILS
    assert beats(None, lower_is_better=True) == OPEN
    # matches: inside, outside and across the margin
    assert matches((-0.5, 0.5), margin=1.0) == HOLDS
    assert matches((1.5, 2.0), margin=1.0) == FAILS
    assert matches((0.5, 1.5), margin=1.0) == OPEN


def test_paired_difference_over_seeds_is_students_t():
    a, b = [10.0, 12.0, 17.0], [11.0, 15.0, 19.0]  # differences -1, -3, -2
    found = paired_difference(a, b)
    half = 4.302653 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd(-1, -3, -2) / sqrt(3)
    assert found["diff"] == pytest.approx(-2.0) and found["sd"] == pytest.approx(1.0)
    np.testing.assert_allclose(found["ci95"], (-2 - half, -2 + half), rtol=1e-6)
    # three seeds all favouring A, yet too spread for the mean's interval to exclude zero
    assert found["n_seeds"] == 3 and beats(found["ci95"], True) == OPEN


def test_one_seed_combines_the_sets_intervals_and_says_so():
    found = paired_difference([10.0], [14.0], (9.0, 11.0), (12.0, 16.0))
    half = np.hypot(1.0, 2.0)
    np.testing.assert_allclose(found["ci95"], (-4 - half, -4 + half))
    assert found["basis"] == "1 seed: sampling noise only"
    assert paired_difference([1.0], [2.0])["ci95"] is None


def test_p_values_match_scipys_tests():
    """The paired t-test and TOST against scipy's one-sample tests, run another way."""
    diffs = [-1.0, -3.0, -2.0, -2.5]
    assert p_value_beats(diffs) == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    margin = 4.0
    above = stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
    below = stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    assert p_value_matches(diffs, margin) == pytest.approx(max(above, below))
    assert p_value_beats([-1.0]) is None and p_value_matches([-1.0], margin) is None


def test_holm_against_a_hand_computation():
    # sorted 0.01, 0.03, 0.04 of a family of 3: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 0.04)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06})
    # a one-seed member has no p-value but counts in the family's size
    found = holm({"a": 0.01, "b": None})
    assert found["a"] == pytest.approx(0.02) and found["b"] is None


def test_the_rule_decides_right_over_simulated_studies():
    """200 studies of 5 seeds, each a family of three primary claims: one true effect of 4 seed
    standard deviations, two null. The true claim must hold in >= 95 % of studies, and a null
    one may falsely hold in <= 5 % of them (the family-wise rate Holm controls)."""
    rng = np.random.default_rng(0)
    right = false = 0
    for _ in range(200):
        diffs = {"true": rng.normal(-4.0, 1.0, 5)}
        diffs.update({f"null{i}": rng.normal(0.0, 1.0, 5) for i in range(2)})
        found = {k: paired_difference(list(v), [0.0] * 5) for k, v in diffs.items()}
        adjusted = holm({k: p_value_beats(f["diffs"]) for k, f in found.items()})
        verdict = {k: decide(f, "beats", True, adjusted[k], 0.05) for k, f in found.items()}
        right += verdict["true"] == HOLDS
        false += any(verdict[k] == HOLDS for k in ("null0", "null1"))
    assert right / 200 >= 0.95 and false / 200 <= 0.05, (right, false)


def test_one_seed_is_only_indicative():
    found = paired_difference([10.0], [14.0], (9.0, 11.0), (12.0, 16.0))
    assert decide(found, "beats", True, None, 0.05) == "indicative: A ahead"
    assert decide(found, "beats", False, None, 0.05) == "indicative: B ahead"
    assert decide(found, "matches", True, None, 0.05, margin=10.0) == "indicative: within margin"


def _table_plan(tmp_path, dataset, **sections):
    rows = {"dit_xl": {"spec": "dit", "seeds": [0, 1, 2]},
            "d2it_xl": {"spec": "d2it", "seeds": [0, 1, 2]}}
    t5 = {"random": {"spec": "d2it", "grain_source": "random"},
          "gt": {"spec": "d2it", "grain_source": "gt"}, "predicted": {"spec": "d2it"}}
    return studies.plan(studies.resolve(tiny_study(
        tmp_path, dataset, tables={"table2": {"rows": rows}, "table5": {"rows": t5}},
        **sections), "t"))


def test_a_study_gets_a_verdict_per_claim(tmp_path, dataset):
    plan = _table_plan(tmp_path, dataset)
    values = {("table2", "dit_xl"): [20.0, 22.0, 21.0], ("table2", "d2it_xl"): [15.0, 16.0, 15.5],
              ("table5", "random"): [45.0], ("table5", "gt"): [15.2],
              ("table5", "predicted"): [15.0]}  # the d2it_xl set of seed 0: shared, same value
    for row in plan.rows:
        for fd, ss in zip(values[row.table, row.id], row.sample_sets):
            write_metrics(ss.metrics, fd)
    row, half = plan.control  # the positive control: auto, the first row of most seeds
    assert (row.table, row.id) == ("table2", "dit_xl")
    assert [ss.train_step for ss in half] == [plan.study["train"]["steps"] // 2] * 3
    for fd, ss in zip([26.0, 29.0, 27.0], half):
        write_metrics(ss.metrics, fd)
    found = {r["id"]: r for r in verdicts(plan)}
    t2 = found["t2_d2it_beats_dit"]
    # differences -5, -6, -5.5: mean -5.5, sd 0.5, t(0.975, 2) = 4.302653
    half_width = 4.302653 * 0.5 / np.sqrt(3)
    assert t2["diff"] == pytest.approx(-5.5) and t2["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(t2["ci95"], (-5.5 - half_width, -5.5 + half_width), rtol=1e-5)
    # the only primary claim measured: a family of one, Holm leaves its p-value
    assert t2["role"] == "primary" and t2["p_holm"] == pytest.approx(t2["p"])
    assert t2["p"] == pytest.approx(stats.ttest_1samp([-5, -6, -5.5], 0.0).pvalue)
    assert t2["verdict"] == HOLDS and t2["dvae_seeds"] == [0]
    # one seed each: indicative only, whatever the interval
    t5 = found["t5_predicted_beats_random"]
    assert t5["role"] == "secondary" and t5["verdict"] == "indicative: A ahead"
    t5_match = found["t5_predicted_matches_gt"]
    assert t5_match["margin"] == 10.0  # paper.yaml's fixed EffNet margin
    assert t5_match["verdict"] == "indicative: within margin"  # -0.2 -+ 1.41 inside -+10
    assert found["t2_d2it_beats_dit_guided"]["verdict"] == "not measured"
    assert found["fig6_faster_convergence"]["verdict"] == "not measured"

    md, js = tmp_path / "verdict.md", tmp_path / "verdict.json"
    write_verdict(plan, md, js)
    text = md.read_text()
    assert "| D²iT beats DiT at equal size, class-conditional without guidance (Table 2) (1) | " \
           "primary | **holds** |" in text
    assert "seeds 0, 1, 2; DVAE seeds 0; t over 3 seeds" in text
    assert "(2) Ground-truth grain maps come from real held-out images" in text
    # full steps beat half on every seed: 20 vs 26, 22 vs 29, 21 vs 27
    control = json.loads(js.read_text())["positive_control"]
    assert control["diff"] == pytest.approx(-19.0 / 3) and control["verdict"] == HOLDS
    assert "cannot detect" not in text


def test_a_failed_positive_control_says_what_the_study_cannot_detect(tmp_path, dataset):
    plan = _table_plan(tmp_path, dataset)
    for row in plan.rows:
        for ss in row.sample_sets:
            write_metrics(ss.metrics, 20.0 + ss.run.seed)
    for fd, ss in zip([19.0, 23.0, 21.5], plan.control[1]):  # half-way: no better, no worse
        write_metrics(ss.metrics, fd)
    write_verdict(plan, tmp_path / "verdict.md", tmp_path / "verdict.json")
    control = json.loads((tmp_path / "verdict.json").read_text())["positive_control"]
    assert control["verdict"] == OPEN
    # differences +1, -1, -0.5: the interval's half-width is what the study could detect
    low, high = control["ci95"]
    assert control["detectable"] == pytest.approx((high - low) / 2)
    assert f"about ±{control['detectable']:.3g}" in (tmp_path / "verdict.md").read_text()


def test_the_positive_control_is_chosen_or_refused_by_name(tmp_path, dataset):
    plan = _table_plan(tmp_path, dataset, verdict={"positive_control": None})
    assert plan.control is None
    chosen = {"positive_control": {"table": "table2", "row": "d2it_xl"}}
    plan = _table_plan(tmp_path, dataset, verdict=chosen)
    assert plan.control[0].id == "d2it_xl"
    with pytest.raises(D2itError, match=r"verdict.positive_control: table2/nope is not a row"):
        _table_plan(tmp_path, dataset,
                    verdict={"positive_control": {"table": "table2", "row": "nope"}})


def test_fig5_and_fig6_verdicts_and_figures(tmp_path, dataset):
    """Fig. 5: the interior ratio's FD against both ends; Fig. 6: D²iT vs DiT at every step. Each
    figure is a seaborn PNG with its CSV beside."""
    from d2it.report.curves import fig5, fig6

    figures = {"fig5": {"spec": "d2it", "fine_ratios": [0.25, 0.5, 0.75]},
               "fig6": {"specs": ["dit", "d2it"], "at_steps": [1, 3]}}
    plan = studies.plan(studies.resolve(tiny_study(tmp_path, dataset, figures=figures,
                                                   tables={}), "t"))
    fds = {0.25: 30.0, 0.5: 20.0, 0.75: 26.0}
    for ss in plan.curves["fig5"]:
        write_metrics(ss.metrics, fds[ss.run.fine_ratio])
        recon = plan.recon_json(plan.dvae_of(ss.run))
        recon.parent.mkdir(parents=True, exist_ok=True)
        recon.write_text(json.dumps({"rfd_effnet_1k": 10 * ss.run.fine_ratio, "psnr": 20.0}))
    steps = {("dit", 1): 50.0, ("dit", 3): 40.0, ("d2it", 1): 45.0, ("d2it", 3): 39.5}
    for spec, ss in zip(plan.curve_specs["fig6"], plan.curves["fig6"]):
        if spec == "d2it" and ss.train_step == 3:
            continue  # the fig5 set at r = 0.5 (FD 20): shared
        write_metrics(ss.metrics, steps[spec, ss.train_step])
    found = {r["id"]: r for r in verdicts(plan)}
    f5 = found["fig5_interior_optimum"]
    # r = 0.5 vs each end: -10 and -6, intervals +-sqrt(2) (one seed, bootstrap +-1 each)
    assert f5["best_ratio"] == 0.5 and f5["verdict"] == "indicative: A ahead"
    assert [p["diff"] for p in f5["parts"]] == [-10.0, -6.0]
    f6 = found["fig6_faster_convergence"]
    # one number: the mean of each curve over steps 1-3 (trapezoid), D²iT (45 + 20) / 2 against
    # DiT (50 + 40) / 2; each set's interval +-1 weighted by 1/2: +-sqrt(1/2) per curve
    (part,) = f6["parts"]
    assert part["diff"] == pytest.approx(32.5 - 45.0)
    np.testing.assert_allclose(part["ci95"], (-13.5, -11.5))
    assert f6["verdict"] == "indicative: A ahead" and f6["role"] == "secondary"

    out5, out6 = fig5(plan, tmp_path / "fig5.png"), fig6(plan, tmp_path / "fig6.png")
    assert out5["rows"] == 3 and out6["rows"] == 4
    table = (tmp_path / "fig5.csv").read_text().splitlines()
    assert table[0].startswith("fine_ratio,seed,rfd_key,rfd,psnr_db") and len(table) == 4
    for png in ("fig5.png", "fig6.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the bands' ends (each set's interval, one seed) and the series DVC plots, a column a line
    six = pd.read_csv(tmp_path / "fig6.csv")
    assert (six["fd_hi"] - six["fd_lo"] == 2.0).all()
    assert pd.read_csv(tmp_path / "fig5_series.csv").columns.tolist() == ["fine_ratio", "rfd", "fd"]
    series = pd.read_csv(tmp_path / "fig6_series.csv")
    labels = [spec_label(plan.study, spec) for spec in ("dit", "d2it")]
    assert series.columns.tolist() == ["step", *labels]
    assert series[labels[0]].tolist() == [50.0, 40.0] and series[labels[1]].tolist() == [45.0, 20.0]
