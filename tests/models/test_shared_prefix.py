"""Shared-prefix attention: the prefix held once gives what attending over per-row copies gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from specialize.inference import generate
from specialize.models.load import load_model
from specialize.models.shared_prefix import (
    ATTENTION,
    SharedPrefixCache,
    shared_prefix_attention,
    shared_prefix_attention_forward,
    supports_shared_prefix,
)
from tests.test_inference import conversations  # prompts that share a long system prefix


class _Module:
    """What the attention function reads of an attention module: its layer's shared prefix."""

    def __init__(self, layer):
        self._shared_prefix = layer


@pytest.mark.parametrize("steps", [1, 5])
def test_attention_equals_sdpa_over_per_row_copies(steps):
    """Random GQA tensors, rows with padding between prefix and suffix: the same as SDPA over the
    prefix repeated per row and concatenated with each row's own keys."""
    torch.manual_seed(0)
    batch, heads, kv_heads, dim, prefix, own = 3, 6, 2, 16, 11, 7
    prefix_k, prefix_v = torch.randn(1, kv_heads, prefix, dim), torch.randn(1, kv_heads, prefix, dim)
    cache = DynamicCache()
    cache.update(prefix_k, prefix_v, 0)
    layer = SharedPrefixCache(cache).layers[0]
    own_k, own_v = torch.randn(batch, kv_heads, own, dim), torch.randn(batch, kv_heads, own, dim)
    query = torch.randn(batch, heads, steps, dim)
    visible = torch.ones(batch, 1, steps, prefix + own, dtype=torch.bool)
    visible[1, :, :, prefix : prefix + 3] = False  # row 1: three padding positions after the prefix
    visible[2, :, :, prefix : prefix + 1] = False
    for t in range(steps):  # causal among the last `steps` positions
        visible[:, :, t, prefix + own - steps + t + 1 :] = False
    additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)

    ours, _ = shared_prefix_attention_forward(
        _Module(layer), query, own_k, own_v, additive, scaling=dim**-0.5
    )
    keys = torch.cat([prefix_k.expand(batch, -1, -1, -1), own_k], dim=2)
    values = torch.cat([prefix_v.expand(batch, -1, -1, -1), own_v], dim=2)
    expected = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, enable_gqa=True)
    assert ours.shape == (batch, steps, heads, dim)
    torch.testing.assert_close(ours, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_cache_counts_the_prefix_in_its_length():
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 9, 4), torch.zeros(1, 2, 9, 4), 0)
    shared = SharedPrefixCache(cache)
    assert shared.get_seq_length() == 9
    shared.update(torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 4, 4), 0)
    assert shared.get_seq_length() == 13
    assert shared.layers[0].get_mask_sizes(1) == (14, 0)
    with pytest.raises(NotImplementedError):
        shared.batch_repeat_interleave(2)


def test_generate_gives_the_same_tokens_with_and_without_it(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    copies = generate(loaded, conversations(), max_new_tokens=10, batch_size=4, shared_attention=False)
    shared = generate(loaded, conversations(), max_new_tokens=10, batch_size=4, shared_attention=True)
    assert [g.text for g in shared] == [g.text for g in copies]
    assert [g.completion_tokens for g in shared] == [g.completion_tokens for g in copies]
    # The switch lasts only for the call: the model attends as before afterwards.
    assert loaded.model.config._attn_implementation != ATTENTION
    assert all(getattr(m, "_shared_prefix", None) is None for m in loaded.model.modules())


def test_generate_through_a_peft_model(tiny_model_dir):
    """Evaluation's baselines and fine-tuned model are PeftModels: the switch reaches their layers."""
    from peft import LoraConfig, get_peft_model

    loaded = load_model(str(tiny_model_dir))
    torch.manual_seed(1)
    model = get_peft_model(
        loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    loaded = type(loaded)(
        model=model.eval(), tokenizer=loaded.tokenizer, ref=loaded.ref, hf_path=loaded.hf_path
    )
    copies = generate(loaded, conversations(), max_new_tokens=8, batch_size=3, shared_attention=False)
    shared = generate(loaded, conversations(), max_new_tokens=8, batch_size=3)
    assert [g.text for g in shared] == [g.text for g in copies]
    with model.disable_adapter():
        base = generate(loaded, conversations(), max_new_tokens=8, batch_size=3)
    assert [g.text for g in base] != [g.text for g in shared]  # the adapter was applied


def test_switch_is_undone_when_generation_fails(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    before = loaded.model.config._attn_implementation
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
    cache.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 1)
    with (
        pytest.raises(RuntimeError, match="boom"),
        shared_prefix_attention(loaded.model, SharedPrefixCache(cache)),
    ):
        assert loaded.model.config._attn_implementation == ATTENTION
        raise RuntimeError("boom")
    assert loaded.model.config._attn_implementation == before


def test_sliding_window_models_keep_the_copying_path(tiny_model_dir, monkeypatch):
    import specialize.models.shared_prefix as shared_prefix

    loaded = load_model(str(tiny_model_dir))
    assert supports_shared_prefix(loaded.model)
    loaded.model.config.sliding_window = 16
    assert not supports_shared_prefix(loaded.model)

    def refuse(*args, **kwargs):
        raise AssertionError("shared-prefix attention used on a sliding-window model")

    monkeypatch.setattr(shared_prefix, "shared_prefix_attention", refuse)
    assert len(generate(loaded, conversations()[:3], max_new_tokens=4)) == 3
