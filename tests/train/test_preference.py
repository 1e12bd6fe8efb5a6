"""DPO and KTO on a tiny random Llama: complete run directories, preference metrics, the parent
run as start and reference, resume, and the config's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from specialize.config import parse_config
from specialize.errors import ConfigError, DataError
from specialize.inference import generate, load_run
from specialize.train.sft import train
from tests.train.conftest import LABELS, tiny_config

RUN_FILES = (
    "config.yaml",
    "run.json",
    "data_report.json",
    "metrics.jsonl",
    "splits/train.jsonl",
    "splits/val.jsonl",
    "splits/test.jsonl",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
)


@pytest.fixture
def pairs(tmp_path) -> Path:
    """24 pairs: the keyword's label chosen over the next label (the memorisable SFT rows' prompts)."""
    rows = [
        {
            "prompt": f"message {i} about {LABELS[i % 4]}",
            "chosen": LABELS[i % 4],
            "rejected": LABELS[(i + 1) % 4],
        }
        for i in range(24)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def pref_config(model_dir: Path | None, data: Path, kind: str = "dpo", **method):
    train = {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "eval_every": 2,
        "log_every": 1,
        "threads": 1,
    }
    model = {"max_seq_len": 64} | ({"base": str(model_dir)} if model_dir else {})
    return parse_config(
        {
            "data": {"train": str(data), "val_fraction": 0.1, "test_fraction": 0.1},
            "model": model,
            "method": {"kind": kind, "lora_r": 4, **method},
            "train": train,
        }
    )


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_run_dir_is_complete_and_logs_preference_metrics(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "dpo"
    result = train(pref_config(tiny_model_dir, pairs), out)
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    record = result.record
    assert record is not None and record.method == "dpo" and record.steps == 4
    assert record.loss_type == "sigmoid" and record.beta == 0.1 and record.from_run is None
    assert record.reward_accuracy is not None and record.reward_margin is not None
    assert record.task == "classification" and record.labels == sorted(LABELS)
    assert record.output_contract == {"kind": "labels", "labels": sorted(LABELS)}
    logged = [m for m in metrics(out) if "loss" in m]
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "rewards/chosen"):
        assert all(key in m for m in logged), key
    assert any("eval_rewards/accuracies" in m for m in metrics(out))
    # Only the trained adapter is saved, and it loads like any LoRA run's.
    assert not (out / "adapter" / "ref").exists()
    trained = load_run(out)
    reply = generate(trained.loaded, [trained.messages_for("message 1 about beta")], max_new_tokens=4)
    assert isinstance(reply[0].text, str)


def test_kto_trains_on_rated_replies_and_on_pairs(tiny_model_dir, pairs, tmp_path):
    rated = tmp_path / "rated.jsonl"
    rated.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": f"message {i} about {LABELS[i % 4]}",
                    "completion": LABELS[(i + i % 2) % 4],
                    "label": i % 2 == 0,
                }
            )
            for i in range(24)
        )
    )
    for data, name in ((rated, "kto"), (pairs, "kto-pairs")):
        out = tmp_path / name
        result = train(pref_config(tiny_model_dir, data, "kto", beta=0.2), out)
        assert all((out / f).is_file() for f in RUN_FILES)
        assert (
            result.record is not None and result.record.method == "kto" and result.record.loss_type == "kto"
        )
        logged = [m for m in metrics(out) if "loss" in m]
        # A batch's margin needs both kinds of reply in it; the KL estimate is always there.
        assert logged and all("kl" in m for m in logged) and any("rewards/margins" in m for m in logged)
    # KTO's references are the desirable replies only (the contract is the good labels).
    assert load_run(tmp_path / "kto").record.labels is not None


def test_dpo_rejects_unpaired_feedback(tiny_model_dir, tmp_path):
    rated = tmp_path / "rated.jsonl"
    rated.write_text(
        "\n".join(json.dumps({"prompt": f"p{i}", "completion": "a", "label": True}) for i in range(10))
    )
    with pytest.raises(ConfigError, match="method.kind: kto"):
        train(pref_config(tiny_model_dir, rated, "dpo"), tmp_path / "out")


def test_from_run_adapter_is_start_and_reference(tiny_model_dir, memorisable, pairs, tmp_path):
    parent = tmp_path / "sft"
    train(tiny_config(tiny_model_dir, memorisable, max_steps=6), parent)
    out = tmp_path / "dpo"
    # No model.base: it comes from the parent. A tiny learning rate keeps the adapter near its start.
    config = pref_config(None, pairs, from_run=str(parent))
    config.train.learning_rate = 1e-9
    result = train(config, out)
    assert result.record is not None and result.record.from_run == str(parent)
    assert result.record.base_model.ref == str(tiny_model_dir)
    assert (out / "config.yaml").read_text().count(str(tiny_model_dir)) == 1
    start = load_file(parent / "adapter" / "adapter_model.safetensors")
    tuned = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(start) == set(tuned)
    assert all((start[k] - tuned[k]).abs().max() < 1e-4 for k in start)
    # The reference is the parent, not the base: at the first step policy and reference agree
    # exactly, although the parent's adapter moves the log-probabilities away from the base's.
    first = metrics(out)[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    on_base = pref_config(tiny_model_dir, pairs)
    on_base.train.learning_rate = 1e-9
    train(on_base, tmp_path / "on-base")
    base_first = metrics(tmp_path / "on-base")[0]
    assert abs(base_first["logps/chosen"] - first["logps/chosen"]) > 1e-3, (
        "the parent must differ from the base"
    )


def test_from_run_errors(tiny_model_dir, memorisable, pairs, tmp_path):
    with pytest.raises(ConfigError, match="method.from_run: .*not found"):
        train(pref_config(tiny_model_dir, pairs, from_run=str(tmp_path / "nope")), tmp_path / "a")
    parent = tmp_path / "sft"
    train(tiny_config(tiny_model_dir, memorisable, max_steps=2), parent)
    other = pref_config(tiny_model_dir, pairs, from_run=str(parent))
    other.model.base = "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="was trained on"):
        train(other, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # Corrections of one label only still leave the tuned run answering every label of its parent.
    few = tmp_path / "few.jsonl"
    few.write_text(
        "\n".join(
            json.dumps({"prompt": f"about alpha {i}", "chosen": "alpha", "rejected": "beta"})
            for i in range(12)
        )
    )
    result = train(pref_config(None, few, from_run=str(parent)), tmp_path / "c")
    parent_record = json.loads((parent / "run.json").read_text())
    assert result.record is not None and result.record.labels == sorted(LABELS) == parent_record["labels"]
    assert result.record.output_contract == parent_record["output_contract"]


def test_killed_dpo_run_resumes(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    config = pref_config(tiny_model_dir, pairs)
    config.train.max_steps = 6

    def crash_after_checkpoint(event):
        if event.step == 3:  # a checkpoint was written at step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out, progress=crash_after_checkpoint)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "run.json").exists()
    result = train(config, out, resume=True)
    assert result.record is not None and result.record.steps == 6 and result.record.resumed
    steps = [m["step"] for m in metrics(out) if "loss" in m]
    assert steps == sorted(steps) == list(range(1, 7)), steps
    straight = train(config, tmp_path / "straight")
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    uninterrupted = load_file(straight.run.adapter / "adapter_model.safetensors")
    assert all((resumed[k] - uninterrupted[k]).abs().max() < 1e-5 for k in uninterrupted)


def test_sft_file_for_a_preference_run_is_refused(tiny_model_dir, memorisable, tmp_path):
    with pytest.raises(DataError, match="needs preference rows"):
        train(pref_config(tiny_model_dir, memorisable), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_preference_config_is_validated():
    config = parse_config({"method": {"kind": "dpo"}})
    assert config.method.resolved_loss_type == "sigmoid" and config.learning_rate == 5e-5
    assert parse_config({"method": {"kind": "kto"}}).method.resolved_loss_type == "kto"
    for method, message in (
        ({"kind": "dpo", "loss_type": "sigmod"}, "did you mean 'sigmoid'"),
        ({"kind": "kto", "loss_type": "ipo"}, "not a kto loss"),
        ({"kind": "full", "from_run": "runs/x"}, "kind 'full' trains the whole model"),
        ({"kind": "lora", "loss_type": "sigmoid"}, "loss_type is for preference tuning"),
        ({"kind": "dpo", "beta": 0}, "method.beta: Input should be greater than 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"method": method})


def test_killed_from_run_kto_resumes(tiny_model_dir, memorisable, pairs, tmp_path):
    """Its checkpoints hold TRL's frozen "ref" copy of the parent next to the trained adapter."""
    parent = tmp_path / "sft"
    train(tiny_config(tiny_model_dir, memorisable, max_steps=4), parent)
    config = pref_config(None, pairs, "kto", from_run=str(parent))
    config.train.max_steps = 4
    out = tmp_path / "run"

    def crash_after_checkpoint(event):
        if event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out, progress=crash_after_checkpoint)
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    result = train(config, out, resume=True)
    assert (
        result.record is not None
        and result.record.steps == 4
        and result.record.from_run == str(parent.resolve())
    )
    straight = train(config, tmp_path / "straight")
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    uninterrupted = load_file(straight.run.adapter / "adapter_model.safetensors")
    assert all((resumed[k] - uninterrupted[k]).abs().max() < 1e-5 for k in uninterrupted)
