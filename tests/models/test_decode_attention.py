"""Decode attention: transformers' sdpa results, always by the folded (fast) route at one query."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specialize.models import decode_attention
from specialize.models.decode_attention import ATTENTION, decode_attention_forward, use_decode_attention
from specialize.models.load import load_model


class _Module:
    """What the attention functions read of an attention module."""

    num_key_value_groups = 3
    is_causal = True
    training = False


def _tensors(steps: int, batch: int = 4, length: int = 9):
    torch.manual_seed(0)
    query = torch.randn(batch, 6, steps, 8)
    key, value = torch.randn(batch, 2, length, 8), torch.randn(batch, 2, length, 8)
    return query, key, value


def _padded_mask(batch: int, steps: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, 1, steps, length, dtype=torch.bool)
    mask[1:, :, :, :2] = False  # rows 1.. are left-padded by two positions
    return mask


def _record_sdpa_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


def test_a_masked_decode_step_is_transformers_own_call():
    query, key, value = _tensors(steps=1)
    mask = _padded_mask(4, 1, 9)
    ours, _ = decode_attention_forward(_Module(), query, key, value, mask)
    theirs, _ = sdpa_attention_forward(_Module(), query, key, value, mask)
    assert ours.shape == (4, 1, 6, 8) and torch.equal(ours, theirs)


def test_an_unmasked_decode_step_folds_the_heads_instead_of_enable_gqa(monkeypatch):
    """Without a mask transformers passes enable_gqa=True (slow on CPU at one query); this folds
    the query heads per key/value head, with the same result."""
    query, key, value = _tensors(steps=1)
    calls = _record_sdpa_calls(monkeypatch)
    theirs, _ = sdpa_attention_forward(_Module(), query, key, value, None)
    assert calls[-1].get("enable_gqa") is True  # what this module is there to avoid
    ours, _ = decode_attention_forward(_Module(), query, key, value, None)
    assert "enable_gqa" not in calls[-1]
    torch.testing.assert_close(ours, theirs)
    # The reference by hand: query head h attends with key/value head h // group.
    keys, values = key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1)
    probs = torch.softmax(query @ keys.transpose(2, 3) / 8**0.5, dim=-1)
    torch.testing.assert_close(ours, (probs @ values).transpose(1, 2))


@pytest.mark.parametrize("masked", [False, True])
def test_prefills_go_to_transformers_sdpa_unchanged(masked):
    query, key, value = _tensors(steps=5)
    mask = _padded_mask(4, 5, 9) if masked else None
    ours, _ = decode_attention_forward(_Module(), query, key, value, mask)
    theirs, _ = sdpa_attention_forward(_Module(), query, key, value, mask)
    assert torch.equal(ours, theirs)


def test_soft_capping_and_dropout_are_left_to_transformers(monkeypatch):
    seen = []
    monkeypatch.setattr(
        decode_attention, "sdpa_attention_forward", lambda *a, **kw: seen.append(kw) or (None, None)
    )
    query, key, value = _tensors(steps=1)
    decode_attention_forward(_Module(), query, key, value, None, dropout=0.1)
    decode_attention_forward(_Module(), query, key, value, None, softcap=30.0)
    assert [kw.get("dropout") for kw in seen] == [0.1, 0.0] and seen[1]["softcap"] == 30.0


def test_the_engines_model_uses_it_and_generates_the_same_tokens(tiny_model_dir, tmp_path):
    """The engine switches its sdpa model to it; greedy tokens equal sdpa's for a single unpadded
    request and a padded batch (float32); a checkpoint saved from it loads elsewhere as sdpa;
    an eager model is left eager."""
    from transformers import AutoModelForCausalLM

    from specialize.batching import Engine

    loaded = load_model(str(tiny_model_dir), dtype="f32")
    model = loaded.model
    assert model.config._attn_implementation == "sdpa"
    Engine(model, loaded.tokenizer)
    assert model.config._attn_implementation == ATTENTION
    single = torch.tensor([[5, 9, 14, 3, 22, 7]])
    batch = torch.tensor([[0, 0, 5, 9, 14, 3], [11, 4, 8, 19, 2, 6]])
    batch_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    outputs = {}
    for implementation in (ATTENTION, "sdpa"):
        model.config._attn_implementation = implementation
        with torch.inference_mode():
            outputs[implementation] = (
                model.generate(input_ids=single, max_new_tokens=12, do_sample=False),
                model.generate(
                    input_ids=batch,
                    attention_mask=batch_mask,
                    max_new_tokens=12,
                    do_sample=False,
                    pad_token_id=0,
                ),
            )
    for ours, theirs in zip(outputs[ATTENTION], outputs["sdpa"], strict=True):
        assert torch.equal(ours, theirs)
    model.config._attn_implementation = ATTENTION
    model.save_pretrained(tmp_path / "saved")
    elsewhere = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert elsewhere.config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert use_decode_attention(eager) is False and eager.config._attn_implementation == "eager"
