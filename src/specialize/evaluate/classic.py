"""The classic baseline: TF-IDF features and a logistic regression, trained on the same rows.

Before a label task earns a fine-tuned LLM, a careful engineer checks what a linear model on
n-grams does: it trains in seconds, answers in well under a millisecond on a CPU, and on many
intent or topic tasks is hard to beat. The features are the standard strong pair, word 1-2 grams
and character 3-5 grams within word boundaries (robust to typos and inflections), both with
sublinear term frequency. The regularisation strength is chosen on the run's validation split
when it has one, as the fine-tuned model's own checkpoints are.

The model reads only the request text (`Example.user_text`, the last user message) and predicts
one of the training labels, so its replies are always valid labels: it has no output contract to
decode under, and uses no tokens. Its cost is the machine time it occupies, whatever the price
model of the LLM contenders (it runs on your machine, not behind an API).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specialize.config import EvalConfig
from specialize.data.example import Example
from specialize.evaluate.cost import machine_cost_per_1k
from specialize.evaluate.metrics import MetricResult, compute_metrics
from specialize.evaluate.quality import quality_record
from specialize.records.eval import CLASSIC, ContenderResult, Latency, Throughput, Tokens

log = logging.getLogger(__name__)

NAME = "TF-IDF + logistic regression"
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)  # inverse regularisation strengths tried on validation rows
DEFAULT_C = 10.0  # without validation rows: weak regularisation suits sparse TF-IDF features
MIN_VAL_ROWS = 10  # fewer validation rows than this cannot tell the strengths apart


class ClassicUnavailable(Exception):
    """The training rows cannot give this baseline (one label, no text features): the reason."""


@dataclass
class ClassicContender:
    name: str
    pipeline: Any  # a fitted sklearn Pipeline: text -> label
    texts: list[str]  # the test rows' request texts, in order
    fit_seconds: float
    c: float
    role: str = CLASSIC

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [str(label) for label in self.pipeline.predict(list(texts))]


def _pipeline(c: float, seed: int) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)),
        ]
    )
    return make_pipeline(features, LogisticRegression(C=c, max_iter=2000, random_state=seed))


def fit_classic(
    train: list[Example], val: list[Example], test: list[Example], *, seed: int = 0
) -> ClassicContender:
    """Fit on the training rows' request texts and labels; ClassicUnavailable says why not."""
    rows = [(e.user_text, (e.completion or "").strip()) for e in train if e.completion is not None]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    distinct = sorted(set(labels))
    if len(distinct) < 2:
        raise ClassicUnavailable(
            f"the training rows have {len(distinct)} distinct label{'s' * (len(distinct) != 1)}; "
            "a classifier needs at least two"
        )
    began = time.perf_counter()
    c = _choose_c(texts, labels, val, seed)
    pipeline = _pipeline(c, seed)
    try:
        pipeline.fit(texts, labels)
    except ValueError as error:  # sklearn: "empty vocabulary" when no text has a usable n-gram
        raise ClassicUnavailable(f"the request texts give no TF-IDF features ({error})") from error
    return ClassicContender(
        NAME, pipeline, [e.user_text for e in test], fit_seconds=time.perf_counter() - began, c=c
    )


def _choose_c(texts: list[str], labels: list[str], val: list[Example], seed: int) -> float:
    held = [(e.user_text, e.completion.strip()) for e in val if e.completion is not None]
    if len(held) < MIN_VAL_ROWS:
        return DEFAULT_C
    val_texts, val_labels = [t for t, _ in held], np.array([y for _, y in held])
    scores = []
    for c in C_GRID:
        try:
            fitted = _pipeline(c, seed).fit(texts, labels)
        except ValueError:
            return DEFAULT_C  # the final fit reports why
        scores.append(float(np.mean(fitted.predict(val_texts) == val_labels)))
    best = C_GRID[int(np.argmax(scores))]  # ties: the strongest regularisation, listed first
    log.info("classic baseline: C=%s (validation accuracy %.3f)", best, max(scores))
    return best


def measure_classic(
    classic: ClassicContender,
    references: list[str],
    labels: list[str] | None,
    eval_cfg: EvalConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[ContenderResult, MetricResult]:
    """Predict every test row in batches (throughput), then time single requests (latency)."""
    total = len(classic.texts)
    batch = eval_cfg.batch_size
    predictions: list[str] = []
    began = time.perf_counter()
    for start in range(0, total, batch):
        predictions += classic.predict(classic.texts[start : start + batch])
        if on_progress:
            on_progress(len(predictions), total)
    batched_seconds = time.perf_counter() - began
    latencies = []
    for text in classic.texts[: eval_cfg.latency_samples]:
        t0 = time.perf_counter()
        classic.predict([text])
        latencies.append(time.perf_counter() - t0)
    metrics = compute_metrics("classification", predictions, references, labels)
    result = ContenderResult(
        name=classic.name,
        role=classic.role,
        quality=quality_record(metrics, eval_cfg.bootstrap_resamples),
        tokens=Tokens(prompt_mean=0.0, completion_mean=0.0),
        latency=Latency(
            batch1_p50_s=float(np.percentile(latencies, 50)) if latencies else None,
            batch1_p95_s=float(np.percentile(latencies, 95)) if latencies else None,
            samples=len(latencies),
        ),
        throughput=Throughput(
            requests_per_s=total / batched_seconds if batched_seconds else None,
            batch_size=batch,
            seconds=batched_seconds,
        ),
        cost_per_1k=machine_cost_per_1k(eval_cfg.price, batched_seconds / total if total else 0.0),
        predictions=predictions,
    )
    return result, metrics
