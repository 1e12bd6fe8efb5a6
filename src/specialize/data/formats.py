"""Turn raw rows of any supported shape into `Example`s, with an issue for every bad field.

Supported shapes (detected from the keys most rows have):

- `messages`:          {"messages": [{"role": ..., "content": ...}, ...]}; the last message is the
                       assistant reply to learn. Our own split files ({"messages", "completion", ...})
                       read back through this format too.
- `instruction`:       {"instruction", "input"?, "output"} (Alpaca).
- `prompt_completion`: {"prompt", "completion"}.
- `input_output`:      {"input", "output"}.
- `fields`:            any columns, named by `FormatSpec.input_field` / `output_field`.

An output may be a JSON object or array rather than a string: JSON-extraction datasets store the
target object directly, so it is serialised with `json.dumps(ensure_ascii=False)` (key order kept)
and becomes the completion text. Other non-string values are errors, except in the `fields`
format, where numbers and booleans (label ids in parquet or JSON) are written as JSON scalars.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from specialize.data.example import Example, Source
from specialize.data.load import Issue, RawRow, cap_issues, read_rows
from specialize.errors import DataError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

# Format name -> (fields forming the user text, optional ones among them, output field).
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "instruction": (("instruction", "input"), ("input",), "output"),
    "prompt_completion": (("prompt",), (), "completion"),
    "input_output": (("input",), (), "output"),
}
# The key that marks each format, in priority order (an Alpaca row also has "input").
_MARKERS = (
    ("messages", "messages"),
    ("instruction", "instruction"),
    ("prompt_completion", "prompt"),
    ("input_output", "input"),
)
FORMATS = ("messages", "instruction", "prompt_completion", "input_output", "fields")
_SHAPES = (
    'messages {"messages": [{"role", "content"}, ...]}; instruction {"instruction", "input"?, "output"}; '
    'prompt_completion {"prompt", "completion"}; input_output {"input", "output"}'
)


class FormatSpec(BaseModel):
    """How to read the user's rows when the keys alone do not say (CLI: --input-field etc.)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_field: str | None = None
    output_field: str | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None  # str.format over the row's fields: "Classify: {text}"


def detect_format(rows: Sequence[RawRow], spec: FormatSpec | None = None) -> str:
    """The format most rows follow; explicit field names always win."""
    spec = spec or FormatSpec()
    if spec.input_field or spec.output_field:
        return "fields"
    votes: Counter[str] = Counter()
    for row in rows:
        for name, key in _MARKERS:
            if key in row.data:
                votes[name] += 1
                break
    if votes:
        best = max(votes, key=lambda name: (votes[name], -FORMATS.index(name)))
        if 2 * votes[best] >= len(rows):
            return best
    keys: Counter[str] = Counter(key for row in rows for key in row.data)
    where = rows[0].source.file if rows else "the data"
    found = ", ".join(f"{key} ({n} rows)" for key, n in keys.most_common(12)) or "none"
    hint = "--input-field TEXT_COLUMN --output-field LABEL_COLUMN"
    if len(keys) >= 2:
        first, second = (key for key, _ in keys.most_common(2))
        hint = f"--input-field {first} --output-field {second}"
    raise DataError(
        f"{where}: cannot tell the data format from the keys found: {found}. Supported formats: {_SHAPES}. "
        f"For other columns, name them, e.g. {hint}."
    )


def load_examples(
    path: str | Path, spec: FormatSpec | None = None, require_completion: bool = True
) -> tuple[list[Example], list[Issue], str]:
    """Read and normalise one file: (examples, every issue found, format name)."""
    rows, issues = read_rows(path)
    examples, more, fmt = normalize(rows, spec, require_completion=require_completion)
    return examples, issues + more, fmt


