"""Does the paper's claim hold? One verdict per claim of `paper.yaml` from a study's metrics.

The rule, written once (the README quotes RULE):
- Two rows are compared on the training seeds both trained, sample by sample under the same labels
  and sampling seed. The difference of a metric (A - B) is taken per seed.
- Two or more seeds: the mean difference gets a 95 % Student-t interval and a paired t-test's
  p-value. The primary claims of paper.yaml form one family: their p-values are Holm-adjusted.
  "A beats B" holds when the (adjusted) p-value is at most alpha and the mean is on A's better
  side, does not hold when it is on B's side, and is inconclusive otherwise. "A matches B" holds
  when the two one-sided tests against the claim's fixed margin reject (TOST, adjusted likewise),
  does not hold when the 95 % interval lies wholly outside +-margin.
- One seed: the interval of the two sample sets' own intervals in quadrature covers sampling
  noise, not training noise, so the line is only *indicative* (A ahead, B ahead, within noise).
- Secondary claims are judged each at alpha, uncorrected, and say so.
- A positive control checks that the study can decide at all: the same runs at their full steps
  against their own EMA at half the steps must come out "holds".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from d2it.errors import D2itError
from d2it.files import write_json_atomic, write_text_atomic
from d2it.report.marks import note, title
from d2it.report.paper import PAPER
from d2it.report.stats import holm, p_value_beats, p_value_matches, paired_difference

RULE = ("Per training seed, A - B of the metric; with two or more seeds, the mean gets a 95 % "
        "Student-t interval and a paired t-test, with the primary claims' p-values Holm-adjusted "
        "as one family (secondary claims: each at alpha, uncorrected). 'A beats B' holds when the "
        "p-value is at most alpha and the mean lies on A's better side, does not hold when it lies "
        "on B's side, and is inconclusive otherwise; 'A matches B' holds when the two one-sided "
        "tests against the claim's fixed margin reject (TOST) and does not hold when the interval "
        "lies outside +-margin. With one seed the interval covers sampling noise only (the sets' "
        "own intervals in quadrature) and the line is indicative, never holds or does not hold.")
HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
# Lower is better for distances; higher for scores.
LOWER_IS_BETTER = {"fd": True, "kid": True, "is": False, "precision": False, "recall": False,
                   "class_acc": False}


def beats(interval: tuple | None, lower_is_better: bool) -> str:
    """Which side of zero an interval of A - B lies on: holds (A's), does not hold (B's) or
    inconclusive."""
    if interval is None:
        return OPEN
    low, high = interval
    better, worse = (high < 0, low > 0) if lower_is_better else (low > 0, high < 0)
    return HOLDS if better else FAILS if worse else OPEN


def matches(interval: tuple | None, margin: float) -> str:
    """Where an interval of A - B lies against +-margin: inside (holds), wholly outside (does not
    hold) or across."""
    if interval is None or not margin > 0:
        return OPEN
    low, high = interval
    if -margin < low and high < margin:
        return HOLDS
    return FAILS if low >= margin or high <= -margin else OPEN


def indicative(side: str, kind: str) -> str:
    """The one-seed wording of a side: never holds or does not hold."""
    words = {"beats": {HOLDS: "A ahead", FAILS: "B ahead", OPEN: "within noise"},
             "matches": {HOLDS: "within margin", FAILS: "outside margin", OPEN: "within noise"}}
    return f"indicative: {words[kind][side]}"


def decide(found: dict, kind: str, lower_is_better: bool, p: float | None, alpha: float,
           margin: float | None = None) -> str:
    """The verdict on a paired difference, given the p-value it is judged on (Holm-adjusted for
    a primary claim)."""
    if found["n_seeds"] < 2:
        side = (beats(found["ci95"], lower_is_better) if kind == "beats"
                else matches(found["ci95"], margin))
        return indicative(side, kind)
    if kind == "beats":
        if p is None or p > alpha:
            return OPEN
        a_better = found["diff"] < 0 if lower_is_better else found["diff"] > 0
        return HOLDS if a_better else FAILS
    if p is not None and p <= alpha:
        return HOLDS
    return FAILS if matches(found["ci95"], margin) == FAILS else OPEN


def margin_of(claim: dict, key: str) -> float:
    """A 'matches' claim's fixed margin for a metric key (fid*/fd_inception_*: inception,
    fd_effnet_*: effnet, class_acc)."""
    family = ("class_acc" if key == "class_acc" else
              "inception" if key.startswith("fid") or "_inception_" in key else
              "effnet" if "_effnet_" in key else None)
    if family not in claim["margin"]:
        raise D2itError(f"d2it/report/paper.yaml: claim {claim['id']!r} states no margin for "
                        f"{key} (margins: {sorted(claim['margin'])})")
    return float(claim["margin"][family])


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


def _dvae_seeds(plan, sets: list) -> list[int]:
    return sorted({plan.dvae_of(ss.run).seed for ss in sets})


def compare_sets(plan, sets_a: list, sets_b: list, metric: str, what: str) -> dict:
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
            "b": float(np.mean(b_vals)), "protocol": va["values"][seeds[0]][2],
            "dvae_seeds": _dvae_seeds(plan, sets_a + sets_b)}


def compare_rows(plan, table: str, a: str, b: str, metric: str) -> dict:
    """The paired difference a - b of a metric between two rows of a table."""
    rows = {r.id: r for r in plan.table_rows(table)}
    for row_id in (a, b):
        if row_id not in rows:
            raise D2itError(f"study {plan.name!r}: {table} has no row {row_id!r}")
    return compare_sets(plan, rows[a].sample_sets, rows[b].sample_sets, metric,
                        f"{table}: rows {a!r} vs {b!r}")


def _claim(claim: dict, metric: str) -> dict:
    return {"id": claim["id"], "claim": claim["text"], "metric": metric,
            "table": claim.get("table") or claim["figure"],
            "role": "primary" if claim["primary"] else "secondary",
            "notes": claim.get("notes", [])}


def claim_difference(plan, claim: dict, metric: str) -> dict:
    """A table claim measured on a study: the paired difference and the p-value it is judged
    on, before any correction (verdict: 'not measured' when the study lacks its rows)."""
    out = _claim(claim, metric)
    if claim["table"] not in plan.study["tables"]:
        return {**out, "verdict": "not measured",
                "why": f"{claim['table']} is not a table of study {plan.name!r}"}
    present = {r.id for r in plan.table_rows(claim["table"])}
    a, b = claim.get("beats") or claim.get("matches")
    missing = [r for r in (a, b) if r not in present]
    if missing:
        return {**out, "verdict": "not measured",
                "why": f"rows {', '.join(missing)} are not in {claim['table']}"}
    found = compare_rows(plan, claim["table"], a, b, metric)
    paper = PAPER[claim["table"]]["rows"]
    column = PAPER[claim["table"]]["metrics"][0]
    out.update(rows=[a, b], **found,
               paper={"a": paper[a].get(column), "b": paper[b].get(column), "metric": column})
    if "beats" in claim:
        return {**out, "kind": "beats", "margin": None, "p": p_value_beats(found["diffs"])}
    margin = margin_of(claim, found["key"])
    return {**out, "kind": "matches", "margin": margin,
            "p": p_value_matches(found["diffs"], margin)}


def fig5_difference(plan, claim: dict, metric: str) -> dict:
    """Interior optimum: the best interior fine ratio against each end of the sweep, as parts."""
    out = _claim(claim, metric)
    by_ratio = {}
    for ss in plan.curves["fig5"]:
        by_ratio.setdefault(ss.run.fine_ratio, []).append(ss)
    ratios = sorted(by_ratio)
    if len(ratios) < 3:
        return {**out, "verdict": "not measured", "why": "fig5 needs three or more fine ratios"}
    means = {r: np.mean([v[0] for v in _set_values(by_ratio[r], metric, "fig5")["values"]
                         .values()]) for r in ratios}
    lower = LOWER_IS_BETTER[metric]
    interior = ratios[1:-1]
    best = min(interior, key=means.get) if lower else max(interior, key=means.get)
    parts = []
    for end in (ratios[0], ratios[-1]):
        found = compare_sets(plan, by_ratio[best], by_ratio[end], metric,
                             f"fig5: r={best} vs r={end}")
        parts.append({**found, "p": p_value_beats(found["diffs"]), "label": f"r={best} vs "
                      f"r={end}"})
    return {**out, "kind": "beats", "parts": parts, "best_ratio": best, **_summary(parts)}


def _area(values: list[tuple[int, float, tuple]]) -> tuple[float, tuple | None]:
    """The mean of a curve over its steps (trapezoid area / span) and its interval from the
    points' own intervals (independent sets: the weighted half-widths in quadrature)."""
    steps = np.array([s for s, _, _ in values], dtype=float)
    y = np.array([v for _, v, _ in values], dtype=float)
    gaps = np.diff(steps)
    weights = np.zeros(len(steps))
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    weights /= steps[-1] - steps[0]
    area = float(weights @ y)
    if any(ci[0] is None for _, _, ci in values):
        return area, None
    half = math.sqrt(sum((w * (ci[1] - ci[0]) / 2) ** 2
                         for w, (_, _, ci) in zip(weights, values)))
    return area, (area - half, area + half)


