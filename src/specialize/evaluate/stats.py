"""Uncertainty and significance for evaluation results.

A test split is small (often a few hundred rows), so a headline number without an interval
invites over-reading a 2-point gap. Everything here is resampling or exact counting: no
normal approximations where the sample is small, and no scipy (the tool must not need it).

- `bootstrap_ci` / `bootstrap_metric_ci`: percentile bootstrap intervals for one contender;
- `paired_bootstrap` / `paired_bootstrap_metric`: is contender A better than B on the *same* items;
- `mcnemar`: the standard paired test for two classifiers' per-item correctness;
- `wilson_interval`: a proportion from few trials (human review's win rates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "PairedTest",
    "bootstrap_ci",
    "bootstrap_metric_ci",
    "mcnemar",
    "paired_bootstrap",
    "paired_bootstrap_metric",
    "wilson_interval",
]

# Resample in chunks so that n_resamples x n_items never materialises more than this many
# indices at once (a 100k-row test set would otherwise need ~1 GB for 1000 resamples).
_MAX_CHUNK_ELEMENTS = 4_000_000
# Below this many discordant pairs the chi-square approximation is poor; use the exact test.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class PairedTest:
    """The outcome of comparing contender A with contender B on the same items.

    `mean_diff` is A minus B (positive: A is better on a higher-is-better metric), with its
    interval; `p_value` is two-sided. `b01`/`b10` are McNemar's discordant counts
    (A wrong and B right / A right and B wrong) and are None for bootstrap tests.
    """

    name: str
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    b01: int | None = None
    b10: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mean_diff": self.mean_diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "n": self.n,
            "b01": self.b01,
            "b10": self.b10,
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _index_chunks(rng: np.random.Generator, n_items: int, n_resamples: int):
    """Yield (chunk, n_items) index matrices that together hold `n_resamples` resamples."""
    per_chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, n_items))
    done = 0
    while done < n_resamples:
        size = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n_items, size=(size, n_items))
        done += size


def _apply_rows(statistic: Callable[..., object], samples: np.ndarray) -> np.ndarray:
    """statistic over each row; numpy reductions take axis=1, arbitrary callables get a loop."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples], dtype=float)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    per_item: Sequence[float] | np.ndarray,
    *,
    statistic: Callable[..., object] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of `statistic` over per-item scores.

    Returns (point, low, high). Empty input gives (nan, nan, nan): there is nothing to
    estimate, and a 0 would read as a measured failure. One item gives (x, x, x): the
    bootstrap cannot express uncertainty from a single observation, so the interval collapses.
    """
    _check_confidence(confidence)
    values = np.asarray(per_item, dtype=float).ravel()
    if values.size == 0:
        return math.nan, math.nan, math.nan
    point = float(statistic(values))  # type: ignore[arg-type]
    if values.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    stats = np.concatenate(
        [_apply_rows(statistic, values[idx]) for idx in _index_chunks(rng, values.size, n_resamples)]
    )
    low, high = _percentiles(stats, confidence)
    return point, low, high


def bootstrap_metric_ci(
    n_items: int,
    metric_fn: Callable[[np.ndarray], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap for metrics that are not a mean of per-item scores.

    Macro-F1, micro field-F1 and corpus BLEU/chrF must be recomputed on each resample, so
    `metric_fn` receives an array of item indices (with repeats) and returns the metric on
    those items. The point estimate is `metric_fn(arange(n_items))`. Resamples on which the
    metric is undefined (nan) are ignored.
    """
    _check_confidence(confidence)
    if n_items <= 0:
        return math.nan, math.nan, math.nan
    point = float(metric_fn(np.arange(n_items)))
    if n_items == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    stats = np.array(
        [float(metric_fn(row)) for idx in _index_chunks(rng, n_items, n_resamples) for row in idx],
        dtype=float,
    )
    low, high = _percentiles(stats, confidence)
    return point, low, high


def _bootstrap_p_value(observed: float, resampled: np.ndarray) -> float:
    """Two-sided p: twice the share of resampled differences on the far side of 0.

    Uses (k + 1) / (R + 1) rather than k / R so that a finite number of resamples never
    claims p = 0; with R = 2000 the smallest reportable p is ~0.001.
    """
    if observed == 0 or math.isnan(observed):
        return 1.0
    other_side = resampled <= 0 if observed > 0 else resampled >= 0
    k = int(np.count_nonzero(other_side))
    return min(1.0, 2.0 * (k + 1) / (resampled.size + 1))


