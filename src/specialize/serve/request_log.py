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
blocks a request; `close()` flushes what is queued. `read_window` is the reader the drift monitor
uses: it selects by the same column definitions, and gives typed `LoggedRequest` rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from specialize.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# The table, in column order: the one definition that the writer creates and inserts by and
# the reader selects by, so the two cannot disagree. A column added here needs a field of the
# same name in RequestEntry (what is written) and LoggedRequest (what is read); the request-log
# tests check both.
COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "ts": "REAL NOT NULL",
    "model": "TEXT NOT NULL",
    "adapter": "TEXT",
    "adapter_version": "INTEGER",
    "endpoint": "TEXT",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "latency_ms": "REAL",
    "prompt": "TEXT",
    "completion": "TEXT",
    "prompt_hash": "TEXT",
    "completion_hash": "TEXT",
    "finish_reason": "TEXT",
    "status": "INTEGER NOT NULL",
}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests (\n"
    + ",\n".join(f"    {name} {kind}" for name, kind in COLUMNS.items())
    + "\n)"
)
_WRITTEN = tuple(name for name in COLUMNS if name != "id")  # the database assigns the id
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
                                f"INSERT INTO requests ({', '.join(_WRITTEN)}) "
                                f"VALUES ({', '.join('?' * len(_WRITTEN))})",
                                [tuple(getattr(e, name) for name in _WRITTEN) for e in entries],
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


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class LoggedRequest:
    """A row of the request log as read back. Every field may be None: a log written by an
    older version lacks the columns added since, and a hashes-only log has no text."""

    id: int | None = None
    ts: float | None = None
    model: str | None = None
    adapter: str | None = None
    adapter_version: int | None = None
    endpoint: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    prompt: str | None = None
    completion: str | None = None
    prompt_hash: str | None = None
    completion_hash: str | None = None
    finish_reason: str | None = None
    status: int | None = None

    @property
    def succeeded(self) -> bool:
        """Answered without an error status (a row without a status counts as answered)."""
        return self.status is None or int(self.status) < 400

    @property
    def text(self) -> str | None:
        """The user's request (see `prompt_text`)."""
        return prompt_text(self.prompt)


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(since: str | float | None, now: float | None = None) -> float | None:
    """Unix seconds from a number, a duration back from now ('90m', '24h', '7d') or an ISO date."""
    if since is None or since == "":
        return None
    if isinstance(since, int | float):
        return float(since)
    text = since.strip()
    match = _RELATIVE.match(text)
    if match:
        return (now if now is not None else time.time()) - float(match.group(1)) * _UNIT_SECONDS[
            match.group(2)
        ]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {since!r}: give unix seconds, a duration like 24h / 7d / 30m, or an ISO date/time"
        ) from None
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


def read_window(
    log_path: str | Path,
    adapter: str | None = None,
    since: str | float | None = None,
    limit: int | None = None,
) -> list[LoggedRequest]:
    """Requests from the request log, oldest first: the most recent `limit` since `since`,
    for one adapter (by its name in `adapter`, or in `model` when the log has no adapter).

    Read-only and safe while the server writes (the log is in WAL mode)."""
    path = Path(log_path)
    if not path.is_file():
        raise DataError(f"{path}: request log not found (start the server with request logging on)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot open the request log: {exc}") from None
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        if not present:
            raise DataError(f"{path}: not a request log (no table 'requests')")
        # Columns a log from an older version lacks read as NULL.
        cols = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
        where, args = [], []
        if adapter:
            where.append("(adapter = ? OR (adapter IS NULL AND model = ?))")
            args += [adapter, adapter]
        start = parse_since(since)
        if start is not None:
            where.append("ts >= ?")
            args.append(start)
        query = f"SELECT {cols} FROM requests"
        query += (" WHERE " + " AND ".join(where)) if where else ""
        query += " ORDER BY ts DESC, id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        rows = [LoggedRequest(**dict(zip(COLUMNS, row, strict=True))) for row in conn.execute(query, args)]
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: cannot read the request log: {exc}") from None
    finally:
        conn.close()
    rows.reverse()
    return rows


def prompt_text(prompt: str | None) -> str | None:
    """The user's request in a logged prompt: the last user message of a logged chat (a JSON
    list of messages), or the prompt string itself."""
    if prompt is None:
        return None
    stripped = prompt.lstrip()
    if stripped.startswith("["):
        try:
            messages = json.loads(stripped)
        except ValueError:
            return prompt
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            for message in reversed(messages):
                if message.get("role") == "user":
                    content = message.get("content")
                    if isinstance(content, list):  # OpenAI content parts
                        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                    return "" if content is None else str(content)
            return ""
    return prompt