def fig6_difference(plan, claim: dict, metric: str) -> dict:
    """Faster convergence, on one number: the area under the metric over the evaluated steps
    (its mean over the span), D²iT against DiT paired by seed (the i-th d2it spec of Fig. 6 with
    the i-th dit spec)."""
    out = _claim(claim, metric)
    specs = plan.study["figures"]["fig6"]["specs"]
    kinds = {k: [s for s in specs if plan.study["specs"][s]["kind"] == k] for k in ("dit", "d2it")}
    pairs = list(zip(kinds["d2it"], kinds["dit"]))
    if not pairs:
        return {**out, "verdict": "not measured", "why": "fig6 needs a dit and a d2it spec"}
    sets = {}
    for spec, ss in zip(plan.curve_specs["fig6"], plan.curves["fig6"]):
        sets.setdefault(spec, []).append(ss)

    def areas(spec: str) -> dict:
        """Per seed: the area under the spec's curve and its sampling interval."""
        by_seed = {}
        for ss in sets[spec]:
            found = _set_values([ss], metric, f"fig6: {spec}")
            value, ci, protocol = found["values"][ss.run.seed]
            by_seed.setdefault(ss.run.seed, []).append((ss.train_step, value, ci))
        return {"key": found["key"], "protocol": protocol,
                "by_seed": {seed: _area(sorted(points)) for seed, points in by_seed.items()}}

    parts = []
    for d2it, dit in pairs:
        a, b = areas(d2it), areas(dit)
        seeds = sorted(set(a["by_seed"]) & set(b["by_seed"]))
        found = paired_difference([a["by_seed"][s][0] for s in seeds],
                                  [b["by_seed"][s][0] for s in seeds],
                                  a["by_seed"][seeds[0]][1], b["by_seed"][seeds[0]][1])
        parts.append({**found, "key": a["key"], "protocol": a["protocol"], "seeds": seeds,
                      "dvae_seeds": _dvae_seeds(plan, sets[d2it] + sets[dit]),
                      "p": p_value_beats(found["diffs"]),
                      "label": f"area {d2it} vs {dit}"})
    return {**out, "kind": "beats", "parts": parts, **_summary(parts)}


