"""The layout of a run directory and its small metadata file, `run.json`.

Every component (train, evaluate, serve, monitor, export) finds what it needs through `RunDir`
rather than hard-coded paths, so the layout in DESIGN.md lives in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.atomic import atomic_write_text
from specialize.config import RunConfig, load_config
from specialize.errors import RunError


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def splits(self) -> Path:
        return self.path / "splits"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def full_model(self) -> Path:
        return self.path / "model"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def profile(self) -> Path:
        return self.path / "profile.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def split_file(self, name: str) -> Path:
        return self.splits / f"{name}.jsonl"

    def config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise RunError(
                f"{self.path}: not a run directory (no config.yaml); train one with `specialize train`"
            )
        return load_config(self.config_file)

    def meta(self) -> dict[str, Any]:
        if not self.meta_file.is_file():
            raise RunError(f"{self.path}: the run has not finished training (no run.json)")
        return json.loads(self.meta_file.read_text(encoding="utf-8"))

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.meta_file, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    def weights_dir(self) -> Path:
        """The trained weights: the adapter for LoRA runs, the whole model for full fine-tuning."""
        if (self.adapter / "adapter_config.json").is_file():
            return self.adapter
        if (self.full_model / "config.json").is_file():
            return self.full_model
        raise RunError(
            f"{self.path}: no trained weights (neither adapter/ nor model/); has `specialize train` finished?"
        )


def open_run(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise RunError(f"{run.path}: run directory not found")
    if not run.config_file.is_file():
        raise RunError(f"{run.path}: not a run directory (no config.yaml)")
    return run
