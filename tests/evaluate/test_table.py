"""The evaluation tables: worst labels and fields, confidence, skipped contenders, built once and
shown the same in the terminal, report.md and report.html."""

from __future__ import annotations

import io
import json

from rich.console import Console

from specialize.cli.render import render_eval_table
from specialize.evaluate.calibration import calibration
from specialize.evaluate.html import render_html
from specialize.evaluate.metrics import classification_metrics, json_metrics
from specialize.evaluate.quality import quality_record
from specialize.evaluate.report import render_markdown
from specialize.evaluate.table import confidence_table, skipped_lines, summary_table, worst_table
from specialize.records.eval import Comparison, ContenderResult, EvalReport, Skipped

REFS = ["a", "a", "a", "b", "b", "c", "d", "d"]
TUNED = ["a", "a", "b", "b", "b", "x", "d", "a"]  # a: 2/3 right; c: never right; x: invalid
BASE = ["a", "b", "b", "b", "a", "c", "d", "d"]


def classification_report(**extra) -> EvalReport:
    labels = ["a", "b", "c", "d", "e"]  # "e": neither in the test rows nor predicted
    tuned = classification_metrics(TUNED, REFS, labels)
    base = classification_metrics(BASE, REFS, labels)
    contenders = [
        ContenderResult(name="few-shot (k=2)", role="few-shot", quality=quality_record(base, 100)),
        ContenderResult(name="fine-tuned", role="fine-tuned", quality=quality_record(tuned, 100), **extra),
    ]
    return EvalReport(
        run="runs/demo",
        task="classification",
        labels=labels,
        test_rows=len(REFS),
        contenders=contenders,
        comparison=Comparison(fine_tuned="fine-tuned", best_baseline="few-shot (k=2)", name="mcnemar"),
        headline="fine-tuned: test",
    )


def test_typed_per_label_scores_leave_undefined_values_out():
    per_label = classification_report().tuned().quality.per_label
    assert per_label["c"].support == 1 and per_label["c"].predicted == 0
    assert per_label["c"].precision is None and per_label["c"].recall == 0.0 and per_label["c"].f1 == 0.0
    assert per_label["e"].f1 is None and per_label["e"].precision is None and per_label["e"].recall is None
    # a: 2 of 3 found, 2 of 3 predicted right -> F1 2/3; b: 2 of 2 found, 2 of 3 right -> 0.8.
    assert abs(per_label["a"].f1 - 2 / 3) < 1e-9 and abs(per_label["b"].f1 - 0.8) < 1e-9


def test_worst_labels_lowest_f1_first_with_support_and_the_best_baseline():
    table = worst_table(classification_report())
    assert table.columns == (
        "label",
        "support",
        "predicted",
        "precision",
        "recall",
        "F1",
        "F1 few-shot (k=2)",
    )
    assert [row[0] for row in table.rows] == ["c", "a", "d", "b"], "e has no F1 and is left out"
    assert table.rows[0] == ["c", "1", "0", "-", "0.000", "0.000", "1.000"]
    assert table.title == "Worst labels of the fine-tuned model (lowest F1 of 4)"
    assert len(worst_table(classification_report(), limit=2).rows) == 2
    assert len(table.highlight) == len(table.rows)


def test_ties_go_to_the_label_with_more_support():
    refs, preds = ["a", "a", "b", "c", "c"], ["x", "x", "x", "x", "x"]
    tuned = classification_metrics(preds, refs)
    report = EvalReport(
        task="classification",
        contenders=[
            ContenderResult(name="fine-tuned", role="fine-tuned", quality=quality_record(tuned, 100))
        ],
    )
    assert [row[0] for row in worst_table(report).rows] == ["a", "c", "b"]
    assert worst_table(report).columns[-1] == "F1", "no baseline, no baseline column"


