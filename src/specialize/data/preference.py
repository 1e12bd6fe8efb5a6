"""Preference data: pairs (`chosen` over `rejected`, for DPO) and unpaired feedback (a thumbs up or
down on one reply, for KTO), read, validated and checked like supervised examples.

Shapes (detected from the keys most rows have):

- pairs, plain:          {"prompt": str, "chosen": str, "rejected": str}
- pairs, chat:           {"messages": [...], "chosen": {role, content} | str, "rejected": ...}
- pairs, TRL's conversational shape: "prompt" a message list, "chosen"/"rejected" lists of one
                         assistant message; or no prompt at all, "chosen"/"rejected" whole
                         conversations sharing the prompt turns (TRL's implicit prompt)
- unpaired (KTO):        {"prompt": str | [...], "completion": str | [...], "label": true | false}
                         ("messages" may stand for "prompt"; in csv, label is true/false/1/0/yes/no)

Every row becomes the normal form `Example` (prompt `messages`, `completion` = the chosen or rated
reply) with the rest under `meta["preference"]`, so splitting, split files, the output contract
and evaluation with the chosen reply as reference work exactly as for supervised runs; a typed
`PreferencePair` / `RatedReply` is read back from such an example with `preference_row`.

Over 500 lines because reading each preference shape and checking it share the typed rows and
their Source; splitting parsing from checks is the next step if it grows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from specialize.data.checks import (
    DataReport,
    PreferenceStats,
    SourceList,
    _contract_summary,
    _lengths,
    _listed,
    normalize_text,
)
from specialize.data.example import Example, Source
from specialize.data.formats import FormatSpec
from specialize.data.load import Issue, RawRow, cap_issues, read_rows
from specialize.errors import DataError
from specialize.models.chat import render_prompt, render_reply
from specialize.outputs import detect_task

log = logging.getLogger(__name__)

PreferenceFormat = Literal["pairs", "unpaired"]
META_KEY = "preference"  # where an Example keeps the rejected reply or the rating
ROLES = ("system", "user", "assistant")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_SHAPES = (
    'pairs {"prompt", "chosen", "rejected"} (prompt a string or a message list, or "messages"); '
    'unpaired feedback {"prompt", "completion", "label": true|false}'
)


@dataclass
class PreferencePair:
    """One judgment "this reply, not that one" on a prompt (a DPO row)."""

    prompt: list[dict[str, str]]  # the conversation, ending with the user turn both replies answer
    chosen: str
    rejected: str
    source: Source
    meta: dict[str, Any] = field(default_factory=dict)

    def to_example(self) -> Example:
        meta = {**self.meta, META_KEY: {"rejected": self.rejected}}
        return Example(messages=self.prompt, completion=self.chosen, source=self.source, meta=meta)


@dataclass
class RatedReply:
    """One reply with a thumbs up (`desirable`) or down (a KTO row)."""

    prompt: list[dict[str, str]]
    completion: str
    desirable: bool
    source: Source
    meta: dict[str, Any] = field(default_factory=dict)

    def to_example(self) -> Example:
        meta = {**self.meta, META_KEY: {"label": self.desirable}}
        return Example(messages=self.prompt, completion=self.completion, source=self.source, meta=meta)


PreferenceRow = PreferencePair | RatedReply


def preference_row(example: Example) -> PreferenceRow | None:
    """The pair or rated reply an Example holds (split files of preference runs); None for SFT rows."""
    info = example.meta.get(META_KEY)
    if not isinstance(info, dict) or example.completion is None:
        return None
    meta = {k: v for k, v in example.meta.items() if k != META_KEY}
    if "rejected" in info:
        return PreferencePair(
            example.messages, example.completion, str(info["rejected"]), example.source, meta
        )
    if "label" in info:
        return RatedReply(example.messages, example.completion, bool(info["label"]), example.source, meta)
    return None


def reference_rows(examples: Sequence[Example]) -> list[Example]:
    """The rows whose completion is a reply worth matching: every pair's chosen side, every
    desirable rated reply (an undesirable one is no reference), and every supervised row."""
    return [ex for ex in examples if not isinstance(row := preference_row(ex), RatedReply) or row.desirable]


def unpair(rows: Sequence[PreferenceRow]) -> list[RatedReply]:
    """Pairs as KTO reads them: the chosen reply desirable, the rejected one undesirable."""
    out: list[RatedReply] = []
    for row in rows:
        if isinstance(row, PreferencePair):
            out.append(RatedReply(row.prompt, row.chosen, True, row.source, row.meta))
            out.append(RatedReply(row.prompt, row.rejected, False, row.source, row.meta))
        else:
            out.append(row)
    return out


def preference_format(rows: Sequence[RawRow]) -> PreferenceFormat | None:
    """`pairs` or `unpaired` when most rows are preference rows, else None (supervised data).

    A row with `chosen`/`rejected` is a pair. A row with `label` is unpaired feedback only when it
    also has `completion` and its label reads as a boolean: a supervised file with a `label` column
    of class names is still supervised data.
    """
    votes: Counter[PreferenceFormat] = Counter()
    for row in rows:
        if "chosen" in row.data or "rejected" in row.data:
            votes["pairs"] += 1
        elif "completion" in row.data and "label" in row.data and _as_bool(row.data["label"]) is not None:
            votes["unpaired"] += 1
    if not votes:
        return None
    best, n = votes.most_common(1)[0]
    return best if 2 * n >= len(rows) else None


def normalize_preferences(
    rows: Sequence[RawRow], fmt: PreferenceFormat, spec: FormatSpec | None = None
) -> tuple[list[PreferenceRow], list[Issue]]:
    """Typed rows from the valid raw rows, and an issue for every problem in the others."""
    system_prompt = spec.system_prompt if spec else None
    issues: list[Issue] = []
    out: list[PreferenceRow] = []
    for raw in rows:
        row = _pair(raw, issues) if fmt == "pairs" else _rated(raw, issues)
        if row is None:
            continue
        if system_prompt and row.prompt[0]["role"] != "system":
            row.prompt.insert(0, {"role": "system", "content": system_prompt})
        out.append(row)
    return out, cap_issues(issues)


def load_preferences(
    path: str | Path, spec: FormatSpec | None = None
) -> tuple[list[PreferenceRow], list[Issue], PreferenceFormat]:
    """Read one preference file; a DataError when it holds no preference rows."""
    raw, issues = read_rows(path)
    fmt = preference_format(raw)
    if fmt is None:
        keys = Counter(key for row in raw for key in row.data)
        found = ", ".join(f"{k} ({n} rows)" for k, n in keys.most_common(8)) or "none"
        raise DataError(f"{path}: not preference data (keys found: {found}). Supported: {_SHAPES}")
    rows, more = normalize_preferences(raw, fmt, spec)
    return rows, issues + more, fmt


# ---------------------------------------------------------------------------------------- parsing


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), type(value).__name__)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().casefold()
        return True if text in _TRUE else False if text in _FALSE else None
    return None


def _messages(value: Any, where: str, source: Source, issues: list[Issue]) -> list[dict[str, str]] | None:
    """A list of {role, content} messages, each checked; None after recording what is wrong."""
    if not isinstance(value, list) or not value:
        found = "an empty list" if isinstance(value, list) else _type_name(value)
        issues.append(Issue(source, where, f"expected a list of {{role, content}} messages, found {found}"))
        return None
    n = len(issues)
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            issues.append(
                Issue(source, at, f"expected a {{role, content}} message, found {_type_name(message)}")
            )
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            issues.append(
                Issue(source, f"{at}.role", f"unknown role {role!r}; expected system, user or assistant")
            )
        elif role == "system" and i > 0:
            issues.append(Issue(source, f"{at}.role", "a system message may only come first"))
        if not isinstance(content, str):
            what = (
                "missing field"
                if "content" not in message
                else f"expected a string, found {_type_name(content)}"
            )
            issues.append(Issue(source, f"{at}.content", what))
        elif role == "user" and not content.strip():
            issues.append(Issue(source, f"{at}.content", "is empty"))
        else:
            out.append({"role": str(role), "content": content})
    return out if len(issues) == n else None


def _prompt(data: dict[str, Any], source: Source, issues: list[Issue]) -> list[dict[str, str]] | None:
    """The prompt turns from `prompt` (text or messages) or `messages`; must end with a user turn."""
    key = "prompt" if "prompt" in data else "messages" if "messages" in data else None
    if key is None:
        issues.append(Issue(source, "prompt", "missing field (the request both replies answer)"))
        return None
    value = data[key]
    if value is None:
        issues.append(Issue(source, key, "is null"))
        return None
    if isinstance(value, str):
        if not value.strip():
            issues.append(Issue(source, key, "is empty"))
            return None
        return [{"role": "user", "content": value}]
    messages = _messages(value, key, source, issues)
    if messages is None:
        return None
    if messages[-1]["role"] != "user":
        issues.append(
            Issue(
                source,
                f"{key}[{len(messages) - 1}].role",
                "the prompt must end with the user turn the replies answer",
            )
        )
        return None
    return messages


def _reply(data: dict[str, Any], key: str, source: Source, issues: list[Issue]) -> str | None:
    """One side: a string, an assistant message, or a list of one assistant message (TRL)."""
    if key not in data:
        issues.append(Issue(source, key, "missing field"))
        return None
    value = data[key]
    if value is None:
        issues.append(Issue(source, key, "is null"))
        return None
    if isinstance(value, list):
        if len(value) != 1:
            issues.append(Issue(source, key, f"expected one assistant message, found a list of {len(value)}"))
            return None
        value, key = value[0], f"{key}[0]"
    if isinstance(value, dict):
        role = value.get("role", "assistant")
        if role != "assistant":
            issues.append(Issue(source, f"{key}.role", f"expected role 'assistant', found {role!r}"))
            return None
        if "content" not in value:
            issues.append(Issue(source, f"{key}.content", "missing field"))
            return None
        value, key = value["content"], f"{key}.content"
    if not isinstance(value, str):
        issues.append(
            Issue(source, key, f"expected a string or an assistant message, found {_type_name(value)}")
        )
        return None
    if not value.strip():
        issues.append(Issue(source, key, "is empty"))
        return None
    return value


def _implicit(
    data: dict[str, Any], source: Source, issues: list[Issue]
) -> tuple[list[dict[str, str]], str, str] | None:
    """TRL's implicit prompt: whole conversations as chosen and rejected, sharing the prompt turns."""
    chosen = _messages(data["chosen"], "chosen", source, issues)
    rejected = _messages(data["rejected"], "rejected", source, issues)
    if chosen is None or rejected is None:
        return None
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            issues.append(
                Issue(
                    source,
                    side,
                    "without a prompt field, each side must be a conversation ending in the assistant reply",
                )
            )
            return None
    if chosen[:-1] != rejected[:-1]:
        issues.append(Issue(source, "rejected", "its conversation before the reply differs from chosen's"))
        return None
    prompt = chosen[:-1]
    if prompt[-1]["role"] != "user":
        issues.append(Issue(source, "chosen", "the assistant reply must follow a user message"))
        return None
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages[-1]["content"].strip():
            issues.append(Issue(source, f"{side}[{len(messages) - 1}].content", "is empty"))
            return None
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def _pair(raw: RawRow, issues: list[Issue]) -> PreferencePair | None:
    data, source = raw.data, raw.source
    n = len(issues)
    implicit = (
        "prompt" not in data
        and "messages" not in data
        and isinstance(data.get("chosen"), list)
        and isinstance(data.get("rejected"), list)
        and max(len(data["chosen"]), len(data["rejected"])) > 1
    )
    if implicit:
        parsed = _implicit(data, source, issues)
        if parsed is None:
            return None
        prompt, chosen, rejected = parsed
    else:
        prompt_or_none = _prompt(data, source, issues)
        chosen_or_none = _reply(data, "chosen", source, issues)
        rejected_or_none = _reply(data, "rejected", source, issues)
        if len(issues) > n or prompt_or_none is None or chosen_or_none is None or rejected_or_none is None:
            return None
        prompt, chosen, rejected = prompt_or_none, chosen_or_none, rejected_or_none
    if chosen.strip() == rejected.strip():
        issues.append(Issue(source, "rejected", "identical to chosen: the pair teaches nothing"))
        return None
    meta = {k: v for k, v in data.items() if k not in ("prompt", "messages", "chosen", "rejected")}
    return PreferencePair(prompt, chosen, rejected, source, meta)


