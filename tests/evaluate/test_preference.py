"""Evaluating a preference run: implicit-reward accuracy against the parent, the parent as a
contender with the paired test, and the report's table in every rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specialize.config import parse_config
from specialize.evaluate.runner import evaluate
from specialize.evaluate.table import preference_table
from specialize.records.eval import EvalReport
from specialize.train.sft import train
from tests.train.conftest import LABELS, tiny_config

EVAL = {
    "few_shot_k": 0,
    "latency_samples": 0,
    "bootstrap_resamples": 100,
    "max_new_tokens": 4,
    "constrained": False,
    "classic_baseline": False,
}


def _pairs(tmp_path: Path) -> Path:
    rows = [
        {
            "prompt": f"message {i} about {LABELS[i % 4]}",
            "chosen": LABELS[i % 4],
            "rejected": LABELS[(i + 1) % 4],
        }
        for i in range(30)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(model_dir: Path | None, data: Path, *, lr: float, steps: int, **method):
    return parse_config(
        {
            "data": {"train": str(data), "val_fraction": 0.1, "test_fraction": 0.2},
            "model": {"max_seq_len": 64} | ({"base": str(model_dir)} if model_dir else {}),
            "method": {"kind": "dpo", "lora_r": 4, "beta": 0.5, **method},
            "train": {
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": lr,
                "eval_every": 50,
                "threads": 1,
            },
            "eval": EVAL,
        }
    )


def test_untrained_adapter_equals_its_parent(tiny_model_dir, tmp_path):
    """A zero-step-sized update leaves tuned == parent: no implicit reward, the same preferences."""
    out = tmp_path / "run"
    train(_config(tiny_model_dir, _pairs(tmp_path), lr=1e-12, steps=1), out)
    report = evaluate(out)
    pref = report.preference
    assert pref is not None and pref.parent == "base" and pref.rows == report.test_rows == 6
    assert pref.implicit_reward_accuracy.value == 0.0  # ties: the tuned model prefers nothing more
    assert pref.mean_reward_margin == pytest.approx(0.0, abs=1e-4)
    assert pref.tuned_prefers_chosen.value == pref.parent_prefers_chosen.value
    assert pref.preference_change is not None and pref.preference_change.p_value == 1.0
    parent = report.contender(pref.parent_contender)
    assert parent is not None and parent.name == "parent (base)"
    assert parent.predictions == report.tuned().predictions
    assert pref.task_change is not None and pref.task_change.mean_diff == 0.0


def test_trained_run_prefers_chosen_and_the_report_shows_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_model_dir, _pairs(tmp_path), lr=1e-2, steps=30), out)
    report = evaluate(out)
    pref = report.preference
    assert pref is not None
    assert pref.implicit_reward_accuracy.value is not None and pref.implicit_reward_accuracy.value >= 0.5
    assert pref.mean_reward_margin is not None and pref.mean_reward_margin > 0
    # The report round-trips with its preference section, and every rendering shows the table.
    saved = EvalReport.model_validate_json((out / "eval" / "report.json").read_text())
    assert saved.preference == pref
    table = preference_table(saved)
    assert [row[0] for row in table.rows][:2] == ["implicit-reward accuracy", "prefers chosen (log-prob)"]
    assert table.rows[2][0].endswith("(chosen as reference)")
    assert "implicit-reward accuracy" in (out / "eval" / "report.md").read_text()
    assert 'id="preference"' in (out / "eval" / "report.html").read_text()


def test_from_run_parent_is_the_reference(tiny_model_dir, tmp_path):
    sft_rows = tmp_path / "sft.jsonl"
    sft_rows.write_text(
        "\n".join(
            json.dumps({"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]})
            for i in range(24)
        )
    )
    parent = tmp_path / "sft"
    train(tiny_config(tiny_model_dir, sft_rows, max_steps=6), parent)
    out = tmp_path / "dpo"
    train(_config(None, _pairs(tmp_path), lr=1e-12, steps=1, from_run=str(parent)), out)
    report = evaluate(out)
    pref = report.preference
    assert pref is not None and pref.parent == str(parent.resolve())
    names = [c.name for c in report.contenders]
    assert "parent (sft)" in names
    # Tuned == parent (the from_run adapter), though both differ from the base (zero-shot).
    assert pref.implicit_reward_accuracy.value == 0.0
    assert report.contender("parent (sft)").predictions == report.tuned().predictions
