"""`eval/human.json`: what blind human review found, next to the automatic evaluation.

Built by `specialize.review.summary` from the judgments store and written through
`RunDir.write_human_eval()`; the studio's run page and `specialize review summary` read it back.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and (math.isnan(value) or math.isinf(value)) else value


class PairWinRate(BaseModel):
    """One pair of contenders: how often reviewers preferred `first` over `second`.

    The win rate counts decisive judgments only (one side preferred); ties and "both bad" are
    counted beside it, since folding them in as half-wins would hide that reviewers saw no winner.
    """

    model_config = ConfigDict(extra="allow")

    first: str
    second: str
    judgments: int = 0
    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0
    both_bad: int = 0
    win_rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    _no_nan = field_validator("win_rate", "ci_low", "ci_high", mode="before")(_finite)

    @property
    def decisive(self) -> int:
        return self.first_wins + self.second_wins


class Agreement(BaseModel):
    """Cohen's kappa of two reviewers over the items both judged (same row, same pair)."""

    model_config = ConfigDict(extra="allow")

    reviewers: tuple[str, str]
    shared_items: int = 0
    kappa: float | None = None
    raw_agreement: float | None = None

    _no_nan = field_validator("kappa", "raw_agreement", mode="before")(_finite)


class HumanEval(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str
    judgments: int = 0
    reviewers: list[str] = Field(default_factory=list)
    pairs: list[PairWinRate] = Field(default_factory=list)
    agreement: list[Agreement] = Field(default_factory=list)
    created: str = ""
