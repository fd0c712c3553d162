"""Verdicts: the rule on constructed intervals, paired differences against hand computations, and
a study's claims judged from its metrics files."""
import json

import numpy as np
import pytest

from d2it import study as studies
from d2it.report.verdict import (FAILS, HOLDS, OPEN, beats, matches, paired_difference,
                                 verdicts, write_verdict)
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


def test_a_study_gets_a_verdict_per_claim(tmp_path, dataset):
    rows = {"dit_xl": {"spec": "dit", "seeds": [0, 1]}, "d2it_xl": {"spec": "d2it",
                                                                     "seeds": [0, 1]}}
    t5 = {"random": {"spec": "d2it", "grain_source": "random"},
          "gt": {"spec": "d2it", "grain_source": "gt"}, "predicted": {"spec": "d2it"}}
    plan = studies.plan(studies.resolve(tiny_study(
        tmp_path, dataset, tables={"table2": {"rows": rows}, "table5": {"rows": t5}}), "t"))
    values = {("table2", "dit_xl"): [20.0, 22.0], ("table2", "d2it_xl"): [15.0, 16.0],
              ("table5", "random"): [45.0], ("table5", "gt"): [15.2],
              ("table5", "predicted"): [15.0]}  # the d2it_xl set of seed 0: shared, same value
    for row in plan.rows:
        for fd, ss in zip(values[row.table, row.id], row.sample_sets):
            write_metrics(ss.metrics, fd)
    found = {r["id"]: r for r in verdicts(plan)}
    t2 = found["t2_d2it_beats_dit"]
    # differences -5 and -6 over seeds 0 and 1: mean -5.5, sd 0.7071, t(0.975, 1) = 12.7062
    half = 12.7062 * np.std([-5, -6], ddof=1) / np.sqrt(2)
    assert t2["diff"] == pytest.approx(-5.5) and t2["seeds"] == [0, 1]
    np.testing.assert_allclose(t2["ci95"], (-5.5 - half, -5.5 + half), rtol=1e-5)
    assert t2["verdict"] == OPEN  # two seeds leave a wide interval across zero
    # one seed each: the bootstrap intervals (+-1) in quadrature
    assert found["t5_predicted_beats_random"]["verdict"] == HOLDS
    t5_match = found["t5_predicted_matches_gt"]
    assert t5_match["margin"] == pytest.approx(0.25 * 30.0)
    assert t5_match["verdict"] == HOLDS  # -0.2 -+ 1.41 inside -+7.5
    assert found["t2_d2it_beats_dit_guided"]["verdict"] == "not measured"
    assert found["t3_routing_helps"]["verdict"] == "not measured"
    assert found["fig6_faster_convergence"]["verdict"] == "not measured"

    md, js = tmp_path / "verdict.md", tmp_path / "verdict.json"
    write_verdict(plan, md, js)
    assert "| D²iT beats DiT at equal size, class-conditional without guidance (Table 2) | " \
           "**inconclusive** |" in md.read_text()
    assert json.loads(js.read_text())["claims"][1]["verdict"] == OPEN


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
    assert f5["best_ratio"] == 0.5 and f5["verdict"] == HOLDS
    assert [p["diff"] for p in f5["parts"]] == [-10.0, -6.0]
    f6 = found["fig6_faster_convergence"]
    assert [(p["step"], p["diff"], p["verdict"]) for p in f6["parts"]] == [
        (1, -5.0, HOLDS), (3, 20.0 - 40.0, HOLDS)]
    assert f6["verdict"] == HOLDS

    out5, out6 = fig5(plan, tmp_path / "fig5.png"), fig6(plan, tmp_path / "fig6.png")
    assert out5["rows"] == 3 and out6["rows"] == 4
    table = (tmp_path / "fig5.csv").read_text().splitlines()
    assert table[0].startswith("fine_ratio,seed,rfd_key,rfd,psnr_db") and len(table) == 4
    for png in ("fig5.png", "fig6.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
