"""The classic TF-IDF + logistic regression baseline: fitting, measuring, bad training sets, and
the headline's verdict when a cheap contender matches or beats the fine-tuned model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from specialize.config import EvalConfig, PriceConfig
from specialize.data.example import Example, Source
from specialize.evaluate import classic as classic_module
from specialize.evaluate.classic import NAME, ClassicUnavailable, fit_classic, measure_classic
from specialize.evaluate.contenders import build_classic
from specialize.evaluate.headline import headline, verdict
from specialize.records.eval import (
    Comparison,
    ContenderResult,
    EvalReport,
    Latency,
    Quality,
    Skipped,
    Tokens,
)

TOPICS = {
    "card": ["my card has not arrived", "where is my new card", "card delivery is late"],
    "loan": ["can I borrow money", "loan interest rate please", "apply for a loan today"],
    "fees": ["why was I charged a fee", "monthly fees are too high", "refund this fee"],
}


def example(text: str, label: str | None, line: int = 1) -> Example:
    return Example(
        messages=[{"role": "system", "content": "Classify."}, {"role": "user", "content": text}],
        completion=label,
        source=Source("data.jsonl", line),
    )


def rows(copies: int) -> list[Example]:
    return [
        example(f"{text} ({i})", label, i)
        for i in range(copies)
        for label, texts in TOPICS.items()
        for text in texts
    ]


def test_learns_the_labels_from_the_request_text():
    test = [
        example("my card is late", "card"),
        example("loan please", "loan"),
        example("a fee again", "fees"),
    ]
    fitted = fit_classic(rows(3), [], test)
    assert fitted.name == NAME and fitted.role == "classic" and fitted.c == classic_module.DEFAULT_C
    assert fitted.texts == ["my card is late", "loan please", "a fee again"], (
        "user text only, no system prompt"
    )
    assert fitted.predict(fitted.texts) == ["card", "loan", "fees"]


def test_regularisation_is_chosen_on_validation_rows(monkeypatch):
    tried = []
    real = classic_module._fit_classifier
    monkeypatch.setattr(
        classic_module, "_fit_classifier", lambda x, y, c, seed: tried.append(c) or real(x, y, c, seed)
    )
    fitted = fit_classic(rows(3), rows(2), rows(1))
    # Every strength once; the chosen one is its fitted model, not a refit.
    assert tried == list(classic_module.C_GRID) and fitted.c in classic_module.C_GRID
    tried.clear()
    fit_classic(rows(3), rows(2)[:5], rows(1))  # too few validation rows to choose on
    assert tried == [classic_module.DEFAULT_C]


def test_worker_processes_choose_the_same_model_as_one_process(monkeypatch):
    import numpy as np

    alone = fit_classic(rows(3), rows(2), rows(1))
    monkeypatch.setattr(classic_module, "PARALLEL_ROWS", 0)  # fit the grid in joblib's workers
    side_by_side = fit_classic(rows(3), rows(2), rows(1))
    assert side_by_side.c == alone.c
    np.testing.assert_array_equal(side_by_side.pipeline[-1].coef_, alone.pipeline[-1].coef_)


def test_measured_like_the_other_contenders_with_machine_time_as_cost():
    test = rows(2)
    fitted = fit_classic(rows(3), [], test)
    # Per-token pricing applies to API models; this one runs on the machine, priced by the hour.
    cfg = EvalConfig(
        latency_samples=3, batch_size=4, bootstrap_resamples=100, price=PriceConfig(mode="tokens")
    )
    seen = []
    result, metrics = measure_classic(
        fitted,
        [e.completion for e in test],
        sorted(TOPICS),
        cfg,
        lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (len(test), len(test)) and len(seen) == -(-len(test) // 4)
    assert result.role == "classic" and result.constrained is None and result.incomplete == 0
    assert result.tokens.prompt_mean == 0 and result.tokens.completion_mean == 0
    assert result.latency.samples == 3 and 0 < result.latency.batch1_p50_s <= result.latency.batch1_p95_s
    assert result.throughput.batch_size == 4 and result.throughput.requests_per_s > 0
    seconds_per_request = result.throughput.seconds / len(test)
    assert result.cost_per_1k == pytest.approx(1000 * seconds_per_request * 0.10 / 3600)
    assert result.quality.primary == "accuracy" and result.quality.primary_value == metrics.values["accuracy"]
    assert set(result.predictions) <= set(TOPICS)
    assert result.quality.per_label is not None and set(result.quality.per_label) == set(TOPICS)
    assert result.quality.ci95["accuracy"].ci_low <= result.quality.primary_value


def test_a_single_label_training_set_is_a_clear_skip():
    train = [example(f"text {i}", "only") for i in range(10)]
    with pytest.raises(ClassicUnavailable, match="1 distinct label; a classifier needs at least two"):
        fit_classic(train, [], train)
    trained = SimpleNamespace(config=SimpleNamespace(eval=EvalConfig(), seed=0))
    skipped = build_classic(trained, "classification", train, [], train)
    assert isinstance(skipped, Skipped) and skipped.name == NAME and "at least two" in skipped.reason


def test_texts_without_features_are_a_clear_skip():
    train = [example("", "a"), example("", "b")]
    with pytest.raises(ClassicUnavailable, match="no TF-IDF features"):
        fit_classic(train, [], train)


def test_only_for_label_tasks_and_only_when_enabled():
    on = SimpleNamespace(config=SimpleNamespace(eval=EvalConfig(), seed=0))
    off = SimpleNamespace(config=SimpleNamespace(eval=EvalConfig(classic_baseline=False), seed=0))
    assert build_classic(on, "json", rows(2), [], rows(1)) is None
    assert build_classic(off, "classification", rows(2), [], rows(1)) is None
    assert build_classic(on, "classification", rows(2), [], rows(1)).name == NAME


# --------------------------------------------------------------------------------- the verdict


def contender(name, role, accuracy, cost, prompt_tokens=10.0, p50=0.1):
    return ContenderResult(
        name=name,
        role=role,
        quality=Quality(primary="accuracy", primary_value=accuracy, values={"accuracy": accuracy}),
        tokens=Tokens(prompt_mean=prompt_tokens),
        latency=Latency(batch1_p50_s=p50),
        cost_per_1k=cost,
    )


def report(tuned_acc, classic_acc, p_value, tuned_cost=0.1, classic_cost=0.0001) -> EvalReport:
    contenders = [
        contender("zero-shot", "zero-shot", 0.3, 1.0, 200.0),
        contender("fine-tuned", "fine-tuned", tuned_acc, tuned_cost),
        contender(NAME, "classic", classic_acc, classic_cost, 0.0, 0.0002),
    ]
    best = max((c for c in contenders if c.role != "fine-tuned"), key=lambda c: c.quality.primary_value)
    comparison = Comparison(
        name="mcnemar", fine_tuned="fine-tuned", best_baseline=best.name, p_value=p_value, metric="accuracy"
    )
    return EvalReport(task="classification", contenders=contenders, comparison=comparison)


def test_a_cheap_classic_baseline_that_matches_is_said_plainly():
    text = verdict(report(0.91, 0.90, 0.6))
    assert text.startswith(f"{NAME} matches the fine-tuned model at 1/1000 the cost")
    assert "fine-tuned +0.01 accuracy, p=0.6" in text
    full = headline(report(0.91, 0.90, 0.6))
    assert full.startswith("fine-tuned: 0.91 accuracy vs 0.30 zero-shot, 0.90 TF-IDF")
    assert text in full


def test_the_ratios_after_the_verdict_say_whose_they_are():
    # The verdict's subject is the baseline; a bare "500x higher latency" after it read as the
    # baseline's latency. TF-IDF reads no prompt tokens, so only the latency ratio is left.
    full = headline(report(0.91, 0.90, 0.6))
    assert f"; fine-tuned vs {NAME}: 500.0x higher latency;" in full + ";"
    assert "input tokens" not in full


def test_a_classic_baseline_that_beats_the_fine_tuned_model():
    assert verdict(report(0.70, 0.90, 0.001)).startswith(
        f"{NAME} beats the fine-tuned model at 1/1000 the cost"
    )


def test_the_fine_tuned_model_wins_on_quality_and_classic_on_cost():
    text = verdict(report(0.95, 0.80, 0.001))
    assert text.startswith("the fine-tuned model wins on quality over TF-IDF")
    assert f"{NAME} wins on cost (1/1000 of the fine-tuned model's)" in text


def test_the_fine_tuned_model_wins_on_both():
    text = verdict(report(0.95, 0.80, 0.001, tuned_cost=0.00001, classic_cost=0.0001))
    assert "wins on quality" in text and text.endswith(
        f"the fine-tuned model also wins on cost (1/10 of {NAME}'s)"
    )
    # A baseline as good as the fine-tuned model but dearer: the fine-tuned model wins on cost only.
    text = verdict(report(0.91, 0.90, 0.6, tuned_cost=0.00001, classic_cost=0.0001))
    assert text.startswith(f"{NAME} matches the fine-tuned model on quality")
    assert text.endswith(f"the fine-tuned model wins on cost (1/10 of {NAME}'s)")
