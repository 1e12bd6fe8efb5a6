"""Attention over a prompt prefix that every row of a batch shares, held once instead of per row.

Prompt-engineering baselines repeat one long instruction (every label of the task, say) in every
request, and `inference.generate` already runs that shared prefix through the model once. With
transformers' own cache its K/V must then be copied into every row of every batch
(`batch_repeat_interleave`), and each decode step concatenates and attends over
rows x (prefix + suffix) positions: with a few hundred shared tokens and a batch of 16, reading
those copies is most of a decode step on a CPU, where attention is bound by memory traffic.

Here the cache keeps the prefix's K/V once (batch 1) and only each row's own tokens per row, and
the attention folds the batch into the query dimension for the prefix part: one matrix product
per key/value head over all rows' queries against the single prefix copy, then the row's own
keys, one softmax over both (the same result as attending over the concatenation, up to
rounding). This is the idea of vLLM's and FlashInfer's "cascade" attention for shared prefixes;
transformers has no such cache or attention, so it is written here as a cache layer plus an
attention function registered with transformers' `AttentionInterface` (its documented extension
point), switched on only for the duration of one `generate` call (`shared_prefix_attention`).

Masks come from transformers' eager mask builder (always an explicit additive mask over the
prefix and suffix positions), so padding between the prefix and a row's suffix is masked exactly
as in the unshared layout. Models whose attention is not the standard scaled dot product (sliding
windows, soft-capping, attention sinks) are not supported: `supports_shared_prefix` says when.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTENTION = "specialize_shared_prefix"


class SharedPrefixLayer(DynamicLayer):
    """One decoder layer's cache: the prefix's K/V once ([1, kv_heads, P, d]), the rows' own after it."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
        super().__init__()
        self.prefix_keys = prefix_keys
        self.prefix_values = prefix_values
        # The attention's arithmetic runs in float32 (see shared_prefix_attention_forward); the
        # prefix is converted once here rather than at every step.
        self.prefix_keys_f32 = prefix_keys[0].float()  # [kv, P, d]
        self.prefix_values_f32 = prefix_values[0].float()

    @property
    def prefix_length(self) -> int:
        return int(self.prefix_keys.shape[-2])

    def get_seq_length(self) -> int:
        return self.prefix_length + super().get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a shared prefix is never repeated per row")


class SharedPrefixCache(DynamicCache):
    """A transformers cache whose every layer starts with the same shared prefix (see the module doc)."""

    def __init__(self, prefix: Cache):
        layers = [SharedPrefixLayer(layer.keys, layer.values) for layer in prefix.layers]
        Cache.__init__(self, layers=layers)


def supports_shared_prefix(model: Any) -> bool:
    """Standard causal attention without the extras this attention does not implement."""
    config = model.config.get_text_config(decoder=True)
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in layer_types)


@contextlib.contextmanager
def shared_prefix_attention(model: Any, cache: SharedPrefixCache) -> Iterator[None]:
    """Within the block, `model` attends through `cache`'s shared prefix (its attention modules
    are told their layer's prefix; the config's attention implementation is switched and then
    restored). Not for concurrent use of one model object from several threads."""
    config = model.config
    modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    previous = config._attn_implementation
    for module in modules:
        module._shared_prefix = cache.layers[module.layer_idx]
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
        for module in modules:
            module._shared_prefix = None


def shared_prefix_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, T, d]; key/value: the rows' own K/V [B, kv, S, d] (the prefix comes from the
    module's cache layer); attention_mask: additive [B, 1, T, P + S]. Returns [B, T, H, d].

    Scores, softmax and the weighted sum are computed in float32 and the result is rounded to the
    model's dtype once: torch's fused CPU attention also accumulates bf16 in float32, and rounding
    the scores to bf16 in between would change greedy tokens on near-ties."""
    layer: SharedPrefixLayer = module._shared_prefix
    batch, heads, steps, dim = query.shape
    if steps > 1:
        return _prefill_attention(layer, query, key, value, attention_mask, scaling)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    prefix_k, prefix_v = layer.prefix_keys_f32, layer.prefix_values_f32  # [kv, P, d]
    length = prefix_k.shape[-2]
    scale = scaling if scaling is not None else dim**-0.5
    # Query heads h = kv * group + g (transformers' repeat_kv order): [B, kv, group * T, d].
    q = query.float().reshape(batch, kv_heads, group * steps, dim) * scale
    # Prefix: all rows' queries against its one copy, [kv, B * group * T, P].
    q_rows = q.transpose(0, 1).reshape(kv_heads, batch * group * steps, dim)
    prefix_scores = torch.bmm(q_rows, prefix_k.transpose(1, 2))
    prefix_scores = prefix_scores.view(kv_heads, batch, group * steps, length).transpose(0, 1)
    own_scores = torch.matmul(q, key.float().transpose(2, 3))  # [B, kv, group * T, S]
    scores = torch.cat([prefix_scores, own_scores], dim=-1)
    if attention_mask is not None:
        scores = scores.view(batch, kv_heads, group, steps, -1) + attention_mask[:, :, None].float()
        scores = scores.view(batch, kv_heads, group * steps, -1)
    probs = torch.softmax(scores, dim=-1)
    prefix_probs = probs[..., :length].transpose(0, 1).reshape(kv_heads, batch * group * steps, length)
    out = torch.bmm(prefix_probs, prefix_v).view(kv_heads, batch, group * steps, dim).transpose(0, 1)
    out = out + torch.matmul(probs[..., length:], value.float())
    out = out.reshape(batch, heads, steps, dim).transpose(1, 2).contiguous().to(value.dtype)
    return out, None


def _prefill_attention(
    layer: SharedPrefixLayer,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Several new tokens per row (the prompts' own part): torch's fused attention over the prefix
    expanded to every row, once per prefill. The explicit scores of the decode path would be
    rows x queries x positions floats here, slower than this one copy."""
    batch = query.shape[0]
    keys = torch.cat([layer.prefix_keys.expand(batch, -1, -1, -1), key], dim=2)
    values = torch.cat([layer.prefix_values.expand(batch, -1, -1, -1), value], dim=2)
    mask = None if attention_mask is None else attention_mask.to(query.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, shared_prefix_attention_forward)
# Always an explicit additive mask: the attention above needs it to see padding and causality.
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, eager_mask)