def normalize(
    rows: Sequence[RawRow], spec: FormatSpec | None = None, *, require_completion: bool = True
) -> tuple[list[Example], list[Issue], str]:
    """Examples from the rows that are valid, and an issue for each problem in the others.

    `require_completion=False` reads unlabelled rows (live traffic): a missing or empty output
    gives `completion=None` instead of an error.
    """
    spec = spec or FormatSpec()
    if not rows:
        return [], [], "fields" if spec.input_field or spec.output_field else ""
    fmt = detect_format(rows, spec)
    template_keys = _template_fields(spec.prompt_template)
    issues: list[Issue] = []
    if fmt == "fields":
        if not spec.input_field and spec.prompt_template is None:
            raise DataError("--output-field needs --input-field (or a prompt template) to build the request")
        if not spec.output_field and require_completion:
            raise DataError("--input-field needs --output-field: which column holds the answer to learn?")
    if fmt == "messages" and spec.prompt_template is not None:
        issues.append(
            Issue(
                None,
                None,
                f"{rows[0].source.file}: the prompt template is not used with the messages format",
                "warning",
            )
        )
    examples: list[Example] = []
    for row in rows:
        example = _normalize_row(row, fmt, spec, template_keys, require_completion, issues)
        if example is not None:
            examples.append(example)
    log.debug("normalised %d of %d rows as %s", len(examples), len(rows), fmt)
    return examples, cap_issues(issues), fmt


def _template_fields(template: str | None) -> set[str]:
    """The row fields a prompt template uses; a malformed template fails once, before any row."""
    if template is None:
        return set()
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise DataError(f"prompt template {template!r} is malformed: {e}") from e
    roots = {name.split(".")[0].split("[")[0] for name in names}
    if "" in roots or any(root.isdigit() for root in roots):
        raise DataError(f"prompt template {template!r}: placeholders must name fields, as in {{text}}")
    return roots


def _normalize_row(
    row: RawRow,
    fmt: str,
    spec: FormatSpec,
    template_keys: set[str],
    require_completion: bool,
    issues: list[Issue],
) -> Example | None:
    data, source = row.data, row.source
    n_issues = len(issues)
    if fmt == "messages":
        parsed = _parse_messages(data, source, require_completion, issues)
        consumed = {"messages", "completion"}
        if parsed is None:
            return None
        messages, completion = parsed
    else:
        if fmt == "fields":
            inputs = (spec.input_field,) if spec.input_field else ()
            optional: tuple[str, ...] = ()
            output = spec.output_field
        else:
            inputs, optional, output = _FIELDS[fmt]
        consumed = {*inputs, *template_keys, *([output] if output else [])}
        lenient = fmt == "fields"
        if spec.prompt_template is not None:
            user = _render_template(spec.prompt_template, data, source, issues)
        else:
            user = _user_text(data, inputs, optional, source, issues, lenient)
        completion = _output(data, output, source, issues, lenient, require_completion) if output else None
        if any(issue.severity == "error" for issue in issues[n_issues:]):
            return None
        messages = [{"role": "user", "content": user or ""}]
    if spec.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": spec.system_prompt})
    meta = {key: value for key, value in data.items() if key not in consumed}
    if fmt == "messages" and isinstance(meta.get("meta"), dict) and set(meta) <= {"meta", "source"}:
        meta = dict(meta["meta"])  # our own split file read back: keep its meta, not a nested copy
    return Example(messages=messages, completion=completion, source=source, meta=meta)


def _as_text(value: Any, *, structured: bool, lenient: bool) -> str | None:
    """A field value as text, or None when its type is not allowed there."""
    if isinstance(value, str):
        return value
    if structured and isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if lenient and isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def _user_text(
    data: dict[str, Any],
    keys: Sequence[str],
    optional: Sequence[str],
    source: Source,
    issues: list[Issue],
    lenient: bool,
) -> str | None:
    """The request: the required fields (non-empty strings), then any non-empty optional ones."""
    parts: list[str] = []
    for key in keys:
        value = data.get(key)
        if value is None:
            if key not in optional:
                issues.append(Issue(source, key, "missing field" if key not in data else "is null"))
            continue
        text = _as_text(value, structured=False, lenient=lenient)
        if text is None:
            issues.append(Issue(source, key, f"expected a string, found {_type_name(value)}"))
        elif text.strip():
            parts.append(text)
        elif key not in optional:
            issues.append(Issue(source, key, "is empty"))
    return "\n\n".join(parts) if parts else None


