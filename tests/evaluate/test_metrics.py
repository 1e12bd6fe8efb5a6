"""Task metrics against hand-computed cases, degenerate inputs and invariants."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.evaluate.metrics import (
    classification_metrics,
    compute_metrics,
    flatten_json,
    json_metrics,
    match_label,
    metric_ci,
    paired_test,
    parse_json_output,
    text_metrics,
)

# ------------------------------------------------------------------------------ classification


def test_match_label_rules():
    labels = ["card_arrival", "Yes", "yes", "Refund"]
    assert match_label("  card_arrival \n", labels) == "card_arrival"
    assert match_label('"card_arrival".', labels) == "card_arrival"
    assert match_label("'card_arrival'", labels) == "card_arrival"
    assert match_label("CARD_ARRIVAL", labels) == "card_arrival"
    assert match_label("refund.", labels) == "Refund"
    assert match_label("YES", labels) is None  # ambiguous between "Yes" and "yes"
    assert match_label("yes", labels) == "yes"
    assert match_label("card_arrival because the card is late", labels) is None
    assert match_label("", labels) is None


def test_classification_hand_computed():
    result = classification_metrics(
        ["a", ' "B".', "zzz", "c", "a"], ["a", "b", "c", "c", "b"], labels=["a", "b", "c", "d"]
    )
    assert result.primary == "accuracy" and result.kind == "classification" and result.n == 5
    assert result.values["accuracy"] == pytest.approx(3 / 5)
    assert result.values["invalid_rate"] == pytest.approx(1 / 5)
    # F1 = 2TP / (support + predicted): a 2/(1+2), b 2/(2+1), c 2/(2+1); d absent -> left out.
    assert result.values["macro_f1"] == pytest.approx(2 / 3)
    assert result.per_item["accuracy"] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.per_item["invalid_rate"] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert {(c["reference"], c["prediction"], c["count"]) for c in result.details["confusions"]} == {
        ("c", "zzz", 1),
        ("b", "a", 1),
    }
    assert result.details["per_label"]["c"] == {
        "support": 2,
        "predicted": 1,
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
    }
    json.dumps(result.to_dict())


def test_classification_all_right_all_wrong_single_class():
    refs = ["x", "y", "x"]
    assert classification_metrics(refs, refs).values == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "invalid_rate": 0.0,
    }
    wrong = classification_metrics(["y", "x", "y"], refs).values
    assert wrong == {"accuracy": 0.0, "macro_f1": 0.0, "invalid_rate": 0.0}
    single = classification_metrics(["x", "x"], ["x", "x"])
    assert single.values["macro_f1"] == 1.0
    outside = classification_metrics(["maybe", "no idea"], ["x", "x"])
    assert outside.values == {"accuracy": 0.0, "macro_f1": 0.0, "invalid_rate": 1.0}


def test_classification_confusions_are_top_ten_most_common():
    refs = ["a"] * 30
    preds = [f"wrong{i % 12}" for i in range(24)] + ["a"] * 6
    confusions = classification_metrics(preds, refs).details["confusions"]
    assert len(confusions) == 10 and all(c["count"] == 2 for c in confusions)


def test_empty_inputs_give_nan_not_errors():
    for kind in ("classification", "json", "text"):
        result = compute_metrics(kind, [], [])
        assert result.n == 0 and all(math.isnan(v) for v in result.values.values())
        assert all(math.isnan(v) for v in metric_ci(result, result.primary))


def test_length_mismatch_and_unknown_kind_raise():
    with pytest.raises(ValueError):
        classification_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics("regression", ["a"], ["a"])  # type: ignore[arg-type]


def test_macro_f1_interval_is_recomputed_on_resamples():
    refs = ["a", "b", "c", "d"] * 25
    preds = ["a", "b", "c", "a"] * 25
    result = classification_metrics(preds, refs)
    point, low, high = metric_ci(result, "macro_f1", seed=1)
    assert point == result.values["macro_f1"] and low <= point <= high
    assert metric_ci(result, "accuracy") == pytest.approx((0.75, 0.66, 0.83), abs=0.02)
    with pytest.raises(KeyError):
        metric_ci(result, "bleu")


label_text = st.text(min_size=0, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(label_text, label_text), min_size=1, max_size=30))
def test_accuracy_and_macro_f1_bounds(pairs):
    preds, refs = zip(*pairs, strict=True)
    values = classification_metrics(list(preds), list(refs)).values
    assert 0.0 <= values["accuracy"] <= 1.0 and 0.0 <= values["macro_f1"] <= 1.0
    same = classification_metrics(list(refs), list(refs)).values
    assert same["accuracy"] == 1.0 and same["macro_f1"] == 1.0 and same["invalid_rate"] == 0.0


# --------------------------------------------------------------------------------------- json


def test_parse_json_output_tolerates_fences_only():
    assert parse_json_output('```json\n{"a": 1}\n```') == (True, {"a": 1})
    assert parse_json_output("```\n[1, 2]\n```") == (True, [1, 2])
    assert parse_json_output('  {"a": 1} ') == (True, {"a": 1})
    assert parse_json_output('Here it is: {"a": 1}')[0] is False
    assert parse_json_output("")[0] is False


def test_flatten_json_nested_paths():
    flat = flatten_json({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f.g": True})
    assert flat == {("a", "b"): "1", ("a", "c", "d"): "[1, 2]", ("e",): "{}", ("f.g",): "true"}
    assert flatten_json([1, 2]) == {(): "[1, 2]"}


def test_json_hand_computed():
    predictions = [
        '```json\n{"name": "Ada", "info": {"age": 36, "city": "Paris"}}\n```',  # 2 of 3 fields
        "sorry, I cannot",  # unparseable: 0 fields predicted
        '{"tags": ["x", "y"], "n": 1.0}',  # list order matters, 1.0 == 1
        '{"b": 2, "a": 1}',  # key order is irrelevant
    ]
    references = [
        '{"name": "Ada", "info": {"age": 36, "city": "London"}}',
        '{"k": "v"}',
        '{"tags": ["y", "x"], "n": 1}',
        '{"a": 1, "b": 2}',
    ]
    result = json_metrics(predictions, references)
    assert result.primary == "field_f1" and result.n == 4
    # tp = 2 + 0 + 1 + 2 = 5; predicted = 3 + 0 + 2 + 2 = 7; reference = 3 + 1 + 2 + 2 = 8.
    assert result.values["field_precision"] == pytest.approx(5 / 7)
    assert result.values["field_recall"] == pytest.approx(5 / 8)
    assert result.values["field_f1"] == pytest.approx(10 / 15)
    assert result.values["exact_match"] == pytest.approx(1 / 4)
    assert result.values["parse_rate"] == pytest.approx(3 / 4)
    assert result.values["invalid_rate"] == pytest.approx(1 / 4)
    assert result.per_item["field_f1"] == pytest.approx([4 / 6, 0.0, 0.5, 1.0])
    assert result.details["fields"]["info.city"] == {
        "support": 1,
        "predicted": 1,
        "precision": 0.0,
        "recall": 0.0,
    }
    json.dumps(result.to_dict())


def test_json_all_right_all_unparseable_and_bool_vs_int():
    refs = ['{"a": {"b": [1]}, "c": null}', "[1, 2]"]
    assert json_metrics(refs, refs).values["field_f1"] == 1.0
    assert json_metrics(refs, refs).values["exact_match"] == 1.0
    bad = json_metrics(["{oops", ""], refs).values
    assert bad["field_f1"] == 0.0 and bad["field_precision"] == 0.0 and bad["parse_rate"] == 0.0
    assert json_metrics(['{"a": true}'], ['{"a": 1}']).values["field_f1"] == 0.0


def test_json_unparseable_reference_is_compared_as_text():
    result = json_metrics(["not json", "other"], ["not json", "not json"])
    assert result.details["unparseable_references"] == 2
    assert result.per_item["exact_match"] == [1.0, 0.0]
    assert result.values["parse_rate"] == 0.0


def test_json_field_f1_interval():
    refs = ['{"a": 1, "b": 2}'] * 50
    preds = ['{"a": 1, "b": 3}'] * 25 + ['{"a": 1, "b": 2}'] * 25
    point, low, high = metric_ci(json_metrics(preds, refs), "field_f1")
    assert point == pytest.approx(0.75) and low < 0.75 < high


# --------------------------------------------------------------------------------------- text


def test_text_identical_and_empty_strings():
    same = text_metrics(["the cat sat on the mat", "hello"], ["the cat sat on the mat", "hello"])
    assert same.values == {"rougeL": 1.0, "chrf": 1.0, "bleu": pytest.approx(1.0), "exact_match": 1.0}
    empty = text_metrics(["", ""], ["", ""])
    assert empty.values == {"rougeL": 1.0, "chrf": 1.0, "bleu": 1.0, "exact_match": 1.0}
    missing = text_metrics(["", "  "], ["something here", "more"])
    assert missing.values == {"rougeL": 0.0, "chrf": 0.0, "bleu": 0.0, "exact_match": 0.0}
    extra = text_metrics(["something"], [""])
    assert extra.values["rougeL"] == 0.0 and extra.values["exact_match"] == 0.0


def test_text_hand_computed_rouge_l():
    # LCS("the cat sat on the mat", "the cat sat on a mat") = 5 tokens over 6 and 6: F = 5/6.
    result = text_metrics(
        ["the cat sat on the mat", "completely different"], ["the cat sat on a mat", "nothing shared"]
    )
    assert result.per_item["rougeL"] == pytest.approx([5 / 6, 0.0])
    assert result.values["rougeL"] == pytest.approx(5 / 12)
    assert 0.0 < result.values["chrf"] < 1.0 and 0.0 <= result.values["bleu"] < 1.0
    assert result.per_item["exact_match"] == [0.0, 0.0]


def test_text_rouge_handles_non_ascii():
    result = text_metrics(["für die Straße", "日本語です"], ["für die Straße bitte", "日本語"])
    assert result.per_item["rougeL"] == pytest.approx([6 / 7, 0.75])  # 3/3 vs 3/4; 3/5 vs 3/3


def test_text_intervals_and_paired_test():
    refs = [f"the answer to question {i} is {i * 7}" for i in range(60)]
    good = text_metrics(refs[:50] + ["no idea"] * 10, refs)
    bad = text_metrics(["no idea"] * 60, refs)
    for name in ("rougeL", "chrf", "bleu"):
        point, low, high = metric_ci(good, name)
        assert point == good.values[name] and 0.0 <= low <= high <= 1.0
    test = paired_test(good, bad)
    assert test.name == "rougeL" and test.mean_diff > 0.5 and test.p_value < 0.01
    assert paired_test(good, bad, "bleu").ci_low > 0
    assert paired_test(good, good).p_value == 1.0
