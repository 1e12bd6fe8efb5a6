"""Preference data: every shape read, every malformed row named by file:line: field, the checks
and statistics, and `specialize check` recognising preference files without touching SFT ones."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from specialize.cli import app
from specialize.config import parse_config
from specialize.data.checks import check_files
from specialize.data.example import Example, Source
from specialize.data.formats import FormatSpec
from specialize.data.load import RawRow
from specialize.data.preference import (
    PreferencePair,
    RatedReply,
    load_preferences,
    preference_format,
    preference_row,
    reference_rows,
    unpair,
)
from specialize.data.prepare import prepare_splits
from specialize.errors import DataError

runner = CliRunner()
USER = {"role": "user", "content": "card lost"}


def _errors(write_jsonl, rows):
    path = write_jsonl(rows)
    parsed, issues, _ = load_preferences(path)
    return path, parsed, [str(i) for i in issues if i.severity == "error"]


def test_every_pair_shape_reads_to_the_same_pair(write_jsonl):
    rows = [
        {"prompt": "card lost", "chosen": "lost_card", "rejected": "card_arrival"},
        {
            "messages": [USER],
            "chosen": {"role": "assistant", "content": "lost_card"},
            "rejected": "card_arrival",
        },
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": "lost_card"}],
            "rejected": [{"role": "assistant", "content": "card_arrival"}],
        },
        {  # TRL's implicit prompt: whole conversations sharing the prompt turns
            "chosen": [USER, {"role": "assistant", "content": "lost_card"}],
            "rejected": [USER, {"role": "assistant", "content": "card_arrival"}],
        },
    ]
    parsed, issues, fmt = load_preferences(write_jsonl(rows))
    assert fmt == "pairs" and not issues
    assert [(p.prompt, p.chosen, p.rejected) for p in parsed] == [([USER], "lost_card", "card_arrival")] * 4
    assert [p.source.line for p in parsed] == [1, 2, 3, 4]


def test_unpaired_feedback_and_csv_labels(tmp_path, write_jsonl):
    parsed, issues, fmt = load_preferences(
        write_jsonl(
            [
                {"prompt": "card lost", "completion": "lost_card", "label": True},
                {
                    "messages": [USER],
                    "completion": [{"role": "assistant", "content": "fees"}],
                    "label": False,
                },
            ]
        )
    )
    assert fmt == "unpaired" and not issues
    assert [(r.completion, r.desirable) for r in parsed] == [("lost_card", True), ("fees", False)]
    csv = tmp_path / "k.csv"
    csv.write_text(
        "prompt,completion,label\ncard lost,lost_card,true\ncard lost,fees,0\nrate?,exchange_rate,Yes\n"
    )
    parsed, issues, _ = load_preferences(csv)
    assert [r.desirable for r in parsed] == [True, False, True] and not issues
    assert parsed[1].source == Source(str(csv), 3)


def test_json_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "card lost", "chosen": "lost_card", "rejected": "fees"}] * 2
    (tmp_path / "p.json").write_text(json.dumps(rows, indent=1))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    for name in ("p.json", "p.parquet"):
        parsed, _, fmt = load_preferences(tmp_path / name)
        assert fmt == "pairs" and len(parsed) == 2


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "rejected": "b"}, "chosen: missing field"),
        ({"prompt": "p", "chosen": "a"}, "rejected: missing field"),
        ({"prompt": "p", "chosen": None, "rejected": "b"}, "chosen: is null"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen: is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected: is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": " same "}, "rejected: identical to chosen"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt: is empty"),
        ({"chosen": "a", "rejected": "b"}, "prompt: missing field"),
        (
            {"prompt": 3, "chosen": "a", "rejected": "b"},
            "prompt: expected a list of {role, content} messages",
        ),
        ({"prompt": "p", "chosen": 7, "rejected": "b"}, "chosen: expected a string or an assistant message"),
        (
            {"prompt": "p", "chosen": {"role": "user", "content": "a"}, "rejected": "b"},
            "chosen.role: expected role",
        ),
        ({"prompt": "p", "chosen": {"role": "assistant"}, "rejected": "b"}, "chosen.content: missing field"),
        ({"prompt": "p", "chosen": ["a", "b"], "rejected": "b"}, "chosen: expected one assistant message"),
        (
            {"prompt": [USER, {"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            "prompt[1].role: the prompt must end with the user turn",
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
            "prompt[0].role: unknown role",
        ),
        (
            {
                "chosen": [USER, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "rejected: its conversation before the reply differs from chosen's",
        ),
    ],
)
def test_every_malformed_pair_is_an_error_naming_file_line_field(write_jsonl, row, expected):
    good = {"prompt": "fine", "chosen": "a", "rejected": "b"}
    path, parsed, errors = _errors(write_jsonl, [good, row, good])
    assert errors == [e for e in errors if e.startswith(f"{path}:2: ")] and len(errors) == 1, errors
    assert expected in errors[0], errors
    assert len(parsed) == 2  # the valid rows are kept, the bad one is not


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "completion": "a"}, None),  # no label at all: not voted unpaired, see below
        (
            {"prompt": "p", "completion": "a", "label": "maybe"},
            "label: expected true or false, found 'maybe'",
        ),
        ({"prompt": "p", "completion": "a", "label": 2}, "label: expected true or false, found a number (2)"),
        ({"prompt": "p", "completion": "", "label": True}, "completion: is empty"),
        ({"completion": "a", "label": True}, "prompt: missing field"),
    ],
)
def test_every_malformed_rated_reply(write_jsonl, row, expected):
    good = {"prompt": "fine", "completion": "a", "label": True}
    bad = {"prompt": "fine", "completion": "b", "label": False}
    path, parsed, errors = _errors(write_jsonl, [good, row, bad])
    if expected is None:
        assert errors == [f"{path}:2: label: missing field (true for a good reply, false for a bad one)"]
    else:
        assert len(errors) == 1 and errors[0].startswith(f"{path}:2: ") and expected in errors[0], errors
    assert [r.source.line for r in parsed] == [1, 3]


def test_detection_keeps_supervised_files_supervised():
    def rows(*dicts):
        return [RawRow(d, Source("f", i + 1)) for i, d in enumerate(dicts)]

    assert preference_format(rows({"input": "a", "output": "b"})) is None
    # A classification file whose label column holds class names is not KTO feedback.
    assert preference_format(rows({"prompt": "a", "completion": "b", "label": "billing"})) is None
    assert preference_format(rows({"prompt": "a", "chosen": "b", "rejected": "c"})) == "pairs"
    assert preference_format(rows({"prompt": "a", "completion": "b", "label": "true"})) == "unpaired"


def test_checks_duplicates_contradictions_leakage_and_stats(tmp_path, write_jsonl):
    train = write_jsonl(
        [
            {"prompt": "card lost", "chosen": "lost_card", "rejected": "fees"},
            {"prompt": "Card lost!", "chosen": "lost_card", "rejected": "fees"},  # same, normalised
            {"prompt": "card lost", "chosen": "fees", "rejected": "lost_card"},  # the other way round
            {"prompt": "exchange rate", "chosen": "exchange_rate", "rejected": "fees"},
        ],
        "train.jsonl",
    )
    test = write_jsonl(
        [{"prompt": "exchange rate?", "chosen": "exchange_rate", "rejected": "x"}], "test.jsonl"
    )
    report = check_files(train, test_path=test)
    warnings = "\n".join(report.warnings)
    assert report.ok and report.format == "preference_pairs"
    assert f"{train}:2: duplicate of {train}:1" in warnings
    assert f"{train}:3: contradicts {train}:1" in warnings
    assert f"{test}:1: prompt: test prompt also in the training data ({train}:4)" in warnings
    assert report.leakage is not None and report.leakage.count == 1
    stats = report.preference
    assert stats is not None and stats.pairs == 4 and stats.unique_prompts == 2
    assert stats.unique_prompt_share == 0.5 and stats.unit == "characters"
    assert stats.chosen_mean == pytest.approx((9 + 9 + 4 + 13) / 4)


def test_pairs_longer_than_max_seq_len_use_the_chat_template(write_jsonl, tiny_tokenizer):
    path = write_jsonl(
        [
            {"prompt": "short", "chosen": "a", "rejected": "b"},
            {"prompt": "short", "chosen": "a", "rejected": "the quick brown fox jumps " * 20},
        ]
    )
    report = check_files(path, tokenizer=tiny_tokenizer, max_seq_len=40)
    too_long = [w for w in report.warnings if "max_seq_len 40" in w]
    assert len(too_long) == 1 and too_long[0].startswith(f"{path}:2: ")
    stats = report.preference
    assert stats is not None and stats.unit == "tokens" and stats.too_long.count == 1
    assert stats.rejected_mean is not None and stats.rejected_mean > stats.chosen_mean


def test_unpaired_one_sided_labels_warn(write_jsonl):
    report = check_files(
        write_jsonl([{"prompt": f"p{i}", "completion": "a", "label": True} for i in range(3)])
    )
    assert report.ok and any("every reply is desirable" in w for w in report.warnings)
    assert report.preference is not None and report.preference.desirable == 3


def test_the_review_exports_shapes_are_accepted(write_jsonl):
    """The studio's review export writes these three shapes (jsonl)."""
    dpo = check_files(write_jsonl([{"prompt": "a", "chosen": "b", "rejected": "c"}], "dpo.jsonl"))
    kto = check_files(write_jsonl([{"prompt": "a", "completion": "b", "label": False}], "kto.jsonl"))
    sft = check_files(write_jsonl([{"input": "a", "output": "b"}], "sft.jsonl"))
    assert (dpo.format, kto.format, sft.format) == ("preference_pairs", "preference_unpaired", "input_output")
    assert dpo.ok and kto.ok and sft.ok and sft.preference is None


