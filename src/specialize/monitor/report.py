"""drift.json and a self-contained drift.html (plots inline as base64 PNGs), both written atomically."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from specialize.atomic import atomic_write_text
from specialize.records.drift import DriftReport, DriftWindow

_COLORS = {
    "ok": "#2b8a3e",
    "warn": "#e67700",
    "alert": "#c92a2a",
    "skipped": "#868e96",
    "not_enough_data": "#868e96",
}


def report_json(report: DriftReport) -> dict[str, Any]:
    """What drift.json holds and the webhook receives: the report without the plot data, and
    its drift-over-time series (empty when it was not computed)."""
    data = report.json_data()
    data.setdefault("over_time", [])
    return data


def write_drift_report(report: DriftReport, out_dir: str | Path) -> dict[str, Path]:
    """Write drift.json and drift.html into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "drift.json", "html": out / "drift.html"}
    atomic_write_text(paths["json"], json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths["html"], render_html(report, report.over_time or []))
    return paths


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_html(report: DriftReport, over_time: list[DriftWindow]) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (
                c.name,
                c.test,
                c.n_live,
                _f(c.statistic),
                _f(c.p_value, 4),
                _f(c.alert_threshold, 4),
                f"{c.effect_name} {_f(c.effect)}" if c.effect is not None else "-",
            )
        )
        + f'<td style="color:{_COLORS[c.level]};font-weight:600">{c.level}</td>'
        f"<td>{html.escape(c.note)}</td></tr>"
        for c in report.checks
    )
    figures = "".join(
        f'<figure id="plot-{name}"><img alt="{name}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption, png in _figures(report, over_time)
    )
    window = report.window
    span = (
        f"{_when(window.get('start'))} to {_when(window.get('end'))}"
        if window.get("start") is not None
        else "empty"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>specialize drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
.level {{ font-size: 1.3rem; font-weight: 700; color: {_COLORS[report.level]}; }}
</style></head><body>
<h1>Drift of {html.escape(str(report.adapter or report.run or "traffic"))}</h1>
<p class="level" id="level">{html.escape(report.level.upper())}: {html.escape(report.message)}</p>
<p>{report.n_used} requests used ({report.n_rows} read, {report.n_errors} errors left out), {span}.
Task: {html.escape(report.task)}; embedder: {html.escape(report.embedder)}; lengths in {html.escape(report.length_unit)}.
{html.escape(report.correction)}; {report.permutations} permutations.</p>
<table id="checks"><thead><tr><th>check</th><th>test</th><th>n live</th><th>statistic</th><th>p-value</th>
<th>alert if p &lt;</th><th>effect</th><th>level</th><th>note</th></tr></thead><tbody>{rows}</tbody></table>
<section id="plots">{figures}</section>
</body></html>
"""


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(report: DriftReport, over_time: list[DriftWindow]) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = []
    for check in report.checks:
        plot = check.plot
        if not plot:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        if "edges" in plot:
            edges = np.asarray(plot["edges"])
            width = np.diff(edges)
            for key, color in (("ref", "#5c7cfa"), ("live", "#e8590c")):
                counts = np.asarray(plot[key], dtype=float)
                ax.bar(
                    edges[:-1],
                    counts / max(counts.sum(), 1),
                    width=width,
                    align="edge",
                    alpha=0.5,
                    color=color,
                    label="reference" if key == "ref" else "live",
                )
            ax.set_ylabel("share of requests")
            ax.set_xlabel(
                check.name.replace("_", " ") + (f" ({report.length_unit})" if "length" in check.name else "")
            )
        elif "labels" in plot:
            x = np.arange(len(plot["labels"]))
            ax.bar(x - 0.2, plot["ref"], 0.4, color="#5c7cfa", label="reference")
            ax.bar(x + 0.2, plot["live"], 0.4, color="#e8590c", label="live")
            ax.set_xticks(x, plot["labels"], rotation=60, ha="right", fontsize=6)
            ax.set_ylabel("share")
        else:
            ref, live = np.asarray(plot["ref"]), np.asarray(plot["live"])
            ax.scatter(ref[:, 0], ref[:, 1], s=6, alpha=0.4, color="#5c7cfa", label="reference")
            if live.size:
                ax.scatter(live[:, 0], live[:, 1], s=8, alpha=0.6, color="#e8590c", label="live")
            ax.set_xlabel("reference PC 1")
            ax.set_ylabel("reference PC 2")
        ax.set_title(f"{check.name}: {check.level} (p={_f(check.p_value, 4)})", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append((check.name, f"{check.name}: reference vs live", _png(fig)))
    if over_time:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        x = np.arange(len(over_time))
        names = sorted({name for w in over_time for name, c in w.checks.items() if c.p_value is not None})
        for name in names:
            ps = [w.checks[name].p_value if name in w.checks else None for w in over_time]
            ax.plot(
                x,
                [-math.log10(max(p, 1e-12)) if p is not None else np.nan for p in ps],
                marker="o",
                label=name,
            )
        thresholds = [c.alert_threshold for w in over_time for c in w.checks.values() if c.alert_threshold]
        if thresholds:
            ax.axhline(-math.log10(min(thresholds)), color="#c92a2a", linestyle="--", label="alert threshold")
        for i, w in enumerate(over_time):
            ax.axvspan(i - 0.5, i + 0.5, color=_COLORS[w.level], alpha=0.08)
        ax.set_xticks(x, [_when(w.start)[5:16] for w in over_time], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("-log10 p-value")
        ax.set_title("drift over time (windows of the request log)", fontsize=10)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        out.append(
            (
                "over-time",
                "drift over time: higher is more drift; shading gives each window's level",
                _png(fig),
            )
        )
    return out
