"""Task metrics: one headline number per task kind, plus what is needed to trust it.

Every metric lies in [0, 1] (BLEU and chrF are divided by 100) so that contenders and task
kinds share one scale in reports. Each result keeps per-item scores, because a headline number
on a few hundred test rows only means something with an interval (`metric_ci`) and a paired
comparison against the baselines on the same rows (`paired_test`).

Metrics that are not a mean of per-item scores (macro-F1, micro field-F1, corpus BLEU/chrF)
carry a *resampler*: a function of item indices that recomputes the metric on a bootstrap
resample, so their intervals are honest rather than borrowed from a per-item proxy.

With no items at all, every value is nan (undefined, not a measured 0).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specialize.evaluate.stats import (
    PairedTest,
    bootstrap_ci,
    bootstrap_metric_ci,
    paired_bootstrap,
    paired_bootstrap_metric,
)
from specialize.outputs import (
    LabelMatcher,
    TaskKind,
    canonical_json,
    dotted_path,
    flatten_json,
    loosen,
    match_label,
    parse_json_output,
)

__all__ = [
    "MetricResult",
    "classification_metrics",
    "compute_metrics",
    "flatten_json",
    "json_metrics",
    "match_label",
    "metric_ci",
    "paired_test",
    "parse_json_output",
    "text_metrics",
]

logger = logging.getLogger(__name__)

Resampler = Callable[[np.ndarray], float]
TOP_CONFUSIONS = 10
TOP_FIELDS = 50
_SHOWN_CHARS = 80  # invalid predictions can be paragraphs; confusion tables show a prefix


@dataclass
class MetricResult:
    """Metrics of one contender on one test split.

    `values` holds the aggregate metrics (`values[primary]` is the headline), `per_item` the
    per-item scores used for intervals and paired tests (their mean equals the aggregate for
    decomposable metrics; for chrF and field-F1 they are the sentence-/item-level variants),
    `details` JSON-ready diagnostics (confusions, per-label and per-field scores).
    `resamplers` recompute non-decomposable metrics on item indices; they are not data and
    are left out of `to_dict()`.
    """

    kind: TaskKind
    primary: str
    values: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    n: int = 0
    resamplers: dict[str, Resampler] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (for report.json)."""
        return {
            "kind": self.kind,
            "primary": self.primary,
            "n": self.n,
            "values": dict(self.values),
            "per_item": {k: list(v) for k, v in self.per_item.items()},
            "details": self.details,
        }


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# --------------------------------------------------------------------------- classification


def _macro_f1(ref: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """Macro-F1 over labels that occur in the references or predictions of these items.

    F1 = 2TP / (support + predicted); labels with neither are undefined and left out rather
    than counted as 0 (which would punish a contender for labels absent from the test split).
    Invalid predictions (code -1) count against recall only.
    """
    support = np.bincount(ref, minlength=n_labels)
    predicted = np.bincount(pred[pred >= 0], minlength=n_labels)
    tp = np.bincount(ref[ref == pred], minlength=n_labels)
    denom = support + predicted
    present = denom > 0
    if not present.any():
        return math.nan
    return float(np.mean(2.0 * tp[present] / denom[present]))


def classification_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> MetricResult:
    """Accuracy (primary), macro-F1, invalid rate and the most frequent confusions.

    The label set is `labels` (if given) plus every reference label, references stripped of
    whitespace. Predictions are mapped to labels with `match_label`; an unmatched prediction
    is invalid and wrong.
    """
    _check_lengths(predictions, references)
    refs = [r.strip() for r in references]
    label_list = list(dict.fromkeys([lab.strip() for lab in labels or []] + refs))
    matcher = LabelMatcher(label_list)
    matched = [matcher(p) for p in predictions]
    code = {label: i for i, label in enumerate(label_list)}
    ref_codes = np.array([code[r] for r in refs], dtype=np.int64)
    pred_codes = np.array([-1 if m is None else code[m] for m in matched], dtype=np.int64)
    n_labels = len(label_list)

    correct = [float(m == r) for m, r in zip(matched, refs, strict=True)]
    invalid = [float(m is None) for m in matched]
    macro = _macro_f1(ref_codes, pred_codes, n_labels) if refs else math.nan

    confusions = Counter(
        (r, m if m is not None else loosen(p)[:_SHOWN_CHARS])
        for p, m, r in zip(predictions, matched, refs, strict=True)
        if m != r
    )
    per_label = {}
    for label, i in code.items():
        support = int(np.count_nonzero(ref_codes == i))
        predicted = int(np.count_nonzero(pred_codes == i))
        tp = int(np.count_nonzero((ref_codes == i) & (pred_codes == i)))
        per_label[label] = {
            "support": support,
            "predicted": predicted,
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, support + predicted),
        }
    return MetricResult(
        kind="classification",
        primary="accuracy",
        values={"accuracy": _mean(correct), "macro_f1": macro, "invalid_rate": _mean(invalid)},
        per_item={"accuracy": correct, "invalid_rate": invalid},
        details={
            "labels": label_list,
            "per_label": per_label,
            "confusions": [
                {"reference": r, "prediction": p, "count": c}
                for (r, p), c in confusions.most_common(TOP_CONFUSIONS)
            ],
        },
        n=len(refs),
        resamplers={"macro_f1": lambda idx: _macro_f1(ref_codes[idx], pred_codes[idx], n_labels)},
    )


