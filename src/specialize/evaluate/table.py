"""The rows of the evaluation tables, built once from the report for every rendering.

The terminal (rich), report.md and report.html show the same tables: every contender's
quality, tokens, latency, cost and break-even; when the run has an output contract, what
decoding under it changed; where the fine-tuned model fails (its worst labels or JSON fields);
and how far its confidence can be trusted. Each is a `Table` of already formatted cells, so the
three renderings cannot disagree on a figure or its rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specialize import format as fmt
from specialize.records.eval import ContenderResult, EvalReport, LabelScores

WORST = 8  # labels or fields listed as the fine-tuned model's worst


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
        _cost(c.cost_per_1k),
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


def worst_table(report: EvalReport, limit: int = WORST) -> Table:
    """The fine-tuned model's lowest-F1 labels (classification) or fields (JSON), with support.

    Ties go to the larger support (the failure that costs most requests). Labels that neither
    occur in the test rows nor were predicted have no F1 and are left out. The best baseline's
    F1 on the same label sits alongside, so a label that is hard for everyone reads as such.
    """
    try:
        tuned = report.tuned()
    except ValueError:
        return Table("", ())
    comparison = report.comparison
    best = report.contender(comparison.best_baseline) if comparison is not None else None
    scores, theirs, what = tuned.quality.per_label, best.quality.per_label if best else None, "label"
    if scores is None:
        scores, theirs, what = tuned.quality.per_field, best.quality.per_field if best else None, "field"
    if not scores:
        return Table("", ())
    scored = sorted(
        ((name, s) for name, s in scores.items() if s.f1 is not None),
        key=lambda item: (item[1].f1, -item[1].support, item[0]),
    )
    title = f"Worst {what}s of the fine-tuned model (lowest F1 of {len(scored)})"
    if what == "field":
        exact = tuned.quality.values.get("exact_match")
        title += f"; whole-object exact match {fmt.number(exact)}"
        if best is not None:
            title += f" ({best.name}: {fmt.number(best.quality.values.get('exact_match'))})"
    columns = (what, "support", "predicted", "precision", "recall", "F1")
    if best is not None:
        columns += (f"F1 {best.name}",)
    table = Table(title, columns)
    for name, s in scored[:limit]:
        row = [name, *_score_cells(s)]
        if best is not None:
            other = (theirs or {}).get(name)
            row.append(fmt.number(other.f1 if other else None))
        table.rows.append(row)
        table.highlight.append(False)
    return table


def _score_cells(s: LabelScores) -> list[str]:
    return [
        fmt.count(s.support),
        fmt.count(s.predicted),
        fmt.number(s.precision),
        fmt.number(s.recall),
        fmt.number(s.f1),
    ]


def confidence_table(report: EvalReport) -> Table:
    """Calibration of each contender that scored its label replies, and the recommended threshold."""
    measured = [c for c in report.contenders if c.confidence is not None]
    target = measured[0].confidence.target_precision if measured else None  # type: ignore[union-attr]
    table = Table(
        "Confidence in each reply (probability of the replied label among all labels)",
        (
            "contender",
            "replies",
            "ECE (15 bins)",
            f"threshold for precision >= {fmt.number(target, 2)}",
            "coverage",
            "abstained",
            "reply = top label",
        ),
    )
    for c in measured:
        cal = c.confidence
        assert cal is not None
        abstained = sum(1 for x in cal.confidence if x is None)
        table.rows.append(
            [
                c.name,
                cal.replies,
                fmt.number(cal.ece),
                fmt.number(cal.threshold) if cal.threshold is not None else "none reaches it",
                fmt.share(cal.threshold_coverage),
                fmt.count(abstained),
                fmt.share(cal.top_label_agreement),
            ]
        )
        table.highlight.append(c.role == "fine-tuned")
    return table


def skipped_lines(report: EvalReport) -> list[str]:
    """One line per contender that could not be measured, saying why."""
    return [f"{s.name} not measured: {s.reason}" for s in report.skipped]


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


def _cost(value: float | None) -> str:
    """Four decimals, or two significant figures below that: a classic model's cost per 1,000
    requests can be a millionth of a dollar, and "0.0000" would read as free."""
    if fmt.missing(value) or value == 0 or abs(value) >= 0.001:  # type: ignore[operator]
        return fmt.number(value, 4)
    return f"{value:.2g}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
