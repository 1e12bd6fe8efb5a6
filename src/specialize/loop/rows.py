"""The rows a retrain learns from: new labelled rows merged with the parent's training rows.

New rows come from a data file (any format `specialize train` reads, under the parent run's
field names and prompt settings), from reviewed examples (the studio's export, in the normal
form: messages plus completion), or from logged requests with labels supplied for them. Every row
keeps its `file:line`, so that a refusal can name it.

Merging rules, and why:
- a new row whose request is in the parent's frozen test split is refused (an error naming its
  line): training on it would make the old-test comparison measure memory, not skill;
- a new row equal to a parent training row (same normalised request and reply) is a duplicate
  and is dropped, as is a repeat within the new rows: the current version has already learnt it;
- a new row with a parent training row's request but another reply is a correction: it replaces
  the parent's row;
- a seeded, stratified slice of the remaining new rows is held out, never trained on: the
  challenger must prove itself on it against the current version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specialize.config import RunConfig
from specialize.data.checks import normalize_text
from specialize.data.example import Example, Source
from specialize.data.formats import FormatSpec
from specialize.data.prepare import format_spec, load_checked
from specialize.data.split import split_examples
from specialize.errors import DataError
from specialize.serve.request_log import read_window

MAX_SHOWN = 20


@dataclass
class MergedRows:
    """The challenger's training rows and the new rows it is judged on."""

    train: list[Example]  # parent rows (minus corrected ones) plus the new rows not held out
    holdout: list[Example]  # new rows held out for the comparison
    given: int  # new rows read
    duplicates: int  # new rows dropped as already known (or repeated)
    corrected: int  # parent rows replaced by a new reply to the same request
    added: int  # new rows in `train`
    parent_rows: int
    sources: list[str] = field(default_factory=list)
    fingerprint: str = ""  # of the new rows not already learnt (`fingerprint`)


def read_new_rows(path: str | Path, config: RunConfig) -> list[Example]:
    """A file of new labelled rows, read as the parent run read its training file."""
    rows, _ = load_checked(str(path), format_spec(config))
    return rows


def read_reviewed_rows(path: str | Path, config: RunConfig) -> list[Example]:
    """Reviewed examples: the corrections of `specialize review export` (its folder, whose
    `sft.jsonl` holds `{input, output}` rows, or that file), or any file of examples in a format
    of its own (messages, prompt/completion). The reviewed input is the request as the model saw
    it (the parent's template already applied), so only the parent's system prompt is added.

    The export's DPO and KTO files are not read: a reply preferred over another is not thereby
    right, while a correction is what a reviewer typed as the right reply."""
    path = Path(path)
    if path.is_dir():
        corrections = path / "sft.jsonl"
        if not corrections.is_file():
            raise DataError(f"{path}: no sft.jsonl (the corrected replies of `specialize review export`)")
        path = corrections
    rows, _ = load_checked(str(path), FormatSpec(system_prompt=config.data.system_prompt))
    return rows


def read_logged_rows(log_path: str | Path, labels_path: str | Path) -> list[Example]:
    """Logged requests with the labels a person supplied for them.

    `labels_path` is JSON lines, one per labelled request: `{"id": 17, "label": "card_arrival"}`
    (`id` the request log's row id, or `prompt_hash`; `label` or `completion` the reply to learn).
    The request itself comes from the log, which must store text (not `--log-hashes-only`)."""
    labels_file = Path(labels_path)
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: labels file not found")
    logged = read_window(log_path)
    by_id = {r.id: r for r in logged if r.id is not None}
    by_hash = {r.prompt_hash: r for r in logged if r.prompt_hash}
    rows: list[Example] = []
    errors: list[str] = []
    for number, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{labels_file}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            errors.append(f"{where}: not JSON ({exc})")
            continue
        label = data.get("label", data.get("completion")) if isinstance(data, dict) else None
        if not isinstance(label, str) or not label.strip():
            errors.append(f"{where}: label: a non-empty string is required")
            continue
        request = by_id.get(data.get("id")) if "id" in data else by_hash.get(data.get("prompt_hash"))
        if request is None:
            key = "id" if "id" in data else "prompt_hash"
            errors.append(f"{where}: {key}: no request {data.get(key)!r} in the request log {log_path}")
            continue
        messages = _logged_messages(request.prompt)
        if messages is None:
            errors.append(f"{where}: request {request.id} has no stored text (the log keeps hashes only)")
            continue
        rows.append(Example(messages=messages, completion=label, source=Source(str(labels_file), number)))
    _raise(errors, f"{labels_file}: {len(errors)} label(s) cannot be used")
    return rows


