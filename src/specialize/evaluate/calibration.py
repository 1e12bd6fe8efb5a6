"""Can a reply's confidence be trusted? Calibration error, accuracy-coverage, a threshold.

A label reply comes with the probability the model gives it among the allowed labels
(`evaluate.confidence`). Three questions a deployment asks of those numbers:

- expected calibration error: over 15 equal-width confidence bins, the row-weighted gap between
  a bin's mean confidence and its accuracy (0 when "90% sure" is right 90% of the time);
- the accuracy-coverage curve: answering only the most confident rows, how precise are they,
  and what share of the traffic is still answered;
- the smallest confidence threshold whose kept rows reach a target precision, i.e. the one that
  answers the most requests at that precision (the rest go to a human or a fallback).

A row without a confidence (its reply names no label) abstains: it is never kept and is left out
of the calibration error, but it still counts in the coverage denominator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specialize.records.eval import Calibration, CoveragePoint, ReliabilityBin

BINS = 15


def _answered(confidence: Sequence[float | None], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences for {len(correct)} rows")
    keep = [i for i, c in enumerate(confidence) if c is not None]
    conf = np.array([confidence[i] for i in keep], dtype=np.float64)
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    return conf, np.array([bool(correct[i]) for i in keep], dtype=bool)


def reliability_bins(
    confidence: Sequence[float | None], correct: Sequence[bool], bins: int = BINS
) -> list[ReliabilityBin]:
    """Equal-width bins (lower, upper] over [0, 1] (0 falls in the first), empty ones included."""
    conf, right = _answered(confidence, correct)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], conf, side="left")
    out = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=n,
                confidence=float(conf[members].mean()) if n else None,
                accuracy=float(right[members].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(
    confidence: Sequence[float | None], correct: Sequence[bool], bins: int = BINS
) -> float | None:
    """Row-weighted mean |accuracy - confidence| over the bins; None when no row answered."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(b.count for b in table)
    if not total:
        return None
    return float(
        sum(b.count * abs((b.accuracy or 0.0) - (b.confidence or 0.0)) for b in table if b.count) / total
    )


def coverage_curve(confidence: Sequence[float | None], correct: Sequence[bool]) -> list[CoveragePoint]:
    """One point per distinct confidence, highest first: keeping rows with confidence >= it."""
    conf, right = _answered(confidence, correct)
    total = len(correct)
    if not conf.size:
        return []
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    kept = np.arange(1, conf.size + 1)
    hits = np.cumsum(right)
    # Rows tied on confidence are kept or dropped together: the point is at the last of each tie.
    last_of_tie = np.append(conf[1:] != conf[:-1], True)
    return [
        CoveragePoint(
            threshold=float(conf[i]), coverage=float(kept[i] / total), precision=float(hits[i] / kept[i])
        )
        for i in np.flatnonzero(last_of_tie)
    ]


def precision_threshold(curve: Sequence[CoveragePoint], target: float) -> CoveragePoint | None:
    """The point with the smallest threshold whose kept rows reach `target` precision, or None."""
    reaching = [p for p in curve if p.precision >= target - 1e-12]
    return min(reaching, key=lambda p: p.threshold) if reaching else None


def calibration(
    confidence: Sequence[float | None],
    correct: Sequence[bool],
    *,
    target_precision: float,
    replies: str = "free",
) -> Calibration:
    """Everything above for one contender's replies, as the record the report stores."""
    curve = coverage_curve(confidence, correct)
    chosen = precision_threshold(curve, target_precision)
    return Calibration(
        replies=replies,
        confidence=list(confidence),
        correct=[bool(c) for c in correct],
        ece=expected_calibration_error(confidence, correct),
        bins=reliability_bins(confidence, correct),
        coverage_curve=curve,
        target_precision=target_precision,
        threshold=chosen.threshold if chosen else None,
        threshold_coverage=chosen.coverage if chosen else None,
    )
