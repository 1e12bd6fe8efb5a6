"""`specialize eval RUN`: every contender on the same held-out rows, measured the same way.

For each contender: batched greedy generation over the test split (quality, tokens, batched
throughput), then a timed sample at batch size 1 (latency as a single user sees it). Then task
metrics with bootstrap intervals, a paired test of the fine-tuned model against the best
baseline, costs and the break-even point. The result is an `EvalReport` (report.json) that the
report writers render.

Label tasks add the classic TF-IDF baseline (measured by `evaluate.classic`, since it generates
nothing) and the fine-tuned model's confidence in each reply: every label scored as a whole
reply, its calibration, and the threshold that reaches `eval.target_precision`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.constrain import NONE, OutputContract
from specialize.data.contract import run_contract
from specialize.data.example import Example
from specialize.data.preference import reference_rows
from specialize.data.prepare import read_splits
from specialize.errors import RunError
from specialize.evaluate.abstention import catch_all_scores, detect_catch_all
from specialize.evaluate.calibration import calibration
from specialize.evaluate.classic import ClassicContender, measure_classic
from specialize.evaluate.confidence import label_probabilities, reply_confidence
from specialize.evaluate.constraint_effect import constraint_effect, contract_verdict, paired
from specialize.evaluate.contenders import Contender, build_classic, build_contenders
from specialize.evaluate.cost import break_even_requests, cost_per_1k_requests, training_cost
from specialize.evaluate.deployment import measure_merged, measure_served
from specialize.evaluate.headline import headline
from specialize.evaluate.json_confidence import reply_log_probs
from specialize.evaluate.metrics import MetricResult, compute_metrics
from specialize.evaluate.preference import is_preference_run, parent_contender, parent_name, preference_eval
from specialize.evaluate.quality import quality_record
from specialize.evaluate.report import write_report
from specialize.evaluate.subsets import measure_learning_curve
from specialize.evaluate.timing import TimedGeneration, percentile, timed_generations
from specialize.inference import Decoding, TrainedModel, load_run
from specialize.models.chat import render_reply
from specialize.outputs import LabelMatcher, detect_task
from specialize.records.eval import (
    BASELINE_ROLES,
    Calibration,
    Comparison,
    ContenderResult,
    EvalReport,
    JsonConfidence,
    Latency,
    LossCurves,
    Sample,
    Skipped,
    Throughput,
    Tokens,
    TrainingSummary,
)
from specialize.run_dir import RunDir, open_run

log = logging.getLogger(__name__)

SAMPLES = 8  # test rows shown with every contender's answer


@dataclass
class EvalProgress:
    contender: str
    done: int
    total: int


def evaluate(
    run_path: str | Path,
    *,
    max_test_examples: int | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Evaluate a trained run against the prompt-engineering baselines; write `eval/report.*`."""
    run = open_run(run_path)
    trained = load_run(run.path)
    cfg = trained.config
    record = trained.record
    splits = read_splits(run)
    held_out = splits.test[:max_test_examples] if max_test_examples else splits.test
    # Preference runs: the chosen (or desirable) reply is the reference; an undesirable one is not.
    test = reference_rows(held_out)
    if not test:
        raise RunError(f"{run.path}: the run has no test rows (splits/test.jsonl is empty)")
    references = [e.completion or "" for e in test]
    setup = generation_setup(trained, splits.train)
    kind, labels, max_new, stop = setup.kind, setup.labels, setup.max_new_tokens, setup.stop
    contract = run_contract(run) if cfg.eval.constrained else NONE

    contenders = build_contenders(
        trained, splits.train, test, kind=kind, labels=labels, max_new_tokens=max_new
    )
    if is_preference_run(trained):
        contenders.append(parent_contender(trained, test))
    results: list[ContenderResult] = []
    metrics: dict[str, MetricResult] = {}
    for contender in contenders:
        # Free and under the contract in one sweep: each batch is prefilled once for both.
        measured = _measure(
            contender,
            references,
            kind,
            labels,
            max_new,
            stop,
            cfg.eval,
            progress,
            contracts=[None] if contract.kind == "none" else [None, contract],
        )
        free, free_metrics = measured[0]
        if len(measured) > 1:
            constrained, constrained_metrics = measured[1]
            free.constrained = constraint_effect(
                free, free_metrics, constrained, constrained_metrics, contract, contender.loaded
            )
        if contender.role == "fine-tuned" and cfg.eval.measure_merged:
            free.merged = measure_merged(
                contender.loaded,
                contender.conversations,
                free.predictions,
                max_new_tokens=max_new,
                stop=stop,
                eval_cfg=cfg.eval,
            )
        if contender.role == "fine-tuned" and cfg.eval.measure_served:
            free.served = measure_served(
                trained,
                contender.conversations,
                free.predictions,
                max_new_tokens=max_new,
                stop=stop,
                eval_cfg=cfg.eval,
            )
        results.append(free)
        metrics[free.name] = free_metrics
        if contender.role == "fine-tuned" and kind == "classification" and labels:
            label_set = list(contract.labels) if contract.kind == "labels" and contract.labels else labels
            free.confidence = _calibration(contender, free, references, label_set, cfg.eval, progress)
        if contender.role == "fine-tuned" and kind == "json":
            free.json_confidence = _json_confidence(contender, free, progress)

    skipped: list[Skipped] = []
    classic = build_classic(trained, kind, splits.train, splits.val, test)
    if isinstance(classic, ClassicContender):
        result, classic_metrics = measure_classic(
            classic, references, labels, cfg.eval, _progress_of(classic.name, progress)
        )
        results.append(result)
        metrics[result.name] = classic_metrics
    elif classic is not None:
        log.warning("%s skipped: %s", classic.name, classic.reason)
        skipped.append(classic)

    tuned = next(r for r in results if r.role == "fine-tuned")
    baselines = [r for r in results if r.role in BASELINE_ROLES]
    best = max(baselines, key=lambda r: _nan_low(r.quality.primary_value))
    test_result = paired(metrics[tuned.name], metrics[best.name])
    comparison = Comparison(
        fine_tuned=tuned.name, best_baseline=best.name, metric=tuned.quality.primary, **test_result.to_dict()
    )
    train_seconds = record.train_seconds if record is not None else 0.0
    train_cost = training_cost(cfg.eval.price, float(train_seconds or 0.0))
    for r in results:
        if r is not tuned and r.cost_per_1k is not None and tuned.cost_per_1k is not None:
            r.break_even_requests = break_even_requests(train_cost, r.cost_per_1k, tuned.cost_per_1k)
    learning = None
    if cfg.eval.learning_curve:
        learning = measure_learning_curve(
            run,
            cfg,
            splits,
            next(c for c in contenders if c.role == "fine-tuned").conversations[: len(test)],
            references,
            kind=kind,
            labels=labels,
            max_new_tokens=max_new,
            stop=stop,
            full=metrics[tuned.name],
            on_progress=lambda text: progress(EvalProgress(text, 0, 1)) if progress else None,
        )
    report = EvalReport(
        run=str(run.path),
        task=kind,
        labels=labels,
        test_rows=len(test),
        max_new_tokens=max_new,
        output_contract=contract.to_dict(),
        price=cfg.eval.price.model_dump(),
        training=TrainingSummary(
            seconds=record.train_seconds if record is not None else None,
            cost=train_cost,
            examples=record.examples.train if record is not None else None,
            method=record.method if record is not None else None,
            curves=_loss_curves(run),
        ),
        contenders=results,
        skipped=skipped,
        comparison=comparison,
        samples=[
            Sample(input=e.user_text, reference=ref, predictions={r.name: r.predictions[i] for r in results})
            for i, (e, ref) in enumerate(zip(test[:SAMPLES], references, strict=False))
        ],
        contract_verdict=contract_verdict(tuned),
        learning_curve=learning,
    )
    if is_preference_run(trained):
        parent = parent_name(trained)
        report.preference = preference_eval(
            trained,
            held_out,
            resamples=cfg.eval.bootstrap_resamples,
            tuned_metrics=metrics[tuned.name],
            parent_metrics=metrics.get(parent),
            paired=paired,
        )
    report.headline = headline(report)
    report.human = run.human_eval()  # blind review so far: kept across a re-evaluation
    write_report(run.eval_dir, report)
    return report


