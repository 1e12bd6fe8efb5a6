"""The drift entry points the CLI and the server call, and where the evaluated outputs come from."""

from __future__ import annotations

import inspect
import json

from specialize.monitor.drift import drift_for_adapter, evaluated_outputs


def test_drift_for_adapter_keeps_the_signature_the_server_calls():
    """The server calls drift_for_adapter(run_dir, log_path, name, window, tokenizer=...) off the
    event loop and returns the dict as the response body."""
    params = inspect.signature(drift_for_adapter).parameters
    assert list(params)[:4] == ["run_dir", "log_path", "adapter", "window"]
    assert params["tokenizer"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(drift_for_adapter).return_annotation in ("dict[str, Any]", dict)


def test_evaluated_outputs_are_the_fine_tuned_role_not_a_name(tmp_path):
    (tmp_path / "eval").mkdir()
    report = tmp_path / "eval" / "report.json"
    report.write_text(
        json.dumps(
            {
                "contenders": [
                    {"name": "fine-tuned", "role": "extra", "predictions": ["other run"]},
                    {"name": "bank (ours)", "role": "fine-tuned", "predictions": ["refund", 3]},
                ]
            }
        )
    )
    assert evaluated_outputs(tmp_path) == ["refund", "3"]
    report.write_text(json.dumps({"contenders": [{"name": "fine-tuned", "predictions": ["x"]}]}))
    assert evaluated_outputs(tmp_path) is None  # no contender has the fine-tuned role
    report.write_text("{broken")
    assert evaluated_outputs(tmp_path) is None


def test_the_time_series_goes_through_the_same_entry_point():
    from pathlib import Path

    from specialize.config import DriftConfig
    from specialize.monitor.drift import drift_over_time, run_drift
    from specialize.records.profile import read_profile
    from specialize.serve.request_log import LoggedRequest

    profile = read_profile(
        Path(__file__).resolve().parent.parent / "fixtures" / "profile_v1_classification.json"
    )
    rows = [
        LoggedRequest(
            id=i, ts=float(i), prompt=f"question {i} about my card", completion="refund", status=200
        )
        for i in range(70)
    ]
    config = DriftConfig(min_window=30)
    report = run_drift(profile, rows, config, over_time=True)
    assert report.over_time == drift_over_time(profile, rows, config)
    assert [w.n for w in report.over_time] == [30, 40] and report.json_data()["over_time"][1]["n"] == 40
    alone = run_drift(profile, rows, config)
    assert alone.over_time is None and "over_time" not in alone.json_data()  # the server's body
    assert [c.p_value for c in alone.checks] == [c.p_value for c in report.checks]


def test_from_a_run_directory_and_a_request_log(tmp_path):
    """Given where things are, run_drift reads the run's settings and evaluated outputs and the
    log's requests to one adapter, as the CLI, the server and `specialize.api.drift` do."""
    import shutil
    from pathlib import Path

    from specialize.serve.request_log import RequestLog

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    shutil.copy(
        Path(__file__).resolve().parent.parent / "fixtures" / "profile_v1_classification.json",
        run / "profile.json",
    )
    (run / "config.yaml").write_text("name: bank\nmonitor:\n  min_window: 20\n")
    predictions = ["refund", "top_up", "card_arrival"] * 10
    (run / "eval" / "report.json").write_text(
        json.dumps({"contenders": [{"name": "fine-tuned", "role": "fine-tuned", "predictions": predictions}]})
    )
    log = RequestLog(tmp_path / "requests.sqlite")
    for i in range(25):
        for adapter in ("bank", "other"):
            log.record(
                model=adapter,
                adapter=adapter,
                endpoint="chat.completions",
                prompt=json.dumps([{"role": "user", "content": f"question {i} about my top up"}]),
                completion="top_up",
                prompt_tokens=5,
                completion_tokens=1,
                latency_ms=3.0,
                finish_reason="stop",
                status=200,
                ts=1000.0 + i,
            )
    log.close()
    from specialize.monitor.drift import run_drift

    report = run_drift(run / "adapter", tmp_path / "requests.sqlite", adapter="bank")
    assert report.min_window == 20 and report.n_used == 25 and report.adapter == "bank"
    assert report.check("labels").extra["reference"] == "fine-tuned outputs on the test split"
    assert report.check("invalid_outputs").test == "Fisher exact (one-sided)"
    # Only the last `since` seconds: too few requests for a verdict.
    recent = run_drift(run, tmp_path / "requests.sqlite", adapter="bank", since=1015.0)
    assert recent.n_used == 10 and recent.level == "not_enough_data"
