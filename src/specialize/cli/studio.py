"""`specialize studio`: the web app over the runs folder, the adapter registry and the request log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.common import console, quiet_libraries, user_errors


@user_errors
def studio(
    runs: Annotated[Path, typer.Option("--runs", help="The runs folder.")] = Path("runs"),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Interface; anything but loopback requires the printed token.")
    ] = "127.0.0.1",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Folder of data files for New run (default: the runs folder's parent)."
        ),
    ] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="Adapter registry folder.")] = None,
    request_log: Annotated[
        Path | None, typer.Option("--request-log", help="The server's request log.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Require this token (default: a random one off loopback).")
    ] = None,
) -> None:
    """Start the studio: runs, live training curves, evaluation, playground, drift and blind review."""
    quiet_libraries()
    import uvicorn

    from specialize.studio.app import create_app
    from specialize.studio.settings import StudioSettings

    settings = StudioSettings.for_host(
        runs, host, data=data_dir, registry=registry, request_log=request_log, token=token
    )
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")
    console.print(f"studio over {settings.runs}: open [bold]{address}[/]", highlight=False, soft_wrap=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.jobs.stop_all()
