"""Abstention and the catch-all class against hand-computed cases."""

from __future__ import annotations

import pytest

from specialize.errors import ConfigError, RunError
from specialize.evaluate.abstention import (
    Abstention,
    catch_all_scores,
    detect_catch_all,
    parse_threshold,
    run_abstention,
)
from specialize.evaluate.table import catch_all_table
from specialize.records.eval import (
    Calibration,
    ContenderResult,
    EvalReport,
    Quality,
)
from specialize.run_dir import RunDir


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (["card", "Out Of Scope", "top_up"], "Out Of Scope"),
        (["card", "oos"], "oos"),
        (["billing", "OTHER"], "OTHER"),
        (["a", "not-applicable"], "not-applicable"),
        (["a", "None"], "None"),
        (["card", "card_lost", "outlier"], None),
        (None, None),
    ],
)
def test_detect_catch_all(labels, found):
    assert detect_catch_all(labels) == found


def test_configured_catch_all_must_be_a_label():
    assert detect_catch_all(["a", "b", "other"], "b") == "b"
    with pytest.raises(ConfigError, match="eval.catch_all_label: 'c' is not one of the labels"):
        detect_catch_all(["a", "b"], "c")


def test_abstention_policy():
    policy = Abstention(threshold=0.5, fallback="oos")
    assert policy.apply("card", 0.7) == ("card", False)
    assert policy.apply("card", 0.5) == ("card", False)  # at the threshold it answers
    assert policy.apply("card", 0.49) == ("oos", True)
    assert policy.apply("garbage", None) == ("oos", True)  # no label, no confidence: abstain
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        Abstention(threshold=1.5, fallback="oos")


def test_parse_threshold():
    assert parse_threshold("0.7") == 0.7 and parse_threshold("Recommended") == "recommended"
    assert parse_threshold(None) is None and parse_threshold(0.2) == 0.2
    with pytest.raises(ConfigError, match="neither a probability"):
        parse_threshold("high")
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        parse_threshold("2")


REFERENCES = ["oos", "oos", "oos", "oos", "card", "card", "rate", "rate"]
REPLIES = ["oos", "card", "rate", "card", "card", "card", "rate", "oos"]
CONFIDENCE = [0.9, 0.4, 0.3, 0.8, 0.95, 0.45, 0.7, 0.6]


def test_catch_all_before_and_after_hand_computed():
    scores = catch_all_scores("oos", REPLIES, CONFIDENCE, REFERENCES, threshold=0.5)
    # Before: "oos" replied twice (rows 0, 7), right once; 4 oos rows, one found.
    assert (scores.before.support, scores.before.predicted) == (4, 2)
    assert scores.before.precision == 0.5 and scores.before.recall == 0.25
    # Below 0.5: rows 1, 2 (oos rows, now found) and 5 (a card row, now lost) abstain into oos.
    assert scores.abstained == 3
    after = scores.after
    assert after is not None and after.predicted == 5
    assert after.precision == pytest.approx(3 / 5) and after.recall == pytest.approx(3 / 4)
    assert after.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # The other classes: rows 4-7; right before on 4, 5, 6 (3/4), after on 4, 6 (2/4).
    assert scores.in_scope_accuracy_before == 0.75 and scores.in_scope_accuracy_after == 0.5


def test_all_abstain():
    scores = catch_all_scores("oos", REPLIES, CONFIDENCE, REFERENCES, threshold=1.0)
    assert scores.abstained == len(REPLIES)
    assert scores.after.recall == 1.0 and scores.after.precision == 0.5  # every row answered oos
    assert scores.in_scope_accuracy_after == 0.0


def test_no_threshold_has_no_after():
    scores = catch_all_scores("oos", REPLIES, CONFIDENCE, REFERENCES, threshold=None)
    assert scores.after is None and scores.abstained == 0 and scores.in_scope_accuracy_after is None