def _rated(raw: RawRow, issues: list[Issue]) -> RatedReply | None:
    data, source = raw.data, raw.source
    n = len(issues)
    prompt = _prompt(data, source, issues)
    completion = _reply(data, "completion", source, issues)
    label = data.get("label")
    desirable = _as_bool(label)
    if "label" not in data:
        issues.append(Issue(source, "label", "missing field (true for a good reply, false for a bad one)"))
    elif desirable is None:
        found = repr(label) if isinstance(label, str) else _type_name(label)
        issues.append(Issue(source, "label", f"expected true or false, found {found}"))
    if len(issues) > n or prompt is None or completion is None or desirable is None:
        return None
    meta = {k: v for k, v in data.items() if k not in ("prompt", "messages", "completion", "label")}
    return RatedReply(prompt, completion, desirable, source, meta)


# ----------------------------------------------------------------------------------------- checks


def _prompt_key(row: PreferenceRow) -> str:
    """The request a row answers, normalised as the supervised checks and the split do."""
    for message in reversed(row.prompt):
        if message["role"] == "user":
            return normalize_text(message["content"])
    return ""


def check_preferences(
    rows: Sequence[PreferenceRow],
    *,
    fmt: PreferenceFormat,
    test: Sequence[PreferenceRow] | None = None,
    issues: Sequence[Issue] = (),
    tokenizer: Any = None,
    max_seq_len: int = 512,
    files: Sequence[str] = (),
) -> DataReport:
    """The data report of preference rows: errors, duplicates, contradictions, leakage, lengths
    against `max_seq_len` (with the run's chat template when a tokenizer is given), statistics."""
    found: list[Issue] = list(issues)
    good = [
        r.chosen if isinstance(r, PreferencePair) else r.completion
        for r in rows
        if not isinstance(r, RatedReply) or r.desirable
    ]
    task = detect_task(good) if good else "text"
    report = DataReport(
        files=list(files), format=f"preference_{fmt}", task=task, rows=len(rows), test_rows=len(test or [])
    )
    _duplicates(rows, found)
    if test is not None:
        report.leakage = _leakage(rows, test, found)
    if good:
        report.contract = _contract_summary(good, task, found)
    stats = PreferenceStats(
        kind=fmt,
        pairs=sum(isinstance(r, PreferencePair) for r in rows),
        rated=sum(isinstance(r, RatedReply) for r in rows),
        desirable=sum(isinstance(r, RatedReply) and r.desirable for r in rows),
        undesirable=sum(isinstance(r, RatedReply) and not r.desirable for r in rows),
        unique_prompts=len({_prompt_key(r) for r in rows}),
    )
    stats.unique_prompt_share = stats.unique_prompts / len(rows) if rows else None
    if fmt == "unpaired" and rows and (stats.desirable == 0 or stats.undesirable == 0):
        kind = "desirable" if stats.undesirable == 0 else "undesirable"
        found.append(
            Issue(
                None,
                "label",
                f"every reply is {kind}: KTO learns from the contrast of good and bad replies",
                "warning",
            )
        )
    if rows:
        _lengths_and_stats(rows, stats, tokenizer, max_seq_len, found)
    report.preference = stats
    report.errors = [str(i) for i in found if i.severity == "error"]
    report.warnings = [str(i) for i in found if i.severity == "warning"]
    report.n_errors = sum(i.count for i in found if i.severity == "error")
    report.n_warnings = sum(i.count for i in found if i.severity == "warning")
    log.info(
        "checked %d preference rows: %d errors, %d warnings", len(rows), report.n_errors, report.n_warnings
    )
    return report


