"""Format detection and normalisation: each format, each rule, each bad field with its file:line."""

from __future__ import annotations

import pytest

from specialize.data.example import Source
from specialize.data.formats import FormatSpec, detect_format, load_examples, normalize
from specialize.data.load import RawRow
from specialize.errors import DataError


def rows_of(*dicts):
    return [RawRow(d, Source("d.jsonl", i + 1)) for i, d in enumerate(dicts)]


def messages(role_contents):
    return [{"role": r, "content": c} for r, c in role_contents]


def test_instruction_format_joins_input(write_jsonl):
    path = write_jsonl(
        [
            {"instruction": "Translate", "input": "bonjour", "output": "hello", "id": 7},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ]
    )
    examples, issues, fmt = load_examples(path)
    assert fmt == "instruction" and issues == []
    assert examples[0].messages == [{"role": "user", "content": "Translate\n\nbonjour"}]
    assert examples[0].completion == "hello" and examples[0].meta == {"id": 7}
    assert examples[1].messages[0]["content"] == "Say hi"
    assert examples[1].source == Source(str(path), 2)


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"input": "p", "output": "c"}, "input_output"),
    ],
)
def test_simple_formats(row, fmt):
    examples, issues, found = normalize(rows_of(row))
    assert found == fmt and issues == []
    assert examples[0].messages == [{"role": "user", "content": "p"}] and examples[0].completion == "c"


def test_fields_format_with_template_and_system_prompt():
    spec = FormatSpec(
        input_field="text",
        output_field="label",
        system_prompt="Be brief.",
        prompt_template="Classify: {text}",
    )
    examples, issues, fmt = normalize(rows_of({"text": "card lost", "label": 3, "id": "a"}), spec)
    assert fmt == "fields" and issues == []
    ex = examples[0]
    assert ex.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Classify: card lost"},
    ]
    assert ex.completion == "3" and ex.meta == {"id": "a"}


def test_template_missing_placeholder_names_the_field():
    spec = FormatSpec(prompt_template="Q: {question}")
    examples, issues, _ = normalize(rows_of({"input": "x", "output": "y"}), spec)
    assert examples == []
    assert [str(i) for i in issues] == ["d.jsonl:1: question: missing field (used by the prompt template)"]


def test_malformed_template_fails_once():
    with pytest.raises(DataError, match="placeholders must name fields"):
        normalize(rows_of({"input": "x", "output": "y"}), FormatSpec(prompt_template="Q: {}"))


def test_messages_format_and_meta():
    row = {
        "messages": messages(
            [("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")]
        ),
        "id": 1,
    }
    examples, issues, fmt = normalize(rows_of(row), FormatSpec(system_prompt="ignored: row has one"))
    assert fmt == "messages" and issues == []
    assert [m["role"] for m in examples[0].messages] == ["system", "user", "assistant", "user"]
    assert examples[0].completion == "a2" and examples[0].meta == {"id": 1}


@pytest.mark.parametrize(
    ("msgs", "expected"),
    [
        (
            messages([("user", "u"), ("bot", "a")]),
            "d.jsonl:1: messages[1].role: unknown role 'bot'; expected system, user or assistant",
        ),
        (
            messages([("user", "u"), ("system", "s"), ("assistant", "a")]),
            "d.jsonl:1: messages[1].role: a system message may only come first",
        ),
        (
            messages([("user", "u"), ("user", "v")]),
            "d.jsonl:1: messages[1].role: the last message must be the assistant reply to learn",
        ),
        (
            messages([("system", "s"), ("assistant", "a")]),
            "d.jsonl:1: messages[0].role: the assistant reply must follow a user message",
        ),
        (messages([("user", "  "), ("assistant", "a")]), "d.jsonl:1: messages[0].content: is empty"),
        (
            [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}],
            "d.jsonl:1: messages[0].content: expected a string, found a number (5)",
        ),
        ("hello", "d.jsonl:1: messages: expected a list of {role, content} objects, found str"),
        ([], "d.jsonl:1: messages: expected a list of {role, content} objects, found an empty list"),
    ],
)
def test_bad_messages(msgs, expected):
    examples, issues, _ = normalize(rows_of({"messages": msgs}))
    assert examples == []
    assert [str(i) for i in issues] == [expected]


def test_missing_empty_and_non_string_fields_are_errors_with_lines(write_jsonl):
    path = write_jsonl(
        [
            {"input": "ok", "output": "fine"},
            {"input": "no output"},
            {"input": "   ", "output": "x"},
            {"input": 42, "output": "x"},
            {"input": "q", "output": 1.5},
            {"input": "q", "output": None},
        ]
    )
    examples, issues, _ = load_examples(path)
    assert len(examples) == 1
    assert [str(i) for i in issues] == [
        f"{path}:2: output: missing field",
        f"{path}:3: input: is empty",
        f"{path}:4: input: expected a string, found a number (42)",
        f"{path}:5: output: expected a string (or a JSON object), found a number (1.5)",
        f"{path}:6: output: is null",
    ]


def test_json_object_output_is_serialised_in_key_order():
    examples, issues, _ = normalize(
        rows_of({"input": "Ada, 36", "output": {"name": "Ada", "age": 36, "città": "L"}})
    )
    assert issues == []
    assert examples[0].completion == '{"name": "Ada", "age": 36, "città": "L"}'


def test_empty_completion_is_a_warning():
    examples, issues, _ = normalize(rows_of({"prompt": "p", "completion": " "}))
    assert len(examples) == 1
    assert [(str(i), i.severity) for i in issues] == [("d.jsonl:1: completion: empty completion", "warning")]


def test_unlabelled_rows_when_completion_not_required():
    rows = rows_of({"input": "a"}, {"input": "b", "output": ""})
    examples, issues, _ = normalize(rows, require_completion=False)
    assert issues == [] and [ex.completion for ex in examples] == [None, None]
    chat, issues, _ = normalize(rows_of({"messages": messages([("user", "c")])}), require_completion=False)
    assert issues == [] and chat[0].completion is None and chat[0].messages[-1]["content"] == "c"


def test_saved_split_rows_read_back_as_messages():
    row = {"messages": messages([("user", "u")]), "completion": "c", "source": "x.jsonl:4", "meta": {"id": 9}}
    examples, issues, fmt = normalize(rows_of(row))
    assert fmt == "messages" and issues == []
    assert examples[0].completion == "c" and examples[0].meta == {"id": 9}


def test_detection_uses_the_majority_of_rows():
    rows = rows_of(
        {"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"prompt": "e", "completion": "f"}
    )
    assert detect_format(rows, FormatSpec()) == "input_output"


def test_unknown_keys_give_a_helpful_error():
    with pytest.raises(DataError) as info:
        detect_format(rows_of({"text": "a", "label": "b"}), FormatSpec())
    message = str(info.value)
    assert "text (1 rows), label (1 rows)" in message
    assert "prompt_completion" in message and "--input-field text --output-field label" in message


def test_fields_format_needs_an_input():
    with pytest.raises(DataError, match="--output-field needs --input-field"):
        normalize(rows_of({"text": "a", "label": "b"}), FormatSpec(output_field="label"))