@dataclass(frozen=True)
class GenerationSetup:
    """What the evaluation generates for a run: its task kind, label set, reply budget and stops."""

    kind: str
    labels: list[str] | None
    max_new_tokens: int
    stop: list[str]


def generation_setup(trained: TrainedModel, train: list[Example]) -> GenerationSetup:
    """The task (`eval.task`, else the run's record, else detected from the training replies),
    its labels, `eval.max_new_tokens` (default from the training replies) and stop strings."""
    cfg, record = trained.config, trained.record
    completions = [e.completion or "" for e in train]
    recorded_task = record.task if record is not None else None
    kind = cfg.eval.task if cfg.eval.task != "auto" else recorded_task or detect_task(completions)
    labels = (record.labels if record is not None else None) or (
        sorted(set(completions)) if kind == "classification" else None
    )
    max_new = cfg.eval.max_new_tokens or _max_new_tokens(trained.loaded.tokenizer, train)
    return GenerationSetup(kind, labels, max_new, ["\n"] if kind == "classification" else [])


def _measure(
    contender: Contender,
    references: list[str],
    kind: str,
    labels: list[str] | None,
    max_new: int,
    stop: list[str],
    eval_cfg: Any,
    progress: Callable[[EvalProgress], None] | None,
    contracts: list[OutputContract | None],
) -> list[tuple[ContenderResult, MetricResult]]:
    """The contender decoded once per entry of `contracts` (None: freely), each measured as if alone."""
    total = len(contender.conversations)
    names = [contender.name if c is None else f"{contender.name}, constrained" for c in contracts]
    done = [0] * len(contracts)

    def on_batch(stats) -> None:
        done[stats.decoding] += stats.items
        if progress:
            progress(EvalProgress(names[stats.decoding], done[stats.decoding], total))

    with contender.context():
        timings = timed_generations(
            contender.loaded,
            contender.conversations,
            [Decoding(tuple(stop), c) for c in contracts],
            max_new_tokens=max_new,
            batch_size=eval_cfg.batch_size,
            latency_samples=eval_cfg.latency_samples,
            on_batch=on_batch,
        )
    return [_result(contender, timed, references, kind, labels, eval_cfg) for timed in timings]


