"""The statistics of the verdict rule (d2it.report.verdict): the Student-t interval of a mean,
paired differences over training seeds, the paired t-test, TOST against a margin and Holm's
adjustment of a family of p-values."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_interval(values: list[float], level: float = 0.95
                  ) -> tuple[float, float | None, tuple | None]:
    """Mean, standard deviation and Student-t interval of the mean (None below 2 values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, sd, (mean - half, mean + half)


def p_value_beats(diffs: list[float]) -> float | None:
    """Two-sided paired t-test of mean(diffs) = 0 (None below two seeds)."""
    if len(diffs) < 2:
        return None
    mean = float(np.mean(diffs))
    se = float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs))
    if se == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * stats.t.sf(abs(mean) / se, len(diffs) - 1))


def p_value_matches(diffs: list[float], margin: float) -> float | None:
    """TOST: the larger p-value of the one-sided t-tests of mean > -margin and mean < margin."""
    if len(diffs) < 2:
        return None
    mean = float(np.mean(diffs))
    se = float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs))
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    df = len(diffs) - 1
    above_low = stats.t.sf((mean + margin) / se, df)
    below_high = stats.t.cdf((mean - margin) / se, df)
    return float(max(above_low, below_high))


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values of a family. A member without a p-value (one seed)
    still counts in the family's size, and keeps None."""
    m = len(pvalues)
    ranked = sorted((p, key) for key, p in pvalues.items() if p is not None)
    adjusted = {key: None for key in pvalues}
    running = 0.0
    for rank, (p, key) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[key] = running
    return adjusted


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
            return {"diff": mean, "diffs": diffs, "sd": None, "ci95": None, "n_seeds": 1,
                    "basis": "1 seed and no per-set interval"}
        half = math.hypot((a_ci[1] - a_ci[0]) / 2, (b_ci[1] - b_ci[0]) / 2)
        interval = (mean - half, mean + half)
        basis = "1 seed: sampling noise only"
    return {"diff": mean, "diffs": diffs, "sd": sd, "ci95": interval, "n_seeds": len(diffs),
            "basis": basis}
