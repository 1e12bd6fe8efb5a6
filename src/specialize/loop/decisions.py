"""The typed records of the loop: a challenger's comparison with the current version, and the
verdict of a retrain or of one `watch` cycle, as written to the report file and the registry.

The rule lives here too (`decide`), apart from the code that trains and measures, so that it can
be read in one place and tested on figures alone:

- on the old (frozen) test split the challenger must not be worse: the lower end of the 95%
  interval of challenger minus current stays above `-margin`;
- on the held-out slice of the new rows it must be better: that interval's lower end is above 0.

Both conditions, or the current version stays in service.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from specialize.atomic import atomic_write_text
from specialize.errors import RunError

Outcome = Literal["promoted", "kept"]
CycleOutcome = Literal["quiet", "warn", "alert", "waiting", "promoted", "kept", "no_traffic"]


class SetComparison(BaseModel):
    """Challenger vs current on one set of rows, paired item by item."""

    rows: int
    metric: str
    current: float
    current_low: float
    current_high: float
    challenger: float
    challenger_low: float
    challenger_high: float
    diff: float  # challenger - current
    diff_low: float
    diff_high: float
    p_value: float


class RowCounts(BaseModel):
    parent_train: int
    new_given: int
    duplicates: int
    corrected: int
    added: int  # new rows trained on
    holdout: int  # new rows held out for the comparison
    challenger_train: int


class StepSeconds(BaseModel):
    merge: float = 0.0
    train: float = 0.0
    compare: float = 0.0
    registry: float = 0.0


class RetrainDecision(BaseModel):
    """What `specialize retrain` decided and why; `<out>/decision.json`."""

    name: str
    outcome: Outcome
    reason: str
    current_version: int
    challenger_version: int
    challenger_run: str
    parent_run: str
    margin: float
    confidence: float = 0.95
    from_parent: bool = False  # the challenger started from the current version's adapter
    old_test: SetComparison
    new_rows: SetComparison
    rows: RowCounts
    new_rows_sha256: str = ""  # loop.rows.fingerprint of the new rows not already learnt
    seconds: StepSeconds = Field(default_factory=StepSeconds)
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def write(self, path: Path) -> Path:
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> RetrainDecision:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RunError(f"{path}: not a readable retrain decision ({exc})") from None


class WatchCycle(BaseModel):
    """One `watch` cycle: the drift verdict, the labelled rows waiting, and any retrain."""

    name: str
    outcome: CycleOutcome
    reason: str
    version: int
    drift_level: str
    drift_message: str
    requests: int
    new_rows: int = 0
    min_rows: int = 0
    decision: RetrainDecision | None = None
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def decide(old_test: SetComparison, new_rows: SetComparison, margin: float) -> tuple[Outcome, str]:
    """Promote only when not worse on the old test split and better on the new rows."""
    old = (
        f"old test split: {old_test.metric} {old_test.challenger:.3f} vs {old_test.current:.3f}, "
        f"difference {old_test.diff:+.3f} [{old_test.diff_low:+.3f}, {old_test.diff_high:+.3f}]"
    )
    new = (
        f"new rows: {new_rows.metric} {new_rows.challenger:.3f} vs {new_rows.current:.3f}, "
        f"difference {new_rows.diff:+.3f} [{new_rows.diff_low:+.3f}, {new_rows.diff_high:+.3f}]"
    )
    problems = []
    if not old_test.diff_low >= -margin:  # also catches nan
        problems.append(f"it may be worse on the old test split by more than {margin:.3f} ({old})")
    if not new_rows.diff_low > 0:
        problems.append(f"it is not significantly better on the new rows ({new})")
    if problems:
        return "kept", "kept the current version: " + "; and ".join(problems)
    return "promoted", f"promoted: not worse on the {old}; better on the {new}"
