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
import os
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
PARALLEL_ROWS = 500  # from this many training rows a worker process per core pays for its start


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


def _features() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)),
        ]
    )


def _fit_classifier(features: Any, labels: list[str], c: float, seed: int) -> Any:
    """One logistic regression on the TF-IDF matrix, its BLAS on one thread: a fit then gives the
    same coefficients in this process and in a worker (whose BLAS joblib limits to one thread),
    so the chosen model does not depend on how many cores chose it."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(features, labels)


def fit_classic(
    train: list[Example], val: list[Example], test: list[Example], *, seed: int = 0
) -> ClassicContender:
    """Fit on the training rows' request texts and labels; ClassicUnavailable says why not.

    The TF-IDF features do not depend on the regularisation strength, so they are fitted once;
    the strengths of `C_GRID` are fitted side by side (one process per core on enough rows), and
    the one chosen on the validation rows is the model, not refitted.
    """
    from sklearn.pipeline import make_pipeline

    rows = [(e.user_text, (e.completion or "").strip()) for e in train if e.completion is not None]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    distinct = sorted(set(labels))
    if len(distinct) < 2:
        raise ClassicUnavailable(
            f"the training rows have {len(distinct)} distinct label{'s' * (len(distinct) != 1)}; "
            "a classifier needs at least two"
        )
    began = time.perf_counter()
    features = _features()
    try:
        matrix = features.fit_transform(texts)
    except ValueError as error:  # sklearn: "empty vocabulary" when no text has a usable n-gram
        raise ClassicUnavailable(f"the request texts give no TF-IDF features ({error})") from error
    held = [(e.user_text, e.completion.strip()) for e in val if e.completion is not None]
    if len(held) < MIN_VAL_ROWS:
        c, model = DEFAULT_C, _fit_classifier(matrix, labels, DEFAULT_C, seed)
    else:
        c, model = _choose_c(features, matrix, labels, held, seed)
    return ClassicContender(
        NAME,
        make_pipeline(features, model),
        [e.user_text for e in test],
        fit_seconds=time.perf_counter() - began,
        c=c,
    )


def _choose_c(
    features: Any, matrix: Any, labels: list[str], held: list[tuple[str, str]], seed: int
) -> tuple[float, Any]:
    """The strength of `C_GRID` with the best validation accuracy, and its fitted model."""
    from joblib import Parallel, delayed

    jobs = min(len(C_GRID), os.cpu_count() or 1) if len(labels) >= PARALLEL_ROWS else 1
    fitted = Parallel(n_jobs=jobs)(delayed(_fit_classifier)(matrix, labels, c, seed) for c in C_GRID)
    val = features.transform([t for t, _ in held])
    val_labels = np.array([y for _, y in held])
    scores = [float(np.mean(model.predict(val) == val_labels)) for model in fitted]
    best = int(np.argmax(scores))  # ties: the strongest regularisation, listed first
    log.info("classic baseline: C=%s (validation accuracy %.3f)", C_GRID[best], scores[best])
    return C_GRID[best], fitted[best]


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
