"""The judgments store: every blind comparison a reviewer made, in one SQLite file.

Two tables. `assignments` holds each pair as it was shown: who saw it, which contender was first
(key 1, left) and which second, and the texts as they were then, under a random token; the
reviewer's page only ever holds the token, never the contenders' names. `judgments` holds the
answer to an assignment: the verdict as pressed (first / second / tie / both_bad), the same
verdict mapped to contender names (winner, loser), and an optional corrected reply.

Keeping the texts in the store, not only row ids, means an export or a summary never depends on
the run still having the same files, and a judgment of logged traffic stays readable after the
log is rotated. Several studio workers or processes may write at once: every write is its own
transaction, and the file is in WAL mode.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from specialize.errors import DataError

Verdict = Literal["first", "second", "tie", "both_bad"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
STORE_NAME = "review.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    token        TEXT NOT NULL UNIQUE,
    reviewer     TEXT NOT NULL,
    source       TEXT NOT NULL,
    row_id       TEXT NOT NULL,
    first        TEXT NOT NULL,
    second       TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    first_reply  TEXT NOT NULL,
    second_reply TEXT NOT NULL,
    reference    TEXT,
    shown_at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS judgments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(id),
    reviewer      TEXT NOT NULL,
    ts            REAL NOT NULL,
    source        TEXT NOT NULL,
    row_id        TEXT NOT NULL,
    first         TEXT NOT NULL,
    second        TEXT NOT NULL,
    verdict       TEXT NOT NULL,
    winner        TEXT,
    loser         TEXT,
    corrected     TEXT
);
CREATE INDEX IF NOT EXISTS judgments_source ON judgments(source);
CREATE INDEX IF NOT EXISTS assignments_source ON assignments(source, reviewer);
"""


@dataclass(frozen=True)
class Assignment:
    """A pair as shown to one reviewer: `first` was key 1 (left), `second` key 2 (right)."""

    id: int
    token: str
    reviewer: str
    source: str
    row_id: str
    first: str
    second: str
    prompt: str
    first_reply: str
    second_reply: str
    reference: str | None
    shown_at: float


@dataclass(frozen=True)
class Judgment:
    """A reviewer's answer, with the pair and texts it was about.

    `winner`/`loser` are contender names (None for a tie or both bad); `corrected` is the reply
    the reviewer typed instead, if any."""

    id: int
    reviewer: str
    ts: float
    source: str
    row_id: str
    first: str
    second: str
    verdict: Verdict
    winner: str | None
    loser: str | None
    corrected: str | None
    prompt: str
    first_reply: str
    second_reply: str
    reference: str | None

    @property
    def pair(self) -> tuple[str, str]:
        """The two contenders in a fixed (sorted) order, whatever order they were shown in."""
        a, b = sorted((self.first, self.second))
        return a, b

    def reply_of(self, name: str) -> str:
        return self.first_reply if name == self.first else self.second_reply


def check_reviewer(name: str) -> str:
    cleaned = (name or "").strip()
    if not cleaned or len(cleaned) > 64 or any(ord(ch) < 32 for ch in cleaned):
        raise DataError(f"reviewer name {name!r}: give 1-64 printable characters (e.g. your initials)")
    return cleaned