def _result(
    contender: Contender,
    timed: TimedGeneration,
    references: list[str],
    kind: str,
    labels: list[str] | None,
    eval_cfg: Any,
) -> tuple[ContenderResult, MetricResult]:
    total = len(contender.conversations)
    outputs, batched_seconds, latencies = timed.outputs, timed.batched_seconds, timed.latencies
    # Constrained replies are returned unstripped (exactly the label); metrics compare stripped text.
    predictions = [o.text.strip() for o in outputs]
    metrics = compute_metrics(kind, predictions, references, labels)
    prompt_tokens = float(np.mean([o.prompt_tokens for o in outputs]))
    completion_tokens = float(np.mean([o.completion_tokens for o in outputs]))
    seconds_per_request = batched_seconds / total
    result = ContenderResult(
        name=contender.name,
        role=contender.role,
        quality=quality_record(metrics, eval_cfg.bootstrap_resamples),
        tokens=Tokens(prompt_mean=prompt_tokens, completion_mean=completion_tokens),
        latency=Latency(
            batch1_p50_s=percentile(latencies, 50),
            batch1_p95_s=percentile(latencies, 95),
            samples=len(latencies),
        ),
        throughput=Throughput(
            requests_per_s=total / batched_seconds if batched_seconds else None,
            batch_size=eval_cfg.batch_size,
            seconds=batched_seconds,
        ),
        cost_per_1k=cost_per_1k_requests(
            eval_cfg.price,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            seconds_per_request=seconds_per_request,
        ),
        predictions=predictions,
        incomplete=sum(1 for o in outputs if o.complete is False),
    )
    return result, metrics


