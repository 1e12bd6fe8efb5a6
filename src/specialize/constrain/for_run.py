"""The output contract of a run: given by the user, or inferred from the training replies.

Training records it in run.json (`output_contract`) so that evaluation and serving enforce the
same contract the adapter was trained towards; runs made before contracts existed get it inferred
from their training split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specialize.constrain.contract import OutputContract, infer_contract, schema_contract
from specialize.errors import ConfigError
from specialize.outputs import detect_task


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


def recorded_contract(meta: dict[str, Any], completions: Sequence[str]) -> OutputContract:
    """The contract a run's run.json records, or (older runs) the one its training replies follow."""
    recorded = meta.get("output_contract")
    if recorded is not None:
        return OutputContract.from_dict(recorded)
    return infer_contract(list(completions), meta.get("task") or detect_task(list(completions)))
