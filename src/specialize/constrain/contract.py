"""What a reply must look like: one label of a set, JSON matching a schema, any JSON object, or free text.

An `OutputContract` is plain data: it is inferred from a run's training completions, stored in the
run's run.json (`to_dict`/`from_dict`) and built from an OpenAI `response_format` body. A contract
that exists can be compiled: the constructor checks that the labels or the schema are something
the decoder can enforce (`specialize.constrain.decoder` turns it into a token mask).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
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


# --- inference from data --------------------------------------------------------------------------


def infer_contract(completions: Sequence[str], task: str) -> OutputContract:
    """The contract a task's reference completions follow.

    classification: the sorted distinct (stripped) completions; json: a schema inferred from the
    completions that parse (see `infer_schema`); text: no contract.
    """
    values = [c.strip() for c in completions if c is not None]
    if task == "classification":
        return OutputContract("labels", labels=tuple(sorted(set(values))))
    if task == "json":
        parsed = []
        for value in values:
            try:
                parsed.append(json.loads(value))
            except ValueError:
                continue
        if not parsed:
            raise ConstraintError("no completion parses as JSON, so no JSON schema can be inferred")
        return OutputContract("json_schema", schema=infer_schema(parsed))
    if task == "text":
        return NONE
    raise ConstraintError(f"unknown task {task!r}; expected classification, json or text")


# A string field becomes an `enum` only when its values look like a closed set, because a value
# outside the enum can then never be written: a wrong enum turns every unseen value into an error.
# A closed set repeats: at most ENUM_MAX_VALUES distinct values, each seen ENUM_MIN_MEAN_COUNT
# times on average, over at least ENUM_MIN_ROWS values; and values seen only once hold at most
# ENUM_MAX_SINGLETON_SHARE of the rows. That last share is the Good-Turing estimate of how often
# the next row brings a value never seen before: free text (names, dates, places, numbers written
# as strings) keeps producing singletons even when a few of its values are frequent. Values must be
# printable ASCII: llguidance matches an enum value in one spelling only, and `json.dumps` writes
# "é" as "\u00e9" or as "é" depending on `ensure_ascii`, so a non-ASCII enum could reject replies
# written the other way.
ENUM_MAX_VALUES = 20
ENUM_MIN_MEAN_COUNT = 10
ENUM_MIN_ROWS = 20
ENUM_MAX_SINGLETON_SHARE = 0.01


def infer_schema(values: Sequence[Any]) -> dict[str, Any]:
    """A JSON schema that every one of `values` (parsed JSON) satisfies, and whose grammar accepts
    each of them as written.

    Types per place are the union of the types seen. Objects: `required` holds the keys present in
    every object, other keys are optional, and no other key is allowed. llguidance enforces the
    order of `properties`, so they are listed in the order the values use: sorted when every object
    has sorted keys (`json.dumps(sort_keys=True)`), else an order consistent with every object
    (first-seen order where objects do not say). When the objects disagree on the order (key a
    before b in one, after in another) no fixed order accepts them all, and the keys become
    `patternProperties` (one exact pattern per key), which llguidance lets come in any order; the
    grammar then cannot require keys or forbid repeating one, so `required` is left out and
    `maxProperties` bounds the number of keys instead. An object none of whose keys is in every
    reply gets the same order-free form: it requires nothing, so the form loses nothing. Strings that form a closed set (see
    ENUM_MAX_VALUES) become an `enum`. Arrays: the items of all arrays at one place, pooled.

    Strings may be written with \\uXXXX escapes (`JSON_OPTIONS`) except where llguidance matches
    them against a pattern: the keys of an any-order object must be written unescaped.
    """
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(_json_type(value), []).append(value)
    if "integer" in groups and "number" in groups:  # integers are numbers
        groups["number"] = groups.pop("integer") + groups["number"]
    schemas = [_schema_for(kind, members) for kind, members in groups.items()]
    if not schemas:
        return {}
    if len(schemas) == 1:
        return schemas[0]
    if all(set(s) == {"type"} for s in schemas):
        return {"type": [s["type"] for s in schemas]}
    return {"anyOf": schemas}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise ConstraintError(f"not a JSON value: {value!r}")


def _schema_for(kind: str, members: list[Any]) -> dict[str, Any]:
    if kind == "object":
        return _object_schema(members)
    if kind == "array":
        items = [item for array in members for item in array]
        return {"type": "array", "items": infer_schema(items)} if items else {"type": "array"}
    if kind == "string":
        closed = closed_set(members)
        if closed is not None:
            return {"type": "string", "enum": closed}
    return {"type": kind}


def closed_set(strings: Sequence[str]) -> list[str] | None:
    """The sorted distinct values when `strings` (every value seen at one place) look like a closed
    set by the thresholds above, else None."""
    counts = Counter(strings)
    n, distinct = len(strings), len(counts)
    if not all(value.isascii() and value.isprintable() for value in counts):
        return None
    if n < ENUM_MIN_ROWS or distinct > ENUM_MAX_VALUES or n < ENUM_MIN_MEAN_COUNT * distinct:
        return None
    singletons = sum(1 for c in counts.values() if c == 1)
    if singletons > ENUM_MAX_SINGLETON_SHARE * n:
        return None
    return sorted(counts)


def _object_schema(members: list[dict[str, Any]]) -> dict[str, Any]:
    keys: dict[str, list[Any]] = {}
    for obj in members:
        for key, value in obj.items():
            keys.setdefault(key, []).append(value)
    order = key_order([list(obj) for obj in members])
    if order is None and any(key + "\n" in keys for key in keys):
        # Python's `$` also matches before a final newline, so the exact patterns of "k" and
        # "k\n" would overlap for a JSON schema validator: keep fixed properties instead.
        order = list(keys)
    # Only the keys the training replies use: an open object would let a small model add key after
    # key until it runs out of tokens.
    schema: dict[str, Any] = {"type": "object"}
    required = [k for k in keys if all(k in obj for obj in members)]
    # An object with no key that every reply has (a bag of optional slots) loses nothing by being
    # order-free, and a model that writes its keys in another order than training did still gets
    # its own valid reply instead of being pushed onto another key.
    if order is None or (not required and len(keys) > 1 and not any(k + "\n" in keys for k in keys)):
        schema["patternProperties"] = {exact_pattern(k): infer_schema(v) for k, v in keys.items()}
        schema["additionalProperties"] = False
        schema["maxProperties"] = len(keys)
        return schema
    schema["properties"] = {k: infer_schema(keys[k]) for k in order}
    schema["additionalProperties"] = False
    if required:
        schema["required"] = [k for k in order if k in required]
    return schema


def key_order(sequences: Sequence[Sequence[str]]) -> list[str] | None:
    """One order of all the keys that every sequence follows (each sequence is the keys of one
    object, as written), or None when the sequences disagree on the order of two keys.

    Sorted order when every sequence is sorted: pairs of keys never seen together then still
    follow the rule the data was written by. Otherwise a topological order of "a came right before
    b" in some sequence, earliest first-seen key first where the sequences leave it open.
    """
    first_seen = list(dict.fromkeys(k for seq in sequences for k in seq))
    if all(list(seq) == sorted(seq) for seq in sequences):
        return sorted(first_seen)
    rank = {k: i for i, k in enumerate(first_seen)}
    successors: dict[str, set[str]] = {k: set() for k in first_seen}
    for seq in sequences:
        for a, b in zip(seq, seq[1:], strict=False):
            successors[a].add(b)
    indegree = Counter(b for succ in successors.values() for b in succ)
    ready = [(rank[k], k) for k in first_seen if indegree[k] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, key = heapq.heappop(ready)
        order.append(key)
        for b in successors[key]:
            indegree[b] -= 1
            if indegree[b] == 0:
                heapq.heappush(ready, (rank[b], b))
    return order if len(order) == len(first_seen) else None


_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def exact_pattern(key: str) -> str:
    """A regex matching exactly `key`, in the syntax both llguidance (Rust regex) and Python's `re`
    (JSON schema validators) read: only the metacharacters are escaped, since Rust rejects escapes
    of ordinary characters that Python's `re.escape` writes."""
    return "^" + "".join("\\" + c if c in _REGEX_SPECIAL else c for c in key) + "$"


