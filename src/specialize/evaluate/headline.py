"""One sentence that says whether fine-tuning paid off, computed from the report's numbers.

It names the winner on quality (by the paired test against the best baseline, so a difference
the test cannot tell from chance is called a match) and the winner on cost per request, because
a cheaper contender that matches the fine-tuned model is the answer a reader most needs to see.
"""

from __future__ import annotations

from specialize import format as fmt
from specialize.records.eval import ContenderResult, EvalReport

ALPHA = 0.05  # a quality difference below this p-value is a win, above it a match


def headline(report: EvalReport) -> str:
    tuned = report.tuned()
    baselines = report.baselines()
    metric = tuned.quality.primary
    parts = [f"fine-tuned: {fmt.short(tuned.quality.primary_value)} {metric}"]
    parts[0] += " vs " + ", ".join(f"{fmt.short(b.quality.primary_value)} {b.name}" for b in baselines)
    comparison = report.comparison
    best = report.contender(comparison.best_baseline) if comparison is not None else None
    # The verdict carries the paired test's p-value and the cost comparison.
    parts.append(verdict(report))
    if best is not None:
        # The ratios name both sides: after a verdict whose subject is the baseline, a bare
        # "225x higher latency" reads as the baseline's.
        # Latency as the fine-tuned model would be deployed alone: merged into the base, when measured.
        deployed = tuned.merged.latency if tuned.merged is not None else tuned.latency
        label = "latency (adapter merged)" if tuned.merged is not None else "latency"
        ratios = [
            _ratio(best.tokens.prompt_mean, tuned.tokens.prompt_mean, "fewer", "more", "input tokens"),
            _ratio(best.latency.batch1_p50_s, deployed.batch1_p50_s, "lower", "higher", label),
        ]
        if any(ratios):
            parts.append(f"fine-tuned vs {best.name}: " + ", ".join(r for r in ratios if r))
        if best.break_even_requests is not None:
            parts.append(f"training repaid after {fmt.count(best.break_even_requests)} requests")
    con = tuned.constrained
    if con is not None:
        change = con.primary_change
        parts.append(
            f"constrained to its {con.contract.replace('_', ' ')}, fine-tuned gives "
            f"{1 - con.invalid_constrained:.0%} valid replies (free: {1 - con.invalid_free:.0%}) and "
            f"{fmt.short(con.quality.primary_value)} {metric} ({fmt.signed(change.mean_diff)}, "
            f"p={fmt.short(change.p_value) if change.p_value is None else f'{change.p_value:.2g}'})"
        )
        if not report.contract_verdict.apply_by_default:
            parts.append("so serving and generate leave that contract off by default")
    return "; ".join(p for p in parts if p)


def verdict(report: EvalReport) -> str:
    """Who wins on quality and who on cost, plainly ('X matches the fine-tuned model at 1/900 the cost')."""
    tuned = report.tuned()
    comparison = report.comparison
    best = report.contender(comparison.best_baseline) if comparison is not None else None
    if best is None or comparison is None:
        return ""
    metric = tuned.quality.primary
    diff = _diff(tuned, best)
    p = "" if comparison.p_value is None else f", p={comparison.p_value:.2g}"
    gap = f"fine-tuned {fmt.signed(diff, 2)} {metric}{p}"
    winner = "match"
    if diff is not None and comparison.p_value is not None and comparison.p_value < ALPHA:
        winner = "tuned" if diff > 0 else "baseline"
    quality = {
        "tuned": f"the fine-tuned model wins on quality over {best.name} ({gap})",
        "baseline": f"{best.name} beats the fine-tuned model on quality ({gap})",
        "match": f"{best.name} matches the fine-tuned model on quality ({gap})",
    }[winner]
    priced = [c for c in report.contenders if c.cost_per_1k is not None]
    if tuned.cost_per_1k is None or not priced:
        return quality
    cheapest = min(priced, key=lambda c: c.cost_per_1k or 0.0)
    if winner != "tuned" and best.cost_per_1k is not None and best.cost_per_1k < tuned.cost_per_1k:
        # The case a careful reader must not miss: as good or better, and cheaper.
        verb = "beats" if winner == "baseline" else "matches"
        sentence = (
            f"{best.name} {verb} the fine-tuned model at "
            f"{_fraction(best.cost_per_1k, tuned.cost_per_1k)} the cost ({gap})"
        )
        return sentence if cheapest is best else f"{sentence}; cheapest: {cheapest.name}"
    if cheapest is tuned:
        also = "also " if winner == "tuned" else ""
        versus = (
            f" ({_fraction(tuned.cost_per_1k, best.cost_per_1k)} of {best.name}'s)"
            if best.cost_per_1k and best.cost_per_1k > tuned.cost_per_1k
            else ""
        )
        return f"{quality}; the fine-tuned model {also}wins on cost{versus}"
    return (
        f"{quality}; {cheapest.name} wins on cost "
        f"({_fraction(cheapest.cost_per_1k or 0.0, tuned.cost_per_1k)} of the fine-tuned model's)"
    )


def _diff(a: ContenderResult, b: ContenderResult) -> float | None:
    if a.quality.primary_value is None or b.quality.primary_value is None:
        return None
    return a.quality.primary_value - b.quality.primary_value


def _fraction(cheap: float, dear: float) -> str:
    """'1/900' of the dearer cost (two significant figures); 'a fraction of' when the cheap one is free."""
    if cheap <= 0:
        return "a fraction of"
    times = dear / cheap
    if times >= 10:
        return f"1/{float(f'{times:.2g}'):.0f}"
    return f"1/{times:.1f}"


def _ratio(baseline: float | None, tuned: float | None, better: str, worse: str, what: str) -> str:
    """'27x fewer input tokens' (against the best baseline); empty when unmeasured."""
    if not baseline or not tuned:
        return ""
    ratio = baseline / tuned
    if ratio >= 1:
        return f"{ratio:.1f}x {better} {what}"
    return f"{1 / ratio:.1f}x {worse} {what}"
