"""What `specialize check` finds in a dataset before any compute is spent on it.

Every finding that points at rows says which rows (file:line), capped to the first few so a
report of a 100k-row file stays readable. Duplicate and leakage checks compare *normalised*
requests (case, whitespace and punctuation ignored) because those are the copies that silently
inflate test scores; near-duplicates use MinHash over character 3-grams so the check stays linear
in the number of rows.

Over 500 lines because it is the one place that builds the DataReport: each check is a short
function over the same rows; near-duplicates and preference checks already live apart
(data/near_duplicates.py, data/preference.py).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, computed_field

from specialize.config import TrainConfig
from specialize.constrain.describe import describe_contract, key_order_name, object_keys
from specialize.constrain.infer import infer_contract
from specialize.data.example import Example, Source
from specialize.data.formats import FormatSpec, load_examples, normalize
from specialize.data.load import Issue, read_rows
from specialize.data.near_duplicates import near_pairs
from specialize.errors import ConstraintError
from specialize.models.chat import render_prompt, render_reply
from specialize.outputs import detect_task

log = logging.getLogger(__name__)

MAX_LISTED = 20  # sources or warnings listed per finding
NEAR_DUPLICATE_JACCARD = 0.9
RARE_LABEL = 5
IMBALANCE_RATIO = 10.0
_TOKENIZE_BATCH = 1024


class SourceList(BaseModel):
    """How many rows a finding concerns and the first few of them."""

    count: int = 0
    sources: list[str] = []


class DuplicateGroup(BaseModel):
    text: str  # the request, shortened
    count: int
    sources: list[str]
    completions: list[str] = []  # distinct completions, for conflicting duplicates


class Duplicates(BaseModel):
    groups: int = 0
    rows: int = 0  # rows beyond the first of each group
    examples: list[DuplicateGroup] = []


class LabelBalance(BaseModel):
    counts: dict[str, int]  # most frequent first
    ratio: float  # majority / minority
    rare: list[str]  # labels with fewer than RARE_LABEL examples
    test_only: list[str] = []


class Percentiles(BaseModel):
    p50: float
    p95: float
    max: int
    mean: float


class TokenStats(BaseModel):
    max_seq_len: int
    prompt: Percentiles
    completion: Percentiles | None  # None when no row is labelled
    truncated: SourceList


class Estimate(BaseModel):
    tokens_per_epoch: int  # prompt + completion tokens after truncation, labelled rows only
    epochs: float
    total_tokens: int
    tokens_per_second: float | None
    seconds: float | None
    price_per_hour: float
    cost_usd: float | None
    # Where tokens_per_second was measured (`specialize.train.calibrate`): the estimate holds for
    # that machine and model only.
    measured_on: str | None = None
    # Set when a run config says how the file will be used: the rows that training will see (after
    # the validation and test splits and `max_train_examples`), and the validation passes' share.
    train_rows: int | None = None
    validation_seconds: float | None = None


class ContractSummary(BaseModel):
    """The output contract training would infer from these replies (unless the config gives
    `data.output_schema`): what constrained decoding will enforce, shown before anything is trained."""

    kind: str  # labels, json_schema, json_object or none
    labels: int | None = None  # how many labels, for kind "labels"
    key_order: str | None = None  # top-level object keys: "sorted", "fixed" or "any"
    required: list[str] = []  # top-level keys every reply holds
    optional: list[str] = []
    enums: dict[str, list[Any]] = {}  # top-level keys whose values form a closed set
    output_schema: dict[str, Any] | None = None  # the whole JSON schema, for kind "json_schema"
    summary: list[str] = []  # describe_contract: one line per top-level key


class PreferenceStats(BaseModel):
    """Statistics of preference data (`data.preference`): what DPO or KTO would learn from."""

    kind: str  # pairs (DPO) or unpaired (KTO)
    pairs: int = 0
    rated: int = 0  # unpaired replies with a thumbs up or down
    desirable: int = 0
    undesirable: int = 0
    unique_prompts: int = 0
    unique_prompt_share: float | None = None  # low: many judgments on few prompts
    unit: str = "characters"  # of the means: tokens under the chat template when a tokenizer was given
    prompt_mean: float | None = None
    chosen_mean: float | None = None  # chosen side, or the rated reply
    rejected_mean: float | None = None
    too_long: SourceList = SourceList()


class DataReport(BaseModel):
    files: list[str] = []
    format: str = ""
    task: str = "text"
    rows: int = 0
    test_rows: int = 0
    errors: list[str] = []
    warnings: list[str] = []
    n_errors: int = 0
    n_warnings: int = 0
    exact_duplicates: Duplicates = Duplicates()
    conflicting_duplicates: Duplicates = Duplicates()
    near_duplicates: Duplicates = Duplicates()
    leakage: SourceList | None = None  # None without a test set
    labels: LabelBalance | None = None  # None unless the task is classification
    empty_completions: SourceList = SourceList()
    tokens: TokenStats | None = None  # None without a tokenizer
    estimate: Estimate | None = None
    contract: ContractSummary | None = None  # None when the replies admit no contract
    preference: PreferenceStats | None = None  # set for preference data (DPO pairs, KTO ratings)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when nothing stops training (warnings are advice)."""
        return self.n_errors == 0


