"""The data report: duplicates, leakage, label balance, token statistics and the estimate."""

from __future__ import annotations

import json

import pytest

from specialize.data.checks import DataReport, check_examples, check_files, normalize_text
from specialize.data.example import Example, Source
from specialize.data.tokenize import encode


def ex(user: str, completion: str | None, line: int, file: str = "train.jsonl") -> Example:
    return Example([{"role": "user", "content": user}], completion, Source(file, line))


class CharTokenizer:
    """One token per character; every message renders as its content plus '|'.

    So a prompt costs len(user) + 1 tokens and a reply len(completion) + 1: easy to check by hand.
    """

    chat_template = "chars"
    pad_token = eos_token = "|"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "".join(m["content"] + "|" for m in messages)

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [0] * len(texts)}
        return {"input_ids": [[0] * len(t) for t in texts]}


def test_normalize_text():
    assert normalize_text("  What's   my BALANCE?! ") == "what s my balance"


def test_exact_and_conflicting_duplicates():
    train = [
        ex("Where is my card?", "card_arrival", 1),
        ex("Top up by cheque", "top_up", 2),
        ex("Where is my card?", "card_arrival", 3),
        ex("where is my card", "lost_card", 4),
    ]
    report = check_examples(train)
    assert report.exact_duplicates.groups == 1 and report.exact_duplicates.rows == 1
    assert report.exact_duplicates.examples[0].sources == ["train.jsonl:1", "train.jsonl:3"]
    assert "train.jsonl:3: duplicate of train.jsonl:1 (same request and completion)" in report.warnings
    conflict = report.conflicting_duplicates
    assert conflict.groups == 1 and conflict.examples[0].completions == ["card_arrival", "lost_card"]
    assert any(
        w.startswith("train.jsonl:1: completion: same request as train.jsonl:3, train.jsonl:4")
        for w in report.warnings
    )
    assert report.ok


def test_near_duplicates_are_grouped_and_unrelated_rows_are_not():
    base = "I ordered a new card two weeks ago and it still has not arrived, what should I do about it now"
    train = [
        ex(base, "a", 1),
        ex(base.replace("two weeks", "two week"), "a", 2),
        ex("How do I change the PIN of my debit card at an ATM abroad?", "b", 3),
        ex("Which currencies can I hold in my account and exchange?", "c", 4),
    ]
    report = check_examples(train)
    near = report.near_duplicates
    assert near.groups == 1 and near.examples[0].sources == ["train.jsonl:1", "train.jsonl:2"]
    assert "train.jsonl:2: near-duplicate of train.jsonl:1" in report.warnings
    assert report.exact_duplicates.groups == 0


def test_near_duplicates_scale_to_many_similar_rows():
    # Templated requests share MinHash buckets; the check must still group them (and not hang).
    train = [
        ex(f"please transfer {i} euros from my savings account to my current account", "t", i)
        for i in range(300)
    ]
    report = check_examples(train)
    assert report.near_duplicates.rows >= 250


def test_leakage_names_test_and_train_rows():
    train = [ex("What is the exchange rate?", "rate", 1), ex("Card declined", "declined", 2)]
    test = [
        ex("what is the exchange rate", "rate", 5, "test.jsonl"),
        ex("New question", "other", 6, "test.jsonl"),
    ]
    report = check_examples(train, test=test)
    assert report.leakage is not None and report.leakage.count == 1
    assert report.leakage.sources == ["test.jsonl:5"]
    assert "test.jsonl:5: test request also in the training data (train.jsonl:1)" in report.warnings
    assert report.test_rows == 2


def test_label_balance_warnings():
    train = [ex(f"common request number {i} about things", "a", i) for i in range(60)]
    train += [ex(f"b request {i}", "b", 100 + i) for i in range(5)]
    train += [ex(f"rare {i}", "c", 200 + i) for i in range(2)]
    test = [ex("unseen", "d", 1, "test.jsonl")]
    report = check_examples(train, test=test)
    assert report.task == "classification"
    labels = report.labels
    assert labels is not None
    assert labels.counts == {"a": 60, "b": 5, "c": 2} and labels.ratio == 30
    assert labels.rare == ["c"] and labels.test_only == ["d"]
    assert "label 'c' has only 2 training examples (fewer than 5)" in report.warnings
    assert "labels are imbalanced: 'a' has 60 examples, 'c' has 2 (ratio 30.0)" in report.warnings
    assert (
        "test.jsonl:1: completion: label 'd' appears in the test data but never in train" in report.warnings
    )


