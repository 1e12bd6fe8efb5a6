"""sdpa attention whose decode steps (one new token per row) never take torch's slow CPU route.

transformers' sdpa attention has two routes for a grouped-query model (several query heads per
key/value head) at one query token per row: with an attention mask it folds the query heads of
each key/value head into the query dimension (`pack_gqa`) and calls torch's fused attention on
the key/value heads; without one (no row of the batch is padded, a batch of one) it passes
`enable_gqa=True` instead, which on CPU is several times slower at one query per row
(`benchmarks/decode_attention.py`). Which route a step takes then depends on whether the batch
happens to be padded: a single request, or a batch of equally long prompts, decodes on the slow
one.

This attention takes the folded route for every decode step, masked or not, and hands everything
else (prefills, several tokens per row, dropout, soft-capping, sinks, position biases) to
transformers' sdpa attention unchanged; with a mask a decode step is the very call transformers
makes. It is registered with transformers' `AttentionInterface` (the documented extension point)
under `ATTENTION`, with sdpa's mask builder, and switched on for a model by `use_decode_attention`:
the serving engine does so for its model. Evaluation and `generate` keep transformers' sdpa, so
their bf16 replies (the quality columns) stay those of the runs before; at one request at a time
the slow route costs little (about 1 ms per token over 30 layers), it is batches of equally long
prompts where it costs most.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import pack_gqa, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION = "specialize_decode"

# Keyword arguments some attention modules pass that the folded route does not implement.
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")


def use_decode_attention(model: Any) -> bool:
    """Switch `model` (a transformers model) to this attention if it runs sdpa now; returns whether
    it did. Other implementations (eager, flash kernels, a model's own) are left as chosen."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    # A multimodal model's text decoder reads its own sub-config; a plain LM's is the config itself.
    for config in (model.config, model.config.get_text_config(decoder=True)):
        if getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = ATTENTION
    return True


def decode_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, T, d], key/value [B, kv, S, d], attention_mask from `sdpa_mask` (boolean
    [B, 1, T, S], or None). Returns ([B, T, H, d], None) like every function of the interface."""
    batch, heads, steps, dim = query.shape
    group = heads // key.shape[1]
    if steps != 1 or group == 1 or dropout or any(kwargs.get(name) is not None for name in _UNSUPPORTED):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        pack_gqa(query, group), key, value, attn_mask=pack_gqa(attention_mask, group), scale=scaling
    )  # [B, kv, group, d]: query head h = kv * group + g, transformers' repeat_kv order
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, decode_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