def _summary(parts: list[dict]) -> dict:
    first = parts[0]
    return {"key": first["key"], "protocol": first["protocol"], "seeds": first["seeds"],
            "dvae_seeds": first["dvae_seeds"], "n_seeds": min(p["n_seeds"] for p in parts),
            "basis": first["basis"],
            # a figure's claim holds when all its parts do: its p-value is the largest
            "p": None if any(p["p"] is None for p in parts) else max(p["p"] for p in parts)}


def _all_of(verdicts: list[str]) -> str:
    """A claim made of parts: every part must hold; one part that fails fails it."""
    if any(v.startswith("indicative") for v in verdicts):
        ahead = all(v.endswith("A ahead") for v in verdicts)
        behind = any(v.endswith("B ahead") for v in verdicts)
        return indicative(HOLDS if ahead else FAILS if behind else OPEN, "beats")
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else OPEN


def measure(plan, claim: dict, metric: str) -> dict:
    if "figure" not in claim:
        return claim_difference(plan, claim, metric)
    if claim["figure"] not in plan.curves:
        return {**_claim(claim, metric), "verdict": "not measured",
                "why": f"{claim['figure']} is not a figure of study {plan.name!r}"}
    judge = fig5_difference if claim["figure"] == "fig5" else fig6_difference
    return judge(plan, claim, metric)


