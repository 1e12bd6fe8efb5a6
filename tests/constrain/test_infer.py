"""Inferred output contracts follow the training replies (issue #13).

A contract inferred from a run's training replies must accept every one of them exactly as written:
llguidance enforces the order of a schema's `properties`, so the inferred order has to be the
replies' own (sorted for `json.dumps(sort_keys=True)`), or free when the replies disagree. Closed
sets of strings become enums; free text must not, or unseen values become impossible to write.
And decoding under the contract must not change a reply that already satisfies it.
"""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.constrain import compile_constraint, infer_contract, infer_schema
from specialize.constrain.contract import schema_contract
from specialize.constrain.describe import describe_contract, object_keys
from specialize.constrain.infer import (
    ENUM_MAX_VALUES,
    ENUM_MIN_MEAN_COUNT,
    ENUM_MIN_ROWS,
    closed_set,
    exact_pattern,
    key_order,
)
from specialize.inference import generate
from specialize.models.load import load_model

EOS = 2  # <|im_end|> in the tiny tokenizer
INTENTS = ["lights_on", "set_timer", "play_music", "weather"]
SLOT_KEYS = [f"slot_{name}" for name in "abcdefghijklmnopqrstuvwxyz"] + [
    "zone",
    "alarm_time",
    "artist",
    "city",
    "brightness",
    "device",
]
ROOMS = ["kitchen", "hall", "bedroom", "office"]


def words(rng: random.Random, n: int) -> str:
    return " ".join(
        rng.choice(["red", "blue", "north", "tea", "jazz", "seven", "Ada", "Bo"]) for _ in range(n)
    )


def sorted_rows(n: int = 240, seed: int = 0) -> list[str]:
    """Replies shaped like issue #13's: {"intent", "slots"} with dozens of optional slot keys, all
    serialised with sorted keys; `room` is a closed set, every other slot free text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        slots = {k: f"{words(rng, rng.randint(1, 3))} {i}" for k in rng.sample(SLOT_KEYS, rng.randint(0, 5))}
        if rng.random() < 0.5:
            slots["room"] = rng.choice(ROOMS)
        rows.append(json.dumps({"intent": rng.choice(INTENTS), "slots": slots}, sort_keys=True))
    return rows


def varying_rows(n: int = 80, seed: int = 1) -> list[str]:
    """Keys in a different order from row to row, at the top level and inside nested objects,
    arrays of objects, keys with regex metacharacters, and a key that only some rows hold."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person = {
            "name": words(rng, 2),
            "age": rng.randint(1, 90),
            "tags": [words(rng, 1)] * rng.randint(0, 2),
        }
        if i % 3 == 0:
            person["address"] = {"city": words(rng, 1), "zip.code": str(10000 + i), "(floor)": i % 4}
            person["address"] = dict(rng.sample(list(person["address"].items()), len(person["address"])))
        obj = {
            "kind": rng.choice(["a", "b"]),
            "person": dict(rng.sample(list(person.items()), len(person))),
            "items": [{"sku": f"s{i}", "qty": rng.randint(1, 3)} for _ in range(rng.randint(0, 2))],
        }
        if i % 2:
            obj["note$"] = None if i % 4 == 1 else words(rng, 3)
        rows.append(json.dumps(dict(rng.sample(list(obj.items()), len(obj)))))
    return rows


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assert_accepts_all(contract, rows, tokenizer) -> None:
    constraint = compile_constraint(contract, tokenizer, [EOS])
    rejected = [row for row in rows if not constraint.accepts(encode(tokenizer, row))]
    assert not rejected, f"{len(rejected)} of {len(rows)} training replies rejected, e.g. {rejected[0]}"
    for row in rows:
        jsonschema.validate(json.loads(row), contract.schema)


# ------------------------------------------------------------------- every training reply accepted


