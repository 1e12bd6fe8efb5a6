"""Prompt prefixes prefilled once per adapter and reused by every request that starts with them.

Chat requests to one deployment share a long start: the chat template's system turn (the run's
system prompt, or the model's default one) and the opening of the user turn. On a small model
that start is most of the prompt, and prefilling it again for every request is as much work as
decoding the reply. vLLM's automatic prefix caching (hashed KV blocks) avoids that; here the
engine keeps, per adapter, the K/V of the longest token prefix its recent prompts shared, and a
batch of new requests whose prompts start with it prefills only the rest (laid out as
[prefix][padding][own suffix] with the padding masked, so positions are those of the unpadded
prompt, as in `inference.generate`'s shared prefix).

The K/V of a prefix depends on the adapter (LoRA changes the key and value projections), so
entries are keyed by the adapter's identity (`AdapterSource.key`, which names exact weights; None
for the base model) and the prefix tokens, in an LRU. The shared prefix itself is learned from
traffic: the longest common prefix of the batch's prompts and of the prefix seen before, so a
lone request still finds the part it shares with the previous one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from transformers.cache_utils import DynamicCache

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, tokens, dim]


class PrefixCache:
    """The shared prefix of recent prompts, and its K/V per adapter."""

    def __init__(self, *, min_tokens: int = 8, max_bytes: int = 256 << 20):
        self.min_tokens = min_tokens
        self.max_bytes = max_bytes  # a few-shot prompt's prefix is large: bound memory, not entries
        self.bytes = 0
        self._seen: list[int] = []
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], LayerKV] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def shared(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """The prefix these prompts share (with each other and with earlier traffic), leaving
        every prompt at least one token of its own; [] when shorter than `min_tokens`."""
        own = min(len(p) for p in prompts) - 1
        candidates = list(prompts) + ([self._seen] if self._seen else [])
        prefix = _common(candidates, own) if len(candidates) > 1 else []  # one prompt shares nothing
        if len(prefix) < self.min_tokens and len(prompts) > 1:
            prefix = _common(list(prompts), own)
        if len(prefix) < self.min_tokens:
            prefix = []
        self._seen = prefix or list(prompts[-1][:-1])
        return prefix

    def known(self, prompt: Sequence[int]) -> int:
        """How many of `prompt`'s first tokens the prefix learned so far covers (0 below
        `min_tokens`), leaving it one token of its own: what `shared` would at least give a batch
        holding this prompt. Read-only: deciding how to prefill a prompt must not teach the cache."""
        n = len(_common([prompt, self._seen], len(prompt) - 1)) if self._seen else 0
        return n if n >= self.min_tokens else 0

    def batch_cache(
        self,
        adapters: Sequence[tuple[str | None, int]],
        prefix: list[int],
        prefill: Callable[[list[int], list[int]], LayerKV],
    ) -> DynamicCache:
        """A cache holding `prefix`'s K/V for each row's adapter (rows as `(key, slot)`);
        `prefill(slots, prefix)` computes the missing ones, one row per slot, in one pass."""
        tokens = tuple(prefix)
        missing: dict[str | None, int] = {}
        for key, slot in adapters:
            if (key, tokens) in self._entries:
                self._entries.move_to_end((key, tokens))
            else:
                missing.setdefault(key, slot)
        self.hits += len(adapters) - len(missing)
        self.misses += len(missing)
        if missing:
            layers = prefill(list(missing.values()), prefix)
            for row, key in enumerate(missing):
                entry = [(k[row : row + 1].clone(), v[row : row + 1].clone()) for k, v in layers]
                self._entries[(key, tokens)] = entry
                self.bytes += _size(entry)
        entries = [self._entries[(key, tokens)] for key, _ in adapters]
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= _size(dropped)
        stacked = [
            (torch.cat([entry[n][0] for entry in entries]), torch.cat([entry[n][1] for entry in entries]))
            for n in range(len(entries[0]))
        ]
        return DynamicCache(stacked)


def _size(entry: LayerKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in entry)


def _common(sequences: list[Sequence[int]], limit: int) -> list[int]:
    first = sequences[0]
    n = 0
    while n < limit and all(len(s) > n and s[n] == first[n] for s in sequences):
        n += 1
    return list(first[:n])
