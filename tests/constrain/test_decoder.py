"""Output constraints: every constrained reply is one label, or JSON valid under the schema.

The tiny model is random, so its free replies are garbage: that a constrained reply is still always
valid is what the properties below check.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specialize.constrain import (
    NONE,
    ConstraintLogitsProcessor,
    OutputContract,
    compile_constraint,
    contract_from_response_format,
    infer_contract,
    infer_schema,
    labels_contract,
    mask_logits,
    schema_contract,
)
from specialize.errors import ConstraintError, SpecializeError
from specialize.inference import generate
from specialize.models.load import load_model

EOS = 2  # <|im_end|> in the tiny tokenizer (also its pad token)
PREFIXED = ["card", "card_arrival", "card_arrival_late", "card_arrival_late_again"]
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def chats(texts):
    return [[{"role": "user", "content": t}] for t in texts]


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def label_budget(labels):
    """Enough new tokens for the longest label spelled byte by byte, plus end-of-turn."""
    return max(len(label.encode("utf-8")) for label in labels) + 1


@pytest.fixture
def biased(loaded):
    """Add a fixed bias to the tiny model's logits (a forward hook on lm_head), removed afterwards."""
    handles = []

    def _bias(token_bias: dict[int, float]):
        bias = torch.zeros(loaded.model.lm_head.out_features)
        for token, value in token_bias.items():
            bias[token] = value
        handles.append(loaded.model.lm_head.register_forward_hook(lambda module, args, out: out + bias))

    yield _bias
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------------------------- label sets

label_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list(" _\"'\\\n\t{}[]😀🇫🇷中文العربيةкарта")),
    ),
    min_size=1,
    max_size=10,
)


@st.composite
def label_sets(draw):
    """Labels of any Unicode, often sharing long prefixes or being prefixes of one another."""
    base = draw(label_text)
    suffixes = draw(st.lists(st.text(alphabet="_arive ", max_size=6), min_size=1, max_size=4))
    others = draw(st.lists(label_text, max_size=4))
    labels = list(dict.fromkeys([base + s for s in suffixes] + others))
    return draw(st.permutations(labels))


@settings(max_examples=60, deadline=None)
@given(labels=label_sets(), data=st.data())
def test_random_walks_under_a_label_set_spell_whole_labels(tiny_tokenizer, labels, data):
    """Model-free: choose any allowed token at every step until end-of-turn; the text is a label."""
    constraint = compile_constraint(labels_contract(labels), tiny_tokenizer, [EOS])
    state = constraint.start()
    tokens: list[int] = []
    for _ in range(label_budget(labels) + 1):
        allowed = state.allowed_token_ids()
        assert allowed and all(t < len(tiny_tokenizer) for t in allowed)
        token = data.draw(st.sampled_from(allowed))
        assert state.advance(token)
        if token == EOS:
            break
        tokens.append(token)
    assert state.finished and state.accepting
    assert tiny_tokenizer.decode(tokens, clean_up_tokenization_spaces=False) in labels


