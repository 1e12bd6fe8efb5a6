"""Abstaining when unsure, and the catch-all class it feeds.

A label reply whose confidence (its probability among the allowed labels, `evaluate.confidence`)
is below a threshold is replaced by a fallback label: the label set's catch-all class when it has
one ("out_of_scope", "other", "none", ...), else "unknown". Abstention trades answered requests
for precision; when the fallback is the catch-all class, it also sends the requests the model is
unsure about to that class, which is how an intent model catches what it was never trained on.

The threshold is either a number or "recommended": the run's own, from its evaluation report (the
smallest confidence whose answered rows reach `eval.target_precision`).

The catch-all class is what deployments most often get wrong and overall accuracy hides (few
rows, many ways to be one), so the report shows its precision and recall on their own, before
and after abstaining at the recommended threshold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from specialize.errors import ConfigError, RunError
from specialize.records.eval import CatchAllScores, LabelScores
from specialize.run_dir import RunDir

log = logging.getLogger(__name__)

RECOMMENDED = "recommended"
DEFAULT_FALLBACK = "unknown"
# Names a catch-all class goes by, compared after lower-casing and turning spaces and dashes into _.
CATCH_ALL_NAMES = (
    "out_of_scope",
    "out_of_domain",
    "oos",
    "other",
    "others",
    "none",
    "unknown",
    "not_applicable",
    "n/a",
    "na",
    "no_intent",
    "irrelevant",
)


def _normal(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def detect_catch_all(labels: Sequence[str] | None, configured: str | None = None) -> str | None:
    """The label set's catch-all class: `configured` (eval.catch_all_label) when given, which must
    be one of the labels, else the first label named like one (see CATCH_ALL_NAMES), else None."""
    labels = list(labels or [])
    if configured is not None:
        if configured not in labels:
            shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
            raise ConfigError(f"eval.catch_all_label: {configured!r} is not one of the labels ({shown})")
        return configured
    for label in labels:
        if _normal(label) in CATCH_ALL_NAMES:
            return label
    return None


@dataclass(frozen=True)
class Abstention:
    """Replace a label reply by `fallback` when its confidence is below `threshold`."""

    threshold: float
    fallback: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--abstain-below: {self.threshold} is not a probability in [0, 1]")
        if not self.fallback:
            raise ConfigError("--fallback-label: empty")

    def abstains(self, confidence: float | None) -> bool:
        """Below the threshold, or no confidence at all (the reply names no label)."""
        return confidence is None or confidence < self.threshold

    def apply(self, reply: str, confidence: float | None) -> tuple[str, bool]:
        """(the reply to serve, whether it abstained)."""
        return (self.fallback, True) if self.abstains(confidence) else (reply, False)


def parse_threshold(value: str | float | None) -> float | str | None:
    """A --abstain-below value: a probability in [0, 1], or "recommended"; None stays None."""
    if value is None or isinstance(value, float):
        return value
    text = str(value).strip().lower()
    if text == RECOMMENDED:
        return RECOMMENDED
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(
            f"--abstain-below: {value!r} is neither a probability in [0, 1] nor 'recommended'"
        ) from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"--abstain-below: {number} is not a probability in [0, 1]")
    return number


def recommended_threshold(run: RunDir) -> float | None:
    """The threshold the run's evaluation recommends (None: it found none reaching its target)."""
    report = run.eval_report()
    confidence = report.tuned().confidence
    return confidence.threshold if confidence is not None else None


def run_abstention(
    run: RunDir,
    labels: Sequence[str] | None,
    below: float | str | None,
    fallback: str | None = None,
) -> Abstention | None:
    """The abstention a run's replies get: None when `below` is None; the fallback is `fallback`,
    else the label set's catch-all class (eval.catch_all_label or detected), else "unknown".

    "recommended" needs the run's evaluation report; a RunError says so when there is none, or
    when it recommends no threshold (no confidence reached the target precision)."""
    threshold = parse_threshold(below)
    if threshold is None:
        return None
    if threshold == RECOMMENDED:
        value = recommended_threshold(run)
        if value is None:
            raise RunError(
                f"{run.path}: its evaluation recommends no threshold (no confidence reached "
                "eval.target_precision); pass a number to --abstain-below"
            )
        threshold = value
    assert isinstance(threshold, float)
    if fallback is None:
        configured = None
        try:
            configured = run.config().eval.catch_all_label
        except (RunError, AttributeError):
            configured = None
        fallback = detect_catch_all(labels, configured) or DEFAULT_FALLBACK
    return Abstention(threshold=threshold, fallback=fallback)


def _scores(label: str, predictions: Sequence[str | None], references: Sequence[str]) -> LabelScores:
    support = sum(1 for r in references if r == label)
    predicted = sum(1 for p in predictions if p == label)
    hits = sum(1 for p, r in zip(predictions, references, strict=True) if p == label and r == label)
    precision = hits / predicted if predicted else None
    recall = hits / support if support else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    return LabelScores(support=support, predicted=predicted, precision=precision, recall=recall, f1=f1)


def catch_all_scores(
    label: str,
    replies: Sequence[str | None],
    confidence: Sequence[float | None],
    references: Sequence[str],
    threshold: float | None,
) -> CatchAllScores:
    """The catch-all class's precision and recall as replied, and after abstaining below
    `threshold` into it (None: no threshold, so no "after"), plus what abstaining cost the other
    classes: the accuracy on rows whose reference is another label, before and after."""
    if not len(replies) == len(confidence) == len(references):
        raise ValueError(
            f"{len(replies)} replies, {len(confidence)} confidences, {len(references)} references"
        )
    before = _scores(label, replies, references)
    after = None
    abstained = 0
    shifted: list[str | None] = list(replies)
    if threshold is not None:
        policy = Abstention(threshold=threshold, fallback=label)
        shifted = []
        for reply, conf in zip(replies, confidence, strict=True):
            served, did = policy.apply(reply or "", conf)
            abstained += did
            shifted.append(served)
        after = _scores(label, shifted, references)
    others = [i for i, r in enumerate(references) if r != label]

    def accuracy(predictions: Sequence[str | None]) -> float | None:
        return sum(predictions[i] == references[i] for i in others) / len(others) if others else None

    return CatchAllScores(
        label=label,
        threshold=threshold,
        before=before,
        after=after,
        abstained=abstained,
        in_scope_accuracy_before=accuracy(replies),
        in_scope_accuracy_after=accuracy(shifted) if threshold is not None else None,
    )
