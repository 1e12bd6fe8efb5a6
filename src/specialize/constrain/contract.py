"""What a reply must look like: one label of a set, JSON matching a schema, any JSON object, or free text.

An `OutputContract` is plain data: it is inferred from a run's training completions, stored in the
run's run.json (`to_dict`/`from_dict`) and built from an OpenAI `response_format` body. A contract
that exists can be compiled: the constructor checks that the labels or the schema are something
the decoder can enforce (`specialize.constrain.decoder` turns it into a token mask).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from specialize.errors import ConstraintError

ContractKind = Literal["labels", "json_schema", "json_object", "none"]
KINDS: tuple[str, ...] = ("labels", "json_schema", "json_object", "none")

# OpenAI's {"type": "json_object"}: any JSON object.
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class OutputContract:
    """`kind` "labels" carries `labels` (the reply is exactly one of them); "json_schema" carries
    `schema` (the reply is one JSON value valid under it); "json_object" is any JSON object;
    "none" is free text."""

    kind: ContractKind = "none"
    labels: tuple[str, ...] | None = None
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(
                f"unknown output contract kind {self.kind!r}; choose one of {', '.join(KINDS)}"
            )
        if self.kind == "labels":
            object.__setattr__(self, "labels", _check_labels(self.labels))
        elif self.labels is not None:
            raise ConstraintError(f"an output contract of kind {self.kind!r} takes no labels")
        if self.kind == "json_schema":
            object.__setattr__(self, "schema", _check_schema(self.schema))
        elif self.schema is not None:
            raise ConstraintError(f"an output contract of kind {self.kind!r} takes no schema")

    def __hash__(self) -> int:  # `schema` is a dict; equal contracts hash alike
        return hash((self.kind, self.labels, json.dumps(self.schema, sort_keys=True)))

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema a JSON contract enforces (None for labels and free text)."""
        if self.kind == "json_object":
            return dict(JSON_OBJECT_SCHEMA)
        return self.schema

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if self.schema is not None:
            out["schema"] = self.schema
        return out

    @classmethod
    def from_dict(cls, data: Any) -> OutputContract:
        if not isinstance(data, dict):
            raise ConstraintError(f"an output contract must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "labels", "schema"})
        if unknown:
            raise ConstraintError(f"unknown output contract field(s): {', '.join(unknown)}")
        if "kind" not in data:
            raise ConstraintError("output contract field 'kind' is missing")
        labels = data.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise ConstraintError("output contract field 'labels' must be a list of strings")
        return cls(
            kind=data["kind"],
            labels=tuple(labels) if labels is not None else None,
            schema=data.get("schema"),
        )


NONE = OutputContract("none")


def labels_contract(labels: Sequence[str]) -> OutputContract:
    return OutputContract("labels", labels=tuple(labels))


def schema_contract(schema: dict[str, Any]) -> OutputContract:
    return OutputContract("json_schema", schema=schema)


def _check_labels(labels: Any) -> tuple[str, ...]:
    if labels is None or isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ConstraintError("a label contract needs 'labels', a list of strings")
    for label in labels:
        if not isinstance(label, str):
            raise ConstraintError(f"every label must be a string, got {label!r}")
        try:
            label.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConstraintError(f"label {label!r} is not valid Unicode text ({exc.reason})") from None
    unique = tuple(dict.fromkeys(labels))  # duplicates dropped, order kept
    if not unique:
        raise ConstraintError("the label set is empty: a label contract needs at least one label")
    _check_grammar(label_grammar(unique), "the label set")
    return unique


def _check_schema(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise ConstraintError(
            f"a JSON schema contract needs 'schema', a JSON object, not {type(schema).__name__}"
        )
    try:
        copy = json.loads(json.dumps(schema, allow_nan=False))  # a private copy that survives run.json
    except (TypeError, ValueError) as exc:
        raise ConstraintError(f"the JSON schema is not plain JSON: {exc}") from None
    _check_grammar(schema_grammar(copy), "the JSON schema")
    return copy


# --- grammars (llguidance) ------------------------------------------------------------------------

# Whitespace a JSON reply may hold at each place JSON allows it: one or two spaces (`json.dumps`
# style), or one line break and an indent of up to 16 (pretty-printed JSON a few levels deep).
# Bounded, so that a model cannot spend its whole budget on blanks.
JSON_WHITESPACE = r"(?:\x20{1,2}|\r?\n[\x20\t]{0,16})"


# llguidance's JSON options. By default it rejects \uXXXX escapes of printable characters, which is
# how `json.dumps` (ensure_ascii=True, its default) writes every non-ASCII character: "Kraków" as
# "Krak\u00f3w". Training replies written that way must be accepted as written.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_pattern": JSON_WHITESPACE,
    "json_allow_general_unicode_escapes": True,
}


def label_grammar(labels: tuple[str, ...]) -> str:
    """A Lark grammar matching exactly one label. Labels are written as ASCII-only JSON string
    literals (which llguidance's Lark reads): quotes, backslashes and control characters escaped,
    any other Unicode as \\u escapes (surrogate pairs past the BMP). Raw DEL, for one, is a lexer error."""
    from llguidance import LLMatcher

    alternatives = " | ".join(json.dumps(label, ensure_ascii=True) for label in labels)
    return LLMatcher.grammar_from_lark(f"start: {alternatives}\n")


def schema_grammar(schema: dict[str, Any]) -> str:
    """An llguidance grammar for one JSON value under `schema`. Properties come in schema order; a
    top-level "x-guidance" key in the schema may override the defaults (`JSON_OPTIONS`)."""
    from llguidance import LLMatcher

    try:
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise ConstraintError(f"the JSON schema cannot be compiled: {exc}") from None


def contract_grammar(contract: OutputContract) -> str | None:
    if contract.kind == "labels":
        assert contract.labels is not None
        return label_grammar(contract.labels)
    schema = contract.json_schema()
    return schema_grammar(schema) if schema is not None else None


def _check_grammar(grammar: str, what: str) -> None:
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ConstraintError(f"{what} cannot be enforced: {error.strip()}")


# --- OpenAI response_format -----------------------------------------------------------------------


def contract_from_response_format(response_format: Any) -> OutputContract:
    """The contract of an OpenAI `response_format` body: {"type": "text"}, {"type": "json_object"} or
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}."""
    if response_format is None:
        return NONE
    if not isinstance(response_format, dict):
        raise ConstraintError(f"response_format must be an object, not {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return NONE
    if kind == "json_object":
        return OutputContract("json_object")
    if kind != "json_schema":
        raise ConstraintError(
            f"response_format.type must be one of 'text', 'json_object', 'json_schema', not {kind!r}"
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise ConstraintError("response_format.json_schema must be an object with 'name' and 'schema'")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ConstraintError("response_format.json_schema.name must be a non-empty string")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise ConstraintError("response_format.json_schema.strict must be true, false or null")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ConstraintError("response_format.json_schema.schema must be a JSON schema object")
    if spec.get("strict"):
        schema = closed_objects(schema)
    try:
        return OutputContract("json_schema", schema=schema)
    except ConstraintError as exc:
        raise ConstraintError(f"response_format.json_schema.schema: {exc}") from None


def closed_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object schema that leaves it unset:
    OpenAI's strict mode, where a reply holds only the keys the schema names. A copy; the
    schema's own settings win."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(sub) for sub in out[key]]
    for key in ("items", "additionalProperties", "not", "if", "then", "else"):
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
