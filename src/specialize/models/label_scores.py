"""The probability of each allowed label as a whole reply, computed over a token trie of the labels.

A label is scored as the full token sequence the model was trained to produce for it: the reply
as the chat template renders it, up to and including the end-of-turn token. The end-of-turn
matters: without it "card" would also collect the probability of every longer label that starts
with it ("card_arrival"). Normalising the sequence probabilities over the label set gives a
distribution over labels, the confidence of a reply under a label contract.

The label replies form a token trie (`LabelTrie`): labels that share a first token ("card",
"card_arrival") share its node, so each distinct prefix is computed once. A batch of prompts
(`trie_log_probs`) takes one forward pass over the prompts, whose last logits score every first
token, then a few short passes on the prompts' KV cache, one per level of the trie that is still
worth expanding: each feeds the most likely scored nodes with children under a tree attention
mask (a node sees its prompt, its ancestors and itself, at position prompt length + depth), so a
node's logits are exactly those the model would compute after the prompt and that label's prefix.
The end-of-turn leaves are never fed, a label's tail past its last branching is fed in the same
pass as its head, and a prefix the model all but rules out is left unexpanded at whatever depth
that happens, as long as those left out cannot move a normalised probability by more than
`PRUNE_MASS`.

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
# How far the scorer's pruning may move a normalised probability (see `trie_log_probs`). The
# confidences feed calibration bins 1/15 wide and a threshold; in bfloat16 the exact scores
# themselves move by several hundredths between two batch shapes (benchmarks/label_levels.py
# prints both), so a tighter bound buys no accuracy there; it costs work, since most of a row's
# passes go to ruling out the unlikely labels' prefixes (1e-3 feeds about half as many nodes again).
PRUNE_MASS = 1e-2
# A pass's width: at most this many times its rows' mean number of nodes (see `_span`).
SPAN_OVER_MEAN = 1.5
SPAN_FLOOR = 8


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


def trie_log_probs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    trie: LabelTrie,
    pad_id: int,
    prune: float = PRUNE_MASS,
) -> np.ndarray:
    """[prompts, labels] log P(label reply | prompt) for a batch of prompts (of any lengths).

    One forward pass over the prompts (left-padded, batched), whose last logits score every
    label's first token; then, on the same growing KV cache, the trie one level at a time, best
    first: each pass feeds, for every row, the most likely scored nodes with children (a node
    attends to its prompt, its ancestors, fed in earlier passes, and itself, at position prompt
    length + depth), and the pass's logits score their children. A row is done when the prefixes
    it left unexpanded hold at most `prune` times the probability of the labels it completed; a
    label under such a prefix gets the prefix's log-probability, an upper bound of its own, so
    every normalised probability is within `prune` of the exact one (exact with `prune=0`: then
    the whole trie is fed).

    Why level by level: a fine-tuned model is sure of a label's first tokens but not always of
    the last ones, so pruning whole first-token subtrees (the previous scorer) still ran most of
    the trie for most rows; here a subtree is left out at whatever depth its prefix becomes
    unlikely, at the cost of one short pass per level.
    """
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
    real = torch.zeros((rows, width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        real[row, width - len(prompt) :] = True
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    real_rows = real.numpy()
    children: list[list[int]] = [[] for _ in trie.tokens]
    for node, parent in enumerate(trie.parents):
        if parent >= 0:
            children[parent].append(node)
    firsts = [n for n, parent in enumerate(trie.parents) if parent < 0]
    leaves = sorted({path[-1] for path in trie.paths})
    labels_under = [0] * len(trie.tokens)  # a prefix left out bounds each of its labels
    for path in trie.paths:
        for node in path:
            labels_under[node] += 1
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        first = model(
            input_ids=ids.to(device),
            attention_mask=real.long().to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = first.cache
        root = torch.log_softmax(first.logits[:, -1].float(), dim=-1).double().cpu().numpy()
        vocab = root.shape[1]
        # log P(prefix up to and including the node) of every scored node, per row
        prefix: list[dict[int, float]] = [
            {n: float(root[row, trie.tokens[n]]) for n in firsts} for row in range(rows)
        ]
        column: list[dict[int, int]] = [{} for _ in range(rows)]  # fed node -> its cache column
        length = width  # cache columns so far
        active = list(range(rows))  # the rows still feeding, in the cache's batch order
        while True:
            most = max(1, LOGITS_BUDGET_BYTES // (len(active) * vocab * 4))
            wanted = {
                row: _with_chains(
                    _next_to_feed(children, labels_under, leaves, prefix[row], column[row], prune, most),
                    children,
                    most,
                )
                for row in active
            }
            still = [i for i, row in enumerate(active) if wanted[row]]
            if not still:
                break
            if len(still) < len(active):  # a finished row would only feed padding
                cache.batch_select_indices(torch.tensor(still, device=device))
                active = [active[i] for i in still]
            span = _span(np.array([len(wanted[row]) for row in active]))
            feed = [wanted[row][:span] for row in active]  # the rest waits for the next pass
            for row, nodes in zip(active, feed, strict=True):
                column[row].update((node, length + i) for i, node in enumerate(nodes))
            # Built in numpy and handed over whole: writing a tensor one element at a time costs a
            # dispatch per element, which at a few thousand nodes per pass was a tenth of the pass.
            inputs = np.full((len(active), span), pad_id, dtype=np.int64)
            where = np.zeros((len(active), span), dtype=np.int64)
            allowed = np.zeros((len(active), 1, span, length + span), dtype=bool)
            allowed[:, 0, np.arange(span), length + np.arange(span)] = True  # every input sees itself
            fed_at: list[int] = []  # flat (row, input) index of every fed node, in feed order
            for b, (row, nodes) in enumerate(zip(active, feed, strict=True)):
                allowed[b, 0, : len(nodes), :width] = real_rows[row]
                for i, node in enumerate(nodes):
                    inputs[b, i] = trie.tokens[node]
                    where[b, i] = len(prompts[row]) + trie.depths[node]
                    ancestor = trie.parents[node]
                    while ancestor >= 0:
                        allowed[b, 0, i, column[row][ancestor]] = True
                        ancestor = trie.parents[ancestor]
                    fed_at.append(b * span + i)
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~torch.from_numpy(allowed), lowest)
            logits = model(
                input_ids=torch.from_numpy(inputs).to(device),
                attention_mask=mask.to(device),
                position_ids=torch.from_numpy(where).to(device),
                cache=cache,
                use_cache=True,
            ).logits
            # log-softmax at the children's tokens only, and only at fed positions (not padding):
            # the normaliser needs the whole vocabulary, the [rows, span, vocab] log-probabilities
            # themselves are never needed.
            fed_logits = logits.reshape(-1, logits.shape[-1])[torch.tensor(fed_at, device=logits.device)]
            normaliser = torch.logsumexp(fed_logits.float(), dim=-1)
            fed_nodes = [(row, node) for row, nodes in zip(active, feed, strict=True) for node in nodes]
            kids = [(k, kid) for k, (_, node) in enumerate(fed_nodes) for kid in children[node]]
            at = torch.tensor([k for k, _ in kids], device=logits.device)
            token = torch.tensor([trie.tokens[kid] for _, kid in kids], device=logits.device)
            values = (fed_logits[at, token].float() - normaliser[at]).double().tolist()
            for (k, kid), value in zip(kids, values, strict=True):
                row, node = fed_nodes[k]
                prefix[row][kid] = prefix[row][node] + value  # a chain's nodes come in order
            length += span
    out = np.empty((rows, len(trie.labels)))
    for row in range(rows):
        for label, path in enumerate(trie.paths):
            # The deepest scored node of the path: the label itself, or the prefix left out.
            out[row, label] = next(prefix[row][n] for n in reversed(path) if n in prefix[row])
    return out


def _next_to_feed(
    children: list[list[int]],
    labels_under: list[int],
    leaves: list[int],
    prefix: dict[int, float],
    fed: dict[int, int],
    prune: float,
    most: int,
) -> list[int]:
    """The nodes one row feeds next (at most `most`), most likely first.

    None once the bounds its unexpanded prefixes give their labels (a prefix's probability for
    each label under it) add up to at most `prune` times the probability of the labels it
    completed: then no normalised probability is off by more than `prune`. Otherwise the most
    likely prefixes, until the bounds left over hold at most half of `prune` times the row's
    current mass (completed plus bounds), so that most rows finish in one pass per level.
    """
    waiting = [n for n in prefix if children[n] and n not in fed]
    if not waiting:
        return []
    bound = {n: labels_under[n] * float(np.exp(prefix[n])) for n in waiting}
    order = sorted(waiting, key=lambda n: -bound[n])
    if prune <= 0:
        return order[:most]
    completed = sum(float(np.exp(prefix[n])) for n in leaves if n in prefix)
    left = sum(bound.values())
    if left <= prune * completed:
        return []
    allowance = 0.5 * prune * (completed + left)
    chosen: list[int] = []
    for node in order:
        if left <= allowance or len(chosen) == most:
            break
        chosen.append(node)
        left -= bound[node]
    return chosen or order[:1]


def _span(needs: np.ndarray) -> int:
    """How many nodes each row feeds in this pass: every row pads to the longest, so the longest
    lists are cut to a multiple of the mean (their most likely nodes first; the rest comes in
    the next pass, when fewer rows are left)."""
    return int(min(needs.max(), max(SPAN_FLOOR, np.ceil(SPAN_OVER_MEAN * needs.mean()))))


def _with_chains(chosen: list[int], children: list[list[int]], most: int) -> list[int]:
    """The chosen nodes, each followed by its chain of only children that have children of their
    own (a label's tail once its prefix is unique): they would come one pass at a time anyway,
    and one pass for the chain is as cheap as one for its head. A chain's nodes see each other
    in the same pass; the list stays in order, parents before their children."""
    out: list[int] = []
    for node in chosen:
        out.append(node)
        while len(children[node]) == 1 and children[children[node][0]] and len(out) < most:
            node = children[node][0]
            out.append(node)
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
