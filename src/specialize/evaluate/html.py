"""A self-contained report.html: the table, the headline and every plot, inline.

Plots are drawn with matplotlib (Agg backend, no display) and embedded as base64 PNG data URIs,
so the file can be mailed or attached to a ticket without its folder.
"""

from __future__ import annotations

import base64
import html
import io

from specialize.evaluate.table import (
    Table,
    agreement_lines,
    catch_all_table,
    confidence_table,
    constraint_table,
    human_table,
    learning_curve_table,
    paired_sentence,
    preference_table,
    skipped_lines,
    summary_table,
    worst_table,
)
from specialize.records.eval import EvalReport

PLOTS = ("quality", "tokens", "latency", "cost", "loss", "confusions", "reliability", "coverage")
ROLE_COLORS = {"zero-shot": "#9aa5b1", "few-shot": "#9aa5b1", "fine-tuned": "#2b8a3e", "classic": "#e8590c"}
LOG_SPAN = 50  # bars spanning more than this factor get a log axis, or the small ones vanish


def render_html(report: EvalReport) -> str:
    summary = summary_table(report)
    figures = "".join(
        f'<figure id="plot-{name}"><img alt="{name}" src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption, fig in _figures(report)
    )
    paired = paired_sentence(report)
    paired = f"<p>{html.escape(paired)}</p>" if paired else ""
    paired += "".join(f'<p class="skipped">{html.escape(line)}</p>' for line in skipped_lines(report))
    breakdown = ""
    for table_id, table in (
        ("worst", worst_table(report)),
        ("confidence", confidence_table(report)),
        ("catch-all", catch_all_table(report)),
        ("learning-curve", learning_curve_table(report)),
        ("preference", preference_table(report)),
        ("human", human_table(report)),
    ):
        if table:
            breakdown += f"<h2>{html.escape(table.title)}</h2>" + _table(table_id, table)
    breakdown += "".join(f"<p>{html.escape(line)}</p>" for line in agreement_lines(report))
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
{breakdown}
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
    colors = [ROLE_COLORS.get(c.role, "#5c7cfa") for c in contenders]

    def bars(values, title, ylabel, errors=None):
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        clean = [0.0 if v is None else v for v in values]
        ax.bar(names, clean, color=colors, yerr=errors, capsize=6 if errors is not None else 0)
        positive = [v for v in clean if v > 0]
        if errors is None and positive and max(positive) / min(positive) > LOG_SPAN:
            ax.set_yscale("log")
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
    calibration = report.tuned().confidence if contenders else None
    yield (
        "reliability",
        "Reliability of the fine-tuned model's confidence: accuracy per confidence bin",
        _reliability(plt, calibration),
    )
    yield (
        "coverage",
        "Accuracy-coverage: answering only the most confident replies",
        _coverage(plt, calibration),
    )


def _reliability(plt, calibration):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    filled = [b for b in calibration.bins if b.count] if calibration is not None else []
    if filled:
        ax.plot([0, 1], [0, 1], "--", color="#adb5bd", label="calibrated")
        width = filled[0].upper - filled[0].lower
        ax.bar(
            [b.lower for b in filled],
            [b.accuracy for b in filled],
            width=width,
            align="edge",
            color="#2b8a3e",
            edgecolor="white",
            label="accuracy",
        )
        ax.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o", color="#1b4332")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no confidence recorded", ha="center", va="center", transform=ax.transAxes)
    ece = "" if calibration is None or calibration.ece is None else f", ECE {calibration.ece:.3f}"
    ax.set_title(f"Reliability (fine-tuned{ece})")
    fig.tight_layout()
    return fig


def _coverage(plt, calibration):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    curve = calibration.coverage_curve if calibration is not None else []
    if curve:
        ax.plot([p.coverage for p in curve], [p.precision for p in curve], "-", color="#2b8a3e")
        ax.axhline(calibration.target_precision, ls="--", color="#adb5bd", label="target precision")
        chosen = next((p for p in curve if p.threshold == calibration.threshold), None)
        if chosen is not None:
            ax.plot(
                [chosen.coverage],
                [chosen.precision],
                "o",
                color="#e8590c",
                label=f"threshold {calibration.threshold:.3f}",
            )
        ax.set_xlim(0, 1)
        ax.set_xlabel("coverage (share of rows answered)")
        ax.set_ylabel("precision of answered rows")
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "no confidence recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Accuracy-coverage (fine-tuned)")
    fig.tight_layout()
    return fig


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
