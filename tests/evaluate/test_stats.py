"""Bootstrap intervals, paired tests and McNemar against hand-computed and simulated truths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specialize.evaluate.stats import (
    bootstrap_ci,
    bootstrap_metric_ci,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_metric,
)


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([1.0] * 50) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_metric_ci(0, lambda idx: 1.0))
    assert bootstrap_metric_ci(1, lambda idx: 0.5) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_is_deterministic_and_ordered():
    x = np.random.default_rng(1).random(100)
    first = bootstrap_ci(x, seed=3)
    assert first == bootstrap_ci(x, seed=3)
    point, low, high = first
    assert low < point < high
    assert point == pytest.approx(x.mean())


def test_bootstrap_ci_accepts_statistics_without_axis():
    x = np.arange(20.0)
    point, low, high = bootstrap_ci(x, statistic=lambda v: float(np.median(v)), n_resamples=200)
    assert point == 9.5 and low <= point <= high


def test_bootstrap_ci_covers_the_true_mean():
    # 95% intervals over 200 simulated test sets of 400 Bernoulli(0.7) items should cover 0.7
    # about 95% of the time; percentile bootstrap is a little liberal, so allow down to 90%.
    covered = 0
    for seed in range(200):
        sample = np.random.default_rng(1000 + seed).random(400) < 0.7
        _, low, high = bootstrap_ci(sample, n_resamples=400, seed=seed)
        covered += low <= 0.7 <= high
    assert covered >= 180


def test_bootstrap_metric_ci_matches_bootstrap_ci_for_a_mean():
    x = np.random.default_rng(2).random(60)
    assert bootstrap_metric_ci(
        60, lambda idx: float(x[idx].mean()), n_resamples=300, seed=5
    ) == pytest.approx(bootstrap_ci(x, n_resamples=300, seed=5))


def test_large_inputs_are_resampled_in_chunks():
    x = np.random.default_rng(3).random(50_000)
    point, low, high = bootstrap_ci(x, n_resamples=200)
    assert low < point < high and high - low < 0.02


def test_paired_bootstrap_detects_a_clear_difference():
    rng = np.random.default_rng(4)
    a = (rng.random(300) < 0.8).astype(float)
    b = (rng.random(300) < 0.5).astype(float)
    result = paired_bootstrap(a, b)
    assert result.mean_diff == pytest.approx(a.mean() - b.mean())
    assert result.ci_low > 0 and result.p_value < 0.01
    reverse = paired_bootstrap(b, a)
    assert reverse.ci_high < 0 and reverse.p_value < 0.01


def test_paired_bootstrap_finds_nothing_on_identical_inputs():
    a = np.random.default_rng(5).random(200)
    result = paired_bootstrap(a, a.copy())
    assert (result.mean_diff, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_rejects_unpaired_and_handles_empty():
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 0.0], [1.0])
    assert math.isnan(paired_bootstrap([], []).mean_diff)


def test_paired_bootstrap_metric_uses_the_same_indices():
    x = np.random.default_rng(6).random(100)
    same = paired_bootstrap_metric(100, lambda i: float(x[i].mean()), lambda i: float(x[i].mean()))
    assert same.p_value == 1.0 and same.ci_low == same.ci_high == 0.0
    better = paired_bootstrap_metric(100, lambda i: float(x[i].mean()) + 0.1, lambda i: float(x[i].mean()))
    assert better.mean_diff == pytest.approx(0.1) and better.p_value < 0.01


def test_mcnemar_exact_matches_hand_computation():
    # b01 = 2 (A wrong, B right), b10 = 8: two-sided exact p = 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10.
    a = [False] * 2 + [True] * 8 + [True] * 5 + [False] * 5
    b = [True] * 2 + [False] * 8 + [True] * 5 + [False] * 5
    result = mcnemar(a, b)
    assert (result.b01, result.b10, result.n) == (2, 8, 20)
    assert result.p_value == pytest.approx(2 * 56 / 1024)  # 0.109375
    assert result.mean_diff == pytest.approx(6 / 20)
    assert result.ci_low < result.mean_diff < result.ci_high


def test_mcnemar_chi_square_for_many_discordant_pairs():
    # b01 = 30, b10 = 10: chi2 = (|30-10| - 1)^2 / 40 = 9.025, p = P(chi2_1 > 9.025) = 0.0026631.
    a = [False] * 30 + [True] * 10 + [True] * 60
    b = [True] * 30 + [False] * 10 + [True] * 60
    result = mcnemar(a, b)
    assert (result.b01, result.b10) == (30, 10)
    assert result.p_value == pytest.approx(0.0026631, abs=1e-6)


def test_mcnemar_without_discordant_pairs():
    result = mcnemar([True, False, True], [True, False, True])
    assert (result.p_value, result.mean_diff, result.b01, result.b10) == (1.0, 0.0, 0, 0)
    assert math.isnan(mcnemar([], []).p_value)
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])