def _duplicates(rows: Sequence[PreferenceRow], issues: list[Issue]) -> None:
    """The same judgment twice (weighs it double), and judgments that contradict each other."""
    first: dict[tuple[Any, ...], Source] = {}
    dupes: list[Issue] = []
    contradictions: list[Issue] = []
    for row in rows:
        key = _prompt_key(row)
        if isinstance(row, PreferencePair):
            this = (key, row.chosen.strip(), row.rejected.strip())
            flipped = (key, row.rejected.strip(), row.chosen.strip())
        else:
            this = (key, row.completion.strip(), row.desirable)
            flipped = (key, row.completion.strip(), not row.desirable)
        if this in first:
            dupes.append(
                Issue(row.source, None, f"duplicate of {first[this]} (same prompt and replies)", "warning")
            )
            continue
        if flipped in first:
            contradictions.append(
                Issue(
                    row.source,
                    None,
                    f"contradicts {first[flipped]} (the same replies, judged the other way)",
                    "warning",
                )
            )
        first[this] = row.source
    _listed(issues, dupes, "duplicate pairs")
    _listed(issues, contradictions, "contradicting pairs")


def _leakage(rows: Sequence[PreferenceRow], test: Sequence[PreferenceRow], issues: list[Issue]) -> SourceList:
    seen: dict[str, Source] = {}
    for row in rows:
        seen.setdefault(_prompt_key(row), row.source)
    leaked = [(row, seen[key]) for row in test if (key := _prompt_key(row)) in seen]
    _listed(
        issues,
        [
            Issue(row.source, "prompt", f"test prompt also in the training data ({where})", "warning")
            for row, where in leaked
        ],
        "leaked test prompts",
    )
    return SourceList(count=len(leaked), sources=[str(row.source) for row, _ in leaked[:20]])