def check_files(
    train_path: str | Path,
    spec: FormatSpec | None = None,
    *,
    test_path: str | Path | None = None,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    epochs: float = TrainConfig().epochs,
    tokens_per_second: float | None = None,
    price_per_hour: float = 0.0,
) -> DataReport:
    """Load and check files; row problems land in the report, file-level ones raise `DataError`.

    Preference data (pairs, or rated replies) is recognised by its keys and checked as such."""
    # Imported here: the preference checks build on this module's report and helpers.
    from specialize.data.preference import check_preference_rows, preference_format

    rows, read_issues = read_rows(train_path)
    pref = preference_format(rows)
    if pref is not None:
        return check_preference_rows(
            rows,
            read_issues,
            pref,
            spec,
            test_path=test_path,
            tokenizer=tokenizer,
            max_seq_len=max_seq_len,
            files=[str(p) for p in (train_path, test_path) if p is not None],
        )
    train, issues, fmt = normalize(rows, spec)
    issues = read_issues + issues
    files = [str(train_path)]
    test = None
    if test_path is not None:
        test, test_issues, _ = load_examples(test_path, spec)
        issues = issues + test_issues
        files.append(str(test_path))
    return check_examples(
        train,
        test=test,
        issues=issues,
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        epochs=epochs,
        tokens_per_second=tokens_per_second,
        price_per_hour=price_per_hour,
        files=files,
        format=fmt,
    )


def check_examples(
    train: list[Example],
    *,
    test: list[Example] | None = None,
    issues: Sequence[Issue] = (),
    tokenizer: Any = None,
    max_seq_len: int = 512,
    epochs: float = TrainConfig().epochs,
    tokens_per_second: float | None = None,
    price_per_hour: float = 0.0,
    files: Sequence[str] = (),
    format: str = "",
) -> DataReport:
    """Everything worth knowing about the examples before training on them."""
    found: list[Issue] = list(issues)
    completions = [ex.completion for ex in train if ex.completion is not None]
    task = detect_task(completions)
    report = DataReport(
        files=list(files), format=format, task=task, rows=len(train), test_rows=len(test or [])
    )
    report.exact_duplicates, report.conflicting_duplicates = _exact_duplicates(train, found)
    report.near_duplicates = _near_duplicates(train, found)
    if test is not None:
        report.leakage = _leakage(train, test, found)
    if task == "classification":
        report.labels = _label_balance(train, test, found)
    report.empty_completions = _empty_completions(train + (test or []), found)
    if completions:
        report.contract = _contract_summary(completions, task, found)
    if tokenizer is not None:
        report.tokens, tokens_per_epoch = _token_stats(tokenizer, train, max_seq_len, found)
        total = round(tokens_per_epoch * epochs)
        seconds = total / tokens_per_second if tokens_per_second else None
        report.estimate = Estimate(
            tokens_per_epoch=tokens_per_epoch,
            epochs=epochs,
            total_tokens=total,
            tokens_per_second=tokens_per_second,
            seconds=seconds,
            price_per_hour=price_per_hour,
            cost_usd=None if seconds is None else seconds / 3600 * price_per_hour,
        )
    report.errors = [str(i) for i in found if i.severity == "error"]
    report.warnings = [str(i) for i in found if i.severity == "warning"]
    report.n_errors = sum(i.count for i in found if i.severity == "error")
    report.n_warnings = sum(i.count for i in found if i.severity == "warning")
    log.info("checked %d rows: %d errors, %d warnings", len(train), report.n_errors, report.n_warnings)
    return report


