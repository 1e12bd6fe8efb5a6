"""`specialize train`: fine-tune the base model into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize import format as fmt
from specialize.cli.common import (
    DataOpt,
    InputFieldOpt,
    ModelOpt,
    OutputFieldOpt,
    console,
    quiet_libraries,
    user_errors,
)
from specialize.config import RunConfig


@user_errors
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config (YAML).")] = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    method: Annotated[
        str | None, typer.Option(help="lora (default), qlora (a 4-bit base), full, dpo or kto (preferences).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory, e.g. runs/NAME.")] = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    test: Annotated[Path | None, typer.Option("--test", help="Held-out test file.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    max_train_examples: Annotated[int | None, typer.Option(help="Use at most this many rows.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Fine-tune the base model (LoRA by default) and write a run directory."""
    quiet_libraries()
    from specialize.api import resolve_run_config

    if out is None:
        raise typer.BadParameter("--out is required (the run directory, e.g. runs/my-task)")
    overrides = {
        "data.train": str(data) if data else None,
        "data.test": str(test) if test else None,
        "data.input_field": input_field,
        "data.output_field": output_field,
        "model.base": model,
        "method.kind": method,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "data.max_train_examples": max_train_examples,
    }
    run_config = resolve_run_config(config, overrides, name=out.name)
    train_with_progress(run_config, out, resume=resume)


def train_with_progress(run_config: RunConfig, out: Path, *, resume: bool = False) -> bool:
    """Train with a progress bar and a summary line; under `accelerate launch` only rank 0 shows
    them (the other ranks train silently). Returns whether this process is rank 0."""
    from specialize.api import train as run_training
    from specialize.cli.render import training_progress
    from specialize.train.sft import is_main_process

    if not is_main_process():
        run_training(run_config, out, resume=resume)
        return False
    with training_progress(console) as report:
        result = run_training(run_config, out, resume=resume, progress=report)
    record = result.record
    assert record is not None  # rank 0 always writes its record
    console.print(
        f"[green]trained[/] {result.run.path}  steps={record.steps}  "
        f"train_loss={fmt.number(record.train_loss, 4)}  val_loss={fmt.number(record.val_loss, 4)}  "
        f"{record.train_seconds} s  tokens/s={fmt.number(record.tokens_per_second, 1)}"
    )
    return True