@settings(max_examples=40, deadline=None)
@given(labels=label_sets())
def test_every_label_is_accepted_and_nothing_else(tiny_tokenizer, labels):
    constraint = compile_constraint(labels_contract(labels), tiny_tokenizer, [EOS])
    for label in labels:
        state = constraint.start()
        assert all(state.advance(t) for t in encode(tiny_tokenizer, label))
        assert state.accepting and EOS in state.allowed_token_ids()
        assert state.advance(EOS) and state.finished
        # A proper prefix that is not itself a label cannot end the reply.
        for cut in range(1, len(label)):
            if label[:cut] not in labels:
                partial = constraint.start()
                for t in encode(tiny_tokenizer, label[:cut]):
                    partial.advance(t)
                assert not partial.accepting and EOS not in partial.allowed_token_ids()


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURES)
@given(labels=label_sets(), prompts=st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_constrained_generate_replies_with_a_whole_label(loaded, labels, prompts):
    budget = label_budget(labels)
    out = generate(
        loaded, chats(prompts), max_new_tokens=budget, batch_size=3, constraint=labels_contract(labels)
    )
    for g in out:
        assert g.text in labels and g.complete is True
        assert g.completion_tokens <= budget


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(prompts=st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_a_model_eager_to_stop_still_ends_on_a_whole_label(loaded, biased, prompts):
    """End-of-turn is the model's favourite token, yet it never stops inside 'card_arr…'."""
    biased({EOS: 30.0})
    labels = ["card_arrival", "card_arrival_late", "card_linking"]
    out = generate(
        loaded, chats(prompts), max_new_tokens=label_budget(labels), constraint=labels_contract(labels)
    )
    assert all(g.text in labels and g.complete for g in out)


def test_a_label_that_prefixes_another_can_be_chosen(loaded, tiny_tokenizer, biased):
    card = encode(tiny_tokenizer, "card")
    biased({EOS: 30.0, **{t: 60.0 for t in card}})
    out = generate(loaded, chats(["hi", "card"]), max_new_tokens=30, constraint=labels_contract(PREFIXED))
    assert [g.text for g in out] == ["card", "card"] and all(g.complete for g in out)
    # ...and the longer label when the model prefers it.
    constraint = compile_constraint(labels_contract(PREFIXED), tiny_tokenizer, [EOS])
    state = constraint.start()
    for t in card:
        state.advance(t)
    assert state.accepting and not state.finished  # "card" is complete, "card_arrival" may follow
    assert EOS in state.allowed_token_ids() and len(state.allowed_token_ids()) > 1


def test_an_empty_label_is_an_empty_reply(loaded, tiny_tokenizer):
    constraint = compile_constraint(labels_contract(["", "card"]), tiny_tokenizer, [EOS])
    assert EOS in constraint.start().allowed_token_ids()
    out = generate(loaded, chats(["a", "b", "c"]), max_new_tokens=8, constraint=labels_contract(["", "card"]))
    assert all(g.text in ("", "card") and g.complete for g in out)


def test_out_of_budget_replies_are_marked_incomplete(loaded):
    out = generate(
        loaded, chats(["hi"]), max_new_tokens=1, constraint=labels_contract(["card_arrival_late_again"])
    )
    assert out[0].complete is False and "card_arrival_late_again".startswith(out[0].text)


def test_constrained_batches_match_one_by_one_and_the_shared_prefix(loaded):
    system = "You route messages. Allowed labels: " + ", ".join(PREFIXED * 4)
    convs = [
        [{"role": "system", "content": system}, {"role": "user", "content": t}]
        for t in ["card lost", "hi", "why was I charged twice for one payment", "x"]
    ]
    contract = labels_contract(PREFIXED)
    shared = generate(loaded, convs, max_new_tokens=30, batch_size=4, constraint=contract)
    plain = generate(loaded, convs, max_new_tokens=30, batch_size=4, constraint=contract, share_prefix=False)
    alone = [generate(loaded, [c], max_new_tokens=30, constraint=contract)[0] for c in convs]
    assert [g.text for g in shared] == [g.text for g in plain] == [g.text for g in alone]
    assert all(g.text in PREFIXED for g in shared)


def test_no_constraint_changes_nothing(loaded):
    convs = chats(["card lost", "exchange rate today please", "hi"])
    before = generate(loaded, convs, max_new_tokens=8, batch_size=2)
    assert generate(loaded, convs, max_new_tokens=8, batch_size=2, constraint=None) == before
    assert generate(loaded, convs, max_new_tokens=8, batch_size=2, constraint=NONE) == before
    assert all(g.complete is None for g in before)


# ---------------------------------------------------------------------------------------- JSON

names = st.text(alphabet="abcdefgh_", min_size=1, max_size=5)
short_strings = st.text(alphabet='abc xyzé😀"\\', max_size=3)
field_schemas = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 4)),
    st.just({"type": "integer", "minimum": -50, "maximum": 50}),
    st.just({"type": "boolean"}),
    st.builds(lambda vs: {"enum": vs}, st.lists(short_strings, min_size=1, max_size=3, unique=True)),
    st.builds(
        lambda n, item: {"type": "array", "items": item, "maxItems": n},
        st.integers(0, 3),
        st.one_of(st.just({"type": "boolean"}), st.just({"enum": ["x", "yy"]})),
    ),
)


