"""`specialize serve`: one base model and the registry's adapters behind an OpenAI-compatible API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import console, quiet_libraries, user_errors
from specialize.models.bundled import DEFAULT_MODEL

API_KEY_ENV = "SPECIALIZE_API_KEYS"


@user_errors
def serve(
    model: Annotated[
        str, typer.Option("--model", help="Base model: bundled alias, HF dir, .gguf, hub id.")
    ] = DEFAULT_MODEL,
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", help="Serve only these registry adapters (repeatable).")
    ] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="Adapter registry directory.")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key", help=f"Require this bearer token (repeatable; or ${API_KEY_ENV}, comma-separated)."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together in one forward pass.")] = 16,
    max_queue: Annotated[
        int, typer.Option(help="Waiting requests accepted beyond the batch (then 503).")
    ] = 64,
    max_adapters: Annotated[int, typer.Option(help="Adapters resident in memory (LRU).")] = 32,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            help="A longer prompt arriving while others decode is prefilled this many tokens at a time."
        ),
    ] = 256,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted.")] = 2048,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Largest max_tokens a request may ask for.")
    ] = 1024,
    max_body_kb: Annotated[int, typer.Option(help="Largest request body, in KiB.")] = 1024,
    request_log: Annotated[
        Path | None,
        typer.Option("--request-log", help="SQLite request log (default: $SPECIALIZE_HOME/requests.sqlite)."),
    ] = None,
    no_request_log: Annotated[bool, typer.Option("--no-request-log", help="Do not log requests.")] = False,
    hashes_only: Annotated[
        bool,
        typer.Option("--log-hashes-only", help="Log sha256 hashes of prompts and completions, not the text."),
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads; default: all cores.")] = None,
    abstain_below: Annotated[
        str | None,
        typer.Option(
            help="Label replies less confident than P answer the fallback label (the choice says "
            "abstained); 'recommended': each adapter's threshold from its run's evaluation."
        ),
    ] = None,
    fallback_label: Annotated[
        str | None,
        typer.Option(help="What an abstaining reply says; default: the catch-all label, else 'unknown'."),
    ] = None,
) -> None:
    """Serve the base model and its adapters over HTTP, OpenAI-compatible (Ctrl-C stops cleanly)."""
    quiet_libraries()
    from specialize.monitor.drift import drift_for_adapter
    from specialize.serve.app import serve as run_server
    from specialize.serve.options import ServeOptions
    from specialize.serve.server import ModelServer

    keys = list(api_key or []) + [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    options = ServeOptions(
        model=model,
        host=host,
        port=port,
        adapters=adapter or None,
        registry=registry,
        api_keys=keys,
        max_batch=max_batch,
        max_queue=max_queue,
        max_resident_adapters=max_adapters,
        prefill_chunk=prefill_chunk,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens,
        max_body_bytes=max_body_kb * 1024,
        request_log=not no_request_log,
        request_log_path=request_log,
        log_text=not hashes_only,
        threads=threads,
        abstain_below=abstain_below,
        fallback_label=fallback_label,
    )

    def ready(server: ModelServer) -> None:
        names = ", ".join(sorted(server.served)) or "none"
        console.print(f"[green]serving[/] {server.base_id} with adapters: {names}", highlight=False)
        if server.skipped:
            console.print(f"[yellow]skipped[/] (trained on another base): {', '.join(server.skipped)}")
        for name, reason in server.contracts_off().items():
            console.print(f"[yellow]{name}: output contract off by default[/]: {reason}", highlight=False)
        auth = "API key required" if keys else "no API key"
        console.print(f"OpenAI base_url: http://{host}:{port}/v1  ({auth}; Ctrl-C stops)", highlight=False)

    console.print(f"[dim]loading {model}...[/]", highlight=False)
    try:
        # The drift route's reports come from the monitor layer, which sits above serving.
        run_server(options, ready=ready, drift=drift_for_adapter)
    except KeyboardInterrupt:  # uvicorn has already drained in-flight requests
        pass
    console.print("stopped")
