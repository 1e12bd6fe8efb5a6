"""Output constraints: decode so that every reply is one of a label set, or JSON valid under a schema.

`OutputContract` says what a reply must be (inferred from training data, stored in run.json, or
given as an OpenAI `response_format`); `compile_constraint` turns it into a token mask for one
tokenizer (llguidance); `inference.generate(..., constraint=...)` applies it.
"""

from __future__ import annotations

from typing import Any

from specialize.constrain.contract import (
    JSON_WHITESPACE,
    NONE,
    OutputContract,
    contract_from_response_format,
    labels_contract,
    schema_contract,
)
from specialize.constrain.decoder import Constraint, ConstraintState, compile_constraint, mask_logits
from specialize.constrain.infer import infer_contract, infer_schema

__all__ = [
    "JSON_WHITESPACE",
    "NONE",
    "Constraint",
    "ConstraintLogitsProcessor",
    "ConstraintState",
    "OutputContract",
    "compile_constraint",
    "contract_from_response_format",
    "infer_contract",
    "infer_schema",
    "labels_contract",
    "mask_logits",
    "schema_contract",
]


def __getattr__(name: str) -> Any:  # the processor imports transformers: only when asked for
    if name == "ConstraintLogitsProcessor":
        from specialize.constrain.logits import ConstraintLogitsProcessor

        return ConstraintLogitsProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
