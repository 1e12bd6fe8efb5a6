"""Rich renderings of library results for the terminal. Only the CLI calls this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from specialize.data.checks import DataReport
from specialize.train.callbacks import TrainProgress

MAX_LISTED = 15


def render_data_report(console: Console, report: DataReport) -> None:
    data = report.model_dump()
    summary = Table(title="Data check", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    for key in ("files", "rows", "format", "task", "n_errors", "n_warnings"):
        if key in data:
            value = data[key]
            summary.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    console.print(summary)
    tokens = data.get("tokens")
    if tokens:
        table = Table(title="Tokens (base model's tokenizer and chat template)", title_justify="left")
        table.add_column("")
        for col in ("p50", "p95", "max"):
            table.add_column(col, justify="right")
        for part in ("prompt", "completion"):
            stats = tokens.get(part) or {}
            table.add_row(part, *(str(stats.get(c, "-")) for c in ("p50", "p95", "max")))
        console.print(table)
    estimate = data.get("estimate")
    if estimate:
        table = Table(title="Estimate", show_header=False, title_justify="left")
        for key, value in estimate.items():
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
        console.print(table)
    for kind, style in (("errors", "red"), ("warnings", "yellow")):
        items = data.get(kind) or []
        if items:
            console.print(f"[bold {style}]{kind} ({len(items)})[/]")
            for item in items[:MAX_LISTED]:
                console.print(f"  {item}", highlight=False, markup=False)
            if len(items) > MAX_LISTED:
                console.print(f"  ... {len(items) - MAX_LISTED} more (see --json)")
    verdict = "[green]ok[/]" if report.ok else "[red]errors found: fix them before training[/]"
    console.print(verdict)


@contextmanager
def training_progress(console: Console) -> Iterator[Callable[[TrainProgress], None]]:
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=None, loss="-", val="-", tps="-")

        def report(event: TrainProgress) -> None:
            progress.update(
                task,
                completed=event.step,
                total=event.max_steps or None,
                loss=f"{event.loss:.4f}" if event.loss is not None else "-",
                val=f"{event.val_loss:.4f}" if event.val_loss is not None else "-",
                tps=f"{event.tokens_per_second:.0f}" if event.tokens_per_second else "-",
            )

        yield report


def render_eval_table(console: Console, report: dict) -> None:
    from specialize.evaluate.report import (
        CONSTRAINT_COLUMNS,
        _f,
        constraint_cells,
        constraint_rows,
        constraint_title,
        summary_rows,
    )

    table = Table(
        title=f"{report['task']} task, {report['test_rows']} held-out test rows", title_justify="left"
    )
    for col in (
        "contender",
        "metric",
        "value [95% CI]",
        "invalid",
        "in tok",
        "out tok",
        "p50 ms",
        "req/s",
        "$/1k req",
        "break-even",
    ):
        table.add_column(col, justify="left" if col in ("contender", "metric") else "right")
    for r in summary_rows(report):
        style = "bold green" if r["contender"] == "fine-tuned" else None
        table.add_row(
            r["contender"],
            r["metric"],
            f"{_f(r['value'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]",
            _f(r["invalid"]),
            _f(r["prompt_tokens"], 1),
            _f(r["completion_tokens"], 1),
            _f(r["latency_p50_ms"], 0),
            _f(r["requests_per_s"], 2),
            _f(r["cost_per_1k"], 4),
            "-" if r["break_even"] is None else f"{int(r['break_even']):,}",
            style=style,
        )
    console.print(table)
    constrained = constraint_rows(report)
    if constrained:
        con = Table(title=f"Decoding under the {constraint_title(report)}", title_justify="left")
        for col in CONSTRAINT_COLUMNS:
            con.add_column(col, justify="left" if col == "contender" else "right")
        for r in constrained:
            con.add_row(*constraint_cells(r), style="bold green" if r["contender"] == "fine-tuned" else None)
        console.print(con)
    samples = report.get("samples") or []
    if samples:
        names = list(samples[0]["predictions"])
        shown = Table(title="Sample test rows", title_justify="left")
        for col in ("request", "expected", *names):
            shown.add_column(col, overflow="fold")
        for sample in samples:
            cells = [_mark(sample["predictions"][n], sample["reference"]) for n in names]
            shown.add_row(Text(sample["input"][:80]), Text(sample["reference"]), *cells)
        console.print(shown)
    console.print(f"[bold]{report['headline']}[/]", highlight=False)


def _mark(prediction: str, reference: str) -> Text:
    """The answer in green when it is exactly the expected one, red otherwise."""
    return Text(
        prediction[:60] or "(empty)", style="green" if prediction.strip() == reference.strip() else "red"
    )


@contextmanager
def eval_progress(console: Console) -> Iterator[Callable]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, int] = {}

        def report(event) -> None:
            if event.contender not in tasks:
                tasks[event.contender] = progress.add_task(event.contender, total=event.total)
            progress.update(tasks[event.contender], completed=event.done)

        yield report
