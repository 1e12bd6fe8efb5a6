"""The one normal form every input format is turned into.

Readers and format detectors produce `Example`s; everything downstream (checks, splits,
tokenization, training, evaluation, serving) only ever sees this shape, so a new input format is
a new normaliser and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """Where a row came from, so every error and warning can point at it."""

    file: str
    line: int  # 1-based; for csv the physical line of the record, for json arrays the element's line

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Example:
    """One training or test example.

    `messages` is the conversation the model sees (optional system message, then user/assistant
    turns, ending with a user turn); `completion` is the assistant reply to learn or to predict,
    `None` for unlabelled rows (live traffic). Multi-turn chats keep earlier assistant turns as
    context; only the final assistant turn is supervised.
    """

    messages: list[dict[str, str]]
    completion: str | None
    source: Source
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        """The last user message: the request itself, used for duplicate and leakage checks."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "completion": self.completion,
            "source": str(self.source),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        file, _, line = str(data.get("source", "?:0")).rpartition(":")
        return cls(
            messages=[dict(m) for m in data["messages"]],
            completion=data.get("completion"),
            source=Source(file or "?", int(line) if line.isdigit() else 0),
            meta=dict(data.get("meta") or {}),
        )
