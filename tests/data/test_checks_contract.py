"""`specialize check` shows the output contract training would infer, before anything is trained."""

from __future__ import annotations

import json

from rich.console import Console

from specialize.data.checks import ContractSummary, DataReport, check_examples
from specialize.data.example import Example, Source


def ex(user: str, completion: str | None, line: int) -> Example:
    return Example([{"role": "user", "content": user}], completion, Source("train.jsonl", line))


def json_rows(n: int = 40) -> list[Example]:
    rows = []
    for i in range(n):
        slots = {"room": ["kitchen", "hall"][i % 2], f"note_{i % 7}": f"free text {i}"}
        if i % 3:
            slots["when"] = f"{i % 12 + 1} pm"
        reply = json.dumps({"intent": ["lights", "music", "timer"][i % 3], "slots": slots}, sort_keys=True)
        rows.append(ex(f"request number {i}", reply, i + 1))
    return rows


def test_a_json_dataset_reports_its_inferred_schema():
    report = check_examples(json_rows())
    contract = report.contract
    assert contract is not None and contract.kind == "json_schema"
    assert contract.key_order == "sorted"
    assert contract.required == ["intent", "slots"] and contract.optional == []
    assert contract.enums == {"intent": ["lights", "music", "timer"]}
    assert contract.output_schema["properties"]["slots"]["properties"]["room"]["enum"] == ["hall", "kitchen"]
    assert contract.summary == [
        "JSON object, 2 keys (2 required), keys in sorted order",
        "  intent: required, enum of 3 (lights, music, timer)",
        "  slots: required, object of 9 keys (1 required), keys in sorted order, enums: room",
    ]
    # The report is plain JSON (data_report.json, `check --json`) and reads back.
    again = DataReport.model_validate_json(report.model_dump_json())
    assert again.contract == contract


def test_optional_keys_and_any_order_are_reported():
    rows = [ex(f"r{i}", json.dumps({"b": i, "a": "x"} if i % 2 else {"a": "y", "b": i}), i) for i in range(6)]
    rows.append(ex("r9", json.dumps({"a": "z", "b": 1, "c": True}), 9))
    contract = check_examples(rows).contract
    assert contract.key_order == "any"
    assert contract.required == [] and sorted(contract.optional) == ["a", "b", "c"]
    assert contract.summary[0] == "JSON object, 3 keys (0 required), keys in any order"


def test_classification_and_text_datasets():
    labels = check_examples([ex(f"q{i}", ["yes", "no", "maybe"][i % 3], i) for i in range(9)]).contract
    assert labels == ContractSummary(kind="labels", labels=3, summary=["labels: one of 3 (maybe, no, yes)"])
    text = check_examples(
        [ex(f"q{i}", f"a long free answer number {i} with many words", i) for i in range(4)]
    )
    assert text.contract.kind == "none" and text.contract.summary == ["free text: no contract"]
    unlabelled = check_examples([ex("q", None, 1)])
    assert unlabelled.contract is None


def test_check_renders_the_contract():
    from specialize.cli.render import render_data_report

    console = Console(record=True, width=120)
    render_data_report(console, check_examples(json_rows()))
    out = console.export_text()
    assert "Output contract" in out
    assert "intent: required, enum of 3 (lights, music, timer)" in out
    assert "keys in sorted order" in out