# --- summary --------------------------------------------------------------------------------------

MAX_SHOWN = 8  # labels or enum values named in a summary line


def describe_contract(contract: OutputContract) -> list[str]:
    """A few lines saying what a reply must be, for a person to read before training: the kind,
    then for an object schema one line per top-level key (required or optional, its type, enum
    values) and the key order the grammar enforces."""
    if contract.kind == "none":
        return ["free text: no contract"]
    if contract.kind == "labels":
        labels = contract.labels or ()
        return [f"labels: one of {len(labels)} ({_some(labels)})"]
    if contract.kind == "json_object":
        return ["JSON: any object"]
    schema = contract.schema or {}
    head, keys = _describe_object(schema)
    if not keys:
        return [f"JSON: {_describe(schema)}"]
    return [f"JSON {head}", *(f"  {line}" for line in keys)]


def _some(values: Sequence[Any]) -> str:
    shown = ", ".join(v if isinstance(v, str) else json.dumps(v) for v in values[:MAX_SHOWN])
    return shown + (f", ... {len(values) - MAX_SHOWN} more" if len(values) > MAX_SHOWN else "")


def object_keys(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An object schema's keys (key -> value schema, from `properties` or from the exact
    `patternProperties` that `infer_schema` writes) and whether the grammar fixes their order."""
    if isinstance(schema.get("properties"), dict):
        return schema["properties"], True
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict):
        return {_unpattern(p): sub for p, sub in patterns.items()}, False
    return {}, False


def _unpattern(pattern: str) -> str:
    inner = pattern[1:-1] if pattern.startswith("^") and pattern.endswith("$") else pattern
    out, escaped = [], False
    for c in inner:
        if c == "\\" and not escaped:
            escaped = True
            continue
        out.append(c)
        escaped = False
    return "".join(out)


def key_order_name(keys: dict[str, Any], fixed: bool) -> str:
    """ "sorted", "fixed" (the order listed) or "any": the key order an object's grammar enforces."""
    if not fixed:
        return "any"
    return "sorted" if list(keys) == sorted(keys) else "fixed"


