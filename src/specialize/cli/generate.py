"""`specialize generate` and `specialize chat`: the fine-tuned model answering requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import FreeOpt, console, err_console, quiet_libraries, user_errors


@user_errors
def generate(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    text: Annotated[list[str], typer.Argument(help="One or more requests.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply.")] = 64,
    free: FreeOpt = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per request: reply, confidence, alternatives."),
    ] = False,
    abstain_below: Annotated[
        str | None,
        typer.Option(
            help="Label replies less confident than P answer the fallback label; "
            "'recommended': the run's threshold from its evaluation."
        ),
    ] = None,
    fallback_label: Annotated[
        str | None,
        typer.Option(help="What an abstaining reply says; default: the catch-all label, else 'unknown'."),
    ] = None,
) -> None:
    """Answer requests with the fine-tuned model (base + adapter), under the run's output contract."""
    quiet_libraries()
    import json

    from specialize.evaluate.answers import answer
    from specialize.inference import load_run

    trained = load_run(run)
    contract = None if free else _announced_contract(trained)
    answers = answer(
        trained,
        text,
        max_new_tokens=max_new_tokens,
        contract=contract,
        with_confidence=as_json,
        abstain_below=abstain_below,
        fallback_label=fallback_label,
    )
    for reply in answers:
        shown = json.dumps(reply.to_dict(), ensure_ascii=False) if as_json else reply.served
        console.print(shown, highlight=False, markup=False, soft_wrap=True)


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
    contract = None if free else _announced_contract(trained)
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
            constraint=contract,
        )[0]
        console.print(reply.text, highlight=False, markup=False)


def _announced_contract(trained):
    """The run's default contract; when evaluation switched it off, say so on stderr."""
    default = trained.default_contract()
    if default.switched_off:
        err_console.print(f"[yellow]decoding freely:[/] {default.reason}", highlight=False)
    return default.contract
