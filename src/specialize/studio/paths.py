"""Path parameters never leave their folder.

A run name or a data file arrives in the URL; it is resolved (symlinks, `..`, absolute paths)
and must still lie inside the folder it names a child of, or the request is refused with 404 as
if the file did not exist, so the studio cannot be used to read arbitrary files of the machine.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, resolved, refused (404) unless it stays within `root`."""
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        raise HTTPException(404, f"{relative!r}: not found")
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise HTTPException(404, f"{relative!r}: not found")
    return target


def run_path(runs: Path, name: str) -> Path:
    """A run directory: a direct child of the runs folder that exists."""
    target = inside(runs, name)
    if target.parent != runs.resolve() or not target.is_dir() or target.name.startswith("."):
        raise HTTPException(404, f"run {name!r} not found in {runs}")
    return target
