"""One prefill for several `generate` calls over the same batch: recorded by the first, replayed by the others.

The evaluation decodes every contender's prompts twice, freely and under the output contract.
Both passes start with the same prefill (same tokens, same mask, same batch), which for long
few-shot prompts is most of a pass's work. transformers' `generate` has no way to start from a
finished prefill: given a filled cache it only skips the cached tokens, and prefilling all but the
last token and letting `generate` feed that one computes the first logits through another kernel
path, whose rounding can change a greedy token. So this replays the prefill itself:
`GenerationMixin._prefill` (the one call `generate` makes before its decode loop) is wrapped on
the model instance for the duration of a `PrefillReplay`; the first `generate` in the block runs it
and keeps its output and the K/V it appended to the cache; every later one gets those logits and
K/V appended to its own fresh cache instead of computing them again. Same inputs, same outputs: the
replayed passes' tokens are those of a pass that prefilled on its own, bit for bit (CPU kernels
are deterministic for the same shapes), which `tests/models/test_replayed_prefill.py` checks
against plain `generate`.

The caller must only replay onto the same batch (same input ids and mask) and the same starting
cache content; `PrefillReplay` checks the ids and the mask. `seconds` is the recorded prefill's
wall time, so a replayed pass can still be charged the prefill it did not run.

Where the installed transformers has no `_prefill` (it is a private method), `supported` is
False and every `generate` simply runs its own prefill.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


def generating_module(model: Any) -> Any:
    """The transformers model whose `GenerationMixin` runs `generate` (a PeftModel's base model)."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


@dataclass
class _Recorded:
    output: Any  # the model output of the prefill forward (its logits are the first step's)
    appended: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: the K/V the prefill added
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None


class PrefillReplay:
    """Within `active()`, the first `generate` of `model` records its prefill, later ones replay it.

    It wraps a method of the model object, so, like `shared_prefix_attention`, it is not for a
    model that other threads call `generate` on meanwhile."""

    def __init__(self, model: Any):
        self._module = generating_module(model)
        self._recorded: _Recorded | None = None
        self.seconds = 0.0  # wall time of the recorded prefill
        self.replays = 0

    @property
    def supported(self) -> bool:
        return callable(getattr(type(self._module), "_prefill", None))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if not self.supported:
            yield
            return
        original = self._module._prefill  # bound method of the class

        @functools.wraps(original)
        def prefill(
            input_ids: torch.Tensor, generation_config: Any, model_kwargs: dict, *args: Any, **kw: Any
        ):
            if self._recorded is None:
                return self._record(original, input_ids, generation_config, model_kwargs, *args, **kw)
            return self._replay(input_ids, model_kwargs)

        self._module._prefill = prefill  # an instance attribute shadows the class's method
        try:
            yield
        finally:
            del self._module._prefill

    def _record(
        self, original: Any, input_ids: torch.Tensor, generation_config: Any, model_kwargs: dict, *args, **kw
    ):
        cache = model_kwargs.get("cache")
        before = [_layer_length(layer) for layer in cache.layers] if cache is not None else []
        began = time.perf_counter()
        output = original(input_ids, generation_config, model_kwargs, *args, **kw)
        self.seconds = time.perf_counter() - began
        filled = output.get("cache")
        appended = (
            [
                (layer.keys[..., start:, :], layer.values[..., start:, :])
                for layer, start in zip(filled.layers, before or [0] * len(filled.layers), strict=True)
            ]
            if filled is not None
            else []
        )
        mask = model_kwargs.get("attention_mask")
        self._recorded = _Recorded(
            output, appended, input_ids.clone(), None if mask is None else mask.clone()
        )
        return output

    def _replay(self, input_ids: torch.Tensor, model_kwargs: dict):
        recorded = self._recorded
        assert recorded is not None
        mask = model_kwargs.get("attention_mask")
        same_mask = (mask is None) == (recorded.attention_mask is None) and (
            mask is None or torch.equal(mask, recorded.attention_mask)
        )
        if not torch.equal(input_ids, recorded.input_ids) or not same_mask:
            raise ValueError("a replayed prefill must be over the batch that was recorded")
        cache = model_kwargs.get("cache")
        if recorded.appended and cache is None:
            raise ValueError("the recorded prefill filled a cache; the replaying generate has none")
        for index, (keys, values) in enumerate(recorded.appended):
            cache.update(keys, values, index)  # appended as copies: the recording stays intact
        self.replays += 1
        output = recorded.output
        return type(output)(**{**dict(output.items()), "cache": cache})


def _layer_length(layer: Any) -> int:
    keys = getattr(layer, "keys", None)
    if not getattr(layer, "is_initialized", False) or keys is None or keys.dim() < 2:
        return 0
    return int(keys.shape[-2])
