"""The bundled SmolLM2-135M-Instruct, for real: GGUF conversion, a few LoRA steps, reload."""

from __future__ import annotations

import json

import pytest
import torch

from specialize.config import parse_config
from specialize.inference import generate, load_run
from specialize.models.load import hf_directory, load_model
from specialize.models.registry import resolve_model
from specialize.train.sft import train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundled():
    return load_model("smollm2-135m-instruct")


def test_gguf_is_converted_once_to_a_plain_checkpoint(bundled):
    path = hf_directory(resolve_model("smollm2-135m-instruct"))
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert bundled.model.dtype == torch.float32
    reply = generate(
        bundled, [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=12
    )
    assert "Paris" in reply[0].text


def test_lora_fine_tune_a_few_steps_and_reload(bundled, tmp_path):
    rows = [
        {"text": f"I still have not received my new card, order {i}", "label": "card_arrival"}
        if i % 2
        else {"text": f"What exchange rate do you use for transfer {i}?", "label": "exchange_rate"}
        for i in range(24)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    config = parse_config(
        {
            "data": {
                "train": str(data),
                "input_field": "text",
                "output_field": "label",
                "val_fraction": 0.1,
                "test_fraction": 0.1,
            },
            "model": {"base": "smollm2-135m-instruct", "max_seq_len": 64},
            "train": {
                "max_steps": 3,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "eval_every": 3,
                "log_every": 1,
            },
        }
    )
    result = train(config, tmp_path / "run")
    assert result.record.steps == 3 and result.record.base_model.model_id == "smollm2-135m-instruct"
    size = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").stat().st_size
    # fp32 LoRA weights on every linear layer grow with the rank: about 1.2 MiB per unit of rank here.
    assert size < 1.5 * 2**20 * config.method.lora_r
    trained = load_run(tmp_path / "run")
    reply = generate(trained.loaded, [trained.messages_for("Where is my card?")], max_new_tokens=8)
    assert reply[0].completion_tokens > 0
