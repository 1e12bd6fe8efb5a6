"""`specialize adapters add | list | show | remove | promote | rollback | history`: the adapter registry
from the command line."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from specialize.cli.common import console, quiet_libraries, user_errors

adapters_app = typer.Typer(
    help="The adapter registry: named, versioned LoRA adapters that `specialize serve` can serve.",
    no_args_is_help=True,
)

RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Registry directory (default: $SPECIALIZE_REGISTRY, else $SPECIALIZE_HOME/registry).",
    ),
]


@adapters_app.command("add")
@user_errors
def add(
    name: Annotated[str, typer.Argument(help="Adapter name: a-z 0-9 . _ -, e.g. banking77.")],
    source: Annotated[Path, typer.Argument(help="A trained run directory, or a PEFT adapter directory.")],
    base: Annotated[
        str | None,
        typer.Option("--base", help="Base model; required for a PEFT dir whose base cannot be resolved."),
    ] = None,
    registry: RegistryOpt = None,
) -> None:
    """Add an adapter (a new version if the name exists); refuses adapters of another base model."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    record = AdapterRegistry(registry).add(name, source, base=base)
    console.print(
        f"[green]added[/] {record.name} v{record.version}  base={record.base_model_id}  rank={record.rank}  "
        f"{_size(record.size_bytes)}  -> {record.path}"
    )


@adapters_app.command("list")
@user_errors
def list_adapters(
    all_versions: Annotated[bool, typer.Option("--all", help="Every version, not only the latest.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """List the registry's adapters."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    store = AdapterRegistry(registry)
    records = store.list(all_versions=all_versions)
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in records], indent=2) + "\n")
        return
    if not records:
        console.print(f"no adapters in {store.root}; add one with `specialize adapters add NAME RUN_DIR`")
        return
    table = Table(title=f"Adapters in {store.root}", title_justify="left")
    for column in ("name", "version", "base model", "rank", "size", "created", "output", "eval"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.name,
            f"v{r.version}",
            r.base_model_id,
            str(r.rank),
            _size(r.size_bytes),
            _when(r.created),
            _contract(r.output_contract),
            r.eval_headline or "-",
        )
    console.print(table)


@adapters_app.command("show")
@user_errors
def show(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Default: the latest.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Show one adapter's metadata as JSON."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    record = AdapterRegistry(registry).get(name, version)
    data = record.to_dict()
    data["created"] = _when(record.created)
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@adapters_app.command("remove")
@user_errors
def remove(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Remove only this version.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Remove an adapter (every version, or one)."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    removed = AdapterRegistry(registry).remove(name, version)
    versions = ", ".join(f"v{r.version}" for r in removed)
    console.print(f"[green]removed[/] {name} ({versions})")


@adapters_app.command("promote")
@user_errors
def promote(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    version: Annotated[str, typer.Argument(help="The version to serve as NAME, e.g. v3.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Kept in the history.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Serve VERSION as NAME from now on; running servers follow without a restart."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    done = AdapterRegistry(registry).promote(name, _version(version), reason=reason)
    console.print(f"[green]promoted[/] {name} v{done.version} is current (was v{done.previous})")


@adapters_app.command("rollback")
@user_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Kept in the history.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Serve the version that was current before the last promotion again."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    done = AdapterRegistry(registry).rollback(name, reason=reason)
    console.print(f"[green]rolled back[/] {name} v{done.version} is current (was v{done.previous})")


@adapters_app.command("history")
@user_errors
def history(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    registry: RegistryOpt = None,
) -> None:
    """Every switch of NAME's current version and every retrain decision, oldest first."""
    quiet_libraries()
    from specialize.registry import AdapterRegistry

    store = AdapterRegistry(registry)
    current = store.current(name)
    table = Table(title=f"{name}: v{current.version} is current", title_justify="left")
    for column in ("when", "what", "version", "from", "why"):
        table.add_column(column)
    rows = [(s.at, s.action, s.version, s.previous, s.reason) for s in store.history(name)]
    rows += [(d.at, d.outcome, d.challenger, d.current, d.reason) for d in store.decisions(name)]
    for at, what, to, came_from, why in sorted(rows, key=lambda r: r[0]):
        table.add_row(
            _when(at), what, f"v{to}" if to else "-", f"v{came_from}" if came_from else "-", why or "-"
        )
    console.print(table)


def _version(text: str) -> int:
    """'v3' or '3' as 3."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise typer.BadParameter(f"'{text}' is not a version; write it as vN, e.g. v2", param_hint="VERSION")
    return int(digits)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def _contract(contract: dict | None) -> str:
    """The output a server enforces by default: 'labels (77)', 'json_schema' or '-' (free text)."""
    kind = (contract or {}).get("kind", "none")
    if kind == "labels":
        return f"labels ({len(contract.get('labels') or [])})"  # type: ignore[union-attr]
    return "-" if kind == "none" else kind


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
