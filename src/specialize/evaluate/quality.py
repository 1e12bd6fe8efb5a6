"""A contender's `Quality` record from its metrics: intervals, diagnostics and the typed breakdown.

Every contender (generated replies or the classic classifier) goes through this one function, so
their quality records have the same shape. The per-label and per-field scores that
`evaluate.metrics` leaves in its JSON-ready `details` become typed records here, with precision,
recall and F1 set to None where they are undefined rather than to a 0 that reads as a failure.
"""

from __future__ import annotations

import math
from typing import Any

from specialize.evaluate.metrics import MetricResult, metric_ci
from specialize.records.eval import FieldScores, Interval, LabelScores, Quality


def quality_record(metrics: MetricResult, resamples: int) -> Quality:
    intervals = {}
    for name in metrics.values:
        try:
            point, low, high = metric_ci(metrics, name, n_resamples=resamples)
        except KeyError:
            continue
        intervals[name] = Interval(value=point, ci_low=low, ci_high=high)
    return Quality(
        primary=metrics.primary,
        primary_value=metrics.values.get(metrics.primary),
        values=metrics.values,
        ci95=intervals,
        details=jsonable(metrics.details),
        per_item=metrics.per_item,
        per_label=_per_label(metrics),
        per_field=_per_field(metrics),
    )


def _per_label(metrics: MetricResult) -> dict[str, LabelScores] | None:
    if metrics.kind != "classification":
        return None
    return {
        label: _scores(LabelScores, s["support"], s["predicted"], round(s["recall"] * s["support"]))
        for label, s in metrics.details.get("per_label", {}).items()
    }


def _per_field(metrics: MetricResult) -> dict[str, FieldScores] | None:
    if metrics.kind != "json":
        return None
    return {
        path: _scores(FieldScores, s["support"], s["predicted"], round(s["precision"] * s["predicted"]))
        for path, s in metrics.details.get("fields", {}).items()
    }


def _scores(cls: type[LabelScores], support: int, predicted: int, hits: int) -> Any:
    """The record from counts: precision needs predictions, recall needs support, F1 either."""
    return cls(
        support=support,
        predicted=predicted,
        precision=hits / predicted if predicted else None,
        recall=hits / support if support else None,
        f1=2 * hits / (support + predicted) if support + predicted else None,
    )


def jsonable(value: Any) -> Any:
    """NaN and numpy scalars out of the metrics' diagnostics, so report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return jsonable(value.item())
    return value