def _calibration(
    contender: Contender,
    result: ContenderResult,
    references: list[str],
    labels: list[str],
    eval_cfg: Any,
    progress: Callable[[EvalProgress], None] | None,
) -> Calibration:
    """The confidence of each reply: under the label contract when it was measured, else free."""
    constrained = result.constrained is not None
    scored = result.constrained.predictions if result.constrained is not None else result.predictions
    labels = [label.strip() for label in labels]
    matcher = LabelMatcher(labels)
    replies = [matcher(p) for p in scored]
    with contender.context():
        probabilities = label_probabilities(
            contender.loaded,
            contender.conversations,
            labels,
            _progress_of(f"{contender.name}, label confidence", progress),
        )
    confidence = reply_confidence(probabilities, labels, replies)
    correct = [r is not None and r == ref.strip() for r, ref in zip(replies, references, strict=True)]
    result_calibration = calibration(
        confidence,
        correct,
        target_precision=eval_cfg.target_precision,
        replies="constrained" if constrained else "free",
    )
    catch_all = detect_catch_all(labels, eval_cfg.catch_all_label)
    if catch_all is not None:
        result_calibration.catch_all = catch_all_scores(
            catch_all, replies, confidence, [r.strip() for r in references], result_calibration.threshold
        )
    top = [labels[i] for i in probabilities.argmax(axis=1)]
    answered = [(r, t) for r, t in zip(replies, top, strict=True) if r is not None]
    if answered:
        result_calibration.top_label_agreement = sum(r == t for r, t in answered) / len(answered)
    return result_calibration


def _json_confidence(
    contender: Contender, result: ContenderResult, progress: Callable[[EvalProgress], None] | None
) -> JsonConfidence:
    """Mean token log-probability and per-field minima of the replies (constrained when measured)."""
    constrained = result.constrained is not None
    scored = result.constrained.predictions if result.constrained is not None else result.predictions
    with contender.context():
        rows = reply_log_probs(
            contender.loaded,
            contender.conversations,
            scored,
            _progress_of(f"{contender.name}, reply log-probabilities", progress),
        )
    minima = [r.field_minima() for r in rows]
    fields = sorted({path for m in minima for path in m})
    mean_minimum = {f: float(np.mean([m[f] for m in minima if f in m])) for f in fields}
    return JsonConfidence(
        replies="constrained" if constrained else "free",
        mean_logprob=[r.mean for r in rows],
        field_minimum=minima,
        field_mean_minimum=dict(sorted(mean_minimum.items(), key=lambda kv: kv[1])),
    )


def _progress_of(
    label: str, progress: Callable[[EvalProgress], None] | None
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(EvalProgress(label, done, total))


def _max_new_tokens(tokenizer: Any, train: list[Any]) -> int:
    """p99 of the training replies' token counts (with the end-of-turn marker), plus headroom."""
    sample = train[:2000]
    lengths = [
        len(
            tokenizer(render_reply(tokenizer, e.messages, e.completion or ""), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for e in sample
    ]
    if not lengths:
        return 64
    return int(np.percentile(lengths, 99)) + 8


def _loss_curves(run: RunDir) -> LossCurves:
    curves = LossCurves()
    if not run.metrics.is_file():
        return curves
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "loss" in record:
            curves.train.append([record["step"], record["loss"]])
        if "eval_loss" in record:
            curves.val.append([record["step"], record["eval_loss"]])
    return curves


def _nan_low(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value