@st.composite
def object_schemas(draw):
    fields = draw(st.dictionaries(names, field_schemas, min_size=1, max_size=4))
    required = [k for k in fields if draw(st.booleans())]
    schema = {"type": "object", "properties": fields, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def json_budget(schema) -> int:
    """An upper bound on the bytes (so tokens) of any reply the schema allows, whitespace included:
    every character of a string may be a 12-byte escaped surrogate pair, every blank 18 bytes."""
    blank = 18
    if "enum" in schema:
        return max(12 * len(json.dumps(v)) for v in schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return 12 * schema["maxLength"] + 2
    if kind == "integer":
        return 3
    if kind == "boolean":
        return 5
    if kind == "array":
        return 2 + blank + schema["maxItems"] * (json_budget(schema["items"]) + 1 + 2 * blank)
    return (
        2 + blank + sum(12 * len(k) + 4 + 4 * blank + json_budget(v) for k, v in schema["properties"].items())
    )


@settings(max_examples=10, deadline=None, suppress_health_check=FIXTURES)
@given(schema=object_schemas(), prompts=st.lists(st.text(max_size=20), min_size=1, max_size=3))
def test_constrained_generate_replies_with_valid_json(loaded, schema, prompts):
    out = generate(
        loaded, chats(prompts), max_new_tokens=json_budget(schema) + 1, constraint=schema_contract(schema)
    )
    for g in out:
        assert g.complete, g.text  # the budget bounds every reply the schema allows
        jsonschema.validate(json.loads(g.text), schema)


@settings(max_examples=40, deadline=None)
@given(schema=object_schemas(), data=st.data())
def test_random_walks_under_a_schema_give_valid_json(tiny_tokenizer, schema, data):
    constraint = compile_constraint(schema_contract(schema), tiny_tokenizer, [EOS])
    state = constraint.start()
    tokens: list[int] = []
    for _ in range(json_budget(schema) + 1):
        token = data.draw(st.sampled_from(state.allowed_token_ids()))
        assert state.advance(token)
        if token == EOS:
            break
        tokens.append(token)
    assert state.finished
    jsonschema.validate(json.loads(tiny_tokenizer.decode(tokens)), schema)


def test_any_json_object(loaded, tiny_tokenizer):
    constraint = compile_constraint(OutputContract("json_object"), tiny_tokenizer, [EOS])
    state = constraint.start()
    assert all(state.advance(t) for t in encode(tiny_tokenizer, '{"a": [1, {"b": null}], "c": "d"}'))
    assert state.finished and state.allowed_token_ids() == [EOS]
    array = constraint.start()
    assert not array.advance(encode(tiny_tokenizer, "[")[0]) and array.error
    for g in generate(loaded, chats(["a", "b"]), max_new_tokens=64, constraint=OutputContract("json_object")):
        if g.complete:
            assert isinstance(json.loads(g.text), dict)
        else:
            assert g.text.startswith("{")


def test_whitespace_is_bounded(tiny_tokenizer):
    """At most two spaces, or one line break and an indent, wherever JSON allows blanks."""
    (space,), (newline,) = encode(tiny_tokenizer, " "), encode(tiny_tokenizer, "\n")
    contract = schema_contract({"type": "object"})
    state = compile_constraint(contract, tiny_tokenizer, [EOS]).start()
    assert state.advance(encode(tiny_tokenizer, "{")[0])
    assert state.advance(space) and state.advance(space)
    assert space not in state.allowed_token_ids() and newline not in state.allowed_token_ids()
    state = compile_constraint(contract, tiny_tokenizer, [EOS]).start()
    assert state.advance(encode(tiny_tokenizer, "{")[0]) and state.advance(newline)
    assert newline not in state.allowed_token_ids()


# ------------------------------------------------------------------------------ mask mechanics


def test_mask_logits_rows_width_and_free_rows(tiny_tokenizer):
    constraint = compile_constraint(labels_contract(["card"]), tiny_tokenizer, [EOS])
    vocab = len(tiny_tokenizer)
    logits = torch.randn(3, vocab + 10)
    before = logits.clone()
    mask_logits([constraint.start(), None, constraint.start()], logits)
    assert torch.equal(logits[1], before[1])  # a free row is untouched
    allowed = constraint.start().allowed_token_ids()
    for row in (0, 2):
        finite = torch.isfinite(logits[row]).nonzero().flatten().tolist()
        assert finite == allowed and all(t < vocab for t in finite)
        assert torch.equal(logits[row, allowed], before[row, allowed])  # allowed logits unchanged


def test_processor_advances_rows_and_stops_after_end_of_turn(tiny_tokenizer):
    constraint = compile_constraint(labels_contract(PREFIXED), tiny_tokenizer, [EOS])
    card = encode(tiny_tokenizer, "card")
    proc = ConstraintLogitsProcessor.for_batch(constraint, 2)
    prompt = torch.tensor([[EOS, 5, 6], [7, 8, 9]])  # row 0 left-padded
    ids = prompt
    for step in [*card, EOS, EOS]:
        proc(ids, torch.zeros(2, len(tiny_tokenizer)))
        ids = torch.cat([ids, torch.tensor([[step], [step]])], dim=1)
    states = proc.sync(ids)
    assert all(s.finished and s.accepting for s in states)


def test_compiled_constraints_are_cached_per_tokenizer(tiny_tokenizer):
    a = compile_constraint(labels_contract(["x", "y"]), tiny_tokenizer, [EOS])
    assert compile_constraint(labels_contract(["x", "y"]), tiny_tokenizer, [EOS]) is a
    assert compile_constraint(labels_contract(["y", "x"]), tiny_tokenizer, [EOS]) is not a
    assert compile_constraint(NONE, tiny_tokenizer, [EOS]) is None


# -------------------------------------------------------------------------------------- errors


def test_bad_contracts_raise_clear_errors():
    with pytest.raises(ConstraintError, match="label set is empty"):
        labels_contract([])
    with pytest.raises(ConstraintError, match="must be a string"):
        labels_contract(["a", 3])
    with pytest.raises(ConstraintError, match="Invalid type: nope"):
        schema_contract({"type": "nope"})
    with pytest.raises(ConstraintError, match="minContains"):
        schema_contract({"type": "array", "minContains": 2})
    with pytest.raises(ConstraintError, match="unknown output contract kind"):
        OutputContract("regex")
    with pytest.raises(ConstraintError, match="takes no labels"):
        OutputContract("json_object", labels=("a",))
    assert issubclass(ConstraintError, SpecializeError) and ConstraintError.exit_code == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("json", "response_format must be an object"),
        ({"type": "xml"}, "response_format.type"),
        ({}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema must be an object"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
            "response_format.json_schema.schema: .*nope",
        ),
    ],
)
def test_malformed_response_format_names_the_field(body, field):
    with pytest.raises(ConstraintError, match=field):
        contract_from_response_format(body)


