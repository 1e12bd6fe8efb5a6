"""The learning curve's measurements: the same recipe trained on nested subsets of a run's rows.

For each fraction below 1 of `eval.learning_curve`, the run's config is trained again, unchanged,
on the first fraction of one seeded permutation of the run's own training split (so every
subset holds the smaller ones, and the validation and test rows stay the run's), into
`learning_curve/fraction-F/` inside the run. Each subset model answers the same test prompts as
the fine-tuned contender, decoded the same way (free, greedy), and is scored with the same
per-row metric; the full run is the point at fraction 1. `evaluate.learning_curve` fits the curve.

A subset run that already finished (same rows) is reused, so re-running `eval` does not retrain.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from specialize.config import RunConfig
from specialize.data.checks import DataReport
from specialize.data.example import Example
from specialize.data.split import Splits
from specialize.evaluate.learning_curve import learning_curve
from specialize.evaluate.metrics import MetricResult, compute_metrics
from specialize.inference import generate, load_run
from specialize.records.eval import LearningCurve
from specialize.run_dir import RunDir, open_run
from specialize.train.sft import train

log = logging.getLogger(__name__)


def nested_subsets(rows: Sequence[Example], fractions: Sequence[float], seed: int) -> list[list[Example]]:
    """The first `fraction` of one seeded permutation of `rows`, for each fraction (at least one row)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    return [[rows[i] for i in order[: max(1, round(f * len(rows)))]] for f in fractions]


def curve_metric(full: MetricResult) -> str:
    """The metric the curve follows: the primary one when it has per-row scores, else the first
    that has (the curve's interval resamples test rows)."""
    if full.primary in full.per_item:
        return full.primary
    if not full.per_item:
        raise ValueError("the fine-tuned model's metrics have no per-row scores to follow")
    return next(iter(full.per_item))


def _subset_run(
    run: RunDir, config: RunConfig, splits: Splits, rows: list[Example], fraction: float
) -> RunDir:
    out = run.learning_curve / f"fraction-{fraction:g}"
    sub = RunDir(out)
    if sub.finished and sub.record().examples.train == len(rows):
        return sub
    if out.exists():  # unfinished, or from other rows: train again from scratch
        shutil.rmtree(out)
    report = DataReport.model_validate_json(run.data_report.read_text(encoding="utf-8"))
    train(config, out, prepared=(Splits(train=rows, val=splits.val, test=splits.test), report))
    return open_run(out)


def measure_learning_curve(
    run: RunDir,
    config: RunConfig,
    splits: Splits,
    conversations: Sequence[list[dict[str, str]]],
    references: list[str],
    *,
    kind: str,
    labels: list[str] | None,
    max_new_tokens: int,
    stop: list[str],
    full: MetricResult,
    on_progress: Callable[[str], None] | None = None,
) -> LearningCurve:
    """Train and score every fraction of `config.eval.learning_curve` below 1; `full` is the run's own."""
    fractions = list(config.eval.learning_curve or [1.0])
    metric = curve_metric(full)
    subsets = nested_subsets(splits.train, fractions, config.seed)
    per_item: list[list[float]] = []
    for fraction, rows in zip(fractions, subsets, strict=True):
        if fraction >= 1.0:
            per_item.append(list(full.per_item[metric]))
            continue
        if on_progress:
            on_progress(f"learning curve: training on {len(rows)} rows ({fraction:g})")
        sub = _subset_run(run, config, splits, rows, fraction)
        trained: Any = load_run(sub.path)
        outputs = generate(
            trained.loaded,
            conversations,
            max_new_tokens=max_new_tokens,
            batch_size=config.eval.batch_size,
            stop=stop,
        )
        del trained
        scored = compute_metrics(kind, [o.text.strip() for o in outputs], references, labels)
        per_item.append(list(scored.per_item[metric]))
    return learning_curve(
        fractions,
        [len(rows) for rows in subsets],
        per_item,
        metric=metric,
        target=config.eval.target_metric,
        seed=config.seed,
    )
