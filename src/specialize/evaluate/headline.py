"""One sentence that says whether fine-tuning paid off, computed from the report's numbers."""

from __future__ import annotations

import math
from typing import Any


def headline(report: dict[str, Any]) -> str:
    contenders = report["contenders"]
    tuned = next(c for c in contenders if c["role"] == "fine-tuned")
    baselines = [c for c in contenders if c["role"] in ("zero-shot", "few-shot")]
    metric = tuned["quality"]["primary"]
    parts = [f"fine-tuned: {_num(tuned['quality']['primary_value'])} {metric}"]
    parts[0] += " vs " + ", ".join(f"{_num(b['quality']['primary_value'])} {b['name']}" for b in baselines)
    comparison = report.get("comparison") or {}
    p = comparison.get("p_value")
    if p is not None and not math.isnan(p):
        parts[0] += f" (p={p:.2g} vs {comparison.get('best_baseline')})"
    best = next((b for b in baselines if b["name"] == comparison.get("best_baseline")), None)
    if best is not None:
        parts.append(
            _ratio(
                best["tokens"]["prompt_mean"], tuned["tokens"]["prompt_mean"], "fewer", "more", "input tokens"
            )
        )
        parts.append(
            _ratio(
                best["latency"]["batch1_p50_s"],
                tuned["latency"]["batch1_p50_s"],
                "lower",
                "higher",
                "latency",
            )
        )
        parts.append(_ratio(best["cost_per_1k"], tuned["cost_per_1k"], "lower", "higher", "cost per request"))
        be = best.get("break_even_requests")
        if be is not None:
            parts.append(f"training repaid after {int(be):,} requests")
    con = tuned.get("constrained")
    if con:
        change = con["primary_change"]
        parts.append(
            f"constrained to its {con['contract'].replace('_', ' ')}, fine-tuned gives "
            f"{1 - con['invalid_constrained']:.0%} valid replies (free: {1 - con['invalid_free']:.0%}) and "
            f"{_num(con['quality']['primary_value'])} {metric} ({change['mean_diff']:+.3f}, p={change['p_value']:.2g})"
        )
    return "; ".join(p for p in parts if p)


def _num(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _ratio(baseline: float | None, tuned: float | None, better: str, worse: str, what: str) -> str:
    """'27x fewer input tokens' (against the best baseline); empty when unmeasured."""
    if not baseline or not tuned:
        return ""
    ratio = baseline / tuned
    if ratio >= 1:
        return f"{ratio:.1f}x {better} {what}"
    return f"{1 / ratio:.1f}x {worse} {what}"
