"""The drift report: the verdict of every check on a window of live traffic (drift.json, the
webhook's body, the server's GET /v1/adapters/{name}/drift)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Level = Literal["ok", "warn", "alert", "skipped"]
Overall = Literal["ok", "warn", "alert", "not_enough_data"]


class CheckResult(BaseModel):
    """One hypothesis test. A check with a `note` was skipped (too little data), never run."""

    name: str
    test: str
    n_ref: int = 0
    n_live: int = 0
    statistic: float | None = None
    p_value: float | None = None
    effect: float | None = None
    effect_name: str = ""
    min_effect: float = 0.0
    warn_threshold: float | None = None  # p-value thresholds after the Bonferroni correction
    alert_threshold: float | None = None
    level: Level = "skipped"
    note: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)
    plot: dict[str, Any] = Field(default_factory=dict, repr=False)


class WindowCheck(BaseModel):
    """A check's outcome in one window of the drift-over-time series."""

    p_value: float | None = None
    effect: float | None = None
    level: Level = "skipped"
    alert_threshold: float | None = None


class DriftWindow(BaseModel):
    """One window of consecutive traffic in the drift-over-time series (what the time plot shows)."""

    start: float | None
    end: float | None
    n: int
    level: Overall
    checks: dict[str, WindowCheck] = Field(default_factory=dict)

    @classmethod
    def of(cls, report: DriftReport, n: int) -> DriftWindow:
        """The window's summary; `n` is its size (the report tests at most `max_window` of it)."""
        return cls(
            start=report.window.get("start"),
            end=report.window.get("end"),
            n=n,
            level=report.level,
            checks={
                c.name: WindowCheck(
                    p_value=c.p_value, effect=c.effect, level=c.level, alert_threshold=c.alert_threshold
                )
                for c in report.checks
            },
        )


class DriftReport(BaseModel):
    level: Overall
    message: str
    n_rows: int
    n_used: int
    n_errors: int = 0
    min_window: int
    window: dict[str, float | None] = Field(default_factory=dict)
    task: str
    embedder: str
    length_unit: str
    correction: str = ""
    permutations: int = 0
    checks: list[CheckResult] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    run: str | None = None
    adapter: str | None = None
    # The checks over consecutive windows of the traffic read (oldest first), when asked for.
    over_time: list[DriftWindow] | None = None

    @property
    def alert(self) -> bool:
        return self.level == "alert"

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def json_data(self) -> dict[str, Any]:
        """JSON-ready data without the plots' data (what drift.json, the webhook and the server
        return: the plots only matter to drift.html); `over_time` only when it was computed."""
        data = self.model_dump(exclude={"over_time"} if self.over_time is None else None)
        for check in data["checks"]:
            check.pop("plot", None)
        return data
