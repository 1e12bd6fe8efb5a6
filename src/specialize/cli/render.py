"""Rich renderings of library results for the terminal. Only the CLI calls this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from specialize.data.checks import DataReport
from specialize.records.eval import EvalReport
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
    preference = report.preference
    if preference is not None:
        table = Table(title=f"Preference data ({preference.kind})", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        counts = (
            [("pairs", preference.pairs)]
            if preference.kind == "pairs"
            else [
                ("rated replies", preference.rated),
                ("desirable", preference.desirable),
                ("undesirable", preference.undesirable),
            ]
        )
        for key, value in counts:
            table.add_row(key, str(value))
        share = preference.unique_prompt_share
        table.add_row(
            "unique prompts", f"{preference.unique_prompts} ({share:.0%})" if share is not None else "-"
        )
        for key, value in (
            ("prompt", preference.prompt_mean),
            ("chosen" if preference.kind == "pairs" else "reply", preference.chosen_mean),
            ("rejected", preference.rejected_mean),
        ):
            if value is not None:
                table.add_row(f"mean {key} {preference.unit}", f"{value:.1f}")
        if preference.unit == "tokens":
            table.add_row("longer than max_seq_len", str(preference.too_long.count))
        console.print(table)
    estimate = data.get("estimate")
    if estimate:
        table = Table(title="Estimate", show_header=False, title_justify="left")
        for key, value in estimate.items():
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
        console.print(table)
    _render_contract(console, report)
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


def _render_contract(console: Console, report: DataReport) -> None:
    """The contract constrained decoding would enforce, so a wrong one is seen before training."""
    if report.contract is None or not report.contract.summary:
        return
    console.print(
        "[bold]Output contract[/] (inferred from the training replies; data.output_schema overrides)"
    )
    for line in report.contract.summary:
        console.print(f"  {line}", highlight=False, markup=False)


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


def render_eval_table(console: Console, report: EvalReport) -> None:
    from specialize.evaluate.table import Table as EvalTable
    from specialize.evaluate.table import (
        catch_all_table,
        confidence_table,
        constraint_table,
        learning_curve_table,
        preference_table,
        skipped_lines,
        summary_table,
        worst_table,
    )

    def show(table: EvalTable) -> None:
        shown = Table(title=table.title, title_justify="left")
        for i, col in enumerate(table.columns):
            # The first column names the row (a contender, a label, a field): text, left-aligned.
            shown.add_column(col, justify="left" if i == 0 or col in ("metric", "replies") else "right")
        for row, highlight in zip(table.rows, table.highlight, strict=True):
            shown.add_row(*row, style="bold green" if highlight else None)
        console.print(shown)

    show(summary_table(report))
    for line in skipped_lines(report):
        console.print(Text(line, style="yellow"))
    tables = (
        worst_table(report),
        confidence_table(report),
        catch_all_table(report),
        learning_curve_table(report),
        preference_table(report),
    )
    for table in tables:
        if table:
            show(table)
    constrained = constraint_table(report)
    if constrained:
        show(constrained)
        if not report.contract_verdict.apply_by_default:
            console.print(
                f"[yellow]not applied by default:[/] {report.contract_verdict.reason}", highlight=False
            )
    if report.samples:
        names = list(report.samples[0].predictions)
        shown = Table(title="Sample test rows", title_justify="left")
        for col in ("request", "expected", *names):
            shown.add_column(col, overflow="fold")
        for sample in report.samples:
            cells = [_mark(sample.predictions[n], sample.reference) for n in names]
            shown.add_row(Text(sample.input[:80]), Text(sample.reference), *cells)
        console.print(shown)
    console.print(f"[bold]{report.headline}[/]", highlight=False)


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
