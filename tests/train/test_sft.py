"""Training on a tiny random Llama: loss falls, artifacts land, a killed run resumes."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from specialize.errors import DataError, RunError
from specialize.train.sft import train
from tests.train.conftest import LABELS, losses, tiny_config


def test_lora_loss_falls_and_run_dir_is_complete(tiny_model_dir, memorisable, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, memorisable, epochs=8), out)
    curve = losses(out)
    assert len(curve) >= 10
    assert sum(curve[-3:]) / 3 < 0.6 * sum(curve[:3]) / 3, curve
    for name in (
        "config.yaml",
        "run.json",
        "data_report.json",
        "metrics.jsonl",
        "splits/train.jsonl",
        "splits/val.jsonl",
        "splits/test.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (out / name).is_file(), name
    meta = json.loads((out / "run.json").read_text())
    assert meta["task"] == "classification" and meta["labels"] == sorted(LABELS)
    assert meta["output_contract"] == {"kind": "labels", "labels": sorted(LABELS)}
    assert meta["method"] == "lora" and meta["steps"] == result.record.steps > 0
    assert not list(out.glob(".adapter-*")), "temp dirs must not be left behind"
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)


def test_full_fine_tuning_writes_a_whole_model(tiny_model_dir, memorisable, tmp_path):
    cfg = tiny_config(tiny_model_dir, memorisable, epochs=2, learning_rate=1e-3)
    cfg.method.kind = "full"
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert not (tmp_path / "run" / "adapter").exists()


def test_same_seed_same_adapter(tiny_model_dir, memorisable, tmp_path):
    a = train(tiny_config(tiny_model_dir, memorisable, max_steps=4), tmp_path / "a")
    b = train(tiny_config(tiny_model_dir, memorisable, max_steps=4), tmp_path / "b")
    wa = load_file(a.run.adapter / "adapter_model.safetensors")
    wb = load_file(b.run.adapter / "adapter_model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_killed_run_resumes_from_its_checkpoint(tiny_model_dir, memorisable, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, memorisable, max_steps=12)

    def crash_after_checkpoint(event):
        if event.step == 7:  # a checkpoint was written at step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=crash_after_checkpoint)
    assert (out / "checkpoints" / "checkpoint-5").is_dir()
    assert not (out / "run.json").exists() and not (out / "adapter").exists()

    result = train(cfg, out, resume=True)
    assert result.record.steps == 12 and result.record.resumed is True
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps]
    assert logged == sorted(logged), "metrics.jsonl must describe one history"
    uninterrupted = train(cfg, tmp_path / "straight")
    w_resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    w_straight = load_file(uninterrupted.run.adapter / "adapter_model.safetensors")
    for key in w_straight:
        assert (w_resumed[key] - w_straight[key]).abs().max() < 1e-5, key


def test_existing_run_dir_is_refused_without_resume(tiny_model_dir, memorisable, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(RunError, match="--resume"):
        train(tiny_config(tiny_model_dir, memorisable), out)


def test_resume_without_checkpoint_is_a_clear_error(tiny_model_dir, memorisable, tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        train(tiny_config(tiny_model_dir, memorisable), tmp_path / "new", resume=True)


def test_bad_data_trains_nothing_and_writes_nothing(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": broken\n{"text": "no label"}\n')
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        train(tiny_config(tiny_model_dir, bad), out)
    assert f"{bad}:2" in str(info.value) and f"{bad}:3" in str(info.value)
    assert not out.exists()


def test_only_rank_zero_refuses_a_taken_run_dir(tmp_path):
    """Under DDP rank 0 may already be writing the run dir when another rank checks it."""
    from specialize.run_dir import RunDir
    from specialize.train.sft import check_run_dir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("x")
    assert check_run_dir(run, resume=False, main=False) is None
    with pytest.raises(RunError, match="already exists"):
        check_run_dir(run, resume=False, main=True)


def test_bf16_mixed_precision_keeps_fp32_adapter_weights(tiny_model_dir, memorisable, tmp_path):
    """bf16 runs the frozen base in bf16 under autocast; the trained LoRA weights stay fp32."""
    import torch

    result = train(tiny_config(tiny_model_dir, memorisable, epochs=8, precision="bf16"), tmp_path / "bf16")
    assert result.record.precision == "bf16"
    weights = load_file(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    curve = losses(tmp_path / "bf16")
    assert sum(curve[-3:]) / 3 < 0.6 * sum(curve[:3]) / 3, curve
    fp32 = train(tiny_config(tiny_model_dir, memorisable, epochs=1, precision="fp32"), tmp_path / "fp32")
    assert fp32.record.precision == "fp32"


def test_a_given_output_schema_is_recorded_and_a_bad_one_trains_nothing(tiny_model_dir, tmp_path):
    from specialize.errors import ConfigError, ConstraintError

    rows = [
        {"text": f"{n} is {a}", "json": json.dumps({"name": n, "age": a})}
        for n, a in [("Ada", 36), ("Alan", 41)] * 6
    ]
    data = tmp_path / "people.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
    }
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))

    def config(output_schema):
        cfg = tiny_config(tiny_model_dir, data, max_steps=1)
        cfg.data.input_field, cfg.data.output_field, cfg.data.output_schema = "text", "json", output_schema
        return cfg

    train(config(str(schema_file)), tmp_path / "given")
    meta = json.loads((tmp_path / "given" / "run.json").read_text())
    assert meta["output_contract"] == {"kind": "json_schema", "schema": schema}
    with pytest.raises(ConstraintError, match="nope"):
        train(config({"type": "nope"}), tmp_path / "bad")
    with pytest.raises(ConfigError, match="file not found"):
        train(config(str(tmp_path / "missing.json")), tmp_path / "missing")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "missing").exists()


def test_attention_kernel_is_eager_only_for_short_rows_on_cpu(tiny_model_dir, memorisable):
    from specialize.train.collator import EncodedDataset
    from specialize.train.sft import attention_kernel

    class _Encoded:
        def __init__(self, n):
            self.input_ids, self.labels = [1] * n, [1] * n

    short, long = EncodedDataset([_Encoded(40)]), EncodedDataset([_Encoded(600)])
    config = tiny_config(tiny_model_dir, memorisable)
    assert attention_kernel(config, "cpu", short, None) == "eager"
    assert attention_kernel(config, "cpu", long, None) is None, "eager keeps a row x row matrix per layer"
    assert attention_kernel(config, "cuda", short, None) is None
    config.train.pack_tokens = 1024
    assert attention_kernel(config, "cpu", short, None) is None, "packed rows of 1024 are long rows"
    config.train.attention = "sdpa"
    assert attention_kernel(config, "cpu", short, None) == "sdpa"
