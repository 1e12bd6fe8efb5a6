"""`specialize eval RUN` and `specialize run CONFIG`: measure a run against the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import console, quiet_libraries, user_errors


@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    max_test_examples: Annotated[
        int | None, typer.Option(help="Evaluate on at most this many test rows.")
    ] = None,
) -> None:
    """Fine-tuned model vs zero-shot and few-shot prompting: quality, tokens, latency, cost."""
    quiet_libraries()
    from specialize.api import evaluate as run_evaluation
    from specialize.cli.render import eval_progress, render_eval_table

    with eval_progress(console) as report:
        result = run_evaluation(run, max_test_examples=max_test_examples, progress=report)
    render_eval_table(console, result)
    console.print(f"report: {Path(run) / 'eval' / 'report.html'}")


@user_errors
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<name>).")
    ] = None,
) -> None:
    """check -> train -> eval in one go, from one config file."""
    quiet_libraries()
    from specialize.api import evaluate as run_evaluation
    from specialize.api import resolve_run_config
    from specialize.cli.render import eval_progress, render_eval_table
    from specialize.cli.train import train_with_progress

    run_config = resolve_run_config(config, {})
    out = out or Path("runs") / (run_config.name or config.stem)
    console.rule("[bold]1/3 check and train")
    if not train_with_progress(run_config, out):
        return  # under `accelerate launch`, evaluation is rank 0's alone
    console.rule("[bold]2/3 evaluate")
    with eval_progress(console) as report:
        evaluation = run_evaluation(out, progress=report)
    console.rule("[bold]3/3 report")
    render_eval_table(console, evaluation)
    console.print(f"report: {out / 'eval' / 'report.html'}")
