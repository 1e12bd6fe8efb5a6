"""The probability of each allowed label as a whole reply, computed over a token trie of the labels.

A label is scored as the full token sequence the model was trained to produce for it: the reply
as the chat template renders it, up to and including the end-of-turn token. The end-of-turn
matters: without it "card" would also collect the probability of every longer label that starts
with it ("card_arrival"). Normalising the sequence probabilities over the label set gives a
distribution over labels, the confidence of a reply under a label contract.

The label replies form a token trie (`LabelTrie`): labels that share a first token ("card",
"card_arrival") share its node, so each distinct prefix is computed once. A batch of prompts
takes two forward passes for all its labels (`trie_log_probs`): the prompts, batched, whose last
logits score every first token; then, on the prompts' KV cache, the trie's nodes with children,
flattened, under a tree attention mask (a node sees its prompt, its ancestors and itself, at
position prompt length + depth), so a node's logits are exactly those the model would compute
after the prompt and that label's prefix. The end-of-turn leaves are never fed, and the subtrees
of first tokens the model all but rules out (together at most `PRUNE_MASS`) are not expanded: a
fine-tuned model's first-token distribution is peaked, so most of the trie is never run.

A model-level computation (a model, token ids, a trie), so it lives with the models: the
evaluation's calibration (`evaluate.confidence`) and the batching engine's label probabilities
(`batching.engine`) both call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specialize.models.chat import render_reply

LOGITS_BUDGET_BYTES = 256 << 20  # float32 logits (and their log-softmax) held per forward pass
MAX_PROMPTS_PER_PASS = 16
# First-token probability mass the scorer may leave unexpanded (see `trie_log_probs`): a
# fine-tuned model puts almost all of it on a few labels, so most of the trie is never run.
PRUNE_MASS = 1e-4


def reply_ids(
    tokenizer: Any, eos_ids: Sequence[int], messages: list[dict[str, str]], label: str
) -> list[int]:
    """The tokens of `label` as a reply, ending at the first end-of-turn token (generation stops there)."""
    ids = tokenizer(render_reply(tokenizer, messages, label), add_special_tokens=False)["input_ids"]
    eos = set(eos_ids)
    for n, token in enumerate(ids):
        if token in eos:
            return ids[: n + 1]
    return [*ids, eos_ids[0]] if eos_ids else ids


@dataclass(frozen=True)
class LabelTrie:
    """The label replies' token sequences as a trie, flattened in insertion order.

    Node n holds `tokens[n]`, under `parents[n]` (-1: the root, i.e. the prompt's last token), at
    `depths[n]` (0 for first tokens). `paths[i]` are label i's nodes from its first token to its
    end-of-turn; `expanded` the nodes with children, whose next-token logits the scorer needs.
    """

    labels: tuple[str, ...]
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]
    expanded: tuple[int, ...]

    @classmethod
    def build(cls, labels: Sequence[str], replies: Sequence[Sequence[int]]) -> LabelTrie:
        if not labels:
            raise ValueError("no labels to score")
        if len(labels) != len(replies):
            raise ValueError(f"{len(labels)} labels for {len(replies)} replies")
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for label, reply in zip(labels, replies, strict=True):
            if not reply:
                raise ValueError(f"label {label!r} has an empty reply")
            node, path = -1, []
            for depth, token in enumerate(reply):
                child = children.get((node, token))
                if child is None:
                    child = len(tokens)
                    children[(node, token)] = child
                    tokens.append(int(token))
                    parents.append(node)
                    depths.append(depth)
                node = child
                path.append(node)
            paths.append(tuple(path))
        expanded = tuple(sorted({p for p in parents if p >= 0}))
        return cls(tuple(labels), tuple(tokens), tuple(parents), tuple(depths), tuple(paths), expanded)

    @classmethod
    def for_model(cls, tokenizer: Any, eos_ids: Sequence[int], labels: Sequence[str]) -> LabelTrie:
        """The trie of `labels` as replies under the tokenizer's chat template.

        The replies are rendered after one placeholder user turn: chat templates render an
        assistant turn the same way whatever came before it.
        """
        if not labels:
            raise ValueError("no labels to score")
        messages = [{"role": "user", "content": "x"}]
        return cls.build(labels, [reply_ids(tokenizer, eos_ids, messages, label) for label in labels])


def _lineage(trie: LabelTrie) -> np.ndarray:
    """[nodes, nodes] ancestor-or-self: a node attends to its own label prefix only."""
    lineage = np.eye(len(trie.tokens), dtype=bool)
    for node, parent in enumerate(trie.parents):
        if parent >= 0:
            lineage[node] |= lineage[parent]  # parents come before their children
    return lineage


def _kept_roots(first_logp: np.ndarray, prune: float) -> np.ndarray:
    """Which first tokens to expand: the most likely ones, until the first tokens left out hold
    at most `prune` probability (all of them when prune is 0)."""
    if prune <= 0:
        return np.ones(first_logp.shape, dtype=bool)
    probs = np.exp(first_logp)
    order = np.argsort(-probs, kind="stable")
    left_out = probs.sum() - np.cumsum(probs[order])  # mass not kept after keeping the top k + 1
    k = int(np.argmax(left_out <= prune)) + 1 if (left_out <= prune).any() else len(order)
    keep = np.zeros(first_logp.shape, dtype=bool)
    keep[order[:k]] = True
    return keep


def trie_log_probs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    trie: LabelTrie,
    pad_id: int,
    prune: float = PRUNE_MASS,
) -> np.ndarray:
    """[prompts, labels] log P(label reply | prompt) for a batch of prompts (of any lengths).

    Two forward passes: the prompts (left-padded, batched), whose last logits score every
    label's first token; then, reusing the prompts' KV cache, the trie's nodes with children
    under the tree mask (the end-of-turn leaves are never fed). With `prune` > 0 only the
    subtrees of the most likely first tokens are expanded, until those left out hold at most
    `prune` probability; a label left out gets its first token's log-probability, an upper
    bound of its own. A row where those bounds add up to more than `prune` times the probability
    of the labels it did score gets its other subtrees run too (on the same cache), so every
    normalised probability is within `prune` of the exact one.
    """
    import copy

    import torch
    from transformers import DynamicCache

    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.device
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    lowest = torch.finfo(dtype).min
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    real = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        real[row, width - len(prompt) :] = 1
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    tokens = np.array(trie.tokens)
    parents = np.array(trie.parents)
    firsts = np.flatnonzero(parents < 0)
    root_of = np.empty(len(tokens), dtype=np.int64)
    for node, parent in enumerate(trie.parents):
        root_of[node] = node if parent < 0 else root_of[parent]
    expanded = np.array(trie.expanded, dtype=np.int64)
    lineage = _lineage(trie)
    out = np.empty((rows, len(trie.labels)))
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        first = model(
            input_ids=ids.to(device),
            attention_mask=real.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        root = torch.log_softmax(first.logits[:, -1].float(), dim=-1).double().cpu().numpy()
        cache = first.past_key_values
        vocab = root.shape[1]
        selected = []
        for row in range(rows):
            keep = np.zeros(len(tokens), dtype=bool)
            keep[firsts[_kept_roots(root[row, tokens[firsts]], prune)]] = True
            selected.append(expanded[keep[root_of[expanded]]])
        children: list[list[int]] = [[] for _ in tokens]
        for node, parent in enumerate(trie.parents):
            if parent >= 0:
                children[parent].append(node)
        # log P(node's token | prompt, the node's prefix), for the children of every fed node
        scores: list[dict[int, float]] = [{} for _ in range(rows)]

        def expand(feed: list[np.ndarray]) -> None:
            """Feed these nodes of each row on the prompts' cache; subtrees are independent, so
            nodes fed in another call never need to see these."""
            busy = [row for row in range(rows) if len(feed[row])]
            groups: list[list[int]] = [[]]
            used = 0
            for row in busy:  # groups whose logits fit the budget
                need = len(feed[row]) * vocab * 8
                if groups[-1] and used + need > LOGITS_BUDGET_BYTES:
                    groups.append([])
                    used = 0
                groups[-1].append(row)
                used += need
            for group in (g for g in groups if g):
                span = max(len(feed[row]) for row in group)
                sub = copy.deepcopy(cache)
                sub.batch_select_indices(torch.tensor(group, device=device))
                inputs = torch.full((len(group), span), pad_id, dtype=torch.long)
                where = torch.zeros((len(group), span), dtype=torch.long)
                allowed = torch.zeros((len(group), 1, span, width + span), dtype=torch.bool)
                allowed[:, 0, torch.arange(span), width + torch.arange(span)] = True  # padding sees itself
                for g, row in enumerate(group):
                    chosen = feed[row]
                    n = len(chosen)
                    inputs[g, :n] = torch.from_numpy(tokens[chosen])
                    where[g, :n] = len(prompts[row]) + torch.tensor([trie.depths[c] for c in chosen])
                    allowed[g, 0, :, :width] = real[row].bool()
                    allowed[g, 0, :n, width : width + n] = torch.from_numpy(lineage[np.ix_(chosen, chosen)])
                mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, lowest)
                logits = model(
                    input_ids=inputs.to(device),
                    attention_mask=mask.to(device),
                    position_ids=where.to(device),
                    past_key_values=sub,
                    use_cache=True,
                ).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for g, row in enumerate(group):
                    at = {int(node): i for i, node in enumerate(feed[row])}
                    kids = [c for node in feed[row] for c in children[int(node)]]
                    source = torch.tensor([at[trie.parents[c]] for c in kids], device=logp.device)
                    values = logp[g, source, torch.tensor(tokens[kids], device=logp.device)]
                    scores[row].update(zip(kids, values.double().tolist(), strict=True))

        def total(row: int) -> None:
            for label, path in enumerate(trie.paths):
                # A label whose subtree was not expanded gets its first token's: an upper bound.
                out[row, label] = root[row, tokens[path[0]]] + sum(scores[row].get(n, 0.0) for n in path[1:])

        expand(selected)
        heads = np.array([path[0] for path in trie.paths])
        redo = []
        for row in range(rows):
            total(row)
            scored = np.isin(heads, selected[row])
            bound, exact = np.exp(out[row, ~scored]).sum(), np.exp(out[row, scored]).sum()
            # The bound is relative to the labels' own probability: a model that rarely answers
            # with a label (barely trained) has little of it, and its other subtrees are run too.
            if bound > prune * exact:
                redo.append(row)
        if redo:
            expand(
                [
                    np.setdiff1d(expanded, selected[row]) if row in redo else expanded[:0]
                    for row in range(rows)
                ]
            )
            for row in redo:
                total(row)
    return out


def normalise(log_probs: np.ndarray) -> np.ndarray:
    """Sequence log-probabilities to a distribution over the labels, row by row."""
    return np.exp(log_probs - np.logaddexp.reduce(log_probs, axis=-1, keepdims=True))


def score_prompts(
    model: Any,
    prompts: Sequence[Sequence[int]],
    trie: LabelTrie,
    pad_id: int,
    on_progress: Callable[[int, int], None] | None = None,
    prune: float = PRUNE_MASS,
) -> np.ndarray:
    """[prompts, labels] probabilities, normalised over the labels; prompts are batched by length."""
    if not prompts:
        return np.zeros((0, len(trie.labels)))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per pass
    step = MAX_PROMPTS_PER_PASS
    out = np.empty((len(prompts), len(trie.labels)))
    for start in range(0, len(order), step):
        batch = order[start : start + step]
        out[batch] = normalise(trie_log_probs(model, [prompts[i] for i in batch], trie, pad_id, prune))
        if on_progress:
            on_progress(min(start + step, len(order)), len(order))
    return out