def test_sorted_replies_give_sorted_properties_enums_and_optional_slots(tiny_tokenizer):
    rows = sorted_rows()
    contract = infer_contract(rows, "json")
    schema = contract.schema
    assert list(schema["properties"]) == ["intent", "slots"] and schema["required"] == ["intent", "slots"]
    assert schema["properties"]["intent"] == {"type": "string", "enum": sorted(INTENTS)}
    slots = schema["properties"]["slots"]
    keys, fixed = object_keys(slots)
    assert not fixed and "required" not in slots, "a bag of optional slots requires nothing: any order"
    assert len(keys) == len(SLOT_KEYS) + 1 == slots["maxProperties"]
    assert keys["room"] == {"type": "string", "enum": sorted(ROOMS)}
    assert all("enum" not in s for k, s in keys.items() if k != "room"), "free text"
    assert_accepts_all(contract, rows, tiny_tokenizer)


def test_optional_slots_in_another_order_than_training_are_still_valid(tiny_tokenizer):
    """The failure the benchmark found: a model that writes correct slots unsorted (training was
    sorted) must not be pushed onto another key by the grammar."""
    rows = sorted_rows()
    contract = infer_contract(rows, "json")
    keys = sorted(object_keys(contract.schema["properties"]["slots"])[0])
    intent = sorted(INTENTS)[0]
    unsorted = json.dumps({"intent": intent, "slots": {keys[-1]: "a", keys[0]: "b"}})
    assert_accepts_all(contract, [unsorted], tiny_tokenizer)
    constraint = compile_constraint(contract, tiny_tokenizer, [EOS])
    extra = json.dumps({"intent": intent, "slots": {"not_a_slot": "a"}})
    assert not constraint.accepts(encode(tiny_tokenizer, extra)), "the key set stays closed"


def test_the_issue_13_shape_first_seen_order_differs_from_the_replies_order(tiny_tokenizer):
    """The first reply's keys come first in first-seen order; later replies put other keys before
    them in sorted order. A first-seen contract rejected most such replies."""
    rows = [json.dumps({"intent": "weather", "slots": {"zone": "x"}}, sort_keys=True)]
    rows += [json.dumps({"intent": "weather", "slots": {"alarm_time": "7", "zone": "y"}}, sort_keys=True)]
    rows += [json.dumps({"slots": {}, "intent": "weather"}, sort_keys=True)]
    contract = infer_contract(rows, "json")
    keys, fixed = object_keys(contract.schema["properties"]["slots"])
    assert sorted(keys) == ["alarm_time", "zone"] and not fixed, "optional slots only: any order"
    assert list(contract.schema["properties"]) == ["intent", "slots"], "required keys keep the replies' order"
    assert_accepts_all(contract, rows, tiny_tokenizer)


def test_a_fixed_unsorted_order_is_kept(tiny_tokenizer):
    rng = random.Random(2)
    order = ["name", "city", "age", "email"]
    rows = []
    for _ in range(30):
        keys = [k for k in order if k == "name" or rng.random() < 0.6]
        rows.append(json.dumps({k: words(rng, 1) for k in keys}))
    schema = infer_contract(rows, "json").schema
    assert list(schema["properties"]) == order and schema["required"] == ["name"]
    assert_accepts_all(schema_contract(schema), rows, tiny_tokenizer)


def test_varying_key_order_and_nested_objects_are_accepted_in_any_order(tiny_tokenizer):
    rows = varying_rows()
    contract = infer_contract(rows, "json")
    schema = contract.schema
    assert "patternProperties" in schema and "properties" not in schema
    person = schema["patternProperties"][exact_pattern("person")]
    assert "patternProperties" in person and person["maxProperties"] == 4
    items = schema["patternProperties"]["^items$"]["items"]
    assert list(items["properties"]) == ["sku", "qty"] and items["required"] == ["sku", "qty"]
    assert_accepts_all(contract, rows, tiny_tokenizer)


