"""The rows of the evaluation tables, built once from the report for every rendering.

The terminal (rich), report.md and report.html show the same two tables: every contender's
quality, tokens, latency, cost and break-even; and, when the run has an output contract, what
decoding under it changed. Each is a `Table` of already formatted cells, so the three renderings
cannot disagree on a figure or its rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specialize import format as fmt
from specialize.records.eval import ContenderResult, EvalReport


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[list[str]] = field(default_factory=list)
    highlight: list[bool] = field(default_factory=list)  # rows of the fine-tuned contender

    def __bool__(self) -> bool:
        return bool(self.rows)


SUMMARY_COLUMNS = (
    "contender",
    "metric",
    "value [95% CI]",
    "invalid",
    "in tok",
    "out tok",
    "p50 ms",
    "p95 ms",
    "req/s",
    "$/1k req",
    "break-even",
)

CONSTRAINT_COLUMNS = (
    "contender",
    "free",
    "constrained",
    "change [95% CI]",
    "p",
    "invalid free -> constrained",
    "prevented",
    "p50 x",
    "req/s x",
)


def summary_table(report: EvalReport) -> Table:
    """One row per contender with the figures every rendering shows."""
    table = Table(f"{report.task} task, {report.test_rows} held-out test rows", SUMMARY_COLUMNS)
    for c in report.contenders:
        table.rows.append(_summary_cells(c))
        table.highlight.append(c.role == "fine-tuned")
    return table


def _summary_cells(c: ContenderResult) -> list[str]:
    q = c.quality
    ci = q.interval()
    return [
        c.name,
        q.primary,
        f"{fmt.number(q.primary_value)} [{fmt.number(ci.ci_low)}, {fmt.number(ci.ci_high)}]",
        fmt.number(q.values.get("invalid_rate")),
        fmt.number(c.tokens.prompt_mean, 1),
        fmt.number(c.tokens.completion_mean, 1),
        fmt.number(_ms(c.latency.batch1_p50_s), 0),
        fmt.number(_ms(c.latency.batch1_p95_s), 0),
        fmt.number(c.throughput.requests_per_s, 2),
        fmt.number(c.cost_per_1k, 4),
        fmt.count(c.break_even_requests),
    ]


def constraint_table(report: EvalReport) -> Table:
    """One row per contender measured under the output contract: free vs constrained."""
    measured = [c for c in report.contenders if c.constrained is not None]
    metric = measured[0].constrained.primary_change.metric if measured else "-"  # type: ignore[union-attr]
    kind = report.output_contract.get("kind")
    table = Table(f"Decoding under the output contract: {kind}; metric: {metric}", CONSTRAINT_COLUMNS)
    for c in measured:
        con = c.constrained
        assert con is not None
        change = con.primary_change
        table.rows.append(
            [
                c.name,
                fmt.number(c.quality.primary_value),
                fmt.number(con.quality.primary_value),
                f"{fmt.signed(change.mean_diff)} [{fmt.signed(change.ci_low)}, {fmt.signed(change.ci_high)}]",
                fmt.number(change.p_value, 3),
                f"{fmt.number(con.invalid_free)} -> {fmt.number(con.invalid_constrained)}",
                fmt.share(con.prevented_share),
                fmt.number(con.latency_overhead, 2),
                fmt.number(con.throughput_ratio, 2),
            ]
        )
        table.highlight.append(c.role == "fine-tuned")
    return table


def paired_sentence(report: EvalReport) -> str:
    """The paired test of the fine-tuned model against the best baseline, as one sentence."""
    comp = report.comparison
    if comp is None:
        return ""
    return (
        f"Paired test ({comp.name}), {comp.fine_tuned} vs {comp.best_baseline}: "
        f"difference {fmt.number(comp.mean_diff)} [{fmt.number(comp.ci_low)}, {fmt.number(comp.ci_high)}], "
        f"p = {fmt.number(comp.p_value, 4)}."
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
