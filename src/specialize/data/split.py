"""Deterministic train/val/test splits, saved exactly as used so a run can be audited and repeated.

Rows with the same normalised request always land in the same split: a duplicate on both sides
would let the test measure memory rather than skill. For classification the split is stratified
by label, so a rare label is not left out of training by bad luck.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specialize.data.checks import normalize_text
from specialize.data.example import Example
from specialize.errors import ConfigError, DataError
from specialize.outputs import detect_task

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


def split_examples(
    examples: Sequence[Example],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool | None = None,
) -> Splits:
    """Split by fraction; the same examples and seed always give the same splits.

    `stratify=None` stratifies when the completions look like classification labels. Within each
    split, rows keep their input order. `test_fraction=0` is for a user-supplied test file.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction + test_fraction})"
        )
    if stratify is None:
        labels = [ex.completion for ex in examples if ex.completion is not None]
        stratify = bool(labels) and detect_task(labels) == "classification"
    # Units: indices of rows sharing a normalised request, kept together.
    units: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        units[normalize_text(ex.user_text)].append(i)
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        first = examples[members[0]].completion
        key = (first or "").strip() if stratify and first is not None else ""
        strata[key].append(members)
    rng = random.Random(seed)
    assignment = _allocate(strata, len(examples), val_fraction, test_fraction, rng)
    splits = Splits()
    for i, ex in enumerate(examples):
        getattr(splits, assignment[i]).append(ex)
    log.info(
        "split %d examples: %d train, %d val, %d test (stratified=%s)",
        len(examples),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        stratify,
    )
    return splits


def _allocate(
    strata: dict[str, list[list[int]]],
    n_total: int,
    val_fraction: float,
    test_fraction: float,
    rng: random.Random,
) -> dict[int, str]:
    """Split name per row index. Each stratum gives its share to val/test (largest remainder, so
    the totals match the fractions), but always keeps at least one unit for train."""
    want = {"test": round(n_total * test_fraction), "val": round(n_total * val_fraction)}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and want[name] == 0 and n_total >= 3:
            want[name] = 1  # a requested split should not come out empty for a tiny dataset
    order = sorted(strata)  # sorted keys: the result does not depend on dict order
    shuffled = {key: rng.sample(strata[key], len(strata[key])) for key in order}
    taken = {key: {"test": 0, "val": 0} for key in order}
    for name in ("test", "val"):
        fraction = want[name] / n_total if n_total else 0.0
        ideal = {key: len(shuffled[key]) * fraction for key in order}
        room = {key: len(shuffled[key]) - 1 - taken[key]["test"] for key in order}  # keep one for train
        for key in order:
            taken[key][name] = min(math.floor(ideal[key]), max(room[key], 0))
        remaining = want[name] - sum(taken[key][name] for key in order)
        by_remainder = sorted(order, key=lambda k: (-(ideal[k] - math.floor(ideal[k])), k))
        while remaining > 0:
            progressed = False
            for key in by_remainder:
                if remaining > 0 and taken[key][name] < room[key]:
                    taken[key][name] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:
                break
    assignment: dict[int, str] = {}
    for key in order:
        units = shuffled[key]
        n_test, n_val = taken[key]["test"], taken[key]["val"]
        for position, members in enumerate(units):
            name = "test" if position < n_test else "val" if position < n_test + n_val else "train"
            for i in members:
                assignment[i] = name
    return assignment


def save_splits(splits: Splits, directory: str | Path) -> dict[str, Path]:
    """Write train/val/test.jsonl, each atomically: a killed run never leaves a half-written split."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in SPLIT_NAMES:
        path = directory / f"{name}.jsonl"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for ex in getattr(splits, name):
                    f.write(json.dumps(ex.to_dict(), ensure_ascii=False, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths[name] = path
    return paths


def load_split(path: str | Path) -> list[Example]:
    """The examples of a split file written by `save_splits` (an empty file is an empty split)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such split file")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                examples.append(Example.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"{path}:{number}: not a split row ({e})") from e
    return examples