def judge(found: dict, metric: str, p: float | None, alpha: float) -> str:
    """The verdict of a measured claim, judged on p (adjusted or not). A claim made of parts
    (a figure's) holds when every part does (its p is the largest of theirs) and fails when one
    part fails."""
    lower = LOWER_IS_BETTER[metric]
    if "parts" not in found:
        return decide(found, found["kind"], lower, p, alpha, found["margin"])
    verdicts = [decide(part, "beats", lower, part["p"], alpha) for part in found["parts"]]
    for part, verdict in zip(found["parts"], verdicts):
        part["verdict"] = verdict
    if found["n_seeds"] < 2:
        return _all_of(verdicts)
    if FAILS in verdicts:
        return FAILS
    return HOLDS if p is not None and p <= alpha and set(verdicts) == {HOLDS} else OPEN


def verdicts(plan) -> list[dict]:
    """Every claim of the paper judged on FD (the paper's metric): the primary claims as one
    Holm family, the rest each at alpha; the class score beside, uncorrected, where measured."""
    alpha = plan.study["verdict"]["alpha"]
    results = [measure(plan, claim, "fd") for claim in PAPER["claims"]]
    measured = [r for r in results if r.get("verdict") != "not measured"]
    adjusted = holm({r["id"]: r["p"] for r in measured if r["role"] == "primary"})
    for r in measured:
        r["p_holm"] = adjusted.get(r["id"])
        r["verdict"] = judge(r, "fd", r["p_holm"] if r["role"] == "primary" else r["p"], alpha)
    claims = {c["id"]: c for c in PAPER["claims"]}
    for r in measured:
        if not plan.study["metrics"]["class_score"]:
            continue
        try:
            acc = measure(plan, claims[r["id"]], "class_acc")
        except D2itError:  # e.g. Table 1's unconditional samples have no class
            continue
        acc["verdict"] = judge(acc, "class_acc", acc["p"], alpha)
        r["class_acc"] = acc
    return results


def positive_control(plan) -> dict | None:
    """The same runs at full steps against their EMA at half the steps: 'full beats half' on FD
    must hold, or the study cannot detect an effect of that size (the interval's half-width)."""
    if plan.control is None:
        return None
    row, half = plan.control
    alpha = plan.study["verdict"]["alpha"]
    found = compare_sets(plan, row.sample_sets, half, "fd",
                         f"positive control: {row.table}/{row.id}")
    p = p_value_beats(found["diffs"])
    verdict = decide(found, "beats", True, p, alpha)
    low, high = found["ci95"] if found["ci95"] else (math.nan, math.nan)
    return {**found, "p": p, "verdict": verdict, "table": row.table, "row": row.id,
            "steps": row.sample_sets[0].train_step, "half_step": half[0].train_step,
            "detectable": (high - low) / 2}


def _interval(found: dict) -> str:
    if found.get("ci95") is None:
        return "–"
    low, high = found["ci95"]
    return f"[{low:+.3g}, {high:+.3g}]"


def _p(found: dict) -> str:
    if found.get("p") is None:
        return "–"
    text = f"{found['p']:.3g}"
    if found.get("p_holm") is not None:
        text += f" (Holm {found['p_holm']:.3g})"
    return text


