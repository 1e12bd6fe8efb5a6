"""The layout of a run directory, and the one place its records are read and written.

Every component (train, evaluate, serve, monitor, export) finds what it needs through `RunDir`
rather than hard-coded paths, and reads `run.json` and `eval/report.json` as typed records
(`specialize.records`) through it, so the layout in docs/architecture.md lives in one place and
each file has one reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from specialize.atomic import atomic_write_text
from specialize.config import RunConfig, load_config
from specialize.errors import RunError
from specialize.records.eval import EvalReport
from specialize.records.human import HumanEval
from specialize.records.run import RunRecord

RecordT = TypeVar("RecordT", bound=BaseModel)


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
    def learning_curve(self) -> Path:
        """Runs trained on nested subsets of this run's training rows (eval.learning_curve)."""
        return self.path / "learning_curve"

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
    def tensorboard(self) -> Path:
        return self.path / "logs" / "tensorboard"

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

    @property
    def eval_report_file(self) -> Path:
        return self.eval_dir / "report.json"

    @property
    def finished(self) -> bool:
        """Training wrote its record (run.json)."""
        return self.meta_file.is_file()

    def record(self) -> RunRecord:
        """What training wrote (run.json); a RunError when it has not finished or the file is damaged."""
        if not self.meta_file.is_file():
            raise RunError(f"{self.path}: the run has not finished training (no run.json)")
        return _read(self.meta_file, RunRecord)

    def write_record(self, record: RunRecord) -> None:
        atomic_write_text(self.meta_file, record.model_dump_json(indent=2) + "\n")

    @property
    def evaluated(self) -> bool:
        return self.eval_report_file.is_file()

    def eval_report(self) -> EvalReport:
        """The evaluation report (eval/report.json); a RunError when the run was not evaluated."""
        if not self.eval_report_file.is_file():
            raise RunError(f"{self.path}: the run has not been evaluated; run `specialize eval {self.path}`")
        return _read(self.eval_report_file, EvalReport)

    @property
    def human_eval_file(self) -> Path:
        return self.eval_dir / "human.json"

    def human_eval(self) -> HumanEval | None:
        """What blind human review found (eval/human.json); None before anyone reviewed."""
        return _read(self.human_eval_file, HumanEval) if self.human_eval_file.is_file() else None

    def write_human_eval(self, summary: HumanEval) -> None:
        atomic_write_text(self.human_eval_file, summary.model_dump_json(indent=2) + "\n")

    def weights_dir(self) -> Path:
        """The trained weights: the adapter for LoRA runs, the whole model for full fine-tuning."""
        if (self.adapter / "adapter_config.json").is_file():
            return self.adapter
        if (self.full_model / "config.json").is_file():
            return self.full_model
        raise RunError(
            f"{self.path}: no trained weights (neither adapter/ nor model/); has `specialize train` finished?"
        )


def _read(path: Path, model: type[RecordT]) -> RecordT:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise RunError(f"{path}: not a readable {model.__name__} ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return "; ".join(line.strip() for line in text[:3])


def open_run(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise RunError(f"{run.path}: run directory not found")
    if not run.config_file.is_file():
        raise RunError(f"{run.path}: not a run directory (no config.yaml)")
    return run
