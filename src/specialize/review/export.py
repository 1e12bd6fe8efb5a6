"""Judgments become training data: DPO pairs, KTO rows and corrected replies as SFT rows.

- `dpo.jsonl`  {prompt, chosen, rejected}: for every (row, pair) the reply most reviewers
  preferred over the other (a split vote gives no pair), and every corrected reply over the
  replies it corrects;
- `kto.jsonl`  {prompt, completion, label}: each judged reply, desirable when it won or was typed
  as a correction, undesirable when it lost or both were bad (ties say nothing and are left out;
  a reply judged both ways goes by the majority);
- `sft.jsonl`  {input, output}: the corrected replies.

Each file is written atomically and only when it has rows, then checked exactly as
`specialize check FILE` checks it (`data.checks.check_files`, which reads DPO and KTO rows as
preference data through `data.preference`): its errors name the file and line of a bad row, and a
file that would be read as another kind of data than it was written as is an error too.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.atomic import atomic_write_text
from specialize.data.checks import DataReport, check_files
from specialize.errors import DataError
from specialize.review.store import Judgment


@dataclass(frozen=True)
class DpoRow:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class KtoRow:
    prompt: str
    completion: str
    label: bool


@dataclass(frozen=True)
class SftRow:
    input: str
    output: str


@dataclass
class ExportedFile:
    kind: str  # dpo | kto | sft
    path: Path
    rows: int
    errors: list[str] = field(default_factory=list)
    format: str = ""  # the format `specialize check` read the file as
    data_report: DataReport | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class ExportResult:
    judgments: int
    files: list[ExportedFile]
    skipped: dict[str, str]  # kind -> why no file was written

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)


def dpo_rows(judgments: list[Judgment]) -> list[DpoRow]:
    votes: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    texts: dict[tuple[str, str, str], Judgment] = {}
    rows: list[DpoRow] = []
    for j in judgments:
        key = (j.row_id, *j.pair)
        texts[key] = j
        if j.winner is not None:
            votes[key][j.winner] += 1
        if j.corrected:
            for name in (j.first, j.second):
                if j.reply_of(name).strip() != j.corrected.strip():
                    rows.append(DpoRow(j.prompt, j.corrected, j.reply_of(name)))
    for key, counter in votes.items():
        (top, n_top), *rest = counter.most_common() + [("", 0)]
        if n_top > rest[0][1]:
            j = texts[key]
            loser = j.second if top == j.first else j.first
            if j.reply_of(top).strip() != j.reply_of(loser).strip():
                rows.append(DpoRow(j.prompt, j.reply_of(top), j.reply_of(loser)))
    return _unique(rows)


def kto_rows(judgments: list[Judgment]) -> list[KtoRow]:
    score: dict[tuple[str, str], int] = defaultdict(int)
    for j in judgments:
        if j.winner is not None and j.loser is not None:
            score[(j.prompt, j.reply_of(j.winner))] += 1
            score[(j.prompt, j.reply_of(j.loser))] -= 1
        elif j.verdict == "both_bad":
            score[(j.prompt, j.first_reply)] -= 1
            score[(j.prompt, j.second_reply)] -= 1
        if j.corrected:
            score[(j.prompt, j.corrected)] += 1
    return [KtoRow(p, c, s > 0) for (p, c), s in score.items() if s != 0 and c.strip()]


def sft_rows(judgments: list[Judgment]) -> list[SftRow]:
    return _unique([SftRow(j.prompt, j.corrected) for j in judgments if j.corrected])


def _unique(rows: list[Any]) -> list[Any]:
    return list(dict.fromkeys(rows))


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(vars(r), ensure_ascii=False) + "\n" for r in rows))


# The format `specialize check` must recognise in each file: a file that reads as another shape
# (say, DPO pairs taken for plain examples) would train something else than intended.
EXPECTED_FORMAT = {"dpo": "preference_pairs", "kto": "preference_unpaired", "sft": "input_output"}


def check_exported(path: Path, kind: str) -> tuple[DataReport, list[str]]:
    """The data report `specialize check` gives the file, and its errors (plus one when the
    file is not read as the kind of data it was written as)."""
    report = check_files(path)
    errors = list(report.errors)
    if report.format != EXPECTED_FORMAT[kind]:
        errors.append(f"{path}: read as {report.format!r} data, expected {EXPECTED_FORMAT[kind]!r}")
    return report, errors


def export_judgments(judgments: list[Judgment], out: str | Path) -> ExportResult:
    """Write and check the training files of these judgments in `out`."""
    if not judgments:
        raise DataError("no judgments to export: review some pairs first (`specialize studio`, Review)")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    files: list[ExportedFile] = []
    skipped: dict[str, str] = {}
    built = {"dpo": dpo_rows(judgments), "kto": kto_rows(judgments), "sft": sft_rows(judgments)}
    why_empty = {
        "dpo": "no reply was preferred by a majority and none was corrected",
        "kto": "every judgment was a tie",
        "sft": "no reviewer typed a corrected reply",
    }
    for kind, rows in built.items():
        if not rows:
            skipped[kind] = why_empty[kind]
            continue
        path = out_dir / f"{kind}.jsonl"
        _write_jsonl(path, rows)
        report, errors = check_exported(path, kind)
        files.append(ExportedFile(kind, path, len(rows), errors, report.format, report))
    return ExportResult(judgments=len(judgments), files=files, skipped=skipped)
