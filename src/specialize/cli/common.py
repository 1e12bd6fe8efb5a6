"""Shared pieces of the command line: consoles, error handling, library quieting.

Every command module of `specialize.cli` imports these; `specialize.cli` registers the commands.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from specialize.errors import SpecializeError

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; reports read better wider.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "140"))
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def user_errors(fn):
    """Print SpecializeErrors as a message and exit with their code; let bugs keep tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecializeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def quiet_libraries() -> None:
    """No hub access, no library progress bars or warnings: the CLI draws its own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Deprecation notices from inside transformers/peft are for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # PEFT imports bitsandbytes whenever it is installed (the qlora extra); its CPU backend then
    # warns about an optional kernels package, on every command, qlora or not.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers missing is reported by the command that needs it
        pass


# Options several commands share, typed once so that their help reads the same everywhere.
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Training examples (.jsonl/.json/.csv/.parquet).")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Base model: bundled alias, HF dir, .gguf, hub id.")
]
InputFieldOpt = Annotated[str | None, typer.Option("--input-field", help="Column holding the request.")]
OutputFieldOpt = Annotated[str | None, typer.Option("--output-field", help="Column holding the answer.")]
FreeOpt = Annotated[
    bool,
    typer.Option("--free", help="Decode freely instead of under the run's output contract (labels, schema)."),
]
