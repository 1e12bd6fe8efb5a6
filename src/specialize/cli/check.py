"""`specialize check DATA`: validate examples before anything is trained."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import (
    InputFieldOpt,
    ModelOpt,
    OutputFieldOpt,
    console,
    quiet_libraries,
    user_errors,
)
from specialize.config import TrainConfig
from specialize.models.bundled import DEFAULT_MODEL


@user_errors
def check(
    data: Annotated[Path, typer.Argument(help="Examples to check.")],
    test: Annotated[
        Path | None, typer.Option("--test", help="Held-out test file, checked for leakage.")
    ] = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    system_prompt: Annotated[str | None, typer.Option(help="System message for every example.")] = None,
    prompt_template: Annotated[str | None, typer.Option(help="Format string over row fields.")] = None,
    model: ModelOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Run config whose training settings the estimate uses."),
    ] = None,
    max_seq_len: Annotated[
        int | None,
        typer.Option(help="Rows longer than this would be truncated (default: --config's, else 256)."),
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            help="Epochs, for the time and cost estimate (default: --config's, else the training default)."
        ),
    ] = None,
    no_tokens: Annotated[
        bool, typer.Option("--no-tokens", help="Skip token statistics (no model needed).")
    ] = False,
    no_calibrate: Annotated[
        bool,
        typer.Option("--no-calibrate", help="Skip the measured training calibration (no time estimate)."),
    ] = False,
    recalibrate: Annotated[
        bool,
        typer.Option(
            "--recalibrate", help="Measure the training speed again instead of using the cached figure."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
    ] = None,
) -> None:
    """Validate examples: errors with file:line, duplicates, leakage, balance, tokens, time and cost."""
    quiet_libraries()
    from specialize.api import check_data, resolve_run_config
    from specialize.atomic import atomic_write_text
    from specialize.cli.render import render_data_report

    run_config = resolve_run_config(config, {}) if config is not None else None
    if run_config is not None and run_config.method.from_run:
        # A preference run on top of another trains that run's base: count tokens with its tokenizer.
        from specialize.train.parent import inherit_parent, parent_run

        run_config = inherit_parent(run_config, parent_run(run_config.method.from_run))
    if run_config is not None:
        model = model or run_config.model.base
        max_seq_len = max_seq_len or run_config.model.max_seq_len
        epochs = epochs or run_config.train.epochs
    result = check_data(
        data,
        test=test,
        input_field=input_field,
        output_field=output_field,
        system_prompt=system_prompt,
        prompt_template=prompt_template,
        model=None if no_tokens else (model or DEFAULT_MODEL),
        max_seq_len=max_seq_len or 256,
        epochs=epochs or TrainConfig().epochs,
        config=run_config,
        calibrate=not no_calibrate,
        recalibrate=recalibrate,
    )
    if report is not None:
        atomic_write_text(report, result.model_dump_json(indent=2))
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        render_data_report(console, result)
    raise typer.Exit(0 if result.ok else 2)