@pytest.mark.parametrize(
    "dump",
    [
        lambda o: json.dumps(o, sort_keys=True),
        lambda o: json.dumps(o, sort_keys=True, separators=(",", ":")),
        lambda o: json.dumps(o, sort_keys=True, indent=2),
        lambda o: json.dumps(o, sort_keys=True, ensure_ascii=False),
    ],
    ids=["json.dumps", "compact", "indent=2", "utf-8"],
)
def test_replies_are_accepted_as_written_whatever_the_whitespace(tiny_tokenizer, dump):
    rows = [dump(json.loads(row)) for row in sorted_rows(60)]
    rows += [dump({"intent": "weather", "slots": {"city": "Zürich 😀", "zone": 'a "b" \\ c'}})]
    assert_accepts_all(infer_contract(rows, "json"), rows, tiny_tokenizer)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b", "c.d", "e|f", "^g", "", "h i"]),
            st.one_of(
                st.integers(-5, 5),
                st.sampled_from(["x", "y", 'q"']),
                st.dictionaries(st.sampled_from(["p", "q", "r"]), st.booleans(), max_size=3),
            ),
            max_size=5,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_objects_in_any_order_are_accepted_by_their_grammar(tiny_tokenizer, objects):
    rows = [json.dumps(o) for o in objects]
    assert_accepts_all(infer_contract(rows, "json"), rows, tiny_tokenizer)


# ----------------------------------------------------------------------------------- key order


def test_key_order():
    assert key_order([["a", "c"], ["b"], ["a", "b", "c"]]) == ["a", "b", "c"]
    assert key_order([["b", "c"], ["a"]]) == ["a", "b", "c"], "sorted data: sorted even for unseen pairs"
    assert key_order([["z", "y"], ["y", "x"], ["w"]]) == ["z", "y", "x", "w"], "consistent, first-seen"
    assert key_order([["a", "b"], ["b", "a"]]) is None
    assert key_order([["a", "b"], ["b", "c"], ["c", "a"]]) is None, "a cycle through three rows"
    assert key_order([]) == [] and key_order([[]]) == []


def test_exact_patterns_match_only_their_key():
    import re

    for key in ["a.b", "(x)", "[y]", "a|b", "^$", "\\", "x y#-&~", "é", ""]:
        pattern = exact_pattern(key)
        assert re.search(pattern, key)
        assert not re.search(pattern, key + "x") and not re.search(pattern, "x" + key)


# --------------------------------------------------------------------------------------- enums


def test_a_closed_set_becomes_an_enum():
    values = ["on", "off", "auto"] * 10
    assert closed_set(values) == ["auto", "off", "on"]
    assert infer_schema(values) == {"type": "string", "enum": ["auto", "off", "on"]}
    # The thresholds as documented: ENUM_MAX_VALUES distinct values seen ENUM_MIN_MEAN_COUNT times.
    widest = [f"v{i}" for i in range(ENUM_MAX_VALUES)] * ENUM_MIN_MEAN_COUNT
    assert closed_set(widest) is not None
    assert closed_set(widest + [f"v{ENUM_MAX_VALUES}"] * ENUM_MIN_MEAN_COUNT) is None, "too many values"


def test_free_text_with_many_distinct_values_is_not_an_enum():
    rng = random.Random(3)
    free = [words(rng, 3) for _ in range(300)]
    assert len(set(free)) > ENUM_MAX_VALUES and closed_set(free) is None
    # A few frequent values and a long tail of singletons: an open vocabulary (Good-Turing).
    tail = ["Paris"] * 40 + ["Oslo"] * 30 + ["Lima"] * 20 + [f"town {i}" for i in range(5)]
    assert closed_set(tail) is None
    # Few distinct values, but not seen often enough each to tell a closed set from a sample.
    assert closed_set([f"name {i % 15}" for i in range(60)]) is None


def test_a_field_with_few_rows_is_not_an_enum():
    assert closed_set(["yes"] * (ENUM_MIN_ROWS - 1)) is None
    assert closed_set(["yes"] * ENUM_MIN_ROWS) == ["yes"]
    rows = [json.dumps({"answer": "yes", "n": i}) for i in range(5)]
    assert infer_contract(rows, "json").schema["properties"]["answer"] == {"type": "string"}