# --------------------------------------------------------------------------------------- json


def _micro_f1(tp: np.ndarray, n_pred: np.ndarray, n_ref: np.ndarray) -> dict[str, float]:
    tps, preds, refs = float(tp.sum()), float(n_pred.sum()), float(n_ref.sum())
    return {
        "field_precision": _ratio(tps, preds),
        "field_recall": _ratio(tps, refs),
        "field_f1": _ratio(2 * tps, preds + refs),
    }


def json_metrics(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    """Field-level F1 (primary, micro-averaged), exact match, parse and invalid rates.

    Field F1 gives partial credit for getting most of an object right, which exact match
    hides; micro-averaging weights items by their number of fields. An unparseable
    prediction predicts no fields. A reference that does not parse (task detection allows a
    few) is compared as a plain string, and a prediction identical to it counts as a match.
    """
    _check_lengths(predictions, references)
    tp, n_pred, n_ref = [], [], []
    parsed_items, exact, item_f1 = [], [], []
    field_stats: dict[tuple[str, ...], list[int]] = {}  # path -> [in reference, predicted, matched]
    bad_references = 0
    for prediction, reference in zip(predictions, references, strict=True):
        ref_ok, ref_value = parse_json_output(reference)
        if not ref_ok:
            bad_references += 1
            ref_value = reference.strip()
        pred_ok, pred_value = parse_json_output(prediction)
        comparable = pred_ok or (not ref_ok and prediction.strip() == ref_value)
        if not pred_ok and comparable:
            pred_value = ref_value
        ref_fields = flatten_json(ref_value)
        pred_fields = flatten_json(pred_value) if comparable else {}
        hits = sum(1 for path, v in pred_fields.items() if ref_fields.get(path) == v)
        for path in ref_fields:
            field_stats.setdefault(path, [0, 0, 0])[0] += 1
        for path, v in pred_fields.items():
            counts = field_stats.setdefault(path, [0, 0, 0])
            counts[1] += 1
            counts[2] += ref_fields.get(path) == v
        tp.append(hits)
        n_pred.append(len(pred_fields))
        n_ref.append(len(ref_fields))
        parsed_items.append(float(pred_ok))
        exact.append(float(comparable and canonical_json(pred_value) == canonical_json(ref_value)))
        item_f1.append(_ratio(2 * hits, len(pred_fields) + len(ref_fields)))
    if bad_references:
        logger.warning(
            "%d of %d JSON references do not parse; compared as strings", bad_references, len(references)
        )

    tp_a, pred_a, ref_a = (np.array(x, dtype=np.int64) for x in (tp, n_pred, n_ref))
    n = len(references)
    values = _micro_f1(tp_a, pred_a, ref_a)
    if not n:
        values = dict.fromkeys(values, math.nan)
    parse_rate = _mean(parsed_items)
    values |= {"exact_match": _mean(exact), "parse_rate": parse_rate, "invalid_rate": 1.0 - parse_rate}

    def resampler(name: str) -> Resampler:
        return lambda idx: _micro_f1(tp_a[idx], pred_a[idx], ref_a[idx])[name]

    by_support = sorted(field_stats.items(), key=lambda kv: (-kv[1][0], dotted_path(kv[0])))
    fields = {
        dotted_path(path): {
            "support": s[0],
            "predicted": s[1],
            "precision": _ratio(s[2], s[1]),
            "recall": _ratio(s[2], s[0]),
        }
        for path, s in by_support[:TOP_FIELDS]
    }
    return MetricResult(
        kind="json",
        primary="field_f1",
        values=values,
        per_item={
            "field_f1": item_f1,
            "exact_match": exact,
            "parse_rate": parsed_items,
            "invalid_rate": [1.0 - p for p in parsed_items],
        },
        details={"fields": fields, "unparseable_references": bad_references},
        n=n,
        resamplers={name: resampler(name) for name in ("field_precision", "field_recall", "field_f1")},
    )


# --------------------------------------------------------------------------------------- text

# rouge_score's default tokenizer keeps only [a-z0-9], so "für" becomes "f r" and Chinese
# text scores 0. This one keeps Unicode letters and digits (identical on ASCII text) and
# splits CJK ideographs and kana into single characters, which have no spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class _UnicodeTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def _corpus_resampler(
    metric: Any, predictions: list[str], references: list[str], identical: np.ndarray
) -> tuple[float, Resampler]:
    """Corpus score in [0, 1] and a resampler that sums sacrebleu's per-sentence statistics.

    This is how sacrebleu's own significance tests resample (its sufficient statistics are
    additive), so a resample costs a sum, not a re-tokenisation of the corpus.
    """
    stats = np.array(metric._extract_corpus_statistics(predictions, [references]), dtype=np.float64)

    def score(idx: np.ndarray) -> float:
        # Identical texts score 1 by definition; sacrebleu gives 0 when all texts are empty.
        if identical[idx].all():
            return 1.0
        return float(metric._compute_score_from_stats(stats[idx].sum(axis=0).tolist()).score) / 100.0

    return score(np.arange(len(predictions))), score


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    """ROUGE-L F (primary), chrF, BLEU and exact match, all in [0, 1].

    ROUGE-L is the mean of per-item F-measures (no stemming: outputs may be in any language).
    chrF and BLEU are sacrebleu corpus scores / 100; per-item chrF is sentence-level, for
    paired tests. BLEU uses effective n-gram order, so a corpus of outputs shorter than four
    tokens is not scored 0 for lack of 4-grams (identical to standard BLEU otherwise).
    A pair of identical texts scores 1 on every metric, including two empty strings; an
    empty prediction against a non-empty reference scores 0.
    """
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    _check_lengths(predictions, references)
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    n = len(refs)
    identical = np.array([p == r for p, r in zip(preds, refs, strict=True)], dtype=bool)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeTokenizer())
    chrf = CHRF()
    rouge_items, chrf_items = [], []
    for p, r, same in zip(preds, refs, identical, strict=True):
        if same:
            rouge_items.append(1.0)
            chrf_items.append(1.0)
            continue
        rouge_items.append(float(scorer.score(r, p)["rougeL"].fmeasure))
        chrf_items.append(float(chrf.sentence_score(p, [r]).score) / 100.0)
    exact = identical.astype(float).tolist()
    resamplers: dict[str, Resampler] = {}
    if n:
        chrf_corpus, resamplers["chrf"] = _corpus_resampler(CHRF(), preds, refs, identical)
        bleu_corpus, resamplers["bleu"] = _corpus_resampler(
            BLEU(effective_order=True), preds, refs, identical
        )
    else:
        chrf_corpus = bleu_corpus = math.nan
    return MetricResult(
        kind="text",
        primary="rougeL",
        values={
            "rougeL": _mean(rouge_items),
            "chrf": chrf_corpus,
            "bleu": bleu_corpus,
            "exact_match": _mean(exact),
        },
        per_item={"rougeL": rouge_items, "chrf": chrf_items, "exact_match": exact},
        details={},
        n=n,
        resamplers=resamplers,
    )


