"""The human evaluation: win rates with 95% intervals, and how far reviewers agree.

Win rates count decisive judgments (one reply preferred) and carry Wilson score intervals, which
stay honest at the 10-50 judgments a review session gives. Agreement is Cohen's kappa between
every two reviewers over the items both judged, on the four outcomes (first contender of the
pair wins, second wins, tie, both bad) in a fixed order of the pair, whatever order each saw.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

from specialize.evaluate.report import write_report
from specialize.evaluate.stats import wilson_interval
from specialize.records.eval import TUNED
from specialize.records.human import Agreement, HumanEval, PairWinRate
from specialize.review.items import run_source
from specialize.review.store import STORE_NAME, Judgment, ReviewStore
from specialize.run_dir import RunDir

OUTCOMES = ("first", "second", "tie", "both_bad")


def outcome(judgment: Judgment) -> str:
    """The verdict relative to the sorted pair: "first" means pair[0] won."""
    if judgment.winner is None:
        return judgment.verdict
    return "first" if judgment.winner == judgment.pair[0] else "second"


def win_rates(judgments: list[Judgment], lead: str | None = None) -> list[PairWinRate]:
    """Per pair of contenders; `lead` (the fine-tuned model, say) is put first in its pairs, so
    that its win rate is the one reported."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for j in judgments:
        counts[j.pair][outcome(j)] += 1
    rates = []
    for (a, b), c in sorted(counts.items()):
        if b == lead:
            a, b = b, a
            c = Counter(
                {"first": c["second"], "second": c["first"], "tie": c["tie"], "both_bad": c["both_bad"]}
            )
        decisive = c["first"] + c["second"]
        point, low, high = wilson_interval(c["first"], decisive)
        rates.append(
            PairWinRate(
                first=a,
                second=b,
                judgments=sum(c.values()),
                first_wins=c["first"],
                second_wins=c["second"],
                ties=c["tie"],
                both_bad=c["both_bad"],
                win_rate=point,
                ci_low=low,
                ci_high=high,
            )
        )
    return rates


def agreement(judgments: list[Judgment]) -> list[Agreement]:
    """Cohen's kappa for every two reviewers who judged at least one same item (row and pair)."""
    latest: dict[str, dict[tuple[str, str, str], str]] = defaultdict(dict)
    for j in judgments:  # oldest first: a reviewer's later answer to the same item wins
        latest[j.reviewer][(j.row_id, *j.pair)] = outcome(j)
    found = []
    for r1, r2 in combinations(sorted(latest), 2):
        shared = sorted(set(latest[r1]) & set(latest[r2]))
        if not shared:
            continue
        left = [latest[r1][k] for k in shared]
        right = [latest[r2][k] for k in shared]
        raw = sum(x == y for x, y in zip(left, right, strict=True)) / len(shared)
        # Kappa is undefined (0/0) when both reviewers used a single outcome throughout.
        if len(set(left) | set(right)) < 2:
            kappa = None
        else:
            from sklearn.metrics import cohen_kappa_score  # here: only a second reviewer needs it

            value = float(cohen_kappa_score(left, right, labels=list(OUTCOMES)))
            kappa = None if math.isnan(value) else value
        found.append(Agreement(reviewers=(r1, r2), shared_items=len(shared), kappa=kappa, raw_agreement=raw))
    return found


def summarize(source: str, judgments: list[Judgment], lead: str | None = None) -> HumanEval:
    return HumanEval(
        source=source,
        judgments=len(judgments),
        reviewers=sorted({j.reviewer for j in judgments}),
        pairs=win_rates(judgments, lead),
        agreement=agreement(judgments),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def store_for_run(run: RunDir) -> Path:
    """Where a run's judgments live by default: the runs folder's review.sqlite (the run's
    parent), so deleting or re-training a run does not take its reviewers' work with it."""
    return run.path.resolve().parent / STORE_NAME


def update_run_summary(store: ReviewStore, run: RunDir) -> HumanEval:
    """Summarize the run's judgments and write eval/human.json next to its evaluation report."""
    lead = None
    if run.evaluated:
        tuned = next((c for c in run.eval_report().contenders if c.role == TUNED), None)
        lead = tuned.name if tuned else None
    summary = summarize(run_source(run), store.judgments(source=run_source(run)), lead)
    if run.evaluated:  # the report's human evaluation section, and eval/human.json with it
        report = run.eval_report()
        report.human = summary
        write_report(run.eval_dir, report)
    else:
        run.write_human_eval(summary)
    return summary
