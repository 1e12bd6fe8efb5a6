"""Blind review: items from a run and from the request log, the store, win rates and agreement,
and the export to DPO / KTO / SFT files that `specialize check` accepts."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter

import pytest
from typer.testing import CliRunner

from specialize.cli import app
from specialize.data.checks import check_files
from specialize.errors import DataError, RunError
from specialize.evaluate.stats import wilson_interval
from specialize.review.export import check_exported, export_judgments
from specialize.review.items import items_from_request_log, items_from_run, run_source
from specialize.review.session import ReviewSession
from specialize.review.store import ReviewStore
from specialize.review.summary import agreement, store_for_run, summarize, update_run_summary
from specialize.serve.request_log import RequestLog
from tests.review.fake_run import N_TEST, make_fake_run


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "runs")


def test_items_from_run_pair_every_test_row_with_its_reference(run):
    items = items_from_run(run)
    assert len(items) == N_TEST
    first = items[0]
    assert first.prompt == "question 100 about my card"
    assert first.reference == "card"
    assert set(first.replies) == {"zero-shot", "few-shot (k=2)", "fine-tuned"}
    assert items[3].replies["fine-tuned"] != items[3].reference


def test_a_deleted_run_is_refused(run, tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    shown = session.next("ada")
    assert shown is not None
    shutil.rmtree(run.path)
    with pytest.raises(RunError, match="deleted"):
        session.answer(shown.token, "first")
    with pytest.raises(RunError, match="deleted"):
        ReviewSession(store, run_source(run))
    assert store.judgments() == []


def test_order_is_recorded_and_verdicts_map_to_names(run, tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    firsts = Counter()
    for _ in range(10):
        shown = session.next("ada")
        assert shown is not None and shown.first != shown.second
        assert session.next("ada") == shown  # a reload shows the same pair, in the same order
        firsts[shown.first] += 1
        judged = session.answer(shown.token, "second")
        assert (judged.winner, judged.loser) == (shown.second, shown.first)
    assert len(firsts) >= 2  # the order is drawn, not fixed by name
    with pytest.raises(DataError, match="already judged"):
        store.judge(shown.token, "tie")
    with pytest.raises(DataError, match="verdict"):
        store.judge(session.next("ada").token, "left")
    rows = (
        sqlite3.connect(store.path)
        .execute("SELECT reviewer, first, second, verdict FROM judgments")
        .fetchall()
    )
    assert len(rows) == 10 and all(r[3] == "second" for r in rows)


def test_pairs_with_the_same_reply_are_not_shown(run, tmp_path):
    session = ReviewSession(ReviewStore(tmp_path / "r.sqlite"), run_source(run))
    for item, a, b in session.pairs:
        assert item.replies[a] != item.replies[b]
    # 12 rows x 3 pairs, minus the pairs where both contenders gave the reference
    assert 0 < session.progress("ada").total < N_TEST * 3


def test_wilson_interval_matches_the_textbook_value():
    point, low, high = wilson_interval(8, 10)
    assert point == 0.8
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 5)[1] == pytest.approx(0.0, abs=1e-12)
    assert all(v != v for v in wilson_interval(0, 0))  # nan: nothing judged


def _judge_all(session, reviewer, choose):
    while (shown := session.next(reviewer)) is not None:
        session.answer(shown.token, choose(shown))


def test_win_rates_and_agreement_between_reviewers(run, tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    replies = {(i.row_id, n): r for i in session.items for n, r in i.replies.items()}
    references = {i.row_id: i.reference for i in session.items}

    def right_one(shown):  # a careful reviewer: the reply equal to the reference wins
        first_ok = replies[(shown.row_id, shown.first)] == references[shown.row_id]
        second_ok = replies[(shown.row_id, shown.second)] == references[shown.row_id]
        return (
            "first" if first_ok and not second_ok else "second" if second_ok and not first_ok else "both_bad"
        )

    _judge_all(session, "ada", right_one)
    _judge_all(session, "bob", right_one)
    _judge_all(session, "eve", lambda shown: "first")  # presses 1 every time: agrees by chance only
    summary = summarize(run_source(run), store.judgments(source=run_source(run)))
    assert summary.reviewers == ["ada", "bob", "eve"]
    summary = summarize(run_source(run), store.judgments(source=run_source(run)), lead="fine-tuned")
    pair = next(p for p in summary.pairs if {p.first, p.second} == {"fine-tuned", "zero-shot"})
    assert pair.first == "fine-tuned"  # the lead contender's win rate is the one reported
    assert pair.judgments % 3 == 0 and pair.decisive > 0  # each reviewer judged every such pair
    assert pair.ci_low <= pair.win_rate <= pair.ci_high
    # The careful reviewers alone: the fine-tuned reply is right more often, and they saw it. (Eve's
    # "first" lands on whichever contender the random order put first, so she is left out here.)
    careful = [j for j in store.judgments(source=run_source(run)) if j.reviewer != "eve"]
    careful_pair = next(
        p
        for p in summarize(run_source(run), careful, lead="fine-tuned").pairs
        if {p.first, p.second} == {"fine-tuned", "zero-shot"}
    )
    right_only = Counter(
        name
        for item in session.items
        for name, other in (("fine-tuned", "zero-shot"), ("zero-shot", "fine-tuned"))
        if item.replies[name] == item.reference != item.replies[other]
    )
    assert right_only["fine-tuned"] > right_only["zero-shot"]  # the fixture's premise
    assert careful_pair.first_wins == 2 * right_only["fine-tuned"]
    assert careful_pair.second_wins == 2 * right_only["zero-shot"]
    kappas = {a.reviewers: a.kappa for a in summary.agreement}
    assert kappas[("ada", "bob")] == pytest.approx(1.0)
    assert kappas[("ada", "eve")] < 0.5
    update_run_summary(store, run)
    assert run.human_eval().judgments == summary.judgments
    # The run's report gains a human evaluation section (json, md, html), kept when re-rendered.
    assert run.eval_report().human.judgments == summary.judgments
    md = (run.eval_dir / "report.md").read_text()
    assert "## Human evaluation (blind review" in md and "fine-tuned vs zero-shot" in md
    assert "kappa 1.00" in md and 'id="human"' in (run.eval_dir / "report.html").read_text()


def test_kappa_is_none_when_undefined(run, tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    _judge_all(session, "ada", lambda s: "tie")
    _judge_all(session, "bob", lambda s: "tie")
    (found,) = agreement(store.judgments())
    assert found.kappa is None and found.raw_agreement == 1.0


def test_export_writes_checked_training_files(run, tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    verdicts = ["first", "second", "tie", "both_bad", "first"]
    for n, verdict in enumerate(verdicts):
        shown = session.next("ada")
        session.answer(shown.token, verdict, corrected="fees" if n == 3 else None)
    result = export_judgments(store.judgments(), tmp_path / "out")
    assert result.ok, [f.errors for f in result.files]
    files = {f.kind: f for f in result.files}
    dpo = [json.loads(line) for line in files["dpo"].path.read_text().splitlines()]
    assert all(set(r) == {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"] for r in dpo)
    assert len(dpo) >= 3  # three decisive verdicts, plus the correction over the replies it corrects
    kto = [json.loads(line) for line in files["kto"].path.read_text().splitlines()]
    assert {r["label"] for r in kto} == {True, False}
    sft = [json.loads(line) for line in files["sft"].path.read_text().splitlines()]
    assert sft == [{"input": store.judgments()[3].prompt, "output": "fees"}]
    assert files["sft"].data_report is not None and files["sft"].data_report.ok
    assert files["dpo"].format == "preference_pairs" and files["kto"].format == "preference_unpaired"
    assert check_files(files["dpo"].path).preference.pairs == len(dpo)


def test_exported_files_are_checked_like_specialize_check(tmp_path):
    path = tmp_path / "dpo.jsonl"
    path.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "", "rejected": "c"}\n'
    )
    report, errors = check_exported(path, "dpo")
    assert report.format == "preference_pairs" and errors and errors[0].startswith(f"{path}:2")
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    _, errors = check_exported(sft, "sft")
    assert any("expected 'input_output'" in e for e in errors)


def test_items_from_the_request_log_need_two_models(tmp_path):
    log = RequestLog(tmp_path / "requests.sqlite")
    for model, reply in (("base", "maybe card"), ("banking", "card")):
        log.record(
            model=model,
            adapter=None if model == "base" else model,
            endpoint="chat.completions",
            prompt=json.dumps([{"role": "user", "content": "where is my card?"}]),
            completion=reply,
            prompt_tokens=5,
            completion_tokens=2,
            latency_ms=3.0,
            finish_reason="stop",
            status=200,
        )
    log.record(
        model="base",
        adapter=None,
        endpoint="completions",
        prompt="alone",
        completion="x",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        finish_reason="stop",
        status=200,
    )
    log.close()
    (item,) = items_from_request_log(tmp_path / "requests.sqlite")
    assert item.prompt == "where is my card?" and item.replies == {"base": "maybe card", "banking": "card"}


def test_cli_export_and_summary(run):
    store = ReviewStore(store_for_run(run))
    session = ReviewSession(store, run_source(run))
    for verdict in ["first", "second", "first", "second", "both_bad"]:
        session.answer(session.next("ada").token, verdict)
    out = run.path.parent / "exported"
    result = CliRunner().invoke(app, ["review", "export", "--run", str(run.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "dpo.jsonl").is_file() and "dpo.jsonl" in result.output
    result = CliRunner().invoke(app, ["review", "summary", "--run", str(run.path)])
    assert result.exit_code == 0, result.output
    assert "win rate" in result.output and run.human_eval_file.is_file()
    shutil.rmtree(run.path)
    result = CliRunner().invoke(app, ["review", "export", "--run", str(run.path), "--out", str(out)])
    assert result.exit_code != 0 and "not found" in result.output
