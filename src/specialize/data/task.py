"""Which kind of task a set of reference completions describes.

The kind decides the metrics, the drift statistics and the output contract, so it is inferred
from the data rather than configured (a config may still override it):

- `json`: (nearly) every completion parses as a JSON object or array;
- `classification`: completions are short and drawn from a small set that repeats;
- `text`: anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

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
