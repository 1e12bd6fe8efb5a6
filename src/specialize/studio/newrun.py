"""The New run page: the data files on offer and the main settings, described by the config
schema itself (the pydantic `Field` descriptions of `specialize.config`), so the help on the page
is the same text as in the docs and cannot drift from what the config accepts."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from specialize.config import RunConfig

DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
# The settings the page offers, as dotted config keys; everything else keeps its default.
SETTINGS = (
    "model.base",
    "data.input_field",
    "data.output_field",
    "data.system_prompt",
    "method.kind",
    "method.lora_r",
    "train.epochs",
    "train.max_steps",
    "train.batch_size",
    "train.learning_rate",
    "model.max_seq_len",
    "data.test_fraction",
)
_SKIP_DIRS = {".venv", ".git", "node_modules", "__pycache__", ".cache"}
MAX_FILES = 200


@dataclass
class FormField:
    key: str
    value: str
    description: str
    choices: list[str]


def _field(config: RunConfig, dotted: str) -> FormField:
    section_name, name = dotted.split(".")
    section: BaseModel = getattr(config, section_name)
    info = type(section).model_fields[name]
    choices = (
        [str(c) for c in typing.get_args(info.annotation)]
        if typing.get_origin(info.annotation) is typing.Literal
        else []
    )
    value = getattr(section, name)
    return FormField(dotted, "" if value is None else str(value), info.description or "", choices)


def settings_form(config: RunConfig) -> list[FormField]:
    return [_field(config, key) for key in SETTINGS]


def data_files(root: Path, runs: Path, depth: int = 3) -> list[str]:
    """Data files under `root` (relative paths), a few levels deep, skipping the runs folder
    (its splits are outputs, not inputs) and virtualenvs."""
    found: list[str] = []
    runs = runs.resolve()

    def walk(folder: Path, level: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_FILES:
                return
            if entry.is_dir():
                if (
                    level < depth
                    and entry.name not in _SKIP_DIRS
                    and not entry.name.startswith(".")
                    and entry.resolve() != runs
                ):
                    walk(entry, level + 1)
            elif entry.suffix in DATA_SUFFIXES:
                found.append(str(entry.relative_to(root)))

    walk(root, 0)
    return found