def test_response_formats():
    assert contract_from_response_format({"type": "text"}) == NONE
    assert contract_from_response_format(None) == NONE
    assert contract_from_response_format({"type": "json_object"}).kind == "json_object"
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    body = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    assert contract_from_response_format(body) == schema_contract(schema)


# ------------------------------------------------------------------------- inference, storage


def test_infer_contract_per_task():
    labels = infer_contract(["b ", "a", "b", "c", "a"], "classification")
    assert labels == OutputContract("labels", labels=("a", "b", "c"))
    assert infer_contract(["hello there", "bye"], "text") == NONE
    rows = [
        '{"name": "Ada", "age": 36, "tags": ["x"], "meta": {"ok": true}}',
        '{"name": "Bob", "age": 4.5, "tags": [], "meta": {"ok": false, "n": null}, "extra": "e"}',
        "not json",
    ]
    schema = infer_contract(rows, "json").schema
    assert schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "meta": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "n": {"type": "null"}},
                "additionalProperties": False,
                "required": ["ok"],
            },
            "extra": {"type": "string"},
        },
        "additionalProperties": False,
        "required": ["name", "age", "tags", "meta"],
    }
    for row in rows[:2]:
        jsonschema.validate(json.loads(row), schema)
    assert infer_schema([1, "a", None]) == {"type": ["integer", "string", "null"]}
    assert infer_schema([[1, 2], {"a": 1}]) == {
        "anyOf": [
            {"type": "array", "items": {"type": "integer"}},
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "additionalProperties": False,
                "required": ["a"],
            },
        ]
    }
    with pytest.raises(ConstraintError, match="no completion parses"):
        infer_contract(["nope"], "json")


@given(
    st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
            ),
            max_leaves=8,
        ),
        min_size=1,
        max_size=5,
    )
)
@settings(max_examples=60, deadline=None)
def test_inferred_schemas_accept_their_examples_and_compile(values):
    schema = infer_schema(values)
    for value in values:
        jsonschema.validate(value, schema)
    schema_contract(schema)  # llguidance compiles it


@pytest.mark.parametrize(
    "contract",
    [
        NONE,
        OutputContract("json_object"),
        labels_contract(["a", 'b "q"', "é😀\n"]),
        schema_contract({"type": "object", "properties": {"z": {"type": "string"}, "a": {"enum": [1, "x"]}}}),
    ],
)
def test_contracts_round_trip_through_json(contract):
    again = OutputContract.from_dict(json.loads(json.dumps(contract.to_dict())))
    assert again == contract and hash(again) == hash(contract)
    assert list((again.schema or {}).get("properties", {})) == list(
        (contract.schema or {}).get("properties", {})
    )
    with pytest.raises(ConstraintError):
        OutputContract.from_dict({"kind": "labels", "labels": "abc"})
    with pytest.raises(ConstraintError, match="unknown output contract field"):
        OutputContract.from_dict({"kind": "none", "label": ["a"]})
    with pytest.raises(ConstraintError, match="'kind' is missing"):
        OutputContract.from_dict({})


def test_strict_response_format_closes_objects_and_inferred_schemas_are_closed():
    from specialize.constrain.contract import closed_objects

    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {"t": {"type": "string"}}}},
            "open": {"type": "object", "additionalProperties": True},
        },
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"], "a property named 'properties' is not a schema"
    assert closed["properties"]["tags"]["items"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True, "the schema's own setting wins"
    assert "additionalProperties" not in schema, "the caller's schema is not modified"

    body = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert contract_from_response_format(body).schema == closed
    body["json_schema"]["strict"] = False
    assert contract_from_response_format(body).schema == schema

    inferred = infer_contract(['{"a": 1, "b": {"c": "x"}}', '{"a": 2, "b": {"c": "y"}}'], "json").schema
    assert (
        inferred["additionalProperties"] is False
        and inferred["properties"]["b"]["additionalProperties"] is False
    )
