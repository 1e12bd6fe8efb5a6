"""The `specialize` command line: a dispatch table from subcommand to a small module.

Each command module parses its options, calls one function of the library (`specialize.api`
or the package that owns the concept), and renders the result with rich. No logic lives here
that the Python API lacks. User errors (`SpecializeError`) print as one clear message, without a
traceback, and set the exit code (`specialize.cli.common.user_errors`).

Command modules import the library inside the command function, not at the top: `specialize
--help` and typos in options then answer at once, without loading torch and transformers.
"""

from __future__ import annotations

import typer

from specialize.cli import adapters, check, evaluate, export, generate, monitor, review, serve, train
from specialize.cli import retrain as retrain_cmd
from specialize.cli import studio as studio_cmd
from specialize.cli import watch as watch_cmd

app = typer.Typer(
    help="Turn a general pre-trained LLM into a specialist for one task, and prove it paid off.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# subcommand -> the function that implements it, in the order `--help` lists them.
COMMANDS = {
    "check": check.check,
    "train": train.train,
    "eval": evaluate.evaluate,
    "run": evaluate.run,
    "generate": generate.generate,
    "chat": generate.chat,
    "serve": serve.serve,
    "export": export.export,
    "profile": monitor.profile,
    "drift": monitor.drift,
    "retrain": retrain_cmd.retrain,
    "watch": watch_cmd.watch,
    "studio": studio_cmd.studio,
}
GROUPS = {"adapters": adapters.adapters_app, "review": review.review_app}

for name, command in COMMANDS.items():
    app.command(name=name)(command)
for name, group in GROUPS.items():
    app.add_typer(group, name=name)

__all__ = ["COMMANDS", "GROUPS", "app"]
