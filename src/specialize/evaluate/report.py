"""Write an evaluation report: report.json (every number), report.md, report.html.

The three files are written into a temp directory and swapped in together, so a killed
evaluation never leaves a report whose parts disagree.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from specialize.atomic import make_temp_dir, replace_dir
from specialize.evaluate.html import render_html


def write_report(eval_dir: Path, report: dict[str, Any]) -> None:
    clean = _jsonable(report)
    tmp = make_temp_dir(eval_dir)
    try:
        (tmp / "report.json").write_text(
            json.dumps(clean, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (tmp / "report.md").write_text(render_markdown(clean), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(clean), encoding="utf-8")
        replace_dir(tmp, eval_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per contender with the figures every rendering shows (terminal, md, html)."""
    rows = []
    for c in report["contenders"]:
        q = c["quality"]
        ci = q["ci95"].get(q["primary"], {})
        rows.append(
            {
                "contender": c["name"],
                "metric": q["primary"],
                "value": q["primary_value"],
                "ci_low": ci.get("ci_low"),
                "ci_high": ci.get("ci_high"),
                "invalid": q["values"].get("invalid_rate"),
                "prompt_tokens": c["tokens"]["prompt_mean"],
                "completion_tokens": c["tokens"]["completion_mean"],
                "latency_p50_ms": _ms(c["latency"]["batch1_p50_s"]),
                "latency_p95_ms": _ms(c["latency"]["batch1_p95_s"]),
                "requests_per_s": c["throughput"]["requests_per_s"],
                "cost_per_1k": c["cost_per_1k"],
                "break_even": c.get("break_even_requests"),
            }
        )
    return rows


def constraint_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per contender measured under the output contract: free vs constrained."""
    rows = []
    for c in report["contenders"]:
        con = c.get("constrained")
        if not con:
            continue
        change = con["primary_change"]
        rows.append(
            {
                "contender": c["name"],
                "metric": change["metric"],
                "free": c["quality"]["primary_value"],
                "constrained": con["quality"]["primary_value"],
                "change": change["mean_diff"],
                "change_low": change["ci_low"],
                "change_high": change["ci_high"],
                "p_value": change["p_value"],
                "invalid_free": con["invalid_free"],
                "invalid_constrained": con["invalid_constrained"],
                "prevented": con["prevented_share"],
                "incomplete": con["incomplete"],
                "latency_overhead": con["latency_overhead"],
                "throughput_ratio": con["throughput_ratio"],
            }
        )
    return rows


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


def constraint_title(report: dict[str, Any]) -> str:
    """'output contract labels, metric accuracy': what the constrained table compares."""
    rows = constraint_rows(report)
    kind = (report.get("output_contract") or {}).get("kind")
    return f"output contract: {kind}; metric: {rows[0]['metric'] if rows else '-'}"


def constraint_cells(r: dict[str, Any]) -> list[str]:
    """The cells of `CONSTRAINT_COLUMNS` for one row of `constraint_rows`."""
    return [
        r["contender"],
        _f(r["free"]),
        _f(r["constrained"]),
        f"{_signed(r['change'])} [{_signed(r['change_low'])}, {_signed(r['change_high'])}]",
        _f(r["p_value"], 3),
        f"{_f(r['invalid_free'])} -> {_f(r['invalid_constrained'])}",
        "-" if r["prevented"] is None else f"{r['prevented']:.0%}",
        _f(r["latency_overhead"], 2),
        _f(r["throughput_ratio"], 2),
    ]


def _signed(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {Path(report['run']).name}",
        "",
        f"**{report['headline']}**",
        "",
        f"Task: {report['task']}; {report['test_rows']} held-out test rows; greedy decoding, "
        f"max {report['max_new_tokens']} new tokens. Price model: {report['price']['mode']}.",
        "",
        "| contender | metric | value [95% CI] | invalid | in tok | out tok | p50 ms | p95 ms | req/s | $/1k req | break-even |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(report):
        break_even = "-" if r["break_even"] is None else f"{int(r['break_even']):,}"
        lines.append(
            f"| {r['contender']} | {r['metric']} | {_f(r['value'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}] "
            f"| {_f(r['invalid'])} | {_f(r['prompt_tokens'], 1)} | {_f(r['completion_tokens'], 1)} "
            f"| {_f(r['latency_p50_ms'], 0)} | {_f(r['latency_p95_ms'], 0)} | {_f(r['requests_per_s'], 2)} "
            f"| {_f(r['cost_per_1k'], 4)} | {break_even} |"
        )
    comp = report.get("comparison") or {}
    if comp:
        lines += [
            "",
            f"Paired test ({comp.get('name')}), {comp.get('fine_tuned')} vs {comp.get('best_baseline')}: "
            f"difference {_f(comp.get('mean_diff'))} [{_f(comp.get('ci_low'))}, {_f(comp.get('ci_high'))}], "
            f"p = {_f(comp.get('p_value'), 4)}.",
        ]
    constrained = constraint_rows(report)
    if constrained:
        contract = report.get("output_contract") or {}
        lines += [
            "",
            f"## Under the output contract ({contract.get('kind')})",
            "",
            "Every contender again, decoding so that each reply can only be "
            + ("one of the labels." if contract.get("kind") == "labels" else "JSON valid under the schema.")
            + f" Free and constrained: {constrained[0]['metric']}. Invalid: replies that break the contract; "
            "prevented: the share of the free run's invalid replies that the constraint removed; p50 latency "
            "and requests/s as multiples of the free run's.",
            "",
            "| " + " | ".join(CONSTRAINT_COLUMNS) + " |",
            "|" + "---|" * len(CONSTRAINT_COLUMNS),
        ]
        lines += ["| " + " | ".join(constraint_cells(r)) + " |" for r in constrained]
    training = report.get("training") or {}
    lines += [
        "",
        f"Training: {training.get('method')} on {training.get('examples')} examples, "
        f"{_f(training.get('seconds'), 0)} s, cost {_f(training.get('cost'), 4)} USD.",
        "",
    ]
    return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _jsonable(value: Any) -> Any:
    """Drop private keys (`_metrics`) and turn NaN into null so report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value
