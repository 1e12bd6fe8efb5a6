"""A contract in a few lines a person reads: what `specialize check` shows before training."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from specialize.constrain.contract import OutputContract

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