def test_example_round_trip_and_helpers():
    pair = PreferencePair([USER], "lost_card", "fees", Source("f", 1), {"id": 7})
    rated = RatedReply([USER], "fees", False, Source("f", 2))
    example = Example.from_dict(pair.to_example().to_dict())  # as a split file stores it
    assert preference_row(example) == pair
    assert example.completion == "lost_card" and example.user_text == "card lost"
    assert preference_row(Example([USER], "x", Source("f", 3))) is None
    assert [e.completion for e in reference_rows([pair.to_example(), rated.to_example()])] == ["lost_card"]
    assert [(r.completion, r.desirable) for r in unpair([pair, rated])] == [
        ("lost_card", True),
        ("fees", False),
        ("fees", False),
    ]


def test_system_prompt_is_added_to_prompts(write_jsonl):
    parsed, _, _ = load_preferences(
        write_jsonl([{"prompt": "a", "chosen": "b", "rejected": "c"}]), FormatSpec(system_prompt="Be brief.")
    )
    assert parsed[0].prompt[0] == {"role": "system", "content": "Be brief."}


def _config(path, kind):
    return parse_config({"data": {"train": str(path)}, "method": {"kind": kind}})


def test_splits_keep_prompts_together_and_refuse_mixed_up_kinds(write_jsonl):
    rows = [{"prompt": f"request {i % 10}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    path = write_jsonl(rows)
    splits, report = prepare_splits(_config(path, "dpo"))
    assert report.preference is not None and report.preference.pairs == len(splits.train)
    prompts = {name: {e.user_text for e in getattr(splits, name)} for name in ("train", "val", "test")}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]
    assert all(isinstance(preference_row(e), PreferencePair) for e in splits.test)
    with pytest.raises(DataError, match="this is preference data"):
        prepare_splits(_config(path, "lora"))
    sft = write_jsonl([{"input": f"a{i}", "output": "b"} for i in range(10)], "sft.jsonl")
    with pytest.raises(DataError, match="needs preference rows"):
        prepare_splits(_config(sft, "kto"))


def test_cli_check_reports_a_preference_file(write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "card lost", "chosen": "lost_card", "rejected": "fees"},
            {"prompt": "rate?", "chosen": "same", "rejected": "same"},
        ]
    )
    result = runner.invoke(app, ["check", str(path), "--no-tokens"])
    assert result.exit_code == 2, result.output
    assert "Preference data (pairs)" in result.output
    assert f"{path}:2: rejected: identical to chosen" in result.output
    result = runner.invoke(app, ["check", str(path), "--no-tokens", "--json"])
    assert json.loads(result.output)["preference"]["pairs"] == 1


def test_cli_check_counts_tokens_with_the_from_run_base(
    write_jsonl, tiny_model_dir, tiny_tokenizer, tmp_path
):
    from specialize.config import save_config
    from tests.conftest import make_adapter_run

    parent = make_adapter_run(tmp_path / "parent", tiny_model_dir, seed=0)
    save_config(parse_config({"model": {"base": str(tiny_model_dir)}}), parent / "config.yaml")
    config = tmp_path / "dpo.yaml"
    config.write_text(f"method:\n  kind: dpo\n  from_run: {parent}\n")
    path = write_jsonl([{"prompt": "card lost", "chosen": "lost_card", "rejected": "fees"}])
    result = runner.invoke(app, ["check", str(path), "--config", str(config), "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    expected = check_files(path, tokenizer=tiny_tokenizer).preference
    assert (
        expected is not None
        and json.loads(result.output)["preference"]["prompt_mean"] == expected.prompt_mean
    )
