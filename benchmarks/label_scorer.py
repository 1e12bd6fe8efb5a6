"""The label scorer: one trie pass per batch of prompts against one pass over all labels per prompt.

    python benchmarks/label_scorer.py [--prompts 32] [--rounds 3] [--labels 77] [--run RUN]

The bundled SmolLM2-135M-Instruct (or, with --run, a trained Banking77 run: its adapter, prompts
and test rows) scores every Banking77 label as a whole reply for the same test requests, two ways:

(a) the previous scorer, kept here as the baseline: per prompt, a prefill, then the label
    continuations in chunks of 64 over copies of the prompt's KV cache;
(b) `evaluate.confidence.label_probabilities`: the labels as a token trie, the prompts batched,
    then the trie level by level under a tree attention mask, only where its prefixes are still
    likely (`PRUNE_MASS`); `label_levels.py` compares it with the two-pass trie scorer before it.
    A fine-tuned model's distribution is peaked, so (b) gains most with --run.

Rounds alternate (a) and (b) so that machine noise hits both; each side's best round counts.
Printed: prompts/s of each, the ratio (b)/(a), and the largest difference between their
probabilities (they compute the same thing). On a shared machine only the ratio means anything.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "banking77"
CHUNK = 64


def per_prompt_log_probs(model, prompt: list[int], replies: list[list[int]], pad: int) -> np.ndarray:
    """The previous scorer (before the trie): one prefill, then every label over copies of its cache."""
    import torch
    from transformers import DynamicCache

    out = np.empty(len(replies))
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        prefill = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
        first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)
        for start in range(0, len(replies), CHUNK):
            chunk = replies[start : start + CHUNK]
            scores = first[[r[0] for r in chunk]].clone()
            width = max(len(r) for r in chunk) - 1
            if width > 0:
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                for row, reply in enumerate(chunk):
                    ids[row, : len(reply) - 1] = torch.tensor(reply[:-1])
                shared = copy.deepcopy(cache)
                shared.batch_repeat_interleave(len(chunk))
                logp = torch.log_softmax(
                    model(input_ids=ids, cache=shared, use_cache=True).logits.float(), dim=-1
                )
                for row, reply in enumerate(chunk):
                    if len(reply) > 1:
                        scores[row] += logp[row, torch.arange(len(reply) - 1), torch.tensor(reply[1:])].sum()
            out[start : start + len(chunk)] = scores.numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=77)
    parser.add_argument("--run", help="a trained Banking77 run directory (default: the base model)")
    args = parser.parse_args()

    import torch

    from specialize.evaluate.confidence import label_probabilities, label_reply_ids
    from specialize.models.chat import prompt_ids
    from specialize.models.label_scores import normalise
    from specialize.models.load import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    labels = json.loads((DATA / "categories.json").read_text())[: args.labels]
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][: args.prompts]
    if args.run:
        from specialize.inference import load_run

        trained = load_run(args.run)
        loaded = trained.loaded
        labels = ((trained.record.labels if trained.record else None) or labels)[: args.labels]
        conversations = [trained.messages_for(t) for t in texts]
    else:
        loaded = load_model("smollm2-135m-instruct")
        loaded.model.eval()
        system = "Classify the banking request into one intent."
        conversations = [
            [{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts
        ]
    replies = [label_reply_ids(loaded, conversations[0], label) for label in labels]
    pad = loaded.tokenizer.pad_token_id or 0
    best = {"before": float("inf"), "trie": float("inf")}
    for _ in range(args.rounds):
        began = time.perf_counter()
        before = np.vstack(
            [
                normalise(per_prompt_log_probs(loaded.model, prompt_ids(loaded.tokenizer, c), replies, pad))
                for c in conversations
            ]
        )
        best["before"] = min(best["before"], time.perf_counter() - began)
        began = time.perf_counter()
        trie = label_probabilities(loaded, conversations, labels)
        best["trie"] = min(best["trie"], time.perf_counter() - began)
    n = len(conversations)
    print(f"{n} prompts x {len(labels)} labels, best of {args.rounds} rounds (shared machine: ratio only)")
    print(f"(a) per prompt : {n / best['before']:.2f} prompts/s")
    print(f"(b) trie pass  : {n / best['trie']:.2f} prompts/s")
    print(f"ratio (b)/(a)  : {best['before'] / best['trie']:.2f}x")
    print(f"max |p(a) - p(b)| = {np.abs(before - trie).max():.2e}")
    print(f"same top label on {int((before.argmax(1) == trie.argmax(1)).sum())}/{n} prompts")


if __name__ == "__main__":
    main()