def merge_rows(
    parent_train: Sequence[Example],
    parent_test: Sequence[Example],
    new: Sequence[Example],
    *,
    holdout_fraction: float,
    seed: int,
    test_file: str = "the frozen test split",
) -> MergedRows:
    """Merge under the rules of the module docstring; a DataError naming every leaking row."""
    test_lines = {normalize_text(e.user_text): e.source for e in parent_test}
    leaks = [
        f"{e.source}: this request is in the parent's frozen test split ({test_file}, row from "
        f"{test_lines[normalize_text(e.user_text)]}); remove it, the old-test comparison must not see it"
        for e in new
        if normalize_text(e.user_text) in test_lines
    ]
    _raise(leaks, f"{len(leaks)} new row(s) refused: they match the frozen test split")
    parent_requests = {normalize_text(e.user_text) for e in parent_train}
    fresh = unseen(parent_train, new)
    duplicates = len(new) - len(fresh)
    if len(fresh) < 2:
        raise DataError(
            f"only {len(fresh)} new row(s) remain after dropping {duplicates} the current version already "
            "learnt; a retrain needs at least 2 (some to train on, some to judge the challenger on)"
        )
    corrected_requests = {normalize_text(e.user_text) for e in fresh} & parent_requests
    kept_parent = [e for e in parent_train if normalize_text(e.user_text) not in corrected_requests]
    cut = split_examples(fresh, val_fraction=0.0, test_fraction=holdout_fraction, seed=seed)
    if not cut.test:
        raise DataError(f"no new row could be held out of {len(fresh)}; add more new rows")
    return MergedRows(
        train=[*kept_parent, *cut.train],
        holdout=cut.test,
        given=len(new),
        duplicates=duplicates,
        corrected=len(parent_train) - len(kept_parent),
        added=len(cut.train),
        parent_rows=len(parent_train),
        sources=sorted({e.source.file for e in new}),
        fingerprint=fingerprint(fresh),
    )


def unseen(parent_train: Sequence[Example], new: Sequence[Example]) -> list[Example]:
    """The new rows the parent has not learnt (same request and reply), first of repeats kept."""
    known = {_key(e) for e in parent_train}
    fresh = []
    for example in new:
        key = _key(example)
        if key not in known:
            known.add(key)
            fresh.append(example)
    return fresh


def fingerprint(rows: Sequence[Example]) -> str:
    """Identity of a set of new rows, whatever their order or file: `watch` does not retrain
    twice on the rows a kept challenger was already trained on."""
    keys = sorted(json.dumps(_key(e)) for e in rows)
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def write_rows(rows: Sequence[Example], path: Path) -> Path:
    """Rows in the normal form (the format of a run's split files), atomically."""
    from specialize.atomic import atomic_write_text

    text = "".join(json.dumps(e.to_dict(), ensure_ascii=False, default=str) + "\n" for e in rows)
    atomic_write_text(path, text)
    return path


def _key(example: Example) -> tuple[str, str]:
    return normalize_text(example.user_text), (example.completion or "").strip()


def _logged_messages(prompt: str | None) -> list[dict[str, str]] | None:
    if prompt is None:
        return None
    try:
        data = json.loads(prompt)
    except ValueError:
        data = None
    if isinstance(data, list) and data and all(isinstance(m, dict) for m in data):
        return [
            {"role": str(m.get("role")), "content": str(m.get("content") or "")}
            for m in data
            if m.get("role") in ("system", "user", "assistant")
        ]
    return [{"role": "user", "content": prompt}]


def _raise(errors: list[str], headline: str) -> None:
    if not errors:
        return
    shown = "\n  ".join(errors[:MAX_SHOWN])
    more = f"\n  ... and {len(errors) - MAX_SHOWN} more" if len(errors) > MAX_SHOWN else ""
    raise DataError(f"{headline}:\n  {shown}{more}")
