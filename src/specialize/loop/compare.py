"""Challenger against the current version, on the same rows, with the evaluation's paired test.

Each model answers exactly as it is served: greedy, under its run's default output contract (a
label set keeps the current version from ever naming an intent it was not trained on, which is
what its users see). The metrics, their intervals and the paired bootstrap are the evaluation's
(`evaluate.metrics.compute_metrics`, `metric_ci`, `paired_test`), so a retrain decision and
`specialize eval` cannot disagree on what "better" means.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from specialize.data.example import Example
from specialize.evaluate.metrics import MetricResult, compute_metrics, metric_ci, paired_test
from specialize.inference import generate, load_run
from specialize.loop.decisions import SetComparison

log = logging.getLogger(__name__)

REPLY_MARGIN_TOKENS = 8  # room beyond the longest training reply before a reply is cut


def answers(
    run_dir: Path, sets: dict[str, Sequence[Example]], *, max_new_tokens: int, batch_size: int = 16
) -> dict[str, list[str]]:
    """The served replies of the run's model to every set's rows (base plus adapter loaded once)."""
    trained = load_run(run_dir)
    contract = trained.default_contract().contract
    stop = ["\n"] if contract.kind == "labels" else []
    try:
        out = {}
        for name, rows in sets.items():
            replies = generate(
                trained.loaded,
                [e.messages for e in rows],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                stop=stop,
                constraint=None if contract.kind == "none" else contract,
            )
            out[name] = [r.text.strip() for r in replies]
            log.info("%s: %d replies on %s", run_dir, len(rows), name)
        return out
    finally:
        del trained
        gc.collect()


def reply_budget(tokenizer, completions: Sequence[str]) -> int:
    """Tokens a reply may take: the longest training reply plus a margin."""
    longest = max((len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions), default=16)
    return longest + REPLY_MARGIN_TOKENS


def compare_set(
    kind: str,
    rows: Sequence[Example],
    current: Sequence[str],
    challenger: Sequence[str],
    labels: Sequence[str] | None,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> SetComparison:
    """Metric of each on the rows, its interval, and the paired difference challenger - current."""
    references = [e.completion or "" for e in rows]
    a: MetricResult = compute_metrics(kind, list(challenger), references, labels)
    b: MetricResult = compute_metrics(kind, list(current), references, labels)
    metric = a.primary
    test = paired_test(a, b, metric, seed=seed, n_resamples=resamples, confidence=confidence)
    a_point, a_low, a_high = metric_ci(a, metric, seed=seed, n_resamples=resamples, confidence=confidence)
    b_point, b_low, b_high = metric_ci(b, metric, seed=seed, n_resamples=resamples, confidence=confidence)
    return SetComparison(
        rows=len(rows),
        metric=metric,
        current=b_point,
        current_low=b_low,
        current_high=b_high,
        challenger=a_point,
        challenger_low=a_low,
        challenger_high=a_high,
        diff=test.mean_diff,
        diff_low=test.ci_low,
        diff_high=test.ci_high,
        p_value=test.p_value,
    )