def _render_template(template: str, data: dict[str, Any], source: Source, issues: list[Issue]) -> str | None:
    try:
        text = template.format(**data)
    except KeyError as e:
        issues.append(Issue(source, str(e.args[0]), "missing field (used by the prompt template)"))
        return None
    except (IndexError, AttributeError, TypeError, ValueError) as e:
        issues.append(Issue(source, None, f"prompt template cannot be filled: {e}"))
        return None
    if not text.strip():
        issues.append(Issue(source, None, "the prompt template gives an empty request"))
        return None
    return text


def _output(
    data: dict[str, Any], key: str, source: Source, issues: list[Issue], lenient: bool, required: bool
) -> str | None:
    """The completion; None when it is absent and not required (unlabelled rows)."""
    value = data.get(key)
    if value is None:
        if required:
            issues.append(Issue(source, key, "missing field" if key not in data else "is null"))
        return None
    text = _as_text(value, structured=True, lenient=lenient)
    if text is None:
        issues.append(Issue(source, key, f"expected a string (or a JSON object), found {_type_name(value)}"))
        return None
    if not text.strip():
        if not required:
            return None  # an empty cell is how a csv says "no label"
        issues.append(Issue(source, key, "empty completion", "warning"))
    return text


def _parse_messages(
    data: dict[str, Any], source: Source, require_completion: bool, issues: list[Issue]
) -> tuple[list[dict[str, str]], str | None] | None:
    """(prompt messages, completion) from a chat row; None after recording why it is invalid."""
    raw = data.get("messages")
    if raw is None:
        issues.append(Issue(source, "messages", "missing field" if "messages" not in data else "is null"))
        return None
    if not isinstance(raw, list) or not raw:
        found = "an empty list" if isinstance(raw, list) else _type_name(raw)
        issues.append(
            Issue(source, "messages", f"expected a list of {{role, content}} objects, found {found}")
        )
        return None
    n_issues = len(issues)
    messages: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            issues.append(
                Issue(source, where, f"expected an object with role and content, found {_type_name(message)}")
            )
            continue
        role = message.get("role")
        if role not in ROLES:
            issues.append(
                Issue(source, f"{where}.role", f"unknown role {role!r}; expected system, user or assistant")
            )
        elif role == "system" and i > 0:
            issues.append(Issue(source, f"{where}.role", "a system message may only come first"))
        content = message.get("content")
        final_reply = i == len(raw) - 1 and role == "assistant"
        text = None if content is None else _as_text(content, structured=final_reply, lenient=False)
        if content is None:
            issues.append(
                Issue(source, f"{where}.content", "missing field" if "content" not in message else "is null")
            )
        elif text is None:
            issues.append(
                Issue(source, f"{where}.content", f"expected a string, found {_type_name(content)}")
            )
        elif role == "user" and not text.strip():
            issues.append(Issue(source, f"{where}.content", "is empty"))
        messages.append({"role": str(role), "content": text or ""})
    if len(issues) > n_issues:
        return None
    completion: str | None = None
    if messages[-1]["role"] == "assistant":
        completion = messages.pop()["content"]
        if not completion.strip():
            if require_completion:
                issues.append(
                    Issue(source, f"messages[{len(raw) - 1}].content", "empty completion", "warning")
                )
            else:
                completion = None
    elif "completion" in data:
        completion = _output(data, "completion", source, issues, False, require_completion)
    elif require_completion:
        issues.append(
            Issue(
                source,
                f"messages[{len(raw) - 1}].role",
                "the last message must be the assistant reply to learn",
            )
        )
        return None
    if not messages or messages[-1]["role"] != "user":
        where = f"messages[{len(messages) - 1}].role" if messages else "messages"
        issues.append(Issue(source, where, "the assistant reply must follow a user message"))
        return None
    if any(issue.severity == "error" for issue in issues[n_issues:]):
        return None
    return messages, completion