def test_worst_fields_and_whole_object_exact_match():
    refs = [json.dumps({"name": "Ada", "age": 36, "city": "London"})] * 4
    preds = [
        json.dumps({"name": "Ada", "age": 36, "city": "London"}),
        json.dumps({"name": "Ada", "age": 37, "city": "London"}),
        json.dumps({"name": "Ada", "age": 35, "city": "Paris"}),
        "not json",
    ]
    metrics = json_metrics(preds, refs)
    report = EvalReport(
        task="json",
        contenders=[
            ContenderResult(name="fine-tuned", role="fine-tuned", quality=quality_record(metrics, 100))
        ],
    )
    fields = report.tuned().quality.per_field
    assert report.tuned().quality.per_label is None
    # age: 1 right of 3 predicted, 4 in the references -> F1 2/7.
    assert (
        fields["age"].precision == 1 / 3
        and fields["age"].recall == 1 / 4
        and abs(fields["age"].f1 - 2 / 7) < 1e-9
    )
    table = worst_table(report)
    assert [row[0] for row in table.rows] == ["age", "city", "name"]
    assert table.title.endswith("whole-object exact match 0.250")


def test_confidence_table_shows_ece_and_the_threshold():
    cal = calibration(
        [0.95, 0.9, 0.6, None, 0.4, 0.8, 0.7, 0.99],
        [True] * 3 + [False] * 3 + [True] * 2,
        target_precision=0.9,
    )
    cal.top_label_agreement = 0.75
    table = confidence_table(classification_report(confidence=cal))
    assert table.columns[3] == "threshold for precision >= 0.90"
    assert table.rows == [
        [
            "fine-tuned",
            "free",
            f"{cal.ece:.3f}",
            f"{cal.threshold:.3f}",
            f"{cal.threshold_coverage:.0%}",
            "1",
            "75%",
        ]
    ]
    assert cal.threshold == 0.9 and table.highlight == [True]
    never = calibration([0.5, 0.5], [False, False], target_precision=0.9)
    assert confidence_table(classification_report(confidence=never)).rows[0][3] == "none reaches it"
    assert not confidence_table(classification_report())


def test_every_rendering_shows_the_same_breakdown():
    cal = calibration(
        [0.9] * len(REFS), [t == r for t, r in zip(TUNED, REFS, strict=True)], target_precision=0.9
    )
    report = classification_report(confidence=cal)
    report.skipped = [Skipped(name="TF-IDF + logistic regression", reason="one label")]
    assert skipped_lines(report) == ["TF-IDF + logistic regression not measured: one label"]
    worst, conf = worst_table(report), confidence_table(report)
    md = render_markdown(report)
    assert f"## {worst.title}" in md and "| " + " | ".join(worst.rows[0]) + " |" in md
    assert "| " + " | ".join(conf.rows[0]) + " |" in md and skipped_lines(report)[0] in md
    page = render_html(report)
    assert 'id="worst"' in page and 'id="confidence"' in page and 'id="plot-reliability"' in page
    assert "<td>c</td>" in page and "not measured: one label" in page
    console = Console(file=io.StringIO(), width=200, record=True)
    render_eval_table(console, report)
    text = console.export_text()
    assert worst.title in text and "ECE (15 bins)" in text and "not measured: one label" in text


def test_a_report_written_before_the_breakdown_still_renders():
    old = {
        "run": "runs/old",
        "task": "classification",
        "contenders": [
            {
                "name": "fine-tuned",
                "role": "fine-tuned",
                "quality": {"primary": "accuracy", "primary_value": 0.5, "details": {"per_label": {}}},
            }
        ],
        "headline": "fine-tuned: 0.50 accuracy",
    }
    report = EvalReport.model_validate(old)
    assert (
        report.tuned().quality.per_label is None
        and report.tuned().confidence is None
        and report.skipped == []
    )
    assert not worst_table(report) and not confidence_table(report)
    assert summary_table(report).rows and "Worst" not in render_markdown(report)
    console = Console(file=io.StringIO(), width=200, record=True)
    render_eval_table(console, report)
    assert "fine-tuned: 0.50 accuracy" in console.export_text()
