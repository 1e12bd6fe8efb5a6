"""`specialize export`: write a trained run as merged weights, GGUF or a PEFT adapter directory,
or its base model as the plain HF directory that vLLM serves adapters on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import console, quiet_libraries, user_errors


@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="merged | gguf | peft | base")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New output directory (must not exist or be empty).")
    ],
    dtype: Annotated[
        str | None, typer.Option(help="merged / base weights: f32 (default), f16 or bf16.")
    ] = None,
    quant: Annotated[str | None, typer.Option(help="GGUF tensors: f16 (default), q8_0 or f32.")] = None,
    check_samples: Annotated[
        int, typer.Option(help="Test prompts used to check a merged or base export.")
    ] = 8,
) -> None:
    """Export a run for deployment: merged HF weights, GGUF for llama.cpp, or a PEFT dir for vLLM.

    `--format base` writes the run's base model (for a bundled GGUF, its safetensors conversion) as
    a plain HF directory: `vllm serve` that with `--enable-lora --lora-modules NAME=PEFT_DIR`."""
    quiet_libraries()
    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # library deprecation notes, not the user's concern
    from specialize.export import export_run

    with console.status(f"exporting {run} as {fmt}"):
        result = export_run(run, fmt, out, dtype=dtype, quant=quant, check_samples=check_samples)
    console.print(
        f"[green]exported[/] {result.out}  {result.size_bytes / 1e6:.1f} MB  ({len(result.files)} files)"
    )
    checks = result.checks
    if fmt in ("merged", "base") and checks.get("agreement") is not None:
        same = round(checks["agreement"] * checks["samples"])
        color = "green" if same == checks["samples"] else "yellow"
        source = "base + adapter" if fmt == "merged" else "the base as loaded for training"
        console.print(
            f"[{color}]greedy agreement with {source}: {same}/{checks['samples']}[/] test prompts "
            f"({checks['max_new_tokens']} tokens), max logit difference {checks['max_logit_diff']:.2e}"
        )
    elif fmt == "gguf":
        console.print(
            f"round trip: {checks['tensors']} tensors, max error {checks['max_abs_error']:.2e} "
            f"({checks['max_rel_error']:.2e} of the tensor's range; {checks['quant']} tolerance "
            f"{checks['tolerance']:.2e})"
        )
    elif fmt == "peft":
        for warning in checks.get("warnings", []):
            console.print(f"[yellow]note:[/] {warning}")
    console.print(f"model card and usage: {result.out / 'README.md'}")
