"""Where a version came from, which version of a name is served, and what the loop decided.

Three tables beside `adapters` in registry.sqlite:

    current_versions   one row per name: the version `NAME` means (the server's pointer)
    promotions         every switch of that pointer (promote, rollback, add), oldest first
    decisions          every verdict of `specialize retrain` / `watch` on a challenger

Why a pointer rather than "the latest version": a retrained challenger is registered as the next
version *before* it has proven itself, so the newest version is not necessarily the one that
should take traffic. A registry made before the pointer existed has no row for a name; the latest
version is then current, which is what servers of that release served.

A switch is one SQLite transaction (pointer row and history row together), and afterwards the
registry replaces `current.stamp`, a tiny file whose identity changes on every switch: a running
server stats it at request admission (microseconds) and re-reads the pointer only when it changed.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TABLES = (
    """
    CREATE TABLE IF NOT EXISTS current_versions (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        since REAL NOT NULL               -- unix time of the switch that made it current
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS promotions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        action TEXT NOT NULL,             -- add | promote | rollback
        version INTEGER NOT NULL,         -- current after the switch
        previous INTEGER,                 -- current before it (None: the name's first version)
        reason TEXT,
        at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        challenger INTEGER,               -- the version that was tried (None: no challenger was trained)
        current INTEGER,                  -- the version in service when it was decided
        outcome TEXT NOT NULL,            -- promoted | kept | alert | waiting | quiet | refused
        reason TEXT NOT NULL,
        report TEXT,                      -- the decision report file, when one was written
        at REAL NOT NULL
    )
    """,
)

# Lineage columns of the adapters table, added to an older registry.sqlite on first use.
LINEAGE_COLUMNS = {
    "parent_version": "INTEGER",  # the version this one was retrained from
    "data_sha256": "TEXT",  # of the run's splits/train.jsonl: the exact training rows
    "data_rows": "INTEGER",  # rows in it
    "rows_added": "INTEGER",  # training rows that were not in the parent's
    "run_dir": "TEXT",  # the run directory it was trained in
    "eval_report": "TEXT",  # the run's eval/report.json, when it was evaluated
}

Action = Literal["add", "promote", "rollback"]
STAMP_FILE = "current.stamp"


@dataclass(frozen=True)
class Lineage:
    """What `add` records about a version's origin beyond what the run directory says."""

    parent_version: int | None = None
    rows_added: int | None = None


@dataclass(frozen=True)
class TrainingData:
    """The identity of a run's training rows: the hash and size of splits/train.jsonl."""

    sha256: str
    rows: int

    @classmethod
    def of_run(cls, run_dir: Path | None) -> TrainingData | None:
        file = run_dir / "splits" / "train.jsonl" if run_dir is not None else None
        if file is None or not file.is_file():
            return None
        data = file.read_bytes()
        rows = sum(1 for line in data.splitlines() if line.strip())
        return cls(hashlib.sha256(data).hexdigest(), rows)


@dataclass(frozen=True)
class Switch:
    """One change of a name's current version."""

    name: str
    action: Action
    version: int
    previous: int | None
    reason: str | None
    at: float


@dataclass(frozen=True)
class DecisionEntry:
    """One verdict on a challenger, as the registry keeps it (the full record is the report file)."""

    name: str
    outcome: str
    reason: str
    challenger: int | None = None
    current: int | None = None
    report: str | None = None
    at: float = 0.0


def create_tables(conn: sqlite3.Connection) -> None:
    for statement in TABLES:
        conn.execute(statement)


def pointer(conn: sqlite3.Connection, name: str) -> int | None:
    """The version the pointer names, or None when the name has no pointer row yet."""
    row = conn.execute("SELECT version FROM current_versions WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def since(conn: sqlite3.Connection, name: str) -> float | None:
    row = conn.execute("SELECT since FROM current_versions WHERE name = ?", (name,)).fetchone()
    return None if row is None else float(row[0])


def switch(
    conn: sqlite3.Connection,
    name: str,
    version: int,
    previous: int | None,
    action: Action,
    reason: str | None,
) -> Switch:
    """Point `name` at `version` and record it; the caller holds the write transaction."""
    at = time.time()
    conn.execute(
        "INSERT INTO current_versions (name, version, since) VALUES (?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET version = excluded.version, since = excluded.since",
        (name, version, at),
    )
    conn.execute(
        "INSERT INTO promotions (name, action, version, previous, reason, at) VALUES (?,?,?,?,?,?)",
        (name, action, version, previous, reason, at),
    )
    return Switch(name, action, version, previous, reason, at)


def rollback_target(conn: sqlite3.Connection, name: str, current: int) -> int | None:
    """The version that was current before `current` was last promoted: the previous of the
    latest promote (or add) that made it current. Following promotions, not rollbacks, lets
    repeated rollbacks walk back v3 -> v2 -> v1 instead of bouncing between two versions."""
    row = conn.execute(
        "SELECT previous FROM promotions WHERE name = ? AND version = ? AND action != 'rollback' "
        "ORDER BY id DESC LIMIT 1",
        (name, current),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def history(conn: sqlite3.Connection, name: str) -> list[Switch]:
    rows = conn.execute(
        "SELECT name, action, version, previous, reason, at FROM promotions WHERE name = ? ORDER BY id",
        (name,),
    ).fetchall()
    return [Switch(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def add_decision(conn: sqlite3.Connection, entry: DecisionEntry) -> DecisionEntry:
    at = entry.at or time.time()
    conn.execute(
        "INSERT INTO decisions (name, challenger, current, outcome, reason, report, at) VALUES (?,?,?,?,?,?,?)",
        (entry.name, entry.challenger, entry.current, entry.outcome, entry.reason, entry.report, at),
    )
    return DecisionEntry(
        entry.name, entry.outcome, entry.reason, entry.challenger, entry.current, entry.report, at
    )


def decisions(conn: sqlite3.Connection, name: str) -> list[DecisionEntry]:
    rows = conn.execute(
        "SELECT name, outcome, reason, challenger, current, report, at FROM decisions WHERE name = ? ORDER BY id",
        (name,),
    ).fetchall()
    return [DecisionEntry(*tuple(r)) for r in rows]
