"""`specialize review`: the human evaluation of a run, and its judgments as training data.

Judgments are made in the studio (`specialize studio`, Review page) and stored in the runs
folder's review.sqlite; these commands read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from specialize import format as fmt
from specialize.cli.common import console, user_errors

review_app = typer.Typer(
    help="Blind human review: its summary, and its export as DPO/KTO/SFT data.", no_args_is_help=True
)

RunOpt = Annotated[Path, typer.Option("--run", help="The reviewed run directory.")]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Judgments store (default: review.sqlite in the run's folder).")
]


def _open(run: Path, store: Path | None):
    from specialize.review.store import ReviewStore
    from specialize.review.summary import store_for_run
    from specialize.run_dir import open_run

    run_dir = open_run(run)
    return run_dir, ReviewStore(store or store_for_run(run_dir))


@review_app.command("summary")
@user_errors
def summary(run: RunOpt, store: StoreOpt = None) -> None:
    """Win rate of every contender pair with its 95% interval, and reviewer agreement;
    writes RUN/eval/human.json."""
    from specialize.review.summary import update_run_summary

    run_dir, judgments = _open(run, store)
    result = update_run_summary(judgments, run_dir)
    table = Table(
        title=f"human review of {run_dir.path.name}: {result.judgments} judgments, "
        f"{len(result.reviewers)} reviewer(s)"
    )
    for column in ("pair", "judgments", "win rate of the first [95% CI]", "ties", "both bad"):
        table.add_column(column)
    for p in result.pairs:
        rate = f"{fmt.number(p.win_rate, 2)} [{fmt.number(p.ci_low, 2)}, {fmt.number(p.ci_high, 2)}]"
        table.add_row(f"{p.first} vs {p.second}", str(p.judgments), rate, str(p.ties), str(p.both_bad))
    console.print(table)
    for a in result.agreement:
        console.print(
            f"agreement {a.reviewers[0]} / {a.reviewers[1]}: kappa {fmt.number(a.kappa, 2)} "
            f"on {a.shared_items} shared items (raw {fmt.number(a.raw_agreement, 2)})"
        )
    console.print(f"wrote {run_dir.human_eval_file}")


@review_app.command("export")
@user_errors
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for dpo.jsonl, kto.jsonl, sft.jsonl.")],
    run: Annotated[Path | None, typer.Option("--run", help="The reviewed run directory.")] = None,
    log: Annotated[
        Path | None,
        typer.Option("--log", help="Or: the request log whose traffic was reviewed (needs --store)."),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Write the judgments of a run (or of logged traffic) as DPO pairs, KTO rows and corrected
    replies (SFT), each checked as `specialize check` checks it."""
    from specialize.review.export import export_judgments
    from specialize.review.items import log_source, run_source
    from specialize.review.store import ReviewStore
    from specialize.review.summary import update_run_summary

    if (run is None) == (log is None):
        raise typer.BadParameter("give one of --run RUN or --log REQUEST_LOG")
    if run is not None:
        run_dir, judgments = _open(run, store)
        source, what = run_source(run_dir), run_dir.path.name
    else:
        if store is None:
            raise typer.BadParameter("--log needs --store (the studio keeps it in RUNS/review.sqlite)")
        run_dir, judgments = None, ReviewStore(store)
        source, what = log_source(log), str(log)
    result = export_judgments(judgments.judgments(source=source), out)
    if run_dir is not None:
        update_run_summary(judgments, run_dir)
    console.print(f"{result.judgments} judgments of {what}")
    for f in result.files:
        state = "[green]ok[/]" if f.ok else f"[red]{len(f.errors)} error(s)[/]"
        console.print(f"  {f.kind}: {f.rows} rows -> {f.path}  {state} (specialize check: {f.format})")
        for error in f.errors[:10]:
            console.print(f"    {error}", highlight=False)
    for kind, why in result.skipped.items():
        console.print(f"  {kind}: no file ({why})")
    if not result.ok:
        raise typer.Exit(1)