def test_token_stats_and_estimate_by_hand():
    train = [ex("a", "x", 1), ex("ab", "xx", 2), ex("abc", "xxx", 3), ex("abcd", "xxxxxxx", 4)]
    # prompts 2, 3, 4, 5 tokens; replies 2, 3, 4, 8; totals 4, 6, 8, 13 (the last > 10)
    report = check_examples(
        train, tokenizer=CharTokenizer(), max_seq_len=10, epochs=2, tokens_per_second=7, price_per_hour=3600
    )
    tokens = report.tokens
    assert tokens is not None and tokens.completion is not None
    assert (tokens.prompt.p50, tokens.prompt.p95, tokens.prompt.max, tokens.prompt.mean) == (
        3.5,
        pytest.approx(4.85),
        5,
        3.5,
    )
    assert (tokens.completion.p50, tokens.completion.p95, tokens.completion.max) == (
        3.5,
        pytest.approx(7.4),
        8,
    )
    assert tokens.truncated.count == 1 and tokens.truncated.sources == ["train.jsonl:4"]
    assert "train.jsonl:4: 13 tokens, more than max_seq_len 10: it will be truncated" in report.warnings
    estimate = report.estimate
    assert estimate is not None
    assert estimate.tokens_per_epoch == 4 + 6 + 8 + 10  # truncated rows count max_seq_len
    assert estimate.total_tokens == 56 and estimate.seconds == 8 and estimate.cost_usd == pytest.approx(8)


def test_token_stats_match_encode_with_the_tiny_tokenizer(tiny_tokenizer):
    train = [
        ex("I am still waiting on my card?", "card_arrival", 1),
        ex("The quick brown fox " * 20, "dog", 2),
    ]
    report = check_examples(train, tokenizer=tiny_tokenizer, max_seq_len=64)
    lengths = [len(encode(tiny_tokenizer, e, 10_000).input_ids) for e in train]
    assert lengths[0] <= 64 < lengths[1]
    assert report.tokens is not None and report.tokens.truncated.sources == ["train.jsonl:2"]
    assert report.estimate is not None and report.estimate.tokens_per_epoch == lengths[0] + 64
    assert report.estimate.seconds is None and report.estimate.cost_usd is None


def test_no_tokenizer_means_no_token_stats():
    report = check_examples([ex("a", "b", 1)])
    assert report.tokens is None and report.estimate is None


def test_empty_completions_are_warned():
    report = check_examples([ex("a", "", 1), ex("b", "c", 2)])
    assert report.empty_completions.count == 1
    assert "train.jsonl:1: completion: empty completion" in report.warnings


def test_broken_line_missing_field_and_duplicate_are_all_reported(write_jsonl):
    path = write_jsonl(
        [
            {"input": "Where is my card?", "output": "card_arrival"},
            '{"input": "broken", ',
            {"input": "no output here"},
            {"input": "Where is my card?", "output": "card_arrival"},
            {"input": "Exchange rate today?", "output": "exchange_rate"},
        ]
    )
    report = check_files(path)
    assert not report.ok and report.n_errors == 2
    assert report.errors[0].startswith(f"{path}:2: invalid JSON")
    assert report.errors[1] == f"{path}:3: output: missing field"
    assert f"{path}:4: duplicate of {path}:1 (same request and completion)" in report.warnings
    assert report.files == [str(path)] and report.format == "input_output" and report.rows == 3


def test_report_round_trips_as_json(write_jsonl):
    train = write_jsonl([{"prompt": "p1", "completion": "c"}, {"prompt": "p2", "completion": "d"}])
    test = write_jsonl([{"prompt": "p1", "completion": "c"}], name="test.jsonl")
    report = check_files(train, test_path=test)
    data = json.loads(report.model_dump_json())
    assert data["ok"] is True and data["leakage"]["count"] == 1 and data["files"] == [str(train), str(test)]
    assert DataReport.model_validate(data).leakage == report.leakage