def _lengths_and_stats(
    rows: Sequence[PreferenceRow],
    stats: PreferenceStats,
    tokenizer: Any,
    max_seq_len: int,
    issues: list[Issue],
) -> None:
    """Mean lengths (tokens under the chat template, else characters) and the rows too long."""
    sides: list[list[str]] = [[r.chosen if isinstance(r, PreferencePair) else r.completion for r in rows]]
    sides.append([r.rejected for r in rows if isinstance(r, PreferencePair)])
    if tokenizer is None:
        stats.unit = "characters"
        prompt = [sum(len(m["content"]) for m in r.prompt) for r in rows]
        lengths = [[len(text) for text in side] for side in sides]
    else:
        stats.unit = "tokens"
        prompt = _lengths(tokenizer, [render_prompt(tokenizer, r.prompt) for r in rows])
        pairs = [r for r in rows if isinstance(r, PreferencePair)]
        lengths = [
            _lengths(
                tokenizer,
                [render_reply(tokenizer, r.prompt, reply) for r, reply in zip(rows, sides[0], strict=True)],
            ),
            _lengths(tokenizer, [render_reply(tokenizer, r.prompt, r.rejected) for r in pairs]),
        ]
    stats.prompt_mean = float(np.mean(prompt))
    stats.chosen_mean = float(np.mean(lengths[0])) if lengths[0] else None
    stats.rejected_mean = float(np.mean(lengths[1])) if lengths[1] else None
    if tokenizer is None:
        return
    rejected = iter(lengths[1])
    too_long: list[Issue] = []
    for row, p, first in zip(rows, prompt, lengths[0], strict=True):
        longest = max(first, next(rejected)) if isinstance(row, PreferencePair) else first
        if p + longest > max_seq_len:
            too_long.append(
                Issue(
                    row.source,
                    None,
                    f"{p + longest} tokens (prompt + longer reply), more than max_seq_len {max_seq_len}: "
                    "the reply's end will be cut",
                    "warning",
                )
            )
    stats.too_long = SourceList(count=len(too_long), sources=[str(i.source) for i in too_long[:20]])
    _listed(issues, too_long, "rows to truncate")


def check_preference_rows(
    raw: Sequence[RawRow],
    read_issues: Sequence[Issue],
    fmt: PreferenceFormat,
    spec: FormatSpec | None = None,
    *,
    test_path: str | Path | None = None,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    files: Sequence[str] = (),
) -> DataReport:
    """`specialize check` on a file already read and recognised as preference data."""
    rows, issues = normalize_preferences(raw, fmt, spec)
    issues = [*read_issues, *issues]
    test = None
    if test_path is not None:
        test, test_issues, _ = load_preferences(test_path, spec)
        issues += test_issues
    return check_preferences(
        rows, fmt=fmt, test=test, issues=issues, tokenizer=tokenizer, max_seq_len=max_seq_len, files=files
    )
