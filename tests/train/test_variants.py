"""LoRA variants (plain, DoRA, rsLoRA) and QLoRA on tiny random models.

Each trains, resumes from a checkpoint to the same adapter as an uninterrupted run, and reloads
(`inference.load_run`) into a model whose greedy tokens equal the trained model's before saving.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specialize.config import parse_config
from specialize.errors import ConfigError
from specialize.inference import load_run
from specialize.train import sft
from specialize.train.sft import train
from tests.train.conftest import LABELS, losses, tiny_config

PROMPTS = ["message 3 about delta", "message 8 about alpha", "hi"]


@pytest.fixture
def memorisable(tmp_path) -> Path:
    rows = [{"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]} for i in range(24)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def variant_config(model_dir: Path, data: Path, variant: str, kind: str = "lora", **train):
    cfg = tiny_config(model_dir, data, **{"max_steps": 12, "precision": "fp32", **train})
    # alpha 8 at rank 4: plain scale 2, rsLoRA scale 4, so the variants differ visibly.
    cfg.method = cfg.method.model_copy(
        update={"kind": kind, "variant": variant, "lora_r": 4, "lora_alpha": 8}
    )
    return cfg


def greedy(model, tokenizer) -> list[list[int]]:
    model.eval()
    out = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.append(gen[0, ids.shape[1] :].tolist())
    return out


@pytest.fixture
def before_saving(monkeypatch):
    """The greedy tokens of the trained model just before its adapter is written."""
    seen: dict[str, list[list[int]]] = {}
    original = sft._save_weights

    def save(model, tokenizer, run, config):
        seen["tokens"] = greedy(model, tokenizer)
        model.train()
        original(model, tokenizer, run, config)

    monkeypatch.setattr(sft, "_save_weights", save)
    return seen


def train_crash_resume(cfg, out: Path) -> None:
    def crash_after_checkpoint(event):
        if event.step == 7:  # a checkpoint was written at step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=crash_after_checkpoint)
    assert (out / "checkpoints" / "checkpoint-5").is_dir()
    result = train(cfg, out, resume=True)
    assert result.record.resumed and result.record.steps == 12


def assert_same_adapter(a: Path, b: Path, tol: float = 1e-5) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() < tol, key


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_variant_trains_resumes_and_reloads(variant, tiny_model_dir, memorisable, tmp_path, before_saving):
    cfg = variant_config(tiny_model_dir, memorisable, variant)
    result = train(cfg, tmp_path / "straight")
    curve = losses(tmp_path / "straight")
    assert sum(curve[-3:]) < sum(curve[:3]), curve
    assert result.record.variant == variant and result.record.method == "lora"
    assert json.loads((tmp_path / "straight" / "run.json").read_text())["variant"] == variant

    adapter = tmp_path / "straight" / "adapter"
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["use_dora"] is (variant == "dora")
    assert peft_config["use_rslora"] is (variant == "rslora")
    magnitudes = [k for k in load_file(adapter / "adapter_model.safetensors") if "lora_magnitude_vector" in k]
    assert bool(magnitudes) is (variant == "dora")

    trained = load_run(tmp_path / "straight")
    assert greedy(trained.loaded.model, trained.loaded.tokenizer) == before_saving["tokens"]
    layer = trained.loaded.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4) if variant == "rslora" else 8 / 4)

    train_crash_resume(cfg, tmp_path / "resumed")
    assert_same_adapter(tmp_path / "resumed" / "adapter", adapter)


def test_variants_train_different_adapters(tiny_model_dir, memorisable, tmp_path):
    """The variant reaches PEFT: same seed and data, different weights after a few steps."""
    weights = {}
    for variant in ("lora", "rslora"):
        train(variant_config(tiny_model_dir, memorisable, variant, max_steps=3), tmp_path / variant)
        weights[variant] = load_file(tmp_path / variant / "adapter" / "adapter_model.safetensors")
    assert any((weights["lora"][k] - weights["rslora"][k]).abs().max() > 1e-6 for k in weights["lora"])


# QLoRA ----------------------------------------------------------------------------------------

requires_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="qlora needs the qlora extra (bitsandbytes)"
)


@requires_bnb
@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_qlora_trains_on_a_4bit_base_and_reloads_on_the_plain_base(
    variant, tiny_model_dir, memorisable, tmp_path, monkeypatch
):
    import bitsandbytes as bnb
    from peft import PeftModel
    from torch import nn

    from specialize.train.quantize import load_quantized

    seen = {}
    original = sft._save_weights

    def save(model, tokenizer, run, config):
        layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        seen["4bit"] = isinstance(layer, bnb.nn.Linear4bit)
        seen["tokens"] = greedy(model, tokenizer)
        model.train()
        original(model, tokenizer, run, config)

    monkeypatch.setattr(sft, "_save_weights", save)
    cfg = variant_config(tiny_model_dir, memorisable, variant, kind="qlora")
    result = train(cfg, tmp_path / "straight")
    assert seen["4bit"], "the frozen base was not quantised"
    assert result.record.method == "qlora" and result.record.variant == variant
    curve = losses(tmp_path / "straight")
    assert sum(curve[-3:]) < sum(curve[:3]), curve

    adapter = tmp_path / "straight" / "adapter"
    names = list(load_file(adapter / "adapter_model.safetensors"))
    assert names and all("lora_" in k for k in names), "a plain PEFT adapter, no quantisation state"

    # The round trip: the saved adapter on a 4-bit base gives the tokens it gave before saving...
    quantised = load_quantized(str(tiny_model_dir), dtype="auto", bf16=False)
    reloaded = PeftModel.from_pretrained(quantised.model, str(adapter))
    assert greedy(reloaded, quantised.tokenizer) == seen["tokens"]
    # ...and it loads on the unquantised base, as evaluation, serving and export use it.
    plain = load_run(tmp_path / "straight")
    layer = plain.loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer) is nn.Linear and layer.weight.dtype == torch.float32
    assert len(greedy(plain.loaded.model, plain.loaded.tokenizer)) == len(PROMPTS)

    if variant == "lora":
        train_crash_resume(cfg, tmp_path / "resumed")
        assert_same_adapter(tmp_path / "resumed" / "adapter", adapter)


@requires_bnb
def test_an_evaluation_leaves_the_4bit_base_and_its_gradients_alone(tiny_model_dir):
    """bitsandbytes' CPU inference repacking (eval, no grad) would change the frozen weights and cut
    the gradient through them (its kernel has no backward); training keeps the generic path. The
    32-wide model also covers widths that are not multiples of 64, where repacking fails."""
    from specialize.train.quantize import load_quantized

    model = load_quantized(str(tiny_model_dir), dtype="auto", bf16=False).model
    ids = torch.tensor([[5, 6, 7, 8, 9]])

    def input_gradient():
        model.train()
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        model(inputs_embeds=embeds).logits.square().sum().backward()
        return embeds.grad

    before = input_gradient()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert torch.equal(input_gradient(), before)


def test_qlora_without_bitsandbytes_says_what_to_install(tiny_model_dir, monkeypatch):
    from specialize.train.quantize import load_quantized

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ConfigError, match=r"qlora needs bitsandbytes.*specialize\[qlora\]"):
        load_quantized(str(tiny_model_dir), dtype="auto", bf16=False)


# Bad input ------------------------------------------------------------------------------------


def test_an_unknown_variant_names_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({"method": {"variant": "lorax"}})
    message = str(err.value)
    assert "method.variant" in message
    assert all(f"'{v}'" in message for v in ("lora", "dora", "rslora")), message


@pytest.mark.parametrize("variant", ["dora", "rslora"])
def test_a_variant_with_full_fine_tuning_is_a_config_error(variant):
    with pytest.raises(ConfigError, match=f"variant '{variant}'.*kind 'full' trains no adapter"):
        parse_config({"method": {"kind": "full", "variant": variant}})


def test_defaults_are_plain_lora_and_old_run_records_load():
    from specialize.records.run import RunRecord

    assert parse_config({}).method.variant == "lora"
    assert parse_config({"method": {"kind": "qlora"}}).learning_rate == 1e-3
    assert RunRecord.model_validate({"method": "lora"}).variant == "lora"
