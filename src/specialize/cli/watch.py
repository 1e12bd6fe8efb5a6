"""`specialize watch NAME`: drift check on a schedule; on an alert with enough new rows, retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.adapters import RegistryOpt
from specialize.cli.common import console, quiet_libraries, user_errors


@user_errors
def watch(
    name: Annotated[
        str, typer.Argument(help="Adapter name in the registry (its current version is watched).")
    ],
    request_log: Annotated[
        Path, typer.Option("--log", "-l", help="The server's request log (requests.sqlite).")
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data", help="Folder of new labelled rows (files in the run's training format)."),
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="Check on a schedule: 90s, 15m, 1h, 1d (runs until Ctrl-C).")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One cycle, then exit with its code (for cron).")
    ] = False,
    min_rows: Annotated[
        int, typer.Option("--min-rows", help="New labelled rows (not already learnt) needed to retrain.")
    ] = 20,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="POST each alert and decision as JSON to this URL.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with drift thresholds (default: the run's).")
    ] = None,
    window: Annotated[int | None, typer.Option("--window", help="Test the most recent N requests.")] = None,
    margin: Annotated[
        float, typer.Option("--margin", help="Retrain: largest drop on the old test split tolerated.")
    ] = 0.05,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Retrain: override train.max_steps.")
    ] = None,
    from_parent: Annotated[
        bool, typer.Option("--from-parent", help="Retrain: start from the current version's adapter.")
    ] = False,
    runs: Annotated[Path, typer.Option("--runs", help="Where retrain directories go.")] = Path("runs"),
    registry: RegistryOpt = None,
) -> None:
    """Watch an adapter: drift alert + enough new rows -> retrain -> promote if it wins.

    Exit codes (--once, or the last cycle): 0 no alert, 3 alert without a retrain (no --data, or
    not enough rows yet), 4 challenger promoted, 5 challenger kept, 2 a user error."""
    quiet_libraries()
    from specialize.cli.retrain import print_decision
    from specialize.errors import ConfigError
    from specialize.loop.decisions import WatchCycle
    from specialize.loop.retrain import RetrainOptions
    from specialize.loop.watch import EXIT_CODES, WatchOptions, parse_every, watch_once
    from specialize.loop.watch import watch as watch_loop
    from specialize.registry import AdapterRegistry

    if once == (every is not None):
        raise ConfigError("pass exactly one of --once and --every INTERVAL")
    options = WatchOptions(
        request_log=request_log,
        data_dir=data_dir,
        min_rows=min_rows,
        webhook=webhook,
        drift_config=config,
        window=window,
        retrain=RetrainOptions(margin=margin, max_steps=max_steps, from_parent=from_parent),
        retrain_root=runs,
    )
    store = AdapterRegistry(registry)

    def show(cycle: WatchCycle) -> None:
        console.print(
            f"{cycle.created}  {name} v{cycle.version}: drift {cycle.drift_level} over {cycle.requests} "
            f"requests -> [bold]{cycle.outcome}[/]",
            highlight=False,
        )
        if cycle.decision is not None:
            print_decision(cycle.decision)
        else:
            console.print(f"  {cycle.reason}", highlight=False)

    if once:
        cycle = watch_once(name, options, registry=store)
        show(cycle)
    else:
        cycle = watch_loop(name, options, parse_every(every or ""), registry=store, on_cycle=show)
    code = EXIT_CODES[cycle.outcome] if cycle is not None else 0
    if code:
        raise typer.Exit(code)
