"""Rank statistics for a study: Spearman's rho and Kendall's tau-b with
bootstrap confidence intervals, in NumPy (SciPy is not needed), and the
sentence a number supports.

- :func:`rankdata`: average ranks (ties share the mean of their ranks);
- :func:`spearman`: Pearson's correlation of the ranks;
- :func:`kendall_tau`: tau-b (ties in either variable corrected), O(n^2);
- :func:`bootstrap_ci`: percentile interval of a statistic over pairs drawn
  with replacement (resamples where it is undefined, e.g. a constant
  variable, are dropped; the count kept is returned);
- :func:`correlate`: both statistics with their intervals, as one JSON row;
- :func:`describe`: a verdict sentence computed from such a row.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_N", "rankdata", "spearman", "kendall_tau", "bootstrap_ci", "correlate",
           "strength", "describe"]

# Below this many cells a rank correlation says next to nothing (with 4
# points, rho takes only a handful of values); the verdict says so.
MIN_N = 6


def _finite_pairs(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of one length (got {x.shape}, {y.shape})")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def rankdata(values) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation; NaN for fewer than 3 pairs or a constant variable."""
    x, y = _finite_pairs(x, y)
    if len(x) < 3:
        return math.nan
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(np.dot(rx, rx) * np.dot(ry, ry)))
    return float(np.dot(rx, ry) / denominator) if denominator > 0 else math.nan


def kendall_tau(x, y) -> float:
    """Kendall's tau-b; NaN for fewer than 3 pairs or a constant variable."""
    x, y = _finite_pairs(x, y)
    if len(x) < 3:
        return math.nan
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    s = float(np.sum(dx[upper] * dy[upper]))
    pairs_x, pairs_y = float(np.sum(dx[upper] != 0)), float(np.sum(dy[upper] != 0))
    return s / math.sqrt(pairs_x * pairs_y) if pairs_x and pairs_y else math.nan


_STATISTICS = {"spearman": spearman, "kendall": kendall_tau}


def bootstrap_ci(x, y, statistic="spearman", resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple:
    """``(low, high, kept)``: the percentile bootstrap interval of
    ``statistic`` (``"spearman"``, ``"kendall"`` or a function of ``(x, y)``)
    over ``resamples`` draws of the pairs with replacement; NaNs when fewer
    than 4 pairs or fewer than half the resamples are defined."""
    fn = _STATISTICS.get(statistic, statistic)
    x, y = _finite_pairs(x, y)
    n = len(x)
    if n < 4:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(resamples)):
        pick = rng.integers(0, n, n)
        value = fn(x[pick], y[pick])
        if math.isfinite(value):
            values.append(value)
    if len(values) < resamples / 2:
        return math.nan, math.nan, len(values)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high), len(values)


def _clean(value):
    return None if value is None or not math.isfinite(value) else float(value)


def correlate(x, y, x_name: str, y_name: str, resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict:
    """One correlation row: ``x``, ``y``, ``n``, ``spearman`` with
    ``ci_low``/``ci_high`` (its bootstrap interval), ``kendall`` with
    ``kendall_ci_low``/``kendall_ci_high``, ``level``, ``resamples``
    (NaN -> ``None``)."""
    fx, fy = _finite_pairs(x, y)
    rho, tau = spearman(fx, fy), kendall_tau(fx, fy)
    low, high, kept = bootstrap_ci(fx, fy, "spearman", resamples, level, seed)
    tau_low, tau_high, _ = bootstrap_ci(fx, fy, "kendall", resamples, level, seed)
    return {"x": x_name, "y": y_name, "n": int(len(fx)), "spearman": _clean(rho),
            "ci_low": _clean(low), "ci_high": _clean(high), "kendall": _clean(tau),
            "kendall_ci_low": _clean(tau_low), "kendall_ci_high": _clean(tau_high),
            "level": level, "resamples": int(resamples), "resamples_defined": int(kept)}


def strength(value: float) -> str:
    """A word for the size of a rank correlation (|r| < .1 negligible, < .3
    weak, < .5 moderate, else strong)."""
    size = abs(value)
    if size < 0.1:
        return "negligible"
    if size < 0.3:
        return "weak"
    if size < 0.5:
        return "moderate"
    return "strong"


def describe(row: dict, statistic: str = "spearman", x_label: str | None = None,
             y_label: str | None = None, expected_sign: int | None = None) -> str:
    """A sentence computed from a :func:`correlate` row: direction, size,
    whether the interval excludes zero, and, given ``expected_sign`` (+1 /
    -1), whether that agrees with the expectation; says so when ``n`` is too
    small or the statistic is undefined."""
    x_label, y_label = x_label or row["x"], y_label or row["y"]
    symbol = {"spearman": "ρ", "kendall": "τ"}[statistic]
    value = row[statistic]
    low, high = (row["ci_low"], row["ci_high"]) if statistic == "spearman" else \
        (row["kendall_ci_low"], row["kendall_ci_high"])
    n = row["n"]
    if value is None:
        return f"{x_label} vs {y_label}: undefined over {n} cell(s) (a constant or missing variable)."
    if round(value, 2) == 0:   # printed as 0.00: neither direction
        value = 0.0
        text = f"{y_label} shows no rank correlation with {x_label} ({symbol} = 0.00"
    else:
        direction = "rises" if value > 0 else "falls"
        text = (f"{y_label} {direction} with {x_label}: {strength(value)} "
                f"{'positive' if value > 0 else 'negative'} rank correlation ({symbol} = {value:+.2f}")
    if low is None:
        text += f", n = {n}, no confidence interval)"
    else:
        excludes = low > 0 or high < 0
        text += (f", {100 * row['level']:.0f}% CI {low:+.2f} to {high:+.2f}, n = {n}); the interval "
                 + ("excludes zero" if excludes else "includes zero, so the sign is not established"))
    if expected_sign is not None and value != 0:
        agrees = (value > 0) == (expected_sign > 0)
        established = low is not None and (low > 0 or high < 0)
        if agrees and established:
            text += "; as the paper predicts"
        elif agrees:
            text += "; in the paper's direction, but not established at this scale"
        elif established:
            text += "; against the paper's prediction"
        else:
            text += "; against the paper's direction, but not established at this scale"
    text = text[0].upper() + text[1:] + "."
    if n < MIN_N:
        text += f" With only {n} cells this says little either way."
    return text
