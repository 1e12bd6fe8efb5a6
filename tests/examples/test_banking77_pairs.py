"""examples/banking77/make_pairs.py on a tiny run: pairs from the run's own wrong answers, the
held-out split as test pairs, and a DPO config that trains on top of the run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

from specialize.config import parse_config
from specialize.data.example import Example
from specialize.data.preference import load_preferences
from specialize.inference import load_run
from specialize.train.sft import train
from tests.train.conftest import LABELS, tiny_config

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "make_pairs.py"


def _module():
    spec = importlib.util.spec_from_file_location("make_pairs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_pairs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pairs_from_the_runs_own_mistakes_then_dpo_on_top(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = tmp_path / "sft"
    config = tiny_config(tiny_model_dir, data, max_steps=2)
    config.data.max_train_examples = 12  # leaves rows of the file unseen by the run
    train(config, run)
    out = tmp_path / "pairs"
    make_pairs = _module()
    assert make_pairs.main([str(run), "--out", str(out), "--max-rows", "20"]) == 0

    trained = load_run(run)
    pairs, issues, fmt = load_preferences(out / "pairs.jsonl")
    assert fmt == "pairs" and not [i for i in issues if i.severity == "error"]
    written = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert all(r["rejected_from"] == "model" and r["rejected"] in LABELS for r in written)
    assert all(p.chosen != p.rejected for p in pairs) and len(pairs) <= 20
    # The rows answered were not the run's own splits' rows.
    split_prompts = {
        json.loads(line)["messages"][-1]["content"]
        for name in ("train", "val", "test")
        for line in (run / "splits" / f"{name}.jsonl").read_text().splitlines()
    }
    assert not {p.prompt[-1]["content"] for p in pairs} & split_prompts
    # The held-out split, every row, as pairs; the chosen side is its reference.
    test_rows = (run / "splits" / "test.jsonl").read_text().splitlines()
    held_out, _, _ = load_preferences(out / "test_pairs.jsonl")
    assert [p.chosen for p in held_out] == [json.loads(line)["completion"] for line in test_rows]
    # Its answers again, under the run's contract, agree with what the pairs say it got wrong.
    again = make_pairs.answer(trained, [Example(p.prompt, p.chosen, p.source) for p in pairs], batch_size=1)
    assert [a.reply for a in again] == [p.rejected for p in pairs]

    cfg = yaml.safe_load((out / "dpo.yaml").read_text())
    assert cfg["method"]["from_run"] == str(run.resolve()) and cfg["method"]["kind"] == "dpo"
    cfg["train"].update(max_steps=2, batch_size=2, threads=1)
    cfg["model"]["max_seq_len"] = 64
    result = train(parse_config(cfg), tmp_path / "dpo")
    assert result.record is not None and result.record.from_run == str(run.resolve())
    assert result.record.examples.test == len(test_rows)
