"""Does the paper's claim hold? One verdict per claim of `paper.yaml` from a study's metrics.

The rule, written once (the README quotes RULE):
- Two rows are compared on the same training seeds, sample by sample under the same labels and
  noise (sample i of every set depends on the sampling seed and i only). The difference of a
  metric (A - B) is taken per seed; its mean gets a 95 % interval: Student's t over the seeds when
  there are two or more, else the two sets' own 95 % intervals combined in quadrature (sampling
  noise only: the note says so).
- "A beats B" holds when the interval lies on A's side of zero, does not hold when it lies on B's
  side, and is inconclusive when it contains zero.
- "A matches B" holds when the interval lies inside +-margin, does not hold when it lies outside,
  and is inconclusive otherwise; the margin is a stated fraction of another difference (e.g. of
  random vs predicted grain maps).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from d2it.errors import D2itError
from d2it.files import write_json_atomic, write_text_atomic
from d2it.report.tables import PAPER

RULE = ("A claim 'A beats B' holds when the 95 % interval of the mean difference A - B (paired by "
        "training seed; Student's t over seeds, or the two sample sets' own intervals in "
        "quadrature when there is one seed) lies wholly on A's better side of zero, does not hold "
        "when it lies wholly on B's side, and is inconclusive when it contains zero. 'A matches "
        "B' holds when the interval lies inside +-margin and does not hold when it lies outside.")
HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
# Lower is better for distances; higher for scores.
LOWER_IS_BETTER = {"fd": True, "kid": True, "is": False, "precision": False, "recall": False,
                   "class_acc": False}


def mean_interval(values: list[float]) -> tuple[float, float | None, tuple | None]:
    """Mean, standard deviation and 95 % Student-t interval of the mean (None below 2 values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, sd, (mean - half, mean + half)


def paired_difference(a: list[float], b: list[float], a_ci: list | None = None,
                      b_ci: list | None = None) -> dict:
    """Mean of a_i - b_i over seeds with its 95 % interval. One seed: the sets' own intervals
    (a_ci, b_ci: (low, high) of each) give the interval, which then covers sampling noise only."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need equal, non-zero lengths ({len(a)} vs {len(b)})")
    diffs = [x - y for x, y in zip(a, b)]
    mean, sd, interval = mean_interval(diffs)
    basis = f"t over {len(diffs)} seeds"
    if interval is None:
        if not (a_ci and b_ci and a_ci[0] is not None and b_ci[0] is not None):
            return {"diff": mean, "sd": None, "ci95": None, "n_seeds": 1,
                    "basis": "1 seed and no per-set interval"}
        half = math.hypot((a_ci[1] - a_ci[0]) / 2, (b_ci[1] - b_ci[0]) / 2)
        interval = (mean - half, mean + half)
        basis = "1 seed: sampling noise only"
    return {"diff": mean, "sd": sd, "ci95": interval, "n_seeds": len(diffs), "basis": basis}


def beats(interval: tuple | None, lower_is_better: bool) -> str:
    """The verdict on 'A beats B' from the interval of A - B."""
    if interval is None:
        return OPEN
    low, high = interval
    better, worse = (high < 0, low > 0) if lower_is_better else (low > 0, high < 0)
    return HOLDS if better else FAILS if worse else OPEN


def matches(interval: tuple | None, margin: float) -> str:
    """The verdict on 'A matches B' (|A - B| within margin) from the interval of A - B."""
    if interval is None or not margin > 0:
        return OPEN
    low, high = interval
    if -margin < low and high < margin:
        return HOLDS
    return FAILS if low >= margin or high <= -margin else OPEN


def _set_values(sets: list, metric: str, what: str) -> dict:
    """Per training seed: the metric's value of that seed's sample set, its per-set interval and
    protocol, with the metric's key."""
    values = {}
    key = None
    for ss in sets:
        if not ss.metrics.is_file():
            raise D2itError(f"{what}: no metrics {ss.metrics} (run the study's sample_metrics "
                            "jobs)")
        found = json.loads(ss.metrics.read_text())
        key = found["keys"].get(metric)
        if key is None:
            raise D2itError(f"{ss.metrics}: no {metric} metric (keys: {found['keys']})")
        ci = found.get(f"{key}_ci95") or (None, None)
        values[ss.run.seed] = (found[key], ci, found["protocol"])
    return {"key": key, "values": values}


def compare_sets(sets_a: list, sets_b: list, metric: str, what: str) -> dict:
    """The paired difference A - B of a metric over the seeds both sides trained."""
    va = _set_values(sets_a, metric, what)
    vb = _set_values(sets_b, metric, what)
    if va["key"] != vb["key"]:
        raise D2itError(f"{what}: the two sides measure {metric} differently "
                        f"({va['key']} vs {vb['key']})")
    seeds = sorted(set(va["values"]) & set(vb["values"]))
    if not seeds:
        raise D2itError(f"{what}: the two sides share no training seed")
    a_vals = [va["values"][s][0] for s in seeds]
    b_vals = [vb["values"][s][0] for s in seeds]
    result = paired_difference(a_vals, b_vals, va["values"][seeds[0]][1],
                               vb["values"][seeds[0]][1])
    return {**result, "key": va["key"], "seeds": seeds, "a": float(np.mean(a_vals)),
            "b": float(np.mean(b_vals)), "protocol": va["values"][seeds[0]][2]}


def compare_rows(plan, table: str, a: str, b: str, metric: str) -> dict:
    """The paired difference a - b of a metric between two rows of a table."""
    rows = {r.id: r for r in plan.table_rows(table)}
    for row_id in (a, b):
        if row_id not in rows:
            raise D2itError(f"study {plan.name!r}: {table} has no row {row_id!r}")
    return compare_sets(rows[a].sample_sets, rows[b].sample_sets, metric,
                        f"{table}: rows {a!r} vs {b!r}")


def claim_verdict(plan, claim: dict, metric: str) -> dict:
    """One claim of paper.yaml judged on a study: its verdict, numbers and interval."""
    out = {"id": claim["id"], "claim": claim["text"], "table": claim["table"],
           "metric": metric}
    rows_needed = claim.get("beats") or claim.get("matches")
    if claim["table"] not in plan.study["tables"]:
        return {**out, "verdict": "not measured",
                "why": f"{claim['table']} is not a table of study {plan.name!r}"}
    present = {r.id for r in plan.table_rows(claim["table"])}
    missing = [r for r in rows_needed if r not in present]
    if missing:
        return {**out, "verdict": "not measured",
                "why": f"rows {', '.join(missing)} are not in {claim['table']}"}
    a, b = rows_needed
    found = compare_rows(plan, claim["table"], a, b, metric)
    lower = LOWER_IS_BETTER[metric]
    if "beats" in claim:
        verdict = beats(found["ci95"], lower)
        margin = None
    else:
        ref = compare_rows(plan, claim["table"], *claim["margin"]["of"], metric)
        margin = claim["margin"]["fraction"] * abs(ref["diff"])
        verdict = matches(found["ci95"], margin)
    paper = PAPER[claim["table"]]["rows"]
    column = PAPER[claim["table"]]["metrics"][0]
    return {**out, "verdict": verdict, "a": a, "b": b, **found, "margin": margin,
            "paper": {"a": paper[a].get(column), "b": paper[b].get(column), "metric": column}}


def _all_of(found: list[dict]) -> str:
    """A claim made of parts: holds if every part holds, fails if any part fails."""
    verdicts = [f["verdict"] for f in found]
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else OPEN


def fig5_verdict(plan, out: dict, metric: str) -> dict:
    """Interior optimum: the best interior fine ratio beats both ends of the sweep."""
    by_ratio = {}
    for ss in plan.curves["fig5"]:
        by_ratio.setdefault(ss.run.fine_ratio, []).append(ss)
    ratios = sorted(by_ratio)
    if len(ratios) < 3:
        return {**out, "verdict": "not measured", "why": "fig5 needs three or more fine ratios"}
    means = {r: np.mean(list(v[0] for v in _set_values(by_ratio[r], metric, "fig5")["values"]
                             .values())) for r in ratios}
    lower = LOWER_IS_BETTER[metric]
    interior = ratios[1:-1]
    best = min(interior, key=means.get) if lower else max(interior, key=means.get)
    parts = []
    for end in (ratios[0], ratios[-1]):
        found = compare_sets(by_ratio[best], by_ratio[end], metric, f"fig5: r={best} vs r={end}")
        parts.append({**found, "verdict": beats(found["ci95"], lower), "b_ratio": end})
    return {**out, "verdict": _all_of(parts), "best_ratio": best, "parts": parts,
            "key": parts[0]["key"], "protocol": parts[0]["protocol"], "seeds": parts[0]["seeds"],
            "text": "; ".join(f"r={best} vs r={p['b_ratio']}: {p['diff']:+.4g} "
                              f"{_interval(p)} ({p['verdict']})" for p in parts)}


def fig6_verdict(plan, out: dict, metric: str) -> dict:
    """Faster convergence: each D²iT spec of Fig. 6 beats the DiT spec listed with it (the i-th
    d2it with the i-th dit) at every evaluated step."""
    specs = plan.study["figures"]["fig6"]["specs"]
    kinds = {k: [s for s in specs if plan.study["specs"][s]["kind"] == k] for k in ("dit", "d2it")}
    pairs = list(zip(kinds["d2it"], kinds["dit"]))
    if not pairs:
        return {**out, "verdict": "not measured", "why": "fig6 needs a dit and a d2it spec"}
    sets = {}
    for spec, ss in zip(plan.curve_specs["fig6"], plan.curves["fig6"]):
        sets.setdefault((spec, ss.train_step), []).append(ss)
    steps = sorted(plan.study["figures"]["fig6"]["at_steps"])
    parts = []
    for d2it, dit in pairs:
        for step in steps:
            found = compare_sets(sets[d2it, step], sets[dit, step], metric,
                                 f"fig6: {d2it} vs {dit} at step {step}")
            parts.append({**found, "verdict": beats(found["ci95"], LOWER_IS_BETTER[metric]),
                          "pair": f"{d2it} vs {dit}", "step": step})
    return {**out, "verdict": _all_of(parts), "parts": parts, "key": parts[0]["key"],
            "protocol": parts[0]["protocol"], "seeds": parts[0]["seeds"],
            "text": "; ".join(f"{p['pair']} @ {p['step']}: {p['diff']:+.4g} {_interval(p)}"
                              for p in parts)}


def figure_verdict(plan, claim: dict, metric: str) -> dict:
    out = {"id": claim["id"], "claim": claim["text"], "table": claim["figure"], "metric": metric}
    if claim["figure"] not in plan.curves:
        return {**out, "verdict": "not measured",
                "why": f"{claim['figure']} is not a figure of study {plan.name!r}"}
    judge = fig5_verdict if claim["figure"] == "fig5" else fig6_verdict
    return judge(plan, out, metric)


def verdicts(plan) -> list[dict]:
    """Every claim of the paper judged on FD (the paper's metric), with the class score beside
    where the study measures it."""
    results = []
    for claim in PAPER["claims"]:
        judge = figure_verdict if "figure" in claim else claim_verdict
        found = judge(plan, claim, "fd")
        if found["verdict"] != "not measured" and plan.study["metrics"]["class_score"]:
            try:
                found["class_acc"] = judge(plan, claim, "class_acc")
            except D2itError:  # e.g. Table 1's unconditional samples have no class
                pass
        results.append(found)
    return results


def _interval(found: dict) -> str:
    if found.get("ci95") is None:
        return "–"
    low, high = found["ci95"]
    return f"[{low:+.3g}, {high:+.3g}]"


def markdown(plan, results: list[dict]) -> str:
    lines = [f"# Verdicts: study `{plan.name}`", "", f"Rule: {RULE}", "",
             "| claim | verdict | ours: A vs B | A - B [95 % interval] | seeds, basis | "
             "paper | class score A - B [95 %] |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["verdict"] == "not measured":
            lines.append(f"| {r['claim']} | not measured | {r['why']} | | | | |")
            continue
        if "parts" in r:  # a figure's claim: its parts in one cell
            acc = r.get("class_acc")
            lines.append(f"| {r['claim']} | **{r['verdict']}** | {r['key']} | {r['text']} | "
                         f"{', '.join(map(str, r['seeds']))} | – | "
                         f"{acc['verdict'] if acc else '–'} |")
            continue
        ours = f"{r['key']}: {r['a']:.4g} vs {r['b']:.4g}"
        paper = f"{r['paper']['metric']}: {r['paper']['a']} vs {r['paper']['b']}"
        if r["margin"] is not None:
            paper += f" (margin ±{r['margin']:.3g})"
        acc = r.get("class_acc")
        acc_text = (f"{acc['diff']:+.3f} {_interval(acc)} ({acc['verdict']})" if acc else "–")
        lines.append(f"| {r['claim']} | **{r['verdict']}** | {ours} | {r['diff']:+.4g} "
                     f"{_interval(r)} | {', '.join(map(str, r['seeds']))}; {r['basis']} | "
                     f"{paper} | {acc_text} |")
    protocols = sorted({r["protocol"] for r in results if "protocol" in r})
    lines += ["", "Protocols: " + ("; ".join(protocols) if protocols else "none measured"), ""]
    return "\n".join(lines)


def write_verdict(plan, md: Path, js: Path) -> list[dict]:
    results = verdicts(plan)
    write_json_atomic(js, {"study": plan.name, "rule": RULE, "claims": results})
    write_text_atomic(md, markdown(plan, results))
    return results
