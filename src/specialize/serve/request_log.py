"""The request log: one SQLite row per served request, read later by the drift monitor.

Schema (table `requests`; readers should select columns by name, later versions may add some):

    id                INTEGER PRIMARY KEY AUTOINCREMENT
    ts                REAL     unix time the request arrived
    model             TEXT     the `model` field of the request (base model id or adapter name)
    adapter           TEXT     adapter name, NULL for the base model
    adapter_version   INTEGER  registry version of the adapter, NULL for the base model
    endpoint          TEXT     "chat.completions" or "completions"
    prompt_tokens     INTEGER
    completion_tokens INTEGER
    latency_ms        REAL     arrival to last token
    prompt            TEXT     NULL when only hashes are kept; for chat the JSON list of messages
                               ([{"role": ..., "content": ...}]), for completions the prompt string
    completion        TEXT     the generated text; NULL when only hashes are kept
    prompt_hash       TEXT     sha256 hex of the prompt text as stored above (always set)
    completion_hash   TEXT     sha256 hex of the completion text (always set)
    finish_reason     TEXT     stop | length | cancelled | error
    status            INTEGER  HTTP status returned (200, 400, 503, ...)

Writes go through a queue to one writer thread that commits in small batches, so logging never
blocks a request; `close()` flushes what is queued.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT,
    adapter_version INTEGER,
    endpoint TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    prompt TEXT,
    completion TEXT,
    prompt_hash TEXT,
    completion_hash TEXT,
    finish_reason TEXT,
    status INTEGER NOT NULL
)
"""
_COLUMNS = (
    "ts, model, adapter, adapter_version, endpoint, prompt_tokens, completion_tokens, latency_ms, "
    "prompt, completion, prompt_hash, completion_hash, finish_reason, status"
)
_STOP = object()


@dataclass(frozen=True)
class RequestEntry:
    ts: float
    model: str
    adapter: str | None
    adapter_version: int | None
    endpoint: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    prompt: str | None
    completion: str | None
    prompt_hash: str | None
    completion_hash: str | None
    finish_reason: str | None
    status: int


def text_hash(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestLog:
    """Append-only SQLite log of requests; `store_text=False` keeps hashes, never the text."""

    def __init__(self, path: str | Path, *, store_text: bool = True, batch: int = 64):
        self.path = Path(path).expanduser()
        self.store_text = store_text
        self._batch = batch
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # the drift monitor may read while we write
            conn.execute(_SCHEMA)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="specialize-request-log", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        model: str,
        adapter: str | None,
        adapter_version: int | None = None,
        endpoint: str,
        prompt: str | None,
        completion: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        latency_ms: float | None,
        finish_reason: str | None,
        status: int,
        ts: float | None = None,
    ) -> None:
        entry = RequestEntry(
            ts=time.time() if ts is None else ts,
            model=model,
            adapter=adapter,
            adapter_version=adapter_version,
            endpoint=endpoint,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            prompt=prompt if self.store_text else None,
            completion=completion if self.store_text else None,
            prompt_hash=text_hash(prompt),
            completion_hash=text_hash(completion),
            finish_reason=finish_reason,
            status=status,
        )
        self._queue.put(entry)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything recorded so far is committed (readers then see it)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _write_loop(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            while True:
                item = self._queue.get()
                items = [item]
                while len(items) < self._batch:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                entries = [i for i in items if isinstance(i, RequestEntry)]
                if entries:
                    try:
                        with conn:
                            conn.executemany(
                                f"INSERT INTO requests ({_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                                [astuple(e) for e in entries],
                            )
                    except sqlite3.Error:
                        log.exception("could not write %d request log rows to %s", len(entries), self.path)
                for marker in items:
                    if isinstance(marker, threading.Event):
                        marker.set()
                if any(i is _STOP for i in items):
                    return
        finally:
            conn.close()


def read_requests(path: str | Path, limit: int | None = None) -> list[dict[str, object]]:
    """Rows of a request log as dicts, oldest first (for tools and tests)."""
    conn = sqlite3.connect(Path(path))
    conn.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM requests ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        return [dict(row) for row in conn.execute(query)]
    finally:
        conn.close()
