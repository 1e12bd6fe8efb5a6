"""The output contract a task's training replies follow, inferred from the replies themselves.

Labels: the distinct replies. JSON: a schema whose grammar accepts every training reply as
written: the key order the replies use (or an order-free object where they disagree, or where
every key is optional), `enum` for closed sets of strings, optional keys optional, nested objects
and array items alike. Free text: no contract.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from specialize.constrain.contract import NONE, OutputContract
from specialize.errors import ConstraintError


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
