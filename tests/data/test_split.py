"""Splits: deterministic, disjoint, stratified, duplicates kept together, saved atomically."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from specialize.data.example import Example, Source
from specialize.data.split import Splits, load_split, save_splits, split_examples
from specialize.errors import ConfigError, DataError


def labelled(n_per_label: dict[str, int]) -> list[Example]:
    rows = []
    for label, n in n_per_label.items():
        for i in range(n):
            line = len(rows) + 1
            rows.append(
                Example([{"role": "user", "content": f"{label} request {i}"}], label, Source("d.jsonl", line))
            )
    return rows


def lines(examples: list[Example]) -> list[int]:
    return [ex.source.line for ex in examples]


def test_same_seed_same_split_and_different_seed_differs():
    rows = labelled({"a": 40, "b": 40})
    first = split_examples(rows, val_fraction=0.1, test_fraction=0.2, seed=1)
    again = split_examples(rows, val_fraction=0.1, test_fraction=0.2, seed=1)
    other = split_examples(rows, val_fraction=0.1, test_fraction=0.2, seed=2)
    assert lines(first.test) == lines(again.test) and lines(first.val) == lines(again.val)
    assert lines(first.test) != lines(other.test)


def test_splits_are_disjoint_complete_and_sized():
    rows = labelled({"a": 50, "b": 30, "c": 20})
    splits = split_examples(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    parts = [set(lines(splits.train)), set(lines(splits.val)), set(lines(splits.test))]
    assert sum(len(p) for p in parts) == 100 and set.union(*parts) == set(range(1, 101))
    assert (len(splits.val), len(splits.test)) == (10, 20)


def test_stratified_by_label_and_small_classes_kept_in_train():
    rows = labelled({"a": 80, "b": 20, "c": 3, "d": 1})
    splits = split_examples(rows, val_fraction=0.1, test_fraction=0.2, seed=3)
    test_counts = Counter(ex.completion for ex in splits.test)
    assert test_counts["a"] == 16 and test_counts["b"] == 4
    train_labels = {ex.completion for ex in splits.train}
    assert train_labels == {"a", "b", "c", "d"}


def test_free_text_is_not_stratified_but_still_split():
    rows = [
        Example([{"role": "user", "content": f"q{i}"}], f"answer number {i}", Source("d", i + 1))
        for i in range(20)
    ]
    splits = split_examples(rows, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 5, 5)


def test_duplicate_requests_stay_in_one_split():
    rows = labelled({"a": 30, "b": 30})
    rows += [Example([{"role": "user", "content": "A REQUEST 3!"}], "a", Source("d.jsonl", 99))]
    splits = split_examples(rows, val_fraction=0.2, test_fraction=0.3, seed=5)
    homes = [name for name in ("train", "val", "test") if {4, 99} & set(lines(getattr(splits, name)))]
    assert len(homes) == 1


def test_zero_test_fraction_and_tiny_inputs():
    rows = labelled({"a": 5, "b": 5})
    splits = split_examples(rows, val_fraction=0.2, test_fraction=0, seed=0)
    assert splits.test == [] and len(splits.val) == 2
    one = split_examples(labelled({"a": 1}), val_fraction=0.1, test_fraction=0.1, seed=0)
    assert len(one.train) == 1
    assert split_examples([], val_fraction=0.1, test_fraction=0.1, seed=0) == Splits()


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2), (0.2, 1.0)])
def test_bad_fractions_are_config_errors(val, test):
    with pytest.raises(ConfigError):
        split_examples(labelled({"a": 4}), val_fraction=val, test_fraction=test, seed=0)


def test_save_and_load_round_trip_atomically(tmp_path):
    rows = labelled({"a": 6, "b": 6})
    rows[0].meta = {"id": "x1"}
    splits = split_examples(rows, val_fraction=0.2, test_fraction=0.2, seed=0)
    paths = save_splits(splits, tmp_path / "splits")
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    for name, path in paths.items():
        loaded = load_split(path)
        original = getattr(splits, name)
        assert [e.to_dict() for e in loaded] == [e.to_dict() for e in original]


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    splits = split_examples(labelled({"a": 6}), val_fraction=0.2, test_fraction=0.2, seed=0)
    save_splits(splits, tmp_path)
    before = (tmp_path / "train.jsonl").read_text(encoding="utf-8")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_splits(Splits(train=labelled({"z": 2})), tmp_path)
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_load_split_errors_name_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [], "completion": "c", "source": "a:1"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2: not a split row"):
        load_split(path)
    with pytest.raises(DataError, match="no such split file"):
        load_split(tmp_path / "missing.jsonl")