class ReviewStore:
    """Read and write the judgments store at `path` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a review store ({exc})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a crash of the app
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    # ----------------------------------------------------------------------------- assignments

    def assign(
        self,
        *,
        reviewer: str,
        source: str,
        row_id: str,
        first: str,
        second: str,
        prompt: str,
        first_reply: str,
        second_reply: str,
        reference: str | None = None,
    ) -> Assignment:
        """Record that `reviewer` is being shown this pair in this order; returns it with its token."""
        if first == second:
            raise DataError(f"a pair needs two different contenders, got {first!r} twice")
        token = secrets.token_urlsafe(12)
        shown_at = time.time()
        reviewer = check_reviewer(reviewer)
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO assignments (token, reviewer, source, row_id, first, second, prompt, "
                "first_reply, second_reply, reference, shown_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    token,
                    reviewer,
                    source,
                    row_id,
                    first,
                    second,
                    prompt,
                    first_reply,
                    second_reply,
                    reference,
                    shown_at,
                ),
            )
            new_id = int(cursor.lastrowid or 0)
        return Assignment(
            new_id,
            token,
            reviewer,
            source,
            row_id,
            first,
            second,
            prompt,
            first_reply,
            second_reply,
            reference,
            shown_at,
        )

    def assignment(self, token: str) -> Assignment:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM assignments WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise DataError(f"unknown review item {token!r} (reload the review page)")
        return Assignment(**{k: row[k] for k in row.keys()})

    def pending(self, reviewer: str, source: str) -> Assignment | None:
        """The reviewer's last shown and not yet judged pair of this source (a page reload shows
        it again rather than drawing a new one, so the order shown stays the recorded one)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT a.* FROM assignments a LEFT JOIN judgments j ON j.assignment_id = a.id "
                "WHERE a.reviewer = ? AND a.source = ? AND j.id IS NULL ORDER BY a.id DESC LIMIT 1",
                (reviewer, source),
            ).fetchone()
        return None if row is None else Assignment(**{k: row[k] for k in row.keys()})

    # ------------------------------------------------------------------------------- judgments

    def judge(self, token: str, verdict: str, corrected: str | None = None) -> Judgment:
        """Answer an assignment; each assignment is answered once (a second answer is an error)."""
        if verdict not in VERDICTS:
            raise DataError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
        shown = self.assignment(token)
        winner, loser = {
            "first": (shown.first, shown.second),
            "second": (shown.second, shown.first),
        }.get(verdict, (None, None))
        corrected = corrected.strip() if corrected and corrected.strip() else None
        ts = time.time()
        try:
            with self._connect() as conn:
                cursor = conn.execute(
                    "INSERT INTO judgments (assignment_id, reviewer, ts, source, row_id, first, second, "
                    "verdict, winner, loser, corrected) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        shown.id,
                        shown.reviewer,
                        ts,
                        shown.source,
                        shown.row_id,
                        shown.first,
                        shown.second,
                        verdict,
                        winner,
                        loser,
                        corrected,
                    ),
                )
                new_id = int(cursor.lastrowid or 0)
        except sqlite3.IntegrityError:
            raise DataError("this pair was already judged (reload the review page)") from None
        return Judgment(
            new_id,
            shown.reviewer,
            ts,
            shown.source,
            shown.row_id,
            shown.first,
            shown.second,
            verdict,
            winner,
            loser,
            corrected,
            shown.prompt,
            shown.first_reply,
            shown.second_reply,
            shown.reference,
        )  # type: ignore[arg-type]

    def judgments(self, source: str | None = None, reviewer: str | None = None) -> list[Judgment]:
        """Judgments, oldest first, of one source and/or reviewer (all when both are None)."""
        where, args = [], []
        if source is not None:
            where.append("j.source = ?")
            args.append(source)
        if reviewer is not None:
            where.append("j.reviewer = ?")
            args.append(reviewer)
        query = (
            "SELECT j.id, j.reviewer, j.ts, j.source, j.row_id, j.first, j.second, j.verdict, j.winner, "
            "j.loser, j.corrected, a.prompt, a.first_reply, a.second_reply, a.reference "
            "FROM judgments j JOIN assignments a ON a.id = j.assignment_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY j.id"
        )
        with self._connect() as conn:
            return [Judgment(**{k: row[k] for k in row.keys()}) for row in conn.execute(query, args)]

    def judged_keys(self, source: str, reviewer: str) -> set[tuple[str, str, str]]:
        """(row_id, contender, contender) of every pair this reviewer judged in this source."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT row_id, first, second FROM judgments WHERE source = ? AND reviewer = ?",
                (source, reviewer),
            ).fetchall()
        return {(r["row_id"], *sorted((r["first"], r["second"]))) for r in rows}  # type: ignore[misc]

    def sources(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT source FROM judgments ORDER BY source")]
