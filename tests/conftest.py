"""Shared fixtures: a tiny tokenizer and a tiny random Llama, built here, never downloaded.

The tokenizer is a byte-level BPE trained in a few milliseconds on a small corpus, so it can
encode any text (unknown characters fall back to bytes) and carries the ChatML special tokens
that the default chat template uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "I am still waiting on my card? card_arrival",
    "How do I top up my account with a cheque? top_up_by_cheque",
    "My card payment was declined. declined_card_payment",
    "What is the exchange rate? exchange_rate",
    "user assistant system You are a helpful assistant.",
    '{"name": "Ada", "age": 36, "city": "London"} [1, 2, 3] true false null',
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()-_",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from specialize.models.chat import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def make_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        # Wider than the default 0.02 so that logits can move: with tiny embeddings a LoRA on
        # the body cannot raise any logit far enough to memorise anything.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def make_adapter_run(
    root: Path,
    model_dir: Path,
    *,
    seed: int,
    rank: int = 4,
    run_json: bool = True,
    fingerprint: str | None = None,
) -> Path:
    """A run-like directory: adapter/ (a random PEFT LoRA on the tiny model, large enough to change
    the outputs) and, unless `run_json=False`, run.json naming the base and its fingerprint."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from specialize.models.registry import resolve_model, weights_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(root / "adapter")
    if run_json:
        ref = resolve_model(str(model_dir))
        meta = {"base_model": ref.to_dict(), "base_fingerprint": fingerprint or weights_fingerprint(ref)}
        (root / "run.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny random Llama + tokenizer: a 'local HF directory' model reference."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_model(tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings for malformed lines) to a .jsonl file and return its path."""

    def _write(rows, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return _write


@pytest.fixture(scope="session", autouse=True)
def _inference_in_fp32():
    """`model.dtype: auto` serves and evaluates in bf16 where bf16 matmuls are native, and bf16
    greedy answers can part from fp32 ones (and between batch shapes) on near-ties. The tests
    compare answers exactly across batch shapes and against transformers' own generation, so
    they pin auto to fp32 on every machine; tests/models/test_load.py checks the bf16 choice.
    Session-scoped, so that module-scoped servers are built under it too."""
    from specialize.models import load

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(load, "native_bf16", lambda device: False)
        yield