_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """A request with case, punctuation and spacing removed: what makes two requests 'the same'."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.casefold())).strip()


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listed(issues: list[Issue], new: list[Issue], what: str) -> None:
    """Add the first MAX_LISTED findings of one kind and a count of the rest."""
    issues.extend(new[:MAX_LISTED])
    if len(new) > MAX_LISTED:
        extra = len(new) - MAX_LISTED
        issues.append(Issue(None, None, f"{extra} more {what} not listed", "warning", extra))


def _groups_report(groups: list[list[Example]], with_completions: bool = False) -> Duplicates:
    return Duplicates(
        groups=len(groups),
        rows=sum(len(g) - 1 for g in groups),
        examples=[
            DuplicateGroup(
                text=_short(g[0].user_text),
                count=len(g),
                sources=[str(ex.source) for ex in g[:MAX_LISTED]],
                completions=sorted({_short(ex.completion or "") for ex in g})[:MAX_LISTED]
                if with_completions
                else [],
            )
            for g in groups[:MAX_LISTED]
        ],
    )


def _exact_duplicates(train: list[Example], issues: list[Issue]) -> tuple[Duplicates, Duplicates]:
    """Identical request and completion; and the same (normalised) request with different completions."""
    by_pair: dict[tuple[str, str | None], list[Example]] = defaultdict(list)
    by_request: dict[str, list[Example]] = defaultdict(list)
    for ex in train:
        by_pair[(ex.user_text, ex.completion)].append(ex)
        by_request[normalize_text(ex.user_text)].append(ex)
    exact = [g for g in by_pair.values() if len(g) > 1]
    _listed(
        issues,
        [
            Issue(ex.source, None, f"duplicate of {g[0].source} (same request and completion)", "warning")
            for g in exact
            for ex in g[1:]
        ],
        "exact duplicates",
    )
    conflicts = [
        g
        for g in by_request.values()
        if len({(ex.completion or "").strip() for ex in g if ex.completion is not None}) > 1
    ]
    _listed(
        issues,
        [
            Issue(
                g[0].source,
                "completion",
                "same request as "
                f"{', '.join(str(ex.source) for ex in g[1:4])}{' ...' if len(g) > 4 else ''} "
                "but a different completion",
                "warning",
            )
            for g in conflicts
        ],
        "conflicting duplicates",
    )
    return _groups_report(exact), _groups_report(conflicts, with_completions=True)


def _leakage(train: list[Example], test: list[Example], issues: list[Issue]) -> SourceList:
    """Test requests that also appear (normalised) in train: they measure memory, not skill."""
    seen: dict[str, Source] = {}
    for ex in train:
        seen.setdefault(normalize_text(ex.user_text), ex.source)
    leaked = [(ex, seen[key]) for ex in test if (key := normalize_text(ex.user_text)) in seen]
    _listed(
        issues,
        [
            Issue(ex.source, None, f"test request also in the training data ({where})", "warning")
            for ex, where in leaked
        ],
        "leaked test rows",
    )
    return SourceList(count=len(leaked), sources=[str(ex.source) for ex, _ in leaked[:MAX_LISTED]])


def _label_balance(train: list[Example], test: list[Example] | None, issues: list[Issue]) -> LabelBalance:
    counts = Counter((ex.completion or "").strip() for ex in train if ex.completion is not None)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    (top, n_top), (bottom, n_bottom) = next(iter(ordered.items())), list(ordered.items())[-1]
    ratio = n_top / n_bottom
    rare = [label for label, n in ordered.items() if n < RARE_LABEL]
    _listed(
        issues,
        [
            Issue(
                None,
                None,
                f"label {label!r} has only {ordered[label]} training examples (fewer than {RARE_LABEL})",
                "warning",
            )
            for label in rare
        ],
        "rare labels",
    )
    if ratio > IMBALANCE_RATIO:
        issues.append(
            Issue(
                None,
                None,
                f"labels are imbalanced: {top!r} has {n_top} examples, {bottom!r} has "
                f"{n_bottom} (ratio {ratio:.1f})",
                "warning",
            )
        )
    test_only: dict[str, Source] = {}
    for ex in test or []:
        label = (ex.completion or "").strip()
        if ex.completion is not None and label not in counts:
            test_only.setdefault(label, ex.source)
    _listed(
        issues,
        [
            Issue(
                source,
                "completion",
                f"label {label!r} appears in the test data but never in train",
                "warning",
            )
            for label, source in test_only.items()
        ],
        "test-only labels",
    )
    return LabelBalance(counts=ordered, ratio=ratio, rare=rare, test_only=list(test_only))


def _contract_summary(completions: list[str], task: str, issues: list[Issue]) -> ContractSummary | None:
    try:
        contract = infer_contract(completions, task)
    except ConstraintError as exc:
        issues.append(Issue(None, None, f"no output contract can be inferred: {exc}", "warning"))
        return None
    summary = ContractSummary(kind=contract.kind, summary=describe_contract(contract))
    if contract.labels is not None:
        summary.labels = len(contract.labels)
    schema = contract.schema
    if schema is not None:
        summary.output_schema = schema
        keys, fixed = object_keys(schema)
        if keys:
            summary.key_order = key_order_name(keys, fixed)
            required = set(schema.get("required") or ())
            summary.required = [k for k in keys if k in required]
            summary.optional = [k for k in keys if k not in required]
            summary.enums = {
                k: list(sub["enum"]) for k, sub in keys.items() if isinstance(sub, dict) and "enum" in sub
            }
    return summary


def _empty_completions(examples: list[Example], issues: list[Issue]) -> SourceList:
    empty = [ex for ex in examples if ex.completion is not None and not ex.completion.strip()]
    if not any(i.message == "empty completion" for i in issues):  # the loader already listed them
        _listed(
            issues,
            [Issue(ex.source, "completion", "empty completion", "warning") for ex in empty],
            "empty completions",
        )
    return SourceList(count=len(empty), sources=[str(ex.source) for ex in empty[:MAX_LISTED]])


def _percentiles(values: list[int]) -> Percentiles:
    arr = np.asarray(values)
    p50, p95 = np.percentile(arr, [50, 95])
    return Percentiles(p50=float(p50), p95=float(p95), max=int(arr.max()), mean=float(arr.mean()))


def _lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts, tokenizing in batches: one call per row is what makes a check slow."""
    out: list[int] = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = tokenizer(texts[start : start + _TOKENIZE_BATCH], add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in batch)
    return out


