"""The rows of the evaluation tables, built once from the report for every rendering.

The terminal (rich), report.md and report.html show the same tables: every contender's
quality, tokens, latency, cost and break-even; when the run has an output contract, what
decoding under it changed; where the fine-tuned model fails (its worst labels or JSON fields);
and how far its confidence can be trusted. Each is a `Table` of already formatted cells, so the
three renderings cannot disagree on a figure or its rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specialize import format as fmt
from specialize.records.eval import (
    ContenderResult,
    Deployment,
    EvalReport,
    Interval,
    LabelScores,
    PairedComparison,
)

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
        for how, deployment in (("merged", c.merged), ("served", c.served)):
            if deployment is not None:
                table.rows.append(_deployment_cells(c, how, deployment))
                table.highlight.append(True)
    return table


def _deployment_cells(c: ContenderResult, how: str, m: Deployment) -> list[str]:
    """The same adapter deployed another way (merged into the base; in the serving engine): speed
    and cost only, and how many of its replies equal the evaluated ones."""
    return [
        f"{c.name}, {how}",
        "same replies",
        f"{m.replies_equal}/{m.rows_compared}",
        "",
        fmt.number(c.tokens.prompt_mean, 1),
        fmt.number(c.tokens.completion_mean, 1),
        fmt.number(_ms(m.latency.batch1_p50_s), 0),
        fmt.number(_ms(m.latency.batch1_p95_s), 0),
        fmt.number(m.throughput.requests_per_s, 2),
        _cost(m.cost_per_1k),
        "",
    ]


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


def catch_all_table(report: EvalReport) -> Table:
    """The catch-all class on its own, as replied and after abstaining into it below the
    recommended threshold, with what that cost the other classes' accuracy."""
    measured = [c for c in report.contenders if c.confidence is not None and c.confidence.catch_all]
    table = Table(
        "Catch-all class, before and after abstaining below the recommended threshold",
        (
            "contender",
            "class",
            "support",
            "precision",
            "recall",
            "threshold",
            "precision after",
            "recall after",
            "abstained",
            "other classes' accuracy",
        ),
    )
    for c in measured:
        scores = c.confidence.catch_all  # type: ignore[union-attr]
        assert scores is not None
        after = scores.after
        table.rows.append(
            [
                c.name,
                scores.label,
                fmt.count(scores.before.support),
                fmt.number(scores.before.precision),
                fmt.number(scores.before.recall),
                fmt.number(scores.threshold) if scores.threshold is not None else "none",
                fmt.number(after.precision) if after else "",
                fmt.number(after.recall) if after else "",
                fmt.count(scores.abstained) if after else "",
                f"{fmt.number(scores.in_scope_accuracy_before)} -> {fmt.number(scores.in_scope_accuracy_after)}"
                if after
                else fmt.number(scores.in_scope_accuracy_before),
            ]
        )
        table.highlight.append(c.role == "fine-tuned")
    return table


def preference_table(report: EvalReport) -> Table:
    """A preference run against its parent on the held-out judgments (`records.eval.PreferenceEval`)."""
    pref = report.preference
    table = Table(
        f"Preference, held-out judgments ({pref.rows if pref else 0}) against the parent "
        f"({pref.parent if pref else ''})",
        ("measure", "parent", "tuned", "change [95% CI]", "p"),
    )
    if pref is None:
        return table

    def cell(interval: Interval | None) -> str:
        if interval is None:
            return ""
        return f"{fmt.number(interval.value)} [{fmt.number(interval.ci_low)}, {fmt.number(interval.ci_high)}]"

    def change(test: PairedComparison | None) -> list[str]:
        if test is None:
            return ["", ""]
        return [
            f"{fmt.signed(test.mean_diff)} [{fmt.number(test.ci_low)}, {fmt.number(test.ci_high)}]",
            fmt.number(test.p_value, 4),
        ]

    table.rows.append(["implicit-reward accuracy", "", cell(pref.implicit_reward_accuracy), "", ""])
    if pref.tuned_prefers_chosen is not None:
        table.rows.append(
            [
                "prefers chosen (log-prob)",
                cell(pref.parent_prefers_chosen),
                cell(pref.tuned_prefers_chosen),
                *change(pref.preference_change),
            ]
        )
    parent = report.contender(pref.parent_contender)
    tuned = next((c for c in report.contenders if c.role == "fine-tuned"), None)
    if parent is not None and tuned is not None:
        table.rows.append(
            [
                f"{tuned.quality.primary} (chosen as reference)",
                cell(parent.quality.interval()),
                cell(tuned.quality.interval()),
                *change(pref.task_change),
            ]
        )
    table.highlight.extend([False] * len(table.rows))
    return table