def _order(keys: dict[str, Any], fixed: bool) -> str:
    if len(keys) < 2:
        return "one key" if keys else "no keys"
    name = key_order_name(keys, fixed)
    return {"any": "keys in any order", "sorted": "keys in sorted order"}.get(name, "keys in this order")


def _describe_object(schema: dict[str, Any]) -> tuple[str, list[str]]:
    keys, fixed = object_keys(schema)
    required = set(schema.get("required") or ())
    n_req = sum(k in required for k in keys)
    head = f"object, {len(keys)} keys ({n_req} required), {_order(keys, fixed)}"
    lines = [
        f"{k}: {'required' if k in required else 'optional'}, {_describe(sub)}" for k, sub in keys.items()
    ]
    return head, lines


def _describe(schema: Any) -> str:
    """One value's schema in a few words: nested objects by their key count, order and enums."""
    if not isinstance(schema, dict) or not schema:
        return "any value"
    if "enum" in schema:
        return f"enum of {len(schema['enum'])} ({_some(schema['enum'])})"
    if "anyOf" in schema:
        return " or ".join(_describe(sub) for sub in schema["anyOf"])
    kind = schema.get("type")
    if kind == "object":
        keys, fixed = object_keys(schema)
        required = set(schema.get("required") or ())
        enums = [k for k, sub in keys.items() if isinstance(sub, dict) and "enum" in sub]
        text = (
            f"object of {len(keys)} keys ({sum(k in required for k in keys)} required), {_order(keys, fixed)}"
        )
        return text + (f", enums: {', '.join(enums)}" if enums else "")
    if kind == "array":
        return f"array of {_describe(schema['items'])}" if "items" in schema else "array"
    if isinstance(kind, list):
        return " or ".join(map(str, kind))
    return str(kind) if kind else "any value"


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
