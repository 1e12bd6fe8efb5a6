"""The loop the review exists for: a session of 20 blind judgments, exported, is data that
`specialize check` accepts and that trains a DPO run (tiny random model, a few steps)."""

from __future__ import annotations

from specialize.config import parse_config
from specialize.data.checks import check_files
from specialize.review.export import export_judgments
from specialize.review.items import run_source
from specialize.review.session import ReviewSession
from specialize.review.store import ReviewStore
from specialize.train.sft import train
from tests.review.fake_run import make_fake_run


def test_twenty_judgments_train_a_dpo_run(tmp_path, tiny_model_dir):
    run = make_fake_run(tmp_path / "runs", model_dir=tiny_model_dir)
    store = ReviewStore(tmp_path / "review.sqlite")
    session = ReviewSession(store, run_source(run))
    truth = {
        (i.row_id, name): reply == i.reference for i in session.items for name, reply in i.replies.items()
    }
    judged = 0
    for reviewer in ("ada", "bob"):
        while judged < 20 and (shown := session.next(reviewer)) is not None:
            first_ok, second_ok = truth[(shown.row_id, shown.first)], truth[(shown.row_id, shown.second)]
            verdict = "first" if first_ok > second_ok else "second" if second_ok > first_ok else "both_bad"
            session.answer(shown.token, verdict)
            judged += 1
    assert judged == 20 and len(store.judgments()) == 20

    result = export_judgments(store.judgments(), tmp_path / "review-data")
    assert result.ok, [f.errors for f in result.files]
    dpo = next(f for f in result.files if f.kind == "dpo")
    report = check_files(dpo.path)  # what `specialize check review-data/dpo.jsonl` runs
    assert report.ok and report.format == "preference_pairs" and report.preference.pairs == dpo.rows >= 5

    config = parse_config(
        {
            "data": {"train": str(dpo.path), "val_fraction": 0.1, "test_fraction": 0.1},
            "model": {"base": str(tiny_model_dir), "max_seq_len": 64},
            "method": {"kind": "dpo", "lora_r": 4},
            "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "log_every": 1, "threads": 1},
        }
    )
    trained = train(config, tmp_path / "runs" / "dpo-from-review")
    assert trained.record is not None and trained.record.method == "dpo" and trained.record.steps == 2
    assert (tmp_path / "runs" / "dpo-from-review" / "adapter" / "adapter_model.safetensors").is_file()
