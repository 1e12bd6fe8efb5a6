"""What a model's reply means: the task kind a set of replies describes, the label a reply names,
the JSON a reply holds.

The base of every layer that reads replies: evaluation scores them, the drift monitor profiles
them, output contracts are inferred from them, and each must read a reply the same way.

Task kinds (inferred from the data rather than configured; a config may still override):

- `json`: (nearly) every completion parses as a JSON object or array;
- `classification`: completions are short and drawn from a small set that repeats;
- `text`: anything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

TaskKind = Literal["classification", "json", "text"]

MAX_LABELS = 200  # more distinct answers than this is generation, not classification
MAX_LABEL_WORDS = 6


def parses_as_json_container(text: str) -> bool:
    text = text.strip()
    if not text or text[0] not in "[{":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def detect_task(completions: Sequence[str]) -> TaskKind:
    values = [c.strip() for c in completions if c is not None]
    if not values:
        return "text"
    if sum(parses_as_json_container(v) for v in values) >= 0.95 * len(values):
        return "json"
    distinct = set(values)
    short = all(len(v.split()) <= MAX_LABEL_WORDS and "\n" not in v for v in distinct)
    # A label set repeats: on average each label is used at least twice.
    if short and len(distinct) <= MAX_LABELS and len(distinct) <= max(1, len(values) // 2):
        return "classification"
    return "text"


# --- labels ---------------------------------------------------------------------------------------

_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def loosen(text: str) -> str:
    """Strip whitespace, one trailing period and surrounding quotes, in any nesting order.

    Chat models often answer `"card_arrival".` or `'card_arrival'` for the label card_arrival;
    that is formatting, not a wrong answer.
    """
    previous = None
    text = text.strip()
    while text != previous:
        previous = text
        if text.endswith("."):
            text = text[:-1].rstrip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    return text


class LabelMatcher:
    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = set(labels)
        folded: dict[str, list[str]] = {}
        for label in labels:
            folded.setdefault(label.casefold(), []).append(label)
        # A case-insensitive match only counts when it is unambiguous ("Yes" vs "yes" both labels).
        self.folded = {k: v[0] for k, v in folded.items() if len(v) == 1}

    def __call__(self, prediction: str) -> str | None:
        stripped = prediction.strip()
        if stripped in self.labels:
            return stripped
        loose = loosen(stripped)
        if loose in self.labels:
            return loose
        return self.folded.get(loose.casefold())


def match_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The label a prediction names, or None when it names none (an invalid prediction).

    Rules, in order: the prediction stripped of whitespace equals a label; then the same after
    removing surrounding quotes and a trailing period; then that text matches exactly one
    label case-insensitively. Anything else (including a label followed by an explanation)
    is invalid: a contender must produce the label, and post-processing belongs to the
    contender, not to the metric.
    """
    return LabelMatcher([label.strip() for label in labels])(prediction)


# --- JSON -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)


def parse_json_output(text: str) -> tuple[bool, Any]:
    """(parsed?, value) for a model output; a ```json fenced block is unwrapped first.

    Fences are tolerated because chat models add them by habit and every JSON consumer
    strips them; any other surrounding prose makes the output unparseable.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return True, json.loads(stripped)
    except (ValueError, RecursionError):
        return False, None


def normalise_json(value: Any) -> Any:
    # 1 and 1.0 are the same JSON number; True and 1 are not (bool is checked first).
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): normalise_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_json(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(normalise_json(value), sort_keys=True, ensure_ascii=False)


def flatten_json(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Leaf fields of a JSON value: {path: canonical JSON of the value}.

    Nested objects are walked; lists, scalars and empty objects are leaves compared as whole
    values (list items have no stable identity to align without a schema). Paths are tuples
    so that a key containing a dot cannot collide with nesting; `_dotted` renders them.
    A non-object top-level value is one field at the root path ().
    """
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], str] = {}
        for key, child in value.items():
            out.update(flatten_json(child, (*prefix, str(key))))
        return out
    return {prefix: canonical_json(value)}


def dotted_path(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "$"
