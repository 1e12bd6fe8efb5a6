"""From a run's data config to the exact train/val/test rows it uses.

This is the one place that decides which rows a run sees: it loads and validates the files,
refuses to go on when they have errors (nothing is trained on half-valid data), splits
deterministically, applies the size caps, and writes the splits and the data report into the run
directory so that evaluation and monitoring use precisely the same rows.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

from specialize.atomic import atomic_write_text
from specialize.config import RunConfig
from specialize.data.checks import DataReport, check_examples
from specialize.data.example import Example
from specialize.data.formats import FormatSpec, normalize
from specialize.data.load import read_rows
from specialize.data.split import Splits, load_split, save_splits, split_examples
from specialize.errors import ConfigError, DataError
from specialize.run_dir import RunDir

log = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 20


def format_spec(config: RunConfig) -> FormatSpec:
    d = config.data
    return FormatSpec(
        input_field=d.input_field,
        output_field=d.output_field,
        system_prompt=d.system_prompt,
        prompt_template=d.prompt_template,
    )


def load_checked(path: str, spec: FormatSpec, *, preference: bool = False) -> tuple[list[Example], str]:
    """Load one file; raise a DataError that lists its row errors, if it has any.

    `preference` (DPO and KTO runs) reads pairs or rated replies (`data.preference`); otherwise a
    preference file is refused, since read as supervised rows it would teach the rejected replies too.
    """
    from specialize.data.preference import normalize_preferences, preference_format

    rows, issues = read_rows(path)
    pref = preference_format(rows)
    if preference:
        if pref is None:
            raise DataError(
                f"{path}: method.kind dpo/kto needs preference rows ({{prompt, chosen, rejected}} or "
                "{prompt, completion, label}); this file holds supervised examples"
            )
        parsed, more = normalize_preferences(rows, pref, spec)
        examples, fmt = [row.to_example() for row in parsed], f"preference_{pref}"
    elif pref is not None:
        raise DataError(
            f"{path}: this is preference data ({pref}); train it with method.kind: dpo (pairs) or kto"
        )
    else:
        examples, more, fmt = normalize(rows, spec)
    issues = issues + more
    errors = [str(i) for i in issues if i.severity == "error"]
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(
            f"{path}: {len(errors)} error(s); fix them or run `specialize check`:\n  {shown}{more}"
        )
    return examples, fmt


def prepare_splits(config: RunConfig, tokenizer: Any = None) -> tuple[Splits, DataReport]:
    d = config.data
    if not d.train:
        raise ConfigError("no training data: set data.train in the config or pass --data")
    spec = format_spec(config)
    preference = config.method.preference
    train_rows, fmt = load_checked(d.train, spec, preference=preference)
    test_rows: list[Example] | None = None
    if d.test:
        test_rows, _ = load_checked(d.test, spec, preference=preference)
    splits = split_examples(
        train_rows,
        val_fraction=d.val_fraction,
        test_fraction=0.0 if test_rows is not None else d.test_fraction,
        seed=config.seed,
    )
    if test_rows is not None:
        splits.test = test_rows
    splits.train = _cap(splits.train, d.max_train_examples, config.seed)
    splits.val = _cap(splits.val, d.max_val_examples, config.seed + 1)
    splits.test = _cap(splits.test, d.max_test_examples, config.seed + 2)
    if not splits.train:
        raise DataError(f"{d.train}: no training rows left after splitting")
    if preference:
        from specialize.data.preference import check_preferences, preference_row

        rows = [r for e in splits.train if (r := preference_row(e)) is not None]
        test_prefs = [r for e in splits.test if (r := preference_row(e)) is not None]
        return splits, check_preferences(
            rows,
            fmt="pairs" if fmt == "preference_pairs" else "unpaired",
            test=test_prefs or None,
            tokenizer=tokenizer,
            max_seq_len=config.model.max_seq_len,
            files=[p for p in (d.train, d.test) if p],
        )
    report = check_examples(
        splits.train,
        test=splits.test or None,
        tokenizer=tokenizer,
        max_seq_len=config.model.max_seq_len,
        epochs=config.train.epochs,
        files=[p for p in (d.train, d.test) if p],
        format=fmt,
    )
    return splits, report


def write_splits(run: RunDir, splits: Splits, report: DataReport) -> None:
    save_splits(splits, run.splits)
    atomic_write_text(run.data_report, report.model_dump_json(indent=2))


def read_splits(run: RunDir) -> Splits:
    return Splits(
        train=load_split(run.split_file("train")),
        val=load_split(run.split_file("val")) if run.split_file("val").exists() else [],
        test=load_split(run.split_file("test")) if run.split_file("test").exists() else [],
    )


def _cap(rows: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded subset of `limit` rows, stratified by completion.

    Rows are shuffled, then ranked by their position within their own label (as a fraction of
    that label's count), so every label keeps its share of the subset; for free text, where every
    completion is unique, this is a plain random subset. The original order is kept.
    """
    if limit is None or len(rows) <= limit:
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    totals = Counter(r.completion for r in rows)
    seen: Counter[str | None] = Counter()
    rank: dict[int, float] = {}
    for i in order:
        label = rows[i].completion
        rank[i] = seen[label] / totals[label]
        seen[label] += 1
    keep = sorted(sorted(order, key=lambda i: rank[i])[:limit])
    return [rows[i] for i in keep]
