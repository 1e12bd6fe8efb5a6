"""The `specialize` command line: a thin shell over the library.

Each command parses its options, calls one library function, and renders the result with rich.
No logic lives here that the Python API lacks. User errors (`SpecializeError`) are printed as one
clear message, without a traceback, and set the exit code. Larger command groups live in
`specialize.commands.*` and are registered at the bottom of this file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from specialize.cli_support import console, quiet_libraries, user_errors

app = typer.Typer(
    help="Turn a general pre-trained LLM into a specialist for one task, and prove it paid off.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Training examples (.jsonl/.json/.csv/.parquet).")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Base model: bundled alias, HF dir, .gguf, hub id.")
]
InputFieldOpt = Annotated[str | None, typer.Option("--input-field", help="Column holding the request.")]
OutputFieldOpt = Annotated[str | None, typer.Option("--output-field", help="Column holding the answer.")]


@app.command()
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
    max_seq_len: Annotated[int, typer.Option(help="Rows longer than this would be truncated.")] = 256,
    epochs: Annotated[float, typer.Option(help="Epochs, for the time and cost estimate.")] = 1.0,
    no_tokens: Annotated[
        bool, typer.Option("--no-tokens", help="Skip token statistics (no model needed).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
    ] = None,
) -> None:
    """Validate examples: errors with file:line, duplicates, leakage, balance, tokens, cost."""
    quiet_libraries()
    from specialize.api import check_data
    from specialize.render import render_data_report

    result = check_data(
        data,
        test=test,
        input_field=input_field,
        output_field=output_field,
        system_prompt=system_prompt,
        prompt_template=prompt_template,
        model=None if no_tokens else (model or "smollm2-135m-instruct"),
        max_seq_len=max_seq_len,
        epochs=epochs,
    )
    if report is not None:
        from specialize.atomic import atomic_write_text

        atomic_write_text(report, result.model_dump_json(indent=2))
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        render_data_report(console, result)
    raise typer.Exit(0 if result.ok else 2)


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config (YAML).")] = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    method: Annotated[str | None, typer.Option(help="lora (default) or full.")] = None,
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
    _train_and_report(run_config, out, resume=resume)


FreeOpt = Annotated[
    bool,
    typer.Option("--free", help="Decode freely instead of under the run's output contract (labels, schema)."),
]


@app.command()
@user_errors
def generate(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    text: Annotated[list[str], typer.Argument(help="One or more requests.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 64,
    free: FreeOpt = False,
) -> None:
    """Answer requests with the fine-tuned model (base + adapter), under the run's output contract."""
    quiet_libraries()
    from specialize.inference import generate as run_generate
    from specialize.inference import load_run

    trained = load_run(run)
    replies = run_generate(
        trained.loaded,
        [trained.messages_for(t) for t in text],
        max_new_tokens=max_new_tokens,
        constraint=None if free else trained.output_contract(),
    )
    for reply in replies:
        console.print(reply.text, highlight=False, markup=False)


@app.command()
@user_errors
def chat(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 256,
    free: FreeOpt = False,
) -> None:
    """An interactive session with the fine-tuned model (each line is one request)."""
    quiet_libraries()
    from specialize.inference import generate as run_generate
    from specialize.inference import load_run

    trained = load_run(run)
    console.print(f"[dim]{run} loaded; an empty line or Ctrl-D ends.[/]")
    while True:
        try:
            text = console.input("[bold]> [/]")
        except EOFError:
            break
        if not text.strip():
            break
        reply = run_generate(
            trained.loaded,
            [trained.messages_for(text)],
            max_new_tokens=max_new_tokens,
            constraint=None if free else trained.output_contract(),
        )[0]
        console.print(reply.text, highlight=False, markup=False)


@app.command("eval")
@user_errors
def eval_command(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    max_test_examples: Annotated[
        int | None, typer.Option(help="Evaluate on at most this many test rows.")
    ] = None,
) -> None:
    """Fine-tuned model vs zero-shot and few-shot prompting: quality, tokens, latency, cost."""
    quiet_libraries()
    from specialize.evaluate.runner import evaluate
    from specialize.render import eval_progress, render_eval_table

    with eval_progress(console) as report:
        result = evaluate(run, max_test_examples=max_test_examples, progress=report)
    render_eval_table(console, result)
    console.print(f"report: {Path(run) / 'eval' / 'report.html'}")


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<name>).")
    ] = None,
) -> None:
    """check -> train -> eval in one go, from one config file."""
    quiet_libraries()
    from specialize.api import resolve_run_config
    from specialize.evaluate.runner import evaluate
    from specialize.render import eval_progress, render_eval_table

    run_config = resolve_run_config(config, {})
    out = out or Path("runs") / (run_config.name or config.stem)
    console.rule("[bold]1/3 check and train")
    if not _train_and_report(run_config, out):
        return  # under `accelerate launch`, evaluation is rank 0's alone
    console.rule("[bold]2/3 evaluate")
    with eval_progress(console) as report:
        evaluation = evaluate(out, progress=report)
    console.rule("[bold]3/3 report")
    render_eval_table(console, evaluation)
    console.print(f"report: {out / 'eval' / 'report.html'}")


def _train_and_report(run_config: Any, out: Path, *, resume: bool = False) -> bool:
    """Train with a progress bar and a summary line; under `accelerate launch` only rank 0 shows
    them (the other ranks train silently). Returns whether this process is rank 0."""
    from specialize.render import training_progress
    from specialize.train.sft import is_main_process
    from specialize.train.sft import train as run_training

    if not is_main_process():
        run_training(run_config, out, resume=resume)
        return False
    with training_progress(console) as report:
        result = run_training(run_config, out, resume=resume, progress=report)
    meta = result.meta
    console.print(
        f"[green]trained[/] {result.run.path}  steps={meta.get('steps')}  "
        f"train_loss={_fmt(meta.get('train_loss'))}  val_loss={_fmt(meta.get('val_loss'))}  "
        f"{meta.get('train_seconds')} s  tokens/s={_fmt(meta.get('tokens_per_second'), 1)}"
    )
    return True


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# Command groups that live in their own modules.
from specialize.commands.adapters import adapters_app  # noqa: E402
from specialize.commands.export import export as export_command  # noqa: E402
from specialize.commands.monitor import drift as drift_command  # noqa: E402
from specialize.commands.monitor import profile as profile_command  # noqa: E402
from specialize.commands.serve import serve as serve_command  # noqa: E402

app.command(name="export")(export_command)
app.command(name="profile")(profile_command)
app.command(name="drift")(drift_command)
app.command(name="serve")(serve_command)
app.add_typer(adapters_app, name="adapters")

__all__ = ["app"]