def test_degenerate_single_class_set():
    only = catch_all_scores("oos", ["oos", "oos", "x"], [0.9, 0.2, None], ["oos"] * 3, threshold=0.5)
    assert only.before.precision == 1.0 and only.before.recall == pytest.approx(2 / 3)
    assert only.after.recall == 1.0 and only.after.precision == 1.0
    assert only.in_scope_accuracy_before is None  # no other class to be accurate on
    never = catch_all_scores("oos", ["a", "b"], [0.9, 0.8], ["a", "b"], threshold=0.5)
    assert never.before.support == 0 and never.before.recall is None and never.before.precision is None
    assert never.after.precision is None and never.in_scope_accuracy_after == 1.0


def test_catch_all_bad_input():
    with pytest.raises(ValueError, match="2 replies, 1 confidences"):
        catch_all_scores("oos", ["a", "b"], [0.1], ["a", "b"], threshold=0.5)


def _run_with_report(tmp_path, threshold, labels=("card", "other")) -> RunDir:
    run = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  base: tiny\n", encoding="utf-8")
    report = EvalReport(
        labels=list(labels),
        contenders=[
            ContenderResult(
                name="fine-tuned",
                role="fine-tuned",
                quality=Quality(primary="accuracy"),
                confidence=Calibration(threshold=threshold),
            )
        ],
    )
    run.eval_dir.mkdir(parents=True)
    run.eval_report_file.write_text(report.model_dump_json(), encoding="utf-8")
    return run


def test_run_abstention_recommended_and_fallbacks(tmp_path):
    run = _run_with_report(tmp_path, 0.62)
    assert run_abstention(run, ["card", "other"], "recommended") == Abstention(0.62, "other")
    assert run_abstention(run, ["card", "lost"], "0.3") == Abstention(0.3, "unknown")
    assert run_abstention(run, ["card"], 0.3, "human") == Abstention(0.3, "human")
    assert run_abstention(run, ["card"], None) is None


def test_run_abstention_without_a_recommended_threshold(tmp_path):
    run = _run_with_report(tmp_path, None)
    with pytest.raises(RunError, match="recommends no threshold"):
        run_abstention(run, ["card"], "recommended")


def test_catch_all_table():
    scores = catch_all_scores("oos", REPLIES, CONFIDENCE, REFERENCES, threshold=0.5)
    report = EvalReport(
        contenders=[
            ContenderResult(
                name="fine-tuned",
                role="fine-tuned",
                quality=Quality(primary="accuracy"),
                confidence=Calibration(threshold=0.5, catch_all=scores),
            ),
            ContenderResult(name="zero-shot", role="zero-shot", quality=Quality(primary="accuracy")),
        ]
    )
    table = catch_all_table(report)
    assert len(table.rows) == 1 and table.highlight == [True]
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["class"] == "oos" and row["recall"] == "0.250" and row["recall after"] == "0.750"
    assert row["other classes' accuracy"] == "0.750 -> 0.500"
    assert not catch_all_table(EvalReport())


def test_evaluation_reports_the_catch_all_class(tiny_model_dir, tmp_path):
    from tests.evaluate.test_runner import run_cli, write_config

    rows = [
        {"text": f"query {i} about {lab}", "intent": lab}
        for i in range(60)
        for lab in [["card", "loan", "Out of scope"][i % 3]]
    ]
    config = write_config(
        tmp_path,
        tiny_model_dir,
        rows,
        eval_overrides={"target_precision": 0.5, "classic_baseline": False},
        input_field="text",
        output_field="intent",
    )
    report, output = run_cli(config, tmp_path / "run")
    tuned = next(c for c in report["contenders"] if c["role"] == "fine-tuned")
    scores = tuned["confidence"]["catch_all"]
    assert scores["label"] == "Out of scope" and scores["threshold"] == tuned["confidence"]["threshold"]
    assert scores["before"]["support"] == sum(1 for r in _references(tmp_path / "run") if r == "Out of scope")
    if scores["threshold"] is not None:
        assert scores["after"] is not None and scores["after"]["recall"] >= (scores["before"]["recall"] or 0)
    md = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "## Catch-all class" in md and "Catch-all class" in output
    assert 'id="catch-all"' in (tmp_path / "run" / "eval" / "report.html").read_text()


def _references(run) -> list[str]:
    import json

    lines = (run / "splits" / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["completion"] for line in lines if line.strip()]
