"""A self-contained report.html: the table, the headline and every plot, inline.

Plots are drawn with matplotlib (Agg backend, no display) and embedded as base64 PNG data URIs,
so the file can be mailed or attached to a ticket without its folder.
"""

from __future__ import annotations

import base64
import html
import io

from specialize.evaluate.table import Table, constraint_table, paired_sentence, summary_table
from specialize.records.eval import EvalReport

PLOTS = ("quality", "tokens", "latency", "cost", "loss", "confusions")


def render_html(report: EvalReport) -> str:
    summary = summary_table(report)
    figures = "".join(
        f'<figure id="plot-{name}"><img alt="{name}" src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption, fig in _figures(report)
    )
    paired = paired_sentence(report)
    paired = f"<p>{html.escape(paired)}</p>" if paired else ""
    constrained = constraint_table(report)
    constraint_section = (
        f"<h2>{html.escape(constrained.title)}</h2>" + _table("constrained", constrained)
        if constrained
        else ""
    )
    if constrained and not report.contract_verdict.apply_by_default:
        constraint_section += (
            f'<p id="contract-verdict"><strong>Not applied by default:</strong> '
            f"{html.escape(report.contract_verdict.reason)}</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>specialize evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} figure {{ display: inline-block; margin: .5rem; }}
img {{ max-width: 560px; }} .headline {{ font-size: 1.2rem; font-weight: 600; }}
</style></head><body>
<h1>Evaluation of {html.escape(report.run)}</h1>
<p class="headline" id="headline">{html.escape(report.headline)}</p>
<p>Task: {html.escape(report.task)}; {report.test_rows} held-out test rows; greedy decoding;
price model: {html.escape(str(report.price.get("mode")))}.</p>
{_table("summary", summary)}
{paired}
{constraint_section}
<section id="plots">{figures}</section>
</body></html>
"""


def _table(table_id: str, table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figures(report: EvalReport):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = report.contenders
    names = [c.name for c in contenders]
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

    metric = contenders[0].quality.primary if contenders else "quality"
    values = [c.quality.primary_value or 0.0 for c in contenders]
    intervals = [c.quality.interval() for c in contenders]
    low = [
        max(0.0, v - (i.ci_low if i.ci_low is not None else v))
        for v, i in zip(values, intervals, strict=True)
    ]
    high = [
        max(0.0, (i.ci_high if i.ci_high is not None else v) - v)
        for v, i in zip(values, intervals, strict=True)
    ]
    yield (
        "quality",
        f"{metric} per contender, with 95% bootstrap intervals",
        bars(values, f"Quality ({metric})", metric, errors=[low, high]),
    )
    yield "tokens", "Input and output tokens per request", _stacked(plt, names, contenders)
    p50_ms = [None if c.latency.batch1_p50_s is None else c.latency.batch1_p50_s * 1000 for c in contenders]
    yield (
        "latency",
        "Latency per request at batch size 1 (p50)",
        bars(p50_ms, "Latency, batch size 1", "ms (p50)"),
    )
    yield (
        "cost",
        "Cost per 1,000 requests",
        bars([c.cost_per_1k for c in contenders], "Cost per 1,000 requests", "USD"),
    )
    yield "loss", "Training and validation loss", _loss(plt, report.training.curves)
    yield "confusions", "Top confusions of the fine-tuned model", _confusions(plt, report)


def _stacked(plt, names, contenders):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    inputs = [c.tokens.prompt_mean for c in contenders]
    outputs = [c.tokens.completion_mean for c in contenders]
    ax.bar(names, inputs, label="input", color="#748ffc")
    ax.bar(names, outputs, bottom=inputs, label="output", color="#ffa94d")
    ax.set_title("Tokens per request")
    ax.legend()
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    return fig


def _loss(plt, curves):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for points, key, style in ((curves.train, "train", "-"), (curves.val, "val", "o-")):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=key)
    logged = bool(curves.train or curves.val)
    if not logged:
        ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Loss")
    ax.set_xlabel("step")
    if logged:
        ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def _confusions(plt, report):
    confusions = report.tuned().quality.details.get("confusions") or []
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