def learning_curve_table(report: EvalReport) -> Table:
    """The metric per nested training subset, then what the fitted curve expects with more data."""
    curve = report.learning_curve
    table = Table(
        f"Learning curve ({curve.metric if curve else ''}): the fine-tuned model on nested subsets",
        ("training rows", "value [95% CI]", "from"),
    )
    if curve is None:
        return table

    def cells(rows: str, iv: Any, source: str) -> list[str]:
        if iv is None or iv.value is None:
            return [rows, "not reached" if source.startswith("rows") else "", source]
        return [rows, f"{fmt.number(iv.value)} [{fmt.number(iv.ci_low)}, {fmt.number(iv.ci_high)}]", source]

    for p in curve.points:
        table.rows.append(cells(fmt.count(p.examples), p.ci95, f"measured ({p.fraction:g} of the rows)"))
        table.highlight.append(p.fraction >= 1.0)
    if curve.fit is not None:
        full = max(p.examples for p in curve.points)
        table.rows.append(cells(fmt.count(2 * full), curve.at_2x, "expected (fitted curve)"))
        table.rows.append(cells(fmt.count(4 * full), curve.at_4x, "expected (fitted curve)"))
        table.rows.append(cells("unlimited", curve.asymptote, "asymptote of the curve"))
        table.highlight.extend([False, False, False])
        if curve.target_metric is not None:
            needed = curve.examples_for_target
            rows = (
                f"{fmt.count(needed.value)} [{fmt.count(needed.ci_low)}, {fmt.count(needed.ci_high)}]"
                if needed is not None and needed.value is not None
                else "not reached"
            )
            table.rows.append([rows, fmt.number(curve.target_metric), "rows needed for eval.target_metric"])
            table.highlight.append(False)
    elif curve.note:
        table.rows.append(["", "", curve.note])
        table.highlight.append(False)
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


def human_table(report: EvalReport) -> Table:
    """Blind human review: each contender pair's win rate of the first, with its Wilson 95% interval."""
    human = report.human
    judged = f"{human.judgments} judgments by {', '.join(human.reviewers) or 'no one'}" if human else ""
    table = Table(
        f"Human evaluation (blind review, {judged})",
        ("pair", "judgments", "win rate of the first [95% CI]", "ties", "both bad"),
    )
    if human is None:
        return table
    for pair in human.pairs:
        table.rows.append(
            [
                f"{pair.first} vs {pair.second}",
                fmt.count(pair.judgments),
                f"{fmt.number(pair.win_rate, 2)} [{fmt.number(pair.ci_low, 2)}, {fmt.number(pair.ci_high, 2)}]",
                fmt.count(pair.ties),
                fmt.count(pair.both_bad),
            ]
        )
        table.highlight.append(False)
    return table


def agreement_lines(report: EvalReport) -> list[str]:
    """Reviewers' agreement (Cohen's kappa) on the items two of them both judged."""
    if report.human is None:
        return []
    return [
        f"agreement {a.reviewers[0]} / {a.reviewers[1]}: kappa {fmt.number(a.kappa, 2)} on "
        f"{a.shared_items} shared items (raw {fmt.number(a.raw_agreement, 2)})"
        for a in report.human.agreement
    ]
