"""What there is to review: one input and the replies of two or more contenders to it.

Two sources. A run's evaluation: every held-out test row with each contender's prediction
(eval/report.json holds the predictions in test-split order, splits/test.jsonl the rows and their
references). And live traffic: requests from the server's request log that more than one model
answered (the same prompt sent to the base and to an adapter, say), grouped by prompt.

A source is named by a string that the judgments store keeps with every judgment
(`run:<absolute path>` or `log:<absolute path>`), so a judgment can always be traced back and a
review of a run that has since been deleted can be refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from specialize.data.split import load_split
from specialize.errors import DataError, RunError
from specialize.run_dir import RunDir, open_run

RUN_PREFIX = "run:"
LOG_PREFIX = "log:"


@dataclass(frozen=True)
class ReviewItem:
    """One input and every contender's reply to it; `row_id` is stable within its source
    (the test row's index, or the prompt hash of logged traffic)."""

    source: str
    row_id: str
    prompt: str
    replies: dict[str, str]
    reference: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def contenders(self) -> list[str]:
        return sorted(self.replies)


def run_source(run: str | Path | RunDir) -> str:
    path = run.path if isinstance(run, RunDir) else Path(run)
    return RUN_PREFIX + str(path.resolve())


def log_source(path: str | Path) -> str:
    return LOG_PREFIX + str(Path(path).resolve())


def source_run(source: str) -> Path | None:
    """The run directory a source names, or None for request-log sources."""
    return Path(source[len(RUN_PREFIX) :]) if source.startswith(RUN_PREFIX) else None


def items_from_run(run: str | Path | RunDir) -> list[ReviewItem]:
    """Every evaluated test row of a run with each contender's reply (free decoding, as in the
    report's main table). A RunError when the run is gone or was never evaluated."""
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    if not run_dir.path.is_dir():
        raise RunError(f"{run_dir.path}: run directory not found (was it deleted?)")
    report = run_dir.eval_report()
    if len(report.contenders) < 2:
        raise RunError(f"{run_dir.eval_report_file}: fewer than two contenders, nothing to compare")
    test = load_split(run_dir.split_file("test")) if run_dir.split_file("test").is_file() else []
    rows = report.test_rows or max((len(c.predictions) for c in report.contenders), default=0)
    source = run_source(run_dir)
    items = []
    for i in range(rows):
        replies = {c.name: c.predictions[i] for c in report.contenders if i < len(c.predictions)}
        if len(replies) < 2:
            continue
        if i < len(test):
            prompt, reference = test[i].user_text, test[i].completion
        elif i < len(report.samples):  # a run whose split files were removed: the report's samples
            prompt, reference = report.samples[i].input, report.samples[i].reference
        else:
            continue
        items.append(ReviewItem(source, str(i), prompt, replies, reference))
    if not items:
        raise RunError(f"{run_dir.path}: no test rows with the replies of two contenders to review")
    return items


def items_from_request_log(
    path: str | Path, *, since: str | float | None = None, limit: int | None = 2000
) -> list[ReviewItem]:
    """Recent prompts that at least two models answered, with the latest reply of each.

    Rows without text (a hashes-only log) or with an error status are skipped; a DataError when
    no prompt was answered by two models, since there is then no pair to judge.
    """
    # Imported here: importing the serve package loads torch, which reviewing a run never needs.
    from specialize.serve.request_log import prompt_text, read_window

    rows = read_window(path, since=since, limit=limit)
    grouped: OrderedDict[str, dict[str, str]] = OrderedDict()
    prompts: dict[str, str] = {}
    for row in rows:
        if not row.succeeded or row.prompt is None or row.completion is None or row.prompt_hash is None:
            continue
        name = row.adapter or row.model or "?"
        grouped.setdefault(row.prompt_hash, {})[name] = row.completion
        prompts[row.prompt_hash] = prompt_text(row.prompt) or ""
    source = log_source(path)
    items = [
        ReviewItem(source, key, prompts[key], replies)
        for key, replies in grouped.items()
        if len(replies) >= 2
    ]
    if not items:
        raise DataError(
            f"{path}: no prompt in the request log was answered by two models; send the same "
            "requests to the base and an adapter (with request logging on) to review them"
        )
    return items


def load_items(source: str) -> list[ReviewItem]:
    """The items of a source string as the store keeps it; a run that no longer exists is refused."""
    run = source_run(source)
    if run is not None:
        if not run.is_dir():
            raise RunError(f"{run}: the run was deleted; its items can no longer be reviewed")
        return items_from_run(run)
    if source.startswith(LOG_PREFIX):
        return items_from_request_log(source[len(LOG_PREFIX) :])
    raise DataError(f"unknown review source {source!r} (expected run:PATH or log:PATH)")
