"""The probability a model gives each allowed label, as a whole reply, for one prompt.

A label is scored as the full token sequence the model was trained to produce for it: the reply
as the chat template renders it, up to and including the end-of-turn token. The end-of-turn
matters: without it "card" would also collect the probability of every longer label that starts
with it ("card_arrival"). Normalising the sequence probabilities over the label set gives a
distribution over labels, the confidence of a reply under a label contract.

Per prompt, the prompt is run once and its KV cache shared by one batched forward pass over all
labels (in chunks, to bound the logits' memory), so scoring L labels costs about one prompt plus
L short continuations rather than L whole prompts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from specialize.inference import end_of_turn_ids
from specialize.models.chat import prompt_ids, render_reply
from specialize.models.load import LoadedModel

LABEL_CHUNK = 64  # label continuations per forward pass


def label_reply_ids(loaded: LoadedModel, messages: list[dict[str, str]], label: str) -> list[int]:
    """The tokens of `label` as a reply, ending at the first end-of-turn token (generation stops there)."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(render_reply(tokenizer, messages, label), add_special_tokens=False)["input_ids"]
    eos = end_of_turn_ids(loaded)
    for n, token in enumerate(ids):
        if token in eos:
            return ids[: n + 1]
    return [*ids, eos[0]] if eos else ids


def label_log_probs(loaded: LoadedModel, prompt: list[int], replies: Sequence[list[int]]) -> np.ndarray:
    """log P(reply | prompt) for each reply: the sum of its tokens' log-probabilities."""
    import torch
    from transformers import DynamicCache

    model = loaded.model
    device = model.device
    pad = loaded.tokenizer.pad_token_id or 0
    out = np.empty(len(replies), dtype=np.float64)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        prefill = model(
            input_ids=torch.tensor([prompt], device=device), past_key_values=cache, use_cache=True
        )
        first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)
        for start in range(0, len(replies), LABEL_CHUNK):
            chunk = replies[start : start + LABEL_CHUNK]
            scores = first[[r[0] for r in chunk]].clone()
            width = max(len(r) for r in chunk) - 1
            if width > 0:
                # Feed every reply but its last token; position j then predicts token j + 1.
                # Right padding needs no mask: causal attention never looks ahead at it.
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                for row, reply in enumerate(chunk):
                    ids[row, : len(reply) - 1] = torch.tensor(reply[:-1], dtype=torch.long)
                shared = copy.deepcopy(cache)
                shared.batch_repeat_interleave(len(chunk))
                logits = model(input_ids=ids.to(device), past_key_values=shared, use_cache=True).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for row, reply in enumerate(chunk):
                    if len(reply) > 1:
                        targets = torch.tensor(reply[1:], device=logp.device)
                        positions = torch.arange(len(reply) - 1, device=logp.device)
                        scores[row] += logp[row, positions, targets].sum()
            out[start : start + len(chunk)] = scores.cpu().numpy()
    return out


def label_probabilities(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    labels: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[rows, labels] probabilities: each row's label sequence probabilities, normalised to sum to 1.

    The label replies are tokenized once, from the first conversation: chat templates render an
    assistant turn the same way whatever came before it.
    """
    if not labels:
        raise ValueError("no labels to score")
    if not conversations:
        return np.zeros((0, len(labels)))
    replies = [label_reply_ids(loaded, conversations[0], label) for label in labels]
    rows = []
    for messages in conversations:
        logp = label_log_probs(loaded, prompt_ids(loaded.tokenizer, messages), replies)
        rows.append(np.exp(logp - np.logaddexp.reduce(logp)))
        if on_progress:
            on_progress(len(rows), len(conversations))
    return np.vstack(rows)


def reply_confidence(
    probabilities: np.ndarray, labels: Sequence[str], replies: Sequence[str | None]
) -> list[Any]:
    """The probability of the label each row replied (None where the reply names no label)."""
    index = {label: i for i, label in enumerate(labels)}
    return [
        None if reply is None or reply not in index else float(probabilities[row, index[reply]])
        for row, reply in enumerate(replies)
    ]