def paired_bootstrap(
    a_scores: Sequence[float] | np.ndarray,
    b_scores: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    name: str = "paired_bootstrap",
) -> PairedTest:
    """Paired bootstrap of mean(a) - mean(b) over the same items.

    Resampling items (not each contender separately) keeps the pairing, which is what makes
    a small test split informative: per-item difficulty cancels out of the difference.
    """
    _check_confidence(confidence)
    a = np.asarray(a_scores, dtype=float).ravel()
    b = np.asarray(b_scores, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        return PairedTest(name, math.nan, math.nan, math.nan, math.nan, 0)
    diff = a - b
    observed = float(diff.mean())
    if a.size == 1:
        return PairedTest(name, observed, observed, observed, 1.0, 1)
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[idx].mean(axis=1) for idx in _index_chunks(rng, diff.size, n_resamples)])
    low, high = _percentiles(means, confidence)
    return PairedTest(name, observed, low, high, _bootstrap_p_value(observed, means), int(a.size))


def paired_bootstrap_metric(
    n_items: int,
    a_metric_fn: Callable[[np.ndarray], float],
    b_metric_fn: Callable[[np.ndarray], float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    name: str = "paired_bootstrap",
) -> PairedTest:
    """Paired bootstrap of metric_a - metric_b for non-decomposable metrics (macro-F1, BLEU).

    Both metric functions see the same resampled item indices, as in `paired_bootstrap`.
    """
    _check_confidence(confidence)
    if n_items <= 0:
        return PairedTest(name, math.nan, math.nan, math.nan, math.nan, 0)
    full = np.arange(n_items)
    observed = float(a_metric_fn(full)) - float(b_metric_fn(full))
    if n_items == 1:
        return PairedTest(name, observed, observed, observed, 1.0, 1)
    rng = np.random.default_rng(seed)
    diffs = np.array(
        [
            float(a_metric_fn(row)) - float(b_metric_fn(row))
            for idx in _index_chunks(rng, n_items, n_resamples)
            for row in idx
        ],
        dtype=float,
    )
    diffs = diffs[~np.isnan(diffs)]
    low, high = _percentiles(diffs, confidence)
    return PairedTest(name, observed, low, high, _bootstrap_p_value(observed, diffs), n_items)


def _chi2_sf_1dof(x: float) -> float:
    """Survival function of chi-square with one degree of freedom: P(Z^2 > x) = erfc(sqrt(x/2))."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2.0))


def mcnemar(
    a_correct: Sequence[bool] | np.ndarray,
    b_correct: Sequence[bool] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> PairedTest:
    """McNemar's test of whether two contenders' accuracies differ on the same items.

    Only discordant items carry information: b01 = A wrong and B right, b10 = A right and
    B wrong. Under the null each discordant item is a fair coin, so with fewer than
    `MCNEMAR_EXACT_BELOW` discordant items the exact two-sided binomial p-value is used;
    above that, the chi-square statistic with continuity correction, (|b01 - b10| - 1)^2 /
    (b01 + b10). `mean_diff` is accuracy(A) - accuracy(B) with a Wald interval for a paired
    difference of proportions (informative, not the basis of the p-value).
    """
    _check_confidence(confidence)
    a = np.asarray(a_correct, dtype=bool).ravel()
    b = np.asarray(b_correct, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size}")
    n = int(a.size)
    b01 = int(np.count_nonzero(~a & b))
    b10 = int(np.count_nonzero(a & ~b))
    if n == 0:
        return PairedTest("mcnemar", math.nan, math.nan, math.nan, math.nan, 0, b01, b10)
    discordant = b01 + b10
    if discordant == 0:
        p_value = 1.0
    elif discordant < MCNEMAR_EXACT_BELOW:
        tail = sum(math.comb(discordant, k) for k in range(min(b01, b10) + 1))
        p_value = min(1.0, 2.0 * tail / 2.0**discordant)
    else:
        statistic = (abs(b01 - b10) - 1.0) ** 2 / discordant
        p_value = min(1.0, _chi2_sf_1dof(statistic))
    diff = (b10 - b01) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = math.sqrt(max(discordant - (b10 - b01) ** 2 / n, 0.0)) / n
    low, high = max(-1.0, diff - z * se), min(1.0, diff + z * se)
    return PairedTest("mcnemar", diff, low, high, p_value, n, b01, b10)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """A binomial proportion with its Wilson score interval: (point, low, high).

    For the handful of judgments a human review yields (often 10-50 per pair) the Wald interval
    is too narrow and leaves [0, 1] near 0% and 100%; Wilson's stays inside and keeps close to
    its nominal coverage. n = 0 gives (nan, nan, nan): nothing was judged.
    """
    _check_confidence(confidence)
    if n <= 0:
        return math.nan, math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)
