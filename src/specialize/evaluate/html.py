"""A self-contained report.html: the table, the headline and every plot, inline.

Plots are drawn with matplotlib (Agg backend, no display) and embedded as base64 PNG data URIs,
so the file can be mailed or attached to a ticket without its folder.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

PLOTS = ("quality", "tokens", "latency", "cost", "loss", "confusions")


def render_html(report: dict[str, Any]) -> str:
    from specialize.evaluate.report import (
        CONSTRAINT_COLUMNS,
        _f,
        constraint_cells,
        constraint_rows,
        constraint_title,
        summary_rows,
    )

    rows = summary_rows(report)
    header = [
        "contender",
        "metric",
        "value",
        "95% CI",
        "invalid",
        "in tok",
        "out tok",
        "p50 ms",
        "p95 ms",
        "req/s",
        "$/1k req",
        "break-even",
    ]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (
                r["contender"],
                r["metric"],
                _f(r["value"]),
                f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]",
                _f(r["invalid"]),
                _f(r["prompt_tokens"], 1),
                _f(r["completion_tokens"], 1),
                _f(r["latency_p50_ms"], 0),
                _f(r["latency_p95_ms"], 0),
                _f(r["requests_per_s"], 2),
                _f(r["cost_per_1k"], 4),
                "-" if r["break_even"] is None else f"{int(r['break_even']):,}",
            )
        )
        + "</tr>"
        for r in rows
    )
    figures = "".join(
        f'<figure id="plot-{name}"><img alt="{name}" src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption, fig in _figures(report, rows)
    )
    comp = report.get("comparison") or {}
    paired = (
        f"<p>Paired test ({html.escape(str(comp.get('name')))}): {html.escape(str(comp.get('fine_tuned')))} vs "
        f"{html.escape(str(comp.get('best_baseline')))}: difference {_f(comp.get('mean_diff'))} "
        f"[{_f(comp.get('ci_low'))}, {_f(comp.get('ci_high'))}], p = {_f(comp.get('p_value'), 4)}</p>"
        if comp
        else ""
    )
    constrained = constraint_rows(report)
    constraint_table = (
        f"<h2>Decoding under the {html.escape(constraint_title(report))}</h2>"
        f'<table id="constrained"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in CONSTRAINT_COLUMNS)}'
        "</tr></thead><tbody>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in constraint_cells(r)) + "</tr>"
            for r in constrained
        )
        + "</tbody></table>"
        if constrained
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>specialize evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} figure {{ display: inline-block; margin: .5rem; }}
img {{ max-width: 560px; }} .headline {{ font-size: 1.2rem; font-weight: 600; }}
</style></head><body>
<h1>Evaluation of {html.escape(str(report["run"]))}</h1>
<p class="headline" id="headline">{html.escape(report["headline"])}</p>
<p>Task: {html.escape(report["task"])}; {report["test_rows"]} held-out test rows; greedy decoding;
price model: {html.escape(report["price"]["mode"])}.</p>
<table id="summary"><thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead><tbody>{body}</tbody></table>
{paired}
{constraint_table}
<section id="plots">{figures}</section>
</body></html>
"""


def _figures(report: dict[str, Any], rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["contender"] for r in rows]
    colors = ["#9aa5b1" if "shot" in n else "#2b8a3e" if n == "fine-tuned" else "#5c7cfa" for n in names]

    def bars(values, title, ylabel, errors=None):
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        clean = [0.0 if v is None else v for v in values]
        ax.bar(names, clean, color=colors, yerr=errors, capsize=6 if errors is not None else 0)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=15)
        fig.tight_layout()
        return fig

    metric = rows[0]["metric"] if rows else "quality"
    low = [
        max(0.0, (r["value"] or 0) - (r["ci_low"] if r["ci_low"] is not None else r["value"] or 0))
        for r in rows
    ]
    high = [
        max(0.0, (r["ci_high"] if r["ci_high"] is not None else r["value"] or 0) - (r["value"] or 0))
        for r in rows
    ]
    yield (
        "quality",
        f"{metric} per contender, with 95% bootstrap intervals",
        bars([r["value"] for r in rows], f"Quality ({metric})", metric, errors=[low, high]),
    )
    yield "tokens", "Input and output tokens per request", _stacked(plt, names, rows)
    yield (
        "latency",
        "Latency per request at batch size 1 (p50)",
        bars([r["latency_p50_ms"] for r in rows], "Latency, batch size 1", "ms (p50)"),
    )
    yield (
        "cost",
        "Cost per 1,000 requests",
        bars([r["cost_per_1k"] for r in rows], "Cost per 1,000 requests", "USD"),
    )
    yield "loss", "Training and validation loss", _loss(plt, report.get("training", {}).get("curves") or {})
    yield "confusions", "Top confusions of the fine-tuned model", _confusions(plt, report)


def _stacked(plt, names, rows):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    inputs = [r["prompt_tokens"] or 0 for r in rows]
    outputs = [r["completion_tokens"] or 0 for r in rows]
    ax.bar(names, inputs, label="input", color="#748ffc")
    ax.bar(names, outputs, bottom=inputs, label="output", color="#ffa94d")
    ax.set_title("Tokens per request")
    ax.legend()
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    return fig


def _loss(plt, curves):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for key, style in (("train", "-"), ("val", "o-")):
        points = curves.get(key) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=key)
    if not any(curves.get(k) for k in ("train", "val")):
        ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Loss")
    ax.set_xlabel("step")
    ax.legend(loc="upper right") if any(curves.get(k) for k in ("train", "val")) else None
    fig.tight_layout()
    return fig


def _confusions(plt, report):
    tuned = next((c for c in report["contenders"] if c["role"] == "fine-tuned"), None)
    confusions = ((tuned or {}).get("quality", {}).get("details") or {}).get("confusions") or []
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if confusions:
        top = confusions[:8][::-1]
        ax.barh(
            [f"{c['reference']} -> {c['prediction']}"[:60] for c in top],
            [c["count"] for c in top],
            color="#fa5252",
        )
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("count")
    else:
        ax.text(0.5, 0.5, "no confusions to show", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Top confusions (fine-tuned)")
    fig.tight_layout()
    return fig


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
