"""What the Runs and Run pages show, read from the run directories through `RunDir`.

Every part of a run is read on its own and a part that cannot be read becomes a message on the
page (`RunView.problems`), so one damaged file (or a folder that is not a run at all) never
hides the rest of the run, nor the other runs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from specialize.data.checks import DataReport
from specialize.data.split import load_split
from specialize.errors import SpecializeError
from specialize.outputs import match_label
from specialize.records.eval import EvalReport
from specialize.records.human import HumanEval
from specialize.run_dir import RunDir
from specialize.studio.jobs import Jobs

# "folder": a folder of the runs folder that is not a run (no config.yaml), e.g. one holding runs.
Status = Literal["running", "finished", "failed", "folder"]
# A run without run.json whose metrics were written this recently is taken as still training
# (by a `specialize train` started outside the studio).
RECENT_SECONDS = 120.0
OTHER = "(other)"
COMPACT_ABOVE = 12  # labels; above this the confusion matrix shows only the labels in play


@dataclass
class RunSummary:
    name: str
    status: Status
    task: str = ""
    method: str = ""
    headline: str = ""
    finished_at: str = ""
    evaluated: bool = False
    problem: str = ""  # why the run cannot be read, shown in its row


def _problem(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SpecializeError) else f"{type(exc).__name__}: {exc}"


def status_of(run: RunDir, jobs: Jobs | None = None) -> Status:
    job = jobs.get(run.path.name) if jobs else None
    if job is not None and job.running:
        return "running"
    if run.finished:
        return "finished"
    if job is None and time.time() - _last_write(run) < RECENT_SECONDS:
        return "running"
    return "failed"


def _last_write(run: RunDir) -> float:
    """When training last wrote to the run: its metrics, a checkpoint, or the folder itself."""
    times = [0.0]
    for path in (run.path, run.metrics, run.checkpoints, run.config_file):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times)


def summarize_run(path: Path, jobs: Jobs | None = None) -> RunSummary:
    run = RunDir(path)
    summary = RunSummary(name=path.name, status=status_of(run, jobs))
    try:
        if not run.config_file.is_file():
            summary.status = "folder"
            summary.problem = "not a run directory (no config.yaml)" + _holds_runs(path)
            return summary
        config = run.config()
        summary.method = config.method.kind
        if run.finished:
            record = run.record()
            summary.task = record.task or ""
            summary.method = record.method
            summary.finished_at = record.finished_at or ""
        if run.evaluated:
            report = run.eval_report()
            summary.evaluated = True
            summary.headline = report.headline
            summary.task = summary.task or report.task
    except Exception as exc:  # a damaged file is shown in the row, never an error page
        summary.problem = _problem(exc)
    return summary


def _holds_runs(path: Path) -> str:
    """A hint when a folder that is not a run holds runs (the loop demo's layout, say): the studio
    lists one level, so it is opened on that folder."""
    try:
        inner = sorted(p.name for p in path.iterdir() if (p / "config.yaml").is_file())
    except OSError:
        return ""
    if not inner:
        return ""
    shown = ", ".join(inner[:3]) + (", ..." if len(inner) > 3 else "")
    return f"; it holds runs ({shown}): open them with specialize studio --runs {path}"


def list_runs(runs: Path, jobs: Jobs | None = None) -> list[RunSummary]:
    """Every run folder, newest first (dot folders such as .studio/ are the studio's own)."""
    if not runs.is_dir():
        return []
    children = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [summarize_run(p, jobs) for p in sorted(children, key=_mtime, reverse=True)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed while listing
        return 0.0


@dataclass
class MetricPoint:
    step: float
    loss: float | None = None
    eval_loss: float | None = None

    def to_json(self) -> dict[str, float | None]:
        """JSON-ready, a diverged (NaN or infinite) loss as null: JSON has no NaN."""
        return {"step": self.step, "loss": _finite(self.loss), "eval_loss": _finite(self.eval_loss)}


def _finite(value: float | None) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def read_metrics(path: Path, start: int = 0) -> tuple[list[MetricPoint], int]:
    """Loss points of metrics.jsonl from byte offset `start`, and the offset after the last whole
    line (a line being written is left for the next read)."""
    if not path.is_file():
        return [], start
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    points = []
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and ("loss" in row or "eval_loss" in row) and "step" in row:
            points.append(MetricPoint(row["step"], row.get("loss"), row.get("eval_loss")))
    return points, start + end


@dataclass
class ExampleRow:
    index: int
    input: str
    reference: str
    label: str  # the reference's label (classification), else ""
    predictions: dict[str, str]
    wrong: list[str]  # contenders whose reply is wrong on this row
    # the label each contender's reply names (OTHER when it names none); classification only
    reply_labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Confusion:
    contender: str
    labels: list[str]
    predicted: list[str]  # columns: the labels, then OTHER for replies that name none
    counts: dict[str, dict[str, int]]


@dataclass
class RunView:
    summary: RunSummary
    config_yaml: str = ""
    data_report: DataReport | None = None
    metrics: list[MetricPoint] = field(default_factory=list)
    report: EvalReport | None = None
    human: HumanEval | None = None
    examples: list[ExampleRow] = field(default_factory=list)
    confusions: list[Confusion] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # part of the page -> what is wrong


def _wrong(report: EvalReport, references: list[str]) -> dict[str, set[int]]:
    wrong: dict[str, set[int]] = {}
    for c in report.contenders:
        scores = c.quality.per_item.get(c.quality.primary)
        if scores is not None and len(scores) == len(c.predictions):
            wrong[c.name] = {i for i, v in enumerate(scores) if v < 1.0}
        else:  # a metric without per-item scores: an error is a reply that is not the reference
            wrong[c.name] = {
                i
                for i, (p, r) in enumerate(zip(c.predictions, references, strict=False))
                if p.strip() != r.strip()
            }
    return wrong


def example_rows(run: RunDir, report: EvalReport) -> list[ExampleRow]:
    test = load_split(run.split_file("test")) if run.split_file("test").is_file() else []
    n = report.test_rows or max((len(c.predictions) for c in report.contenders), default=0)
    inputs = [e.user_text for e in test[:n]] or [s.input for s in report.samples]
    references = [e.completion or "" for e in test[:n]] or [s.reference for s in report.samples]
    wrong = _wrong(report, references)
    labels = report.labels or []
    rows = []
    for i, (text, reference) in enumerate(zip(inputs, references, strict=False)):
        predictions = {c.name: c.predictions[i] for c in report.contenders if i < len(c.predictions)}
        rows.append(
            ExampleRow(
                index=i,
                input=text,
                reference=reference,
                label=(match_label(reference, labels) or "") if labels else "",
                predictions=predictions,
                reply_labels={n: match_label(p, labels) or OTHER for n, p in predictions.items()}
                if labels
                else {},
                wrong=[name for name, rows_wrong in wrong.items() if i in rows_wrong],
            )
        )
    return rows


def confusions(report: EvalReport, rows: list[ExampleRow]) -> list[Confusion]:
    labels = report.labels or []
    if not labels:
        return []
    found = []
    for c in report.contenders:
        counts = {label: dict.fromkeys([*labels, OTHER], 0) for label in labels}
        for row in rows:
            if row.label and c.name in row.predictions:
                counts[row.label][row.reply_labels[c.name]] += 1
        shown, columns = labels, [*labels, OTHER]
        if len(labels) > COMPACT_ABOVE:
            # Many labels (77 intents, say): only the labels of the test rows as rows, and the
            # labels some reply named as columns; the full matrix would be wider than any screen.
            shown = [label for label in labels if any(counts[label].values())]
            named = {p for label in shown for p, n in counts[label].items() if n}
            columns = [p for p in [*labels, OTHER] if p in named]
        found.append(Confusion(c.name, shown, columns, counts))
    return found


def view_run(path: Path, jobs: Jobs | None = None) -> RunView:
    run = RunDir(path)
    view = RunView(summary=summarize_run(path, jobs))
    try:
        view.config_yaml = yaml.safe_dump(run.config().model_dump(mode="json"), sort_keys=False)
    except Exception as exc:
        view.problems["config"] = _problem(exc)
    if run.data_report.is_file():
        try:
            view.data_report = DataReport.model_validate_json(run.data_report.read_bytes())
        except Exception as exc:
            view.problems["data"] = f"{run.data_report}: not a readable data report ({_problem(exc)})"
    view.metrics, _ = read_metrics(run.metrics)
    if run.evaluated:
        try:
            view.report = run.eval_report()
            view.examples = example_rows(run, view.report)
            view.confusions = confusions(view.report, view.examples)
        except Exception as exc:
            view.problems["eval"] = _problem(exc)
    try:
        view.human = run.human_eval()
    except Exception as exc:
        view.problems["human"] = _problem(exc)
    return view
