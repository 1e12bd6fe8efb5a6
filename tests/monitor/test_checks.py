"""The checks plan and the verdict, on profiles written by the previous profile writer
(tests/fixtures), through the one entry point `run_drift`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specialize.config import DriftConfig
from specialize.monitor.checks import bonferroni, plan_checks
from specialize.monitor.drift import run_drift
from specialize.monitor.features import featurize
from specialize.records.profile import read_profile
from specialize.serve.request_log import LoggedRequest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _rows(texts: list[str], completions: list[str], status: int = 200) -> list[LoggedRequest]:
    return [
        LoggedRequest(
            id=i,
            ts=1000.0 + i,
            prompt=json.dumps([{"role": "user", "content": t}]),
            completion=c,
            status=status,
        )
        for i, (t, c) in enumerate(zip(texts, completions, strict=True))
    ]


def test_bonferroni_divides_both_levels_by_the_number_of_checks():
    assert bonferroni(DriftConfig(), 5) == pytest.approx((0.01, 0.002))


def test_the_plan_follows_the_task():
    classification = read_profile(FIXTURES / "profile_v1_classification.json")
    json_task = read_profile(FIXTURES / "profile_v1_json.json")
    rows = _rows(["question about my card"] * 40, ["refund"] * 40)
    names = [c.name for c in plan_checks(classification, featurize(rows, classification), 30)]
    assert names == ["input_length", "non_ascii", "digits", "oov", "embedding", "labels", "invalid_outputs"]
    rows = _rows(["extract payment"] * 40, ['{"name": "A", "amount": 3}'] * 40)
    plan = plan_checks(json_task, featurize(rows, json_task), 30)
    assert [c.name for c in plan][:2] == ["input_length", "output_length"]
    assert {"json_fields", "invalid_outputs"} <= {c.name for c in plan} and "labels" not in {
        c.name for c in plan
    }
    few = plan_checks(json_task, featurize(rows[:10], json_task), 30)
    assert all(c.note == "10 usable requests, 30 needed" for c in few)


def test_run_drift_on_a_profile_from_the_previous_writer():
    profile = read_profile(FIXTURES / "profile_v1_classification.json")
    rows = _rows([f"question {i} about my refund" for i in range(40)], ["refund"] * 40)
    rows += _rows(["broken"] * 5, ["x"] * 5, status=500)  # errors are counted, never tested
    report = run_drift(profile, rows, DriftConfig(), adapter="bank")
    assert report.adapter == "bank" and report.run == profile.run and report.task == "classification"
    assert report.n_rows == 45 and report.n_errors == 5 and report.n_used == 40
    assert report.length_unit == "words"  # the profile counts tokens, but no tokenizer was given
    assert report.level in ("ok", "warn", "alert") and report.correction.startswith("Bonferroni over 7")
    # The same rows featurized first give the same report: featurizing is the only difference.
    again = run_drift(profile, featurize(rows, profile), DriftConfig(), adapter="bank")
    assert [c.p_value for c in again.checks] == [c.p_value for c in report.checks]


def test_plots_are_optional_and_do_not_change_the_verdict():
    profile = read_profile(FIXTURES / "profile_v1_classification.json")
    rows = _rows([f"question {i} about my refund" for i in range(40)], ["refund"] * 40)
    with_plots = run_drift(profile, rows)
    without = run_drift(profile, rows, plots=False)
    assert with_plots.check("embedding").plot and not without.check("embedding").plot
    assert [c.p_value for c in with_plots.checks] == [c.p_value for c in without.checks]
