"""tfnas.study.stats: rank correlations against exact values and SciPy, bootstrap, verdicts."""

import math

import numpy as np
import pytest

from tfnas.study import stats


def test_rankdata_averages_ties():
    assert stats.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert stats.rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


def test_exact_values():
    # Perfectly monotone (not linear) data: rho = tau = +-1.
    x = [1, 2, 3, 4, 5]
    assert stats.spearman(x, [1, 4, 9, 16, 25]) == pytest.approx(1.0)
    assert stats.kendall_tau(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # One swapped pair among 4: tau = (5 - 1) / 6; rho = 1 - 6*2/(4*15) = 0.8.
    assert stats.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert stats.spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert math.isnan(stats.spearman([1, 2, 3], [7, 7, 7]))
    assert math.isnan(stats.kendall_tau([1, 2], [3, 4]))


def test_against_scipy_with_ties_and_nans():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 5, 13).astype(float)        # many ties, like widths
        y = x * 0.3 + rng.normal(size=13)
        y[rng.integers(0, 13)] = np.nan
        keep = np.isfinite(y)
        assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x[keep], y[keep])[0], abs=1e-12)
        assert stats.kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x[keep], y[keep])[0], abs=1e-12)


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    x = np.arange(30, dtype=float)
    y = x + rng.normal(scale=5, size=30)
    low, high, kept = stats.bootstrap_ci(x, y, "spearman", resamples=500, seed=1)
    rho = stats.spearman(x, y)
    assert low < rho < high and low > 0 and kept == 500
    assert stats.bootstrap_ci(x, y, "spearman", resamples=500, seed=1)[:2] == (low, high)   # seeded
    noise = stats.bootstrap_ci(x, rng.normal(size=30), "kendall", resamples=500)
    assert noise[0] < 0 < noise[1]
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1, 2, 3], [3, 1, 2])[:2])


def test_correlate_row_and_verdicts():
    x = np.arange(12, dtype=float)
    row = stats.correlate(x, -x ** 3, "width", "top_eigenvalue", resamples=300)
    assert row["n"] == 12 and row["spearman"] == pytest.approx(-1.0) and row["kendall"] == pytest.approx(-1.0)
    assert set(row) >= {"x", "y", "spearman", "ci_low", "ci_high", "n"}
    text = stats.describe(row, x_label="width", y_label="λ_max", expected_sign=-1)
    assert "falls with width" in text and "strong negative" in text and "excludes zero" in text
    assert "as the paper predicts" in text and "says little" not in text
    against = stats.describe(row, expected_sign=+1)
    assert "against the paper's prediction" in against
    small = stats.correlate([1, 2, 3, 4], [2, 1, 4, 3], "width", "y", resamples=200)
    small_text = stats.describe(small, "kendall")
    assert "With only 4 cells" in small_text and "τ = +0.33" in small_text
    unsure = {**small, "spearman": -0.2, "ci_low": -0.7, "ci_high": 0.4}
    assert "against the paper's direction, but not established" in stats.describe(unsure, expected_sign=+1)
    none = {**small, "spearman": -0.001}
    text = stats.describe(none, y_label="λ_max", expected_sign=+1)
    assert "shows no rank correlation" in text and "ρ = 0.00" in text and "paper" not in text
    flat = stats.correlate([1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1], "width", "y")
    assert flat["spearman"] is None and "undefined" in stats.describe(flat)
