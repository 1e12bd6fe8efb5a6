"""The drift report's JSON form: what drift.json, the webhook and the server return."""

from __future__ import annotations

import json

from specialize.records.drift import CheckResult, DriftReport, DriftWindow


def _report() -> DriftReport:
    return DriftReport(
        level="alert",
        message="alert: embedding",
        n_rows=40,
        n_used=40,
        min_window=30,
        window={"start": 1.0, "end": 2.0},
        task="classification",
        embedder="hashed-tfidf-512",
        length_unit="words",
        checks=[
            CheckResult(
                name="embedding",
                test="MMD permutation",
                p_value=0.0001,
                effect=0.97,
                level="alert",
                alert_threshold=0.0014,
                plot={"ref": [[0.0, 1.0]], "live": [[1.0, 0.0]]},
            ),
            CheckResult(name="labels", test="JS permutation", note="3 usable requests, 30 needed"),
        ],
    )


def test_json_data_leaves_out_the_plots_and_is_json_ready():
    data = _report().json_data()
    assert json.dumps(data) and all("plot" not in c for c in data["checks"])
    assert data["checks"][0]["level"] == "alert" and data["level"] == "alert"
    assert _report().check("embedding").plot  # the model itself keeps them for drift.html


def test_a_window_summarises_its_report():
    window = DriftWindow.of(_report(), n=2500)
    assert window.n == 2500 and window.level == "alert" and window.start == 1.0
    assert window.checks["embedding"].p_value == 0.0001 and window.checks["labels"].level == "skipped"
