"""Read example files into raw rows, each tagged with the file:line it came from.

Readers never stop at the first bad row: a user fixing a dataset wants every problem in one pass,
so row-level problems become `Issue`s (capped per file) and only file-level failures (missing
file, unknown extension, nothing to read, wrong top-level shape) raise `DataError`.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from specialize.data.example import Source
from specialize.errors import DataError

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
MAX_ISSUES = 1000  # per file and kind; beyond this the user has a systematic problem, not typos

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Issue:
    """One problem found in the data, pointing at its file:line and field when it has them."""

    source: Source | None  # None for problems about a whole file or dataset
    field: str | None
    message: str
    severity: Severity = "error"
    count: int = 1  # more than one for a summary such as "250 more errors not listed"

    def __str__(self) -> str:
        parts = [str(self.source)] if self.source is not None else []
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


@dataclass
class RawRow:
    """A row as read from the file (before any format rules apply)."""

    data: dict[str, Any]
    source: Source


def cap_issues(issues: Iterable[Issue], limit: int = MAX_ISSUES, *, where: str = "") -> list[Issue]:
    """Keep the first `limit` errors and warnings, and say how many more there were."""
    kept: list[Issue] = []
    seen: dict[str, int] = {"error": 0, "warning": 0}
    for issue in issues:
        seen[issue.severity] += issue.count
        if seen[issue.severity] <= limit:
            kept.append(issue)
    place = f" in {where}" if where else ""
    severities: tuple[Severity, ...] = ("error", "warning")
    for severity in severities:
        if seen[severity] > limit:
            extra = seen[severity] - limit
            kept.append(Issue(None, None, f"{extra} more {severity}s{place} not listed", severity, extra))
    return kept


def read_rows(path: str | Path) -> tuple[list[RawRow], list[Issue]]:
    """Rows of a .jsonl, .json, .csv or .parquet file, plus the row-level problems found."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a data file ({_supported()})")
    if suffix not in _READERS:
        raise DataError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; use {_supported()}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    rows, issues = _READERS[suffix](path)
    if not rows and not issues:
        raise DataError(f"{path}: the file holds no rows")
    log.debug("read %d rows and %d issues from %s", len(rows), len(issues), path)
    return rows, cap_issues(issues, where=str(path))


def _supported() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def _decode(path: Path, raw: bytes) -> tuple[str, Issue | None]:
    """The text of a whole file; on bad UTF-8, the text before the bad line and an issue naming it."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        issue = Issue(
            Source(str(path), line),
            None,
            f"not valid UTF-8 ({e.reason} at byte {e.start}); reading stopped here",
        )
        return raw[:line_start].decode("utf-8-sig"), issue


def _read_jsonl(path: Path) -> tuple[list[RawRow], list[Issue]]:
    rows: list[RawRow] = []
    issues: list[Issue] = []
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        source = Source(str(path), number)
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            issues.append(Issue(source, None, f"not valid UTF-8 ({e.reason} at column {e.start + 1})"))
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            issues.append(Issue(source, None, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(value, dict):
            issues.append(Issue(source, None, f"expected a JSON object, found {_json_type(value)}"))
            continue
        rows.append(RawRow(value, source))
    return rows, issues


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def _expect(text: str, pos: int, chars: str, what: str) -> str:
    if pos >= len(text) or text[pos] not in chars:
        raise json.JSONDecodeError(f"Expecting {what}", text, pos)
    return text[pos]


def _scan_array(text: str, pos: int) -> tuple[list[tuple[int, Any]], int]:
    """Elements of the JSON array starting at `pos`, each with the offset where it starts."""
    items: list[tuple[int, Any]] = []
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return items, pos + 1
    while True:
        pos = _skip(text, pos)
        value, end = _DECODER.raw_decode(text, pos)
        items.append((pos, value))
        pos = _skip(text, end)
        if _expect(text, pos, ",]", "',' delimiter") == "]":
            return items, pos + 1
        pos += 1


def _scan_object_lists(text: str, pos: int) -> tuple[dict[str, list[tuple[int, Any]]], list[str], int]:
    """The list-valued members of the JSON object at `pos` (with element offsets), and all its keys."""
    lists: dict[str, list[tuple[int, Any]]] = {}
    keys: list[str] = []
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return lists, keys, pos + 1
    while True:
        pos = _skip(text, pos)
        _expect(text, pos, '"', "property name enclosed in double quotes")
        key, pos = _DECODER.raw_decode(text, pos)
        keys.append(key)
        pos = _skip(text, pos)
        _expect(text, pos, ":", "':' delimiter")
        pos = _skip(text, pos + 1)
        if text.startswith("[", pos):
            lists[key], pos = _scan_array(text, pos)
        else:
            _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if _expect(text, pos, ",}", "',' delimiter") == "}":
            return lists, keys, pos + 1
        pos += 1


def _read_json(path: Path) -> tuple[list[RawRow], list[Issue]]:
    text, bad = _decode(path, path.read_bytes())
    if bad is not None:
        return [], [bad]
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    pos = _skip(text, 0)
    if pos == len(text):
        raise DataError(f"{path}: the file is empty")
    try:
        if text[pos] == "[":
            items, end = _scan_array(text, pos)
        elif text[pos] == "{":
            lists, keys, end = _scan_object_lists(text, pos)
            if len(lists) != 1:
                raise DataError(
                    f"{path}: a .json file must hold an array of objects, or an object with a single "
                    f'list value such as {{"data": [...]}}; found keys {keys}'
                )
            items = next(iter(lists.values()))
        else:
            raise DataError(
                f"{path}: a .json file must hold an array of objects; use .jsonl for one object per line"
            )
        if _skip(text, end) != len(text):
            raise json.JSONDecodeError("Extra data after the top-level value", text, _skip(text, end))
    except json.JSONDecodeError as e:
        return [], [Issue(Source(str(path), e.lineno), None, f"invalid JSON: {e.msg} (column {e.colno})")]
    rows: list[RawRow] = []
    issues: list[Issue] = []
    for offset, value in items:
        source = Source(str(path), line_of(offset))
        if isinstance(value, dict):
            rows.append(RawRow(value, source))
        else:
            issues.append(Issue(source, None, f"expected a JSON object, found {_json_type(value)}"))
    return rows, issues


def _read_csv(path: Path) -> tuple[list[RawRow], list[Issue]]:
    text, bad = _decode(path, path.read_bytes())
    issues = [bad] if bad is not None else []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        if bad is not None:
            return [], issues
        raise DataError(f"{path}: the file is empty (a .csv file needs a header row)") from None
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}:1: the header repeats column names {duplicated}")
    rows: list[RawRow] = []
    start = reader.line_num + 1
    try:
        for record in reader:
            source = Source(str(path), start)
            start = reader.line_num + 1
            if not record:
                continue
            if len(record) != len(header):
                issues.append(
                    Issue(
                        source, None, f"expected {len(header)} fields (as in the header), found {len(record)}"
                    )
                )
                continue
            rows.append(RawRow(dict(zip(header, record, strict=True)), source))
    except csv.Error as e:
        issues.append(Issue(Source(str(path), start), None, f"invalid CSV: {e}; reading stopped here"))
    return rows, issues


def _read_parquet(path: Path) -> tuple[list[RawRow], list[Issue]]:
    import pyarrow.parquet as pq  # imported here: only parquet users pay for it

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    return [RawRow(row, Source(str(path), i + 1)) for i, row in enumerate(table.to_pylist())], []


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
