"""One sentence that says whether fine-tuning paid off, computed from the report's numbers."""

from __future__ import annotations

from specialize import format as fmt
from specialize.records.eval import EvalReport


def headline(report: EvalReport) -> str:
    tuned = report.tuned()
    baselines = report.baselines()
    metric = tuned.quality.primary
    parts = [f"fine-tuned: {fmt.short(tuned.quality.primary_value)} {metric}"]
    parts[0] += " vs " + ", ".join(f"{fmt.short(b.quality.primary_value)} {b.name}" for b in baselines)
    comparison = report.comparison
    if comparison is not None and comparison.p_value is not None:
        parts[0] += f" (p={comparison.p_value:.2g} vs {comparison.best_baseline})"
    best = report.contender(comparison.best_baseline) if comparison is not None else None
    if best is not None:
        parts.append(
            _ratio(best.tokens.prompt_mean, tuned.tokens.prompt_mean, "fewer", "more", "input tokens")
        )
        parts.append(
            _ratio(best.latency.batch1_p50_s, tuned.latency.batch1_p50_s, "lower", "higher", "latency")
        )
        parts.append(_ratio(best.cost_per_1k, tuned.cost_per_1k, "lower", "higher", "cost per request"))
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


def _ratio(baseline: float | None, tuned: float | None, better: str, worse: str, what: str) -> str:
    """'27x fewer input tokens' (against the best baseline); empty when unmeasured."""
    if not baseline or not tuned:
        return ""
    ratio = baseline / tuned
    if ratio >= 1:
        return f"{ratio:.1f}x {better} {what}"
    return f"{1 / ratio:.1f}x {worse} {what}"
