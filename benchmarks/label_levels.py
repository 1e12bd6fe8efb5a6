"""Label confidence: the level-by-level trie scorer against the two-pass one it replaced.

    python benchmarks/label_levels.py [--run RUN] [--prompts 64] [--rounds 2]

Both score every label of a trained label run (default: the demo's `runs/banking77`, which
`make demo` makes; without it the benchmark says so and stops) as a whole reply for the run's
own test prompts, 16 prompts per batch:

(a) the previous scorer, kept here as the baseline: the prompts, then in one more pass every
    node of the subtrees of the likely first tokens (pruned first-token mass 1e-4), and every
    subtree again for a row whose bound failed;
(b) `evaluate.confidence.label_probabilities` as the evaluation runs it (`PRUNE_MASS`), and
(c) the same at (a)'s 1e-4: one pass per trie level, best first, chains of only children in one
    pass, a subtree left out at whatever depth its prefix becomes unlikely.

Rounds alternate (a), (b) and (c); each side's best round counts. Printed: prompts/s of each, the
ratios, each one's largest difference from the exact scores (prune 0) and, for scale, how far
the exact scores themselves move when the same prompts are batched 4 instead of 16 at a time (in
bfloat16 a different batch shape rounds differently).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
LOGITS_BUDGET_BYTES = 256 << 20  # the scorer's own budget then


# The scorer before the level-by-level one (specialize 4ef96e6), unchanged but for its name.
def _lineage(trie: Any) -> np.ndarray:
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


def two_pass_log_probs(
    model: Any,
    prompts: Any,
    trie: Any,
    pad_id: int,
    prune: float = 1e-4,
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
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        root = torch.log_softmax(first.logits[:, -1].float(), dim=-1).double().cpu().numpy()
        cache = first.cache
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
                    cache=sub,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "banking77"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    import specialize.models.label_scores as label_scores
    from specialize.cli.common import quiet_libraries
    from specialize.data.preference import reference_rows
    from specialize.data.prepare import read_splits
    from specialize.evaluate.confidence import label_probabilities, label_reply_ids
    from specialize.evaluate.contenders import build_contenders
    from specialize.inference import load_run
    from specialize.models.chat import prompt_ids
    from specialize.run_dir import open_run

    quiet_libraries()
    torch.set_num_threads(os.cpu_count() or 1)
    if not (Path(args.run) / "run.json").is_file():
        print(f"skipped: no trained run at {args.run} (make demo makes one, or pass --run)")
        return
    run = open_run(args.run)
    trained = load_run(run.path)
    splits = read_splits(run)
    labels = trained.record.labels if trained.record else None
    if not labels:
        raise SystemExit(f"{args.run}: not a label run")
    test = reference_rows(splits.test)
    contenders = build_contenders(
        trained, splits.train, test, kind="classification", labels=labels, max_new_tokens=16
    )
    tuned = next(c for c in contenders if c.role == "fine-tuned")
    conversations = tuned.conversations[: args.prompts]
    loaded = tuned.loaded
    pad = loaded.tokenizer.pad_token_id or 0
    trie = label_scores.LabelTrie.build(
        labels, [label_reply_ids(loaded, conversations[0], label) for label in labels]
    )
    prompts = [prompt_ids(loaded.tokenizer, c) for c in conversations]
    batch = label_scores.MAX_PROMPTS_PER_PASS

    def two_pass() -> np.ndarray:
        return np.vstack(
            [
                label_scores.normalise(two_pass_log_probs(loaded.model, prompts[i : i + batch], trie, pad))
                for i in range(0, len(prompts), batch)
            ]
        )

    def levels(prune: float) -> Any:
        return lambda: label_probabilities(loaded, conversations, labels, prune=prune)

    sides = {
        "two-pass 1e-4": two_pass,
        f"levels {label_scores.PRUNE_MASS:g}": levels(label_scores.PRUNE_MASS),
        "levels 1e-4": levels(1e-4),
    }
    best = dict.fromkeys(sides, float("inf"))
    got: dict[str, np.ndarray] = {}
    with tuned.context():
        for _ in range(args.rounds):
            for name, score in sides.items():
                began = time.perf_counter()
                got[name] = score()
                best[name] = min(best[name], time.perf_counter() - began)
        exact = label_probabilities(loaded, conversations, labels, prune=0)
        label_scores.MAX_PROMPTS_PER_PASS = 4
        exact_by_4 = label_probabilities(loaded, conversations, labels, prune=0)
    dtype = next(loaded.model.parameters()).dtype
    n = len(prompts)
    print(
        f"{n} prompts x {len(labels)} labels ({len(trie.expanded)} trie nodes with children), {dtype}, best of {args.rounds} rounds"
    )
    for name in sides:
        print(
            f"{name:>15}: {n / best[name]:6.2f} prompts/s   max |p - exact| {np.abs(got[name] - exact).max():.4f}"
        )
    print(f"exact scores batched 4 vs 16 at a time: max |difference| {np.abs(exact - exact_by_4).max():.4f}")
    base, new, same = best["two-pass 1e-4"], best[f"levels {label_scores.PRUNE_MASS:g}"], best["levels 1e-4"]
    print(
        f"RESULT label confidence: {base / new:.2f}x the two-pass scorer at the evaluation's prune "
        f"({label_scores.PRUNE_MASS:g}), {base / same:.2f}x at the same 1e-4"
    )


if __name__ == "__main__":
    main()