def _token_stats(
    tokenizer: Any, examples: list[Example], max_seq_len: int, issues: list[Issue]
) -> tuple[TokenStats | None, int]:
    """Token statistics as `tokenize.encode` would see them, and training tokens per epoch."""
    if not examples:
        return None, 0
    prompt_lens = _lengths(tokenizer, [render_prompt(tokenizer, ex.messages) for ex in examples])
    labelled = [i for i, ex in enumerate(examples) if ex.completion is not None]
    replies = [render_reply(tokenizer, examples[i].messages, examples[i].completion or "") for i in labelled]
    reply_lens = dict(zip(labelled, _lengths(tokenizer, replies), strict=True))
    too_long: list[Issue] = []
    tokens_per_epoch = 0
    for i, ex in enumerate(examples):
        total = prompt_lens[i] + reply_lens.get(i, 0)
        if total > max_seq_len:
            too_long.append(
                Issue(
                    ex.source,
                    None,
                    f"{total} tokens, more than max_seq_len {max_seq_len}: it will be truncated",
                    "warning",
                )
            )
        if i in reply_lens:
            tokens_per_epoch += min(total, max_seq_len)
    _listed(issues, too_long, "rows to truncate")
    stats = TokenStats(
        max_seq_len=max_seq_len,
        prompt=_percentiles(prompt_lens),
        completion=_percentiles(list(reply_lens.values())) if reply_lens else None,
        truncated=SourceList(count=len(too_long), sources=[str(i.source) for i in too_long[:MAX_LISTED]]),
    )
    return stats, tokens_per_epoch


def _near_duplicates(train: list[Example], issues: list[Issue]) -> Duplicates:
    """Groups of rows whose requests differ only slightly (not exact copies of each other)."""
    norm_ids: dict[str, int] = {}
    for ex in train:
        norm_ids.setdefault(normalize_text(ex.user_text), len(norm_ids))
    parent = list(range(len(norm_ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in near_pairs(list(norm_ids), NEAR_DUPLICATE_JACCARD):
        parent[root(a)] = root(b)
    components: dict[int, list[Example]] = defaultdict(list)
    for ex in train:
        components[root(norm_ids[normalize_text(ex.user_text)])].append(ex)
    groups = [g for g in components.values() if len({ex.user_text for ex in g}) > 1]
    _listed(
        issues,
        [
            Issue(ex.source, None, f"near-duplicate of {g[0].source}", "warning")
            for g in groups
            for ex in g[1:]
            if ex.user_text != g[0].user_text
        ],
        "near-duplicates",
    )
    return _groups_report(groups)
