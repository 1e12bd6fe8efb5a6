"""How much data do I need: a saturating curve through the metric measured on nested subsets.

The fine-tuned model is trained with the same recipe on nested subsets of the training rows (the
first 25%, 50%, ... of one seeded permutation, so each subset contains the smaller ones) and
measured on the same test rows. Through those points the fit is the usual power law of learning
curves,

    metric(n) = a + b * n^(-c),   c > 0,

whose asymptote `a` is where more data stops helping (b < 0 for a metric that rises with data).
From it: the expected metric with 2x and 4x the training rows, and the rows needed to reach
`eval.target_metric`. Three points fit three parameters exactly, so the interval is what matters:
the test rows are resampled (the same resample for every subset, since they share the rows), each
subset's metric recomputed, the curve refitted, and the 2.5 and 97.5 percentiles reported.

The fit is a grid over c with a and b by linear least squares (numpy), refined by
`scipy.optimize.curve_fit` when scipy is installed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specialize.records.eval import CurveFit, CurvePoint, Interval, LearningCurve

log = logging.getLogger(__name__)

C_GRID = np.geomspace(0.02, 4.0, 200)
RESAMPLES = 300
MIN_POINTS = 3


@dataclass(frozen=True)
class PowerLaw:
    a: float
    b: float
    c: float

    def __call__(self, n: float | np.ndarray) -> float | np.ndarray:
        return self.a + self.b * np.power(n, -self.c)

    def examples_for(self, target: float) -> float | None:
        """Training rows at which the curve reaches `target`; None if it never does (beyond the
        asymptote, or a curve that moves away from it)."""
        if self.b == 0:
            return None
        ratio = (target - self.a) / self.b
        if ratio <= 0:
            return None
        n = ratio ** (-1.0 / self.c)
        return float(n) if math.isfinite(n) and n > 0 else None


def fit_power_law(sizes: Sequence[float], values: Sequence[float], *, refine: bool = True) -> PowerLaw:
    """Least-squares a + b * n^-c through (sizes, values); needs at least 3 distinct sizes.
    `refine=False` keeps the grid's optimum (the bootstrap refits, hundreds of them)."""
    n = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if n.shape != y.shape:
        raise ValueError(f"{n.size} sizes for {y.size} values")
    if np.unique(n).size < MIN_POINTS:
        raise ValueError(f"a learning curve needs at least {MIN_POINTS} distinct subset sizes")
    if (n <= 0).any() or not np.isfinite(y).all():
        raise ValueError("sizes must be positive and values finite")
    # Every c of the grid at once: for fixed c the model is linear in (a, b), a simple regression.
    x = np.power(n[None, :], -C_GRID[:, None])  # [grid, points]
    dx = x - x.mean(axis=1, keepdims=True)
    var = (dx**2).sum(axis=1)
    b = np.where(var > 0, (dx * (y - y.mean())).sum(axis=1) / np.where(var > 0, var, 1.0), 0.0)
    a = y.mean() - b * x.mean(axis=1)
    sse = ((y[None, :] - a[:, None] - b[:, None] * x) ** 2).sum(axis=1)
    i = int(np.argmin(sse))
    start = PowerLaw(float(a[i]), float(b[i]), float(C_GRID[i]))
    if not refine:
        return start
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        return start
    try:
        with warnings.catch_warnings():  # an exact fit has no covariance estimate: not a problem
            warnings.simplefilter("ignore")
            params, _ = curve_fit(
                lambda m, a, b, c: a + b * np.power(m, -c),
                n,
                y,
                p0=[start.a, start.b, start.c],
                bounds=([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 10.0]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError):  # no better optimum than the grid's
        return start
    refined = PowerLaw(*(float(p) for p in params))

    def residual(law: PowerLaw) -> float:
        return float(np.sum((law(n) - y) ** 2))

    return refined if residual(refined) <= residual(start) else start


def _interval(
    value: float | None, samples: Sequence[float | None], bounds: tuple[float, float] | None = None
) -> Interval:
    """The value with the 2.5 and 97.5 percentiles of its bootstrap samples, clipped to the
    metric's range: a refit on a resample can put the asymptote of an accuracy above 1."""
    finite = np.array([s for s in samples if s is not None and math.isfinite(s)], dtype=np.float64)
    if bounds is not None:
        finite = np.clip(finite, *bounds)
        value = None if value is None else float(np.clip(value, *bounds))
    if value is None or finite.size < max(10, len(samples) // 2):
        return Interval(value=value)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(value=value, ci_low=float(low), ci_high=float(high))


def learning_curve(
    fractions: Sequence[float],
    sizes: Sequence[int],
    per_item: Sequence[Sequence[float]],
    *,
    metric: str,
    target: float | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> LearningCurve:
    """The curve through each subset's mean per-item score (the same test rows for every subset),
    with bootstrap intervals on the points, the 2x and 4x predictions and the rows for `target`."""
    if not len(fractions) == len(sizes) == len(per_item):
        raise ValueError("one fraction, size and score list per subset")
    scores = [np.asarray(s, dtype=np.float64) for s in per_item]
    rows = {s.size for s in scores}
    if len(rows) != 1 or 0 in rows:
        raise ValueError("every subset must be scored on the same, non-empty test rows")
    n_rows = rows.pop()
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_rows, size=(resamples, n_rows))
    boot = np.stack([s[draws].mean(axis=1) for s in scores], axis=1)  # [resamples, subsets]
    values = [float(s.mean()) for s in scores]
    points = [
        CurvePoint(fraction=f, examples=int(k), value=v, ci95=_interval(v, boot[:, i].tolist()))
        for i, (f, k, v) in enumerate(zip(fractions, sizes, values, strict=True))
    ]
    curve = LearningCurve(metric=metric, points=points, target_metric=target)
    if len(set(sizes)) < MIN_POINTS:
        curve.note = f"fewer than {MIN_POINTS} distinct subset sizes: no curve fitted"
        return curve
    law = fit_power_law(sizes, values)
    # Per-row scores in [0, 1] (accuracy, F1, exact match) bound what the curve may promise.
    bounds = (0.0, 1.0) if all(((s >= 0) & (s <= 1)).all() for s in scores) else None
    full = float(max(sizes))
    curve.fit = CurveFit(a=law.a, b=law.b, c=law.c)
    refits = []
    for draw in boot:
        try:
            refits.append(fit_power_law(sizes, draw, refine=False))
        except ValueError:
            continue
    curve.at_2x = _interval(float(law(2 * full)), [float(r(2 * full)) for r in refits], bounds)
    curve.at_4x = _interval(float(law(4 * full)), [float(r(4 * full)) for r in refits], bounds)
    curve.asymptote = _interval(law.a, [r.a for r in refits], bounds)
    if target is not None:
        needed = law.examples_for(target)
        curve.target_reachable = needed is not None
        curve.examples_for_target = _interval(needed, [r.examples_for(target) for r in refits])
    return curve
