"""A blind review session: which pair a reviewer sees next, in which order, and their answer.

Every reviewer of a source walks the (row, pair of contenders) combinations in the same shuffled
order (seeded by the source), so several reviewers judge the same items first and their
agreement can be measured; which contender is shown first is drawn afresh for every showing, and
recorded. Pairs whose two replies are the same text are skipped: there is nothing to choose.
A run that was deleted since its items were listed is refused, both when drawing and when
answering, so no judgment is recorded against a run that no longer exists.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import combinations

from specialize.errors import RunError
from specialize.review.items import ReviewItem, load_items, source_run
from specialize.review.store import Assignment, Judgment, ReviewStore, check_reviewer


@dataclass(frozen=True)
class Progress:
    judged: int
    total: int


def _pairs(items: list[ReviewItem], source: str) -> list[tuple[ReviewItem, str, str]]:
    pairs = [
        (item, a, b)
        for item in items
        for a, b in combinations(item.contenders, 2)
        if item.replies[a].strip() != item.replies[b].strip()
    ]
    seed = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16)
    random.Random(seed).shuffle(pairs)
    return pairs


class ReviewSession:
    """Draw and answer pairs of one source for any reviewer."""

    def __init__(self, store: ReviewStore, source: str, items: list[ReviewItem] | None = None):
        self.store = store
        self.source = source
        self._ensure_exists()
        self.items = items if items is not None else load_items(source)
        self.pairs = _pairs(self.items, source)
        self._rng = random.SystemRandom()

    def _ensure_exists(self) -> None:
        run = source_run(self.source)
        if run is not None and not run.is_dir():
            raise RunError(f"{run}: the run was deleted; it can no longer be reviewed")

    def next(self, reviewer: str) -> Assignment | None:
        """The pair to show next (the unanswered one already shown, if any); None when done."""
        reviewer = check_reviewer(reviewer)
        self._ensure_exists()
        shown = self.store.pending(reviewer, self.source)
        if shown is not None:
            return shown
        done = self.store.judged_keys(self.source, reviewer)
        for item, a, b in self.pairs:
            if (item.row_id, a, b) in done:
                continue
            first, second = (a, b) if self._rng.random() < 0.5 else (b, a)
            return self.store.assign(
                reviewer=reviewer,
                source=self.source,
                row_id=item.row_id,
                first=first,
                second=second,
                prompt=item.prompt,
                first_reply=item.replies[first],
                second_reply=item.replies[second],
                reference=item.reference,
            )
        return None

    def answer(self, token: str, verdict: str, corrected: str | None = None) -> Judgment:
        self._ensure_exists()
        shown = self.store.assignment(token)
        if shown.source != self.source:
            raise RunError(f"review item {token!r} belongs to {shown.source}, not {self.source}")
        return self.store.judge(token, verdict, corrected)

    def progress(self, reviewer: str) -> Progress:
        done = self.store.judged_keys(self.source, check_reviewer(reviewer))
        return Progress(judged=len(done), total=len(self.pairs))
