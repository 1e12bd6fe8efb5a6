"""The SQLite request log: the schema the drift monitor reads, text or hashes only, no lost rows."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

from specialize.serve.request_log import RequestLog, read_requests

DOCUMENTED = {
    "id",
    "ts",
    "model",
    "adapter",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "prompt",
    "completion",
    "prompt_hash",
    "completion_hash",
    "status",
}


def _entry(**overrides):
    entry = dict(
        model="banking77",
        adapter="banking77",
        adapter_version=2,
        endpoint="chat.completions",
        prompt='[{"role": "user", "content": "card?"}]',
        completion="card_arrival",
        prompt_tokens=12,
        completion_tokens=3,
        latency_ms=41.5,
        finish_reason="stop",
        status=200,
    )
    entry.update(overrides)
    return entry


def test_rows_follow_the_documented_schema(tmp_path):
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    log.record(**_entry(), ts=1000.0)
    log.record(
        **_entry(
            adapter=None,
            adapter_version=None,
            model="base",
            completion=None,
            completion_tokens=None,
            status=503,
            finish_reason="error",
        )
    )
    log.close()
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    assert DOCUMENTED <= columns
    first, second = read_requests(path)
    assert first["ts"] == 1000.0 and first["adapter"] == "banking77" and first["adapter_version"] == 2
    assert first["prompt_tokens"] == 12 and first["completion_tokens"] == 3 and first["status"] == 200
    assert first["completion"] == "card_arrival"
    assert first["prompt_hash"] == hashlib.sha256(first["prompt"].encode()).hexdigest()
    assert first["completion_hash"] == hashlib.sha256(b"card_arrival").hexdigest()
    assert second["adapter"] is None and second["status"] == 503 and second["completion_hash"] is None


def test_hashes_only_keeps_no_text(tmp_path):
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path, store_text=False)
    log.record(**_entry())
    log.close()
    (row,) = read_requests(path)
    assert row["prompt"] is None and row["completion"] is None
    assert row["completion_hash"] == hashlib.sha256(b"card_arrival").hexdigest()


def test_concurrent_writers_lose_nothing_and_reopening_appends(tmp_path):
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path, batch=7)
    threads = [threading.Thread(target=lambda: [log.record(**_entry()) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    again = RequestLog(path)
    again.record(**_entry(model="later"))
    again.close()
    rows = read_requests(path)
    assert len(rows) == 201 and rows[-1]["model"] == "later"
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)


def test_the_reader_and_the_writer_share_one_column_list(tmp_path):
    from dataclasses import fields

    from specialize.serve.request_log import COLUMNS, LoggedRequest, RequestEntry, read_window

    assert [f.name for f in fields(LoggedRequest)] == list(COLUMNS)
    assert [f.name for f in fields(RequestEntry)] == [c for c in COLUMNS if c != "id"]
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    log.record(**_entry(), ts=1000.0)
    log.record(**_entry(status=503, completion=None), ts=1001.0)
    log.close()
    first, second = read_window(path, adapter="banking77")
    assert isinstance(first, LoggedRequest) and first.id == 1 and first.ts == 1000.0
    assert first.adapter_version == 2 and first.endpoint == "chat.completions" and first.latency_ms == 41.5
    assert first.text == "card?" and first.succeeded and not second.succeeded
    assert first.prompt_hash == hashlib.sha256(first.prompt.encode()).hexdigest()


def test_a_log_from_an_older_version_reads_missing_columns_as_none(tmp_path):
    from specialize.serve.request_log import read_window

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE requests(id INTEGER PRIMARY KEY, ts REAL, model TEXT, prompt TEXT, status INT)"
        )
        conn.execute("INSERT INTO requests(ts, model, prompt, status) VALUES (5.0, 'bank', 'hello', 200)")
    (row,) = read_window(path, adapter="bank")  # no adapter column value: matched by model
    assert (
        row.prompt == "hello" and row.adapter is None and row.endpoint is None and row.finish_reason is None
    )
