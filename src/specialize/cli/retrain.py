"""`specialize retrain NAME --new DATA`: a challenger version, promoted only if it wins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specialize.cli.adapters import RegistryOpt
from specialize.cli.common import console, quiet_libraries, user_errors

# Exit codes: 0 promoted, 5 kept out (as `specialize watch`), 2 a user error.
KEPT_EXIT_CODE = 5


@user_errors
def retrain(
    name: Annotated[
        str, typer.Argument(help="Adapter name in the registry; its current version is the parent.")
    ],
    new: Annotated[
        list[Path] | None,
        typer.Option("--new", help="New labelled rows, in the parent's training format (repeatable)."),
    ] = None,
    from_review: Annotated[
        list[Path] | None,
        typer.Option(
            "--from-review",
            help="Corrections of `specialize review export` (its folder or sft.jsonl), repeatable.",
        ),
    ] = None,
    from_log: Annotated[
        Path | None, typer.Option("--from-log", help="A request log whose requests --labels labels.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help='JSON lines {"id": LOG_ROW_ID, "label": REPLY} for --from-log.'),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Retrain directory (default runs/NAME-retrain-TIME).")
    ] = None,
    margin: Annotated[
        float,
        typer.Option("--margin", help="Largest drop on the old test split tolerated (95% lower bound)."),
    ] = 0.05,
    holdout: Annotated[
        float, typer.Option("--holdout", help="Share of the new rows held out to judge the challenger on.")
    ] = 0.3,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override the parent's train.max_steps.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help="Override the parent's train.epochs.")
    ] = None,
    from_parent: Annotated[
        bool,
        typer.Option(
            "--from-parent", help="Start the challenger from the current version's adapter, not a new one."
        ),
    ] = False,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Decide and register the challenger, but do not switch.")
    ] = False,
    registry: RegistryOpt = None,
) -> None:
    """Train a challenger on the parent's rows plus new ones; promote it only when it is not worse
    on the frozen test split and better on the new rows. Exit code 0 promoted, 5 kept."""
    quiet_libraries()
    from specialize.loop.retrain import NewRows, RetrainOptions
    from specialize.loop.retrain import retrain as run_retrain
    from specialize.registry import AdapterRegistry

    rows = NewRows(
        data=list(new or []), reviewed=list(from_review or []), request_log=from_log, labels=labels
    )
    options = RetrainOptions(
        margin=margin,
        holdout_fraction=holdout,
        out=out,
        max_steps=max_steps,
        epochs=epochs,
        promote=not no_promote,
        from_parent=from_parent,
    )
    with console.status(f"retraining {name}"):
        decision = run_retrain(name, rows, options, registry=AdapterRegistry(registry))
    print_decision(decision)
    if decision.outcome != "promoted":
        raise typer.Exit(KEPT_EXIT_CODE)


def print_decision(decision) -> None:
    """The comparison table and the verdict of a `loop.decisions.RetrainDecision`."""
    from rich.table import Table

    from specialize.format import number, signed

    r = decision.rows
    console.print(
        f"rows: {r.parent_train} of the parent + {r.added} new trained on ({r.new_given} given, "
        f"{r.duplicates} already known, {r.corrected} corrections), {r.holdout} new held out"
    )
    table = Table(
        title=f"{decision.name}: challenger v{decision.challenger_version} vs current v{decision.current_version}",
        title_justify="left",
    )
    for column in (
        "rows",
        "n",
        "metric",
        f"current v{decision.current_version}",
        f"challenger v{decision.challenger_version}",
        "difference",
        "p",
    ):
        table.add_column(column, justify="left" if column in ("rows", "metric") else "right")
    for label, c in (("old test split", decision.old_test), ("new rows (held out)", decision.new_rows)):
        table.add_row(
            label,
            str(c.rows),
            c.metric,
            f"{number(c.current)} [{number(c.current_low)}, {number(c.current_high)}]",
            f"{number(c.challenger)} [{number(c.challenger_low)}, {number(c.challenger_high)}]",
            f"{signed(c.diff)} [{signed(c.diff_low)}, {signed(c.diff_high)}]",
            f"{c.p_value:.3g}",
        )
    console.print(table)
    style = "green" if decision.outcome == "promoted" else "yellow"
    console.print(f"[{style}]{decision.reason}[/]", highlight=False)
    s = decision.seconds
    console.print(
        f"[dim]merge {s.merge:.1f} s, train {s.train:.1f} s, compare {s.compare:.1f} s; "
        f"report {Path(decision.challenger_run).parent / 'decision.json'}[/]"
    )
