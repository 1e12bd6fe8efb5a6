"""Where a retrain's new rows come from: reviewed corrections, and logged requests with labels."""

from __future__ import annotations

import json

import pytest

from specialize.config import parse_config
from specialize.errors import DataError
from specialize.loop.rows import read_logged_rows, read_reviewed_rows


def test_review_export_corrections_get_the_parents_system_prompt(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    rows = [
        {"input": "I lost my card", "output": "lost_or_stolen_card"},
        {"input": "rate?", "output": "exchange_rate"},
    ]
    (export / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (export / "dpo.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}) + "\n")
    config = parse_config({"data": {"system_prompt": "Name the intent."}})
    got = read_reviewed_rows(export, config)
    assert [(e.messages, e.completion) for e in got][0] == (
        [{"role": "system", "content": "Name the intent."}, {"role": "user", "content": "I lost my card"}],
        "lost_or_stolen_card",
    )
    assert str(got[1].source) == f"{export / 'sft.jsonl'}:2"
    with pytest.raises(DataError, match="no sft.jsonl"):
        read_reviewed_rows(tmp_path, config)


def test_logged_requests_with_labels(tmp_path):
    from specialize.serve.request_log import RequestLog, read_window

    log = RequestLog(tmp_path / "requests.sqlite")
    for i, text in enumerate(["where is my card", "what is the rate"]):
        log.record(
            model="bank",
            adapter="bank",
            endpoint="chat.completions",
            prompt=json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": text}]),
            completion="card_arrival",
            prompt_tokens=4,
            completion_tokens=1,
            latency_ms=1.0,
            finish_reason="stop",
            status=200,
            ts=1000.0 + i,
        )
    log.close()
    first, second = read_window(tmp_path / "requests.sqlite")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"id": first.id, "label": "card_arrival"})
        + "\n\n"
        + json.dumps({"prompt_hash": second.prompt_hash, "completion": "exchange_rate"})
        + "\n"
    )
    got = read_logged_rows(tmp_path / "requests.sqlite", labels)
    assert [(e.user_text, e.completion, e.messages[0]["content"]) for e in got] == [
        ("where is my card", "card_arrival", "S"),
        ("what is the rate", "exchange_rate", "S"),
    ]
    assert str(got[1].source) == f"{labels}:3"
    labels.write_text(json.dumps({"id": 999, "label": "x"}) + "\n" + json.dumps({"id": first.id}) + "\n")
    with pytest.raises(DataError) as caught:
        read_logged_rows(tmp_path / "requests.sqlite", labels)
    assert f"{labels}:1: id: no request 999" in str(caught.value)
    assert f"{labels}:2: label: a non-empty string is required" in str(caught.value)