def test_enums_apply_to_array_items_and_nested_values():
    rows = [
        json.dumps({"tags": ["x", "y"][: 1 + i % 2], "meta": {"level": ["lo", "hi"][i % 2]}})
        for i in range(40)
    ]
    schema = infer_contract(rows, "json").schema
    assert schema["properties"]["tags"]["items"] == {"type": "string", "enum": ["x", "y"]}
    assert schema["properties"]["meta"]["properties"]["level"] == {"type": "string", "enum": ["hi", "lo"]}


# ------------------------------------------------------------------------------------- summary


def test_describe_contract():
    lines = describe_contract(infer_contract(sorted_rows(), "json"))
    assert lines[0] == "JSON object, 2 keys (2 required), keys in sorted order"
    assert lines[1] == "  intent: required, enum of 4 (lights_on, play_music, set_timer, weather)"
    assert lines[2].startswith("  slots: required, object of 33 keys (0 required), keys in any order")
    assert lines[2].endswith("enums: room")
    varying = describe_contract(infer_contract(varying_rows(), "json"))
    assert "keys in any order" in varying[0] and any(line.startswith("  note$: optional") for line in varying)
    assert describe_contract(infer_contract(["a", "b", "a", "b"], "classification")) == [
        "labels: one of 2 (a, b)"
    ]
    assert describe_contract(infer_contract(["hello"], "text")) == ["free text: no contract"]


# ------------------------------------------- constrained greedy = free greedy when free is valid


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


class Steer:
    """Push the tiny model's logits towards one target reply, token by token: a forward hook on
    the model adds `strength` to the logit of the target's next token (the step count restarts at
    every prefill). With a large strength the free greedy reply is the target."""

    def __init__(self, loaded):
        self.target: list[int] = []
        self.strength = 0.0
        self.step = 0
        self.handle = loaded.model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            self.step = 0
        if self.step < len(self.target):
            output.logits[:, -1, self.target[self.step]] += self.strength
        self.step += 1
        return output


def test_constrained_greedy_equals_free_greedy_when_free_is_valid(loaded, tiny_tokenizer):
    rows = sorted_rows(120)
    contract = infer_contract(rows, "json")
    constraint = compile_constraint(contract, tiny_tokenizer, [EOS])
    convs = [[{"role": "user", "content": f"request {i}"}] for i in range(4)]
    # Targets: training replies (valid), and replies that break the contract in one way each.
    bad = [
        '{"slots": {}, "intent": "weather"}',  # keys out of the replies' order
        '{"intent": "unheard_of", "slots": {}}',  # outside the closed set
        '{"intent": "weather"}',  # a required key missing
    ]
    steer = Steer(loaded)
    compared = 0
    try:
        short = [row for row in rows if len(encode(tiny_tokenizer, row)) < 120][:6]
        for i, target in enumerate(short + bad + [None]):
            steer.target = encode(tiny_tokenizer, target) + [EOS] if target else []
            steer.strength = 100.0 if target else 0.0
            budget = len(steer.target) + 8 if target else 40
            conv = [convs[i % len(convs)]]
            free = generate(loaded, conv, max_new_tokens=budget)[0].text.strip()
            constrained = generate(loaded, conv, max_new_tokens=budget, constraint=contract)[0]
            if target in bad:
                assert free == target and not constraint.accepts(encode(tiny_tokenizer, free))
            if constraint.accepts(encode(tiny_tokenizer, free)):
                assert constrained.text == free, (free, constrained.text)
                assert constrained.complete
                compared += 1
            elif constrained.complete:
                jsonschema.validate(json.loads(constrained.text), contract.schema)
    finally:
        steer.handle.remove()
    assert compared >= 6, "every steered training reply is valid and so compared"