# ----------------------------------------------------------------------------------- dispatch


def compute_metrics(
    kind: TaskKind,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> MetricResult:
    """The metrics of a task kind (see `specialize.outputs.detect_task`)."""
    if kind == "classification":
        return classification_metrics(predictions, references, labels)
    if kind == "json":
        return json_metrics(predictions, references)
    if kind == "text":
        return text_metrics(predictions, references)
    raise ValueError(f"unknown task kind {kind!r}; expected classification, json or text")


def metric_ci(
    result: MetricResult,
    name: str,
    *,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(point, low, high) bootstrap interval of one metric of `result`.

    Non-decomposable metrics are recomputed on each resample; the others are bootstrapped
    from their per-item scores. The point is always `result.values[name]`.
    """
    if name in result.resamplers:
        _, low, high = bootstrap_metric_ci(
            result.n, result.resamplers[name], n_resamples=n_resamples, confidence=confidence, seed=seed
        )
    elif name in result.per_item:
        _, low, high = bootstrap_ci(
            result.per_item[name], n_resamples=n_resamples, confidence=confidence, seed=seed
        )
    else:
        raise KeyError(f"no per-item scores or resampler for metric {name!r} ({result.kind} task)")
    return result.values[name], low, high


def paired_test(
    a: MetricResult,
    b: MetricResult,
    name: str | None = None,
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> PairedTest:
    """Paired bootstrap of metric(a) - metric(b) on the same test items (default: primary).

    Uses the resamplers when both results have one, so the difference is in the headline
    metric itself; otherwise the per-item scores. For accuracy, `stats.mcnemar` on
    `per_item["accuracy"]` is the classical alternative.
    """
    name = name or a.primary
    if a.n != b.n:
        raise ValueError(f"results cover different item counts: {a.n} vs {b.n}")
    if name in a.resamplers and name in b.resamplers:
        return paired_bootstrap_metric(
            a.n,
            a.resamplers[name],
            b.resamplers[name],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            name=name,
        )
    if name in a.per_item and name in b.per_item:
        return paired_bootstrap(
            a.per_item[name],
            b.per_item[name],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            name=name,
        )
    raise KeyError(f"metric {name!r} cannot be compared item by item")