def _basis(found: dict) -> str:
    seeds = ", ".join(map(str, found["seeds"]))
    dvaes = ", ".join(map(str, found["dvae_seeds"]))
    return f"seeds {seeds}; DVAE seeds {dvaes}; {found['basis']}"


def markdown(plan, results: list[dict], control: dict | None) -> str:
    alpha = plan.study["verdict"]["alpha"]
    primary = [r["id"] for r in results if r["role"] == "primary"]
    family = [r["id"] for r in results if r["role"] == "primary" and "p_holm" in r]
    lines = [f"# {title(plan.study['mark'], 'Verdicts')}: study `{plan.name}`", "",
             *([note(plan.study["mark"]), ""] if plan.study["mark"] else []), f"Rule: {RULE}", "",
             f"alpha = {alpha}. Primary claims, pre-registered in d2it/report/paper.yaml: "
             f"{', '.join(primary)}; the {len(family)} this study measures form one Holm family "
             f"({', '.join(family) or 'none'}). Every other line is secondary: uncorrected.", "",
             "| claim | role | verdict | ours: A vs B | A - B [95 % interval] | p | basis | "
             "paper | class score A - B [95 %] |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = {}
    for r in results:
        marks = "".join(f" ({notes.setdefault(n, len(notes) + 1)})" for n in r["notes"])
        claim = f"{r['claim']}{marks}"
        if r["verdict"] == "not measured":
            lines.append(f"| {claim} | {r['role']} | not measured | {r['why']} | | | | | |")
            continue
        acc = r.get("class_acc")
        if "parts" in r:  # a figure's claim: its parts in one cell
            text = "; ".join(f"{p['label']}: {p['diff']:+.4g} {_interval(p)} ({p['verdict']})"
                             for p in r["parts"])
            lines.append(f"| {claim} | {r['role']} | **{r['verdict']}** | {r['key']} | {text} | "
                         f"{_p(r)} | {_basis(r)} | – | {acc['verdict'] if acc else '–'} |")
            continue
        ours = f"{r['key']}: {r['a']:.4g} vs {r['b']:.4g}"
        paper = f"{r['paper']['metric']}: {r['paper']['a']} vs {r['paper']['b']}"
        if r["margin"] is not None:
            ours += f" (margin ±{r['margin']:.3g})"
        acc_text = (f"{acc['diff']:+.3f} {_interval(acc)} ({acc['verdict']})" if acc else "–")
        lines.append(f"| {claim} | {r['role']} | **{r['verdict']}** | {ours} | "
                     f"{r['diff']:+.4g} {_interval(r)} | {_p(r)} | {_basis(r)} | {paper} | "
                     f"{acc_text} |")
    lines += ["", "## Positive control", ""]
    if control is None:
        lines.append("None planned (`verdict.positive_control: null`).")
    else:
        lines.append(
            f"{control['table']}/{control['row']} at {control['steps']} steps against the same "
            f"runs' EMA at {control['half_step']} steps ({_basis(control)}): {control['key']} "
            f"{control['a']:.4g} vs {control['b']:.4g}, {control['diff']:+.4g} "
            f"{_interval(control)}, p {_p(control)}: **{control['verdict']}**.")
        if control["verdict"] != HOLDS:
            lines.append(
                f"The study cannot detect an effect of this size: the smallest difference it "
                f"could have detected is about ±{control['detectable']:.3g} "
                f"({control['key']}, the interval's half-width).")
    texts = PAPER["notes"]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"({number}) {texts[name]}" for name, number in notes.items()]
    protocols = sorted({r["protocol"] for r in results if "protocol" in r})
    lines += ["", "Protocols: " + ("; ".join(protocols) if protocols else "none measured"), ""]
    return "\n".join(lines)


def write_verdict(plan, md: Path, js: Path) -> list[dict]:
    results = verdicts(plan)
    control = positive_control(plan)
    write_json_atomic(js, {"study": plan.name, "rule": RULE, "claims": results,
                           "positive_control": control,
                           **({"mark": note(plan.study["mark"])} if plan.study["mark"] else {})})
    write_text_atomic(md, markdown(plan, results, control))
    return results
