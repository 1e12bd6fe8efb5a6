"""The output contract of a run: the one answer to "what must this run's replies look like".

Training resolves it once (`training_contract`: the config's `data.output_schema`, else inferred
from the training replies) and records it in run.json. Every later reader (evaluation,
`generate`/`chat`, the registry and so the server) asks `run_contract(run)`, which returns the
recorded contract, or for runs made before contracts were recorded, the one their training split
implies, so that no two commands can disagree on an old run.

Whether a contract is *applied by default* is a second question (`default_contract`): when the
evaluation measured that decoding under it lowers the task metric significantly, serving and
`generate` leave it off unless asked, and say why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.constrain.contract import NONE, OutputContract, schema_contract
from specialize.constrain.infer import infer_contract
from specialize.data.split import load_split
from specialize.errors import ConfigError
from specialize.outputs import detect_task
from specialize.run_dir import RunDir


def training_contract(
    output_schema: dict[str, Any] | str | None, completions: Sequence[str]
) -> OutputContract:
    """`data.output_schema` when the config gives one (a mapping or a .json file), else the contract
    the training replies follow. Raises ConfigError / ConstraintError before anything is trained."""
    if output_schema is None:
        return infer_contract(list(completions), detect_task(list(completions)))
    if isinstance(output_schema, str):
        path = Path(output_schema)
        try:
            output_schema = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"data.output_schema: {path}: file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"data.output_schema: {path}: not a JSON file: {exc}") from None
        if not isinstance(output_schema, dict):
            raise ConfigError(f"data.output_schema: {path}: a JSON schema is an object")
    return schema_contract(output_schema)


def run_contract(run: RunDir) -> OutputContract:
    """The contract run.json records, or (runs made before contracts were recorded) the one the
    run's training split follows; NONE when there is neither."""
    record = run.record() if run.finished else None
    recorded = record.recorded_contract() if record is not None else None
    if recorded is not None:
        return recorded
    train_file = run.split_file("train")
    completions = [e.completion or "" for e in load_split(train_file)] if train_file.is_file() else []
    if not completions:
        return NONE
    task = record.task if record is not None and record.task else detect_task(completions)
    return infer_contract(completions, task)


@dataclass(frozen=True)
class DefaultContract:
    """The contract applied when a request or command does not choose one, and why."""

    contract: OutputContract
    recorded: OutputContract
    reason: str = ""

    @property
    def switched_off(self) -> bool:
        return self.recorded.kind != "none" and self.contract.kind == "none"


def default_contract(run: RunDir) -> DefaultContract:
    """`run_contract(run)`, unless the run's evaluation found that decoding under it makes the
    fine-tuned model's answers significantly worse: then no contract, with the reason."""
    recorded = run_contract(run)
    if recorded.kind == "none" or not run.evaluated:
        return DefaultContract(recorded, recorded)
    verdict = run.eval_report().contract_verdict
    if verdict.apply_by_default:
        return DefaultContract(recorded, recorded)
    return DefaultContract(NONE, recorded, verdict.reason)
