"""Label confidence in the evaluation: each row's probability of every allowed label, and of its reply.

The scoring itself (label replies as a token trie, scored level by level per batch of prompts) is
`models.label_scores`; here it meets the evaluation's types: a loaded model and its end-of-turn
tokens, conversations, and the reply each row gave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specialize.inference import end_of_turn_ids
from specialize.models.chat import prompt_ids
from specialize.models.label_scores import PRUNE_MASS, LabelTrie, reply_ids, score_prompts
from specialize.models.load import LoadedModel

TOP_ALTERNATIVES = 3


def label_reply_ids(loaded: LoadedModel, messages: list[dict[str, str]], label: str) -> list[int]:
    """`reply_ids` with the loaded model's tokenizer and end-of-turn tokens."""
    return reply_ids(loaded.tokenizer, end_of_turn_ids(loaded), messages, label)


def label_probabilities(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    labels: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
    prune: float = PRUNE_MASS,
) -> np.ndarray:
    """[rows, labels] probabilities: each row's label sequence probabilities, normalised to sum to
    1 (exact with `prune=0`, else within about `prune`; see `trie_log_probs`).

    The label replies are tokenized once, from the first conversation: chat templates render an
    assistant turn the same way whatever came before it.
    """
    if not labels:
        raise ValueError("no labels to score")
    if not conversations:
        return np.zeros((0, len(labels)))
    eos = end_of_turn_ids(loaded)
    tokenizer = loaded.tokenizer
    trie = LabelTrie.build(labels, [reply_ids(tokenizer, eos, conversations[0], label) for label in labels])
    prompts = [prompt_ids(tokenizer, messages) for messages in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return score_prompts(loaded.model, prompts, trie, pad, on_progress, prune)


@dataclass(frozen=True)
class LabelChoice:
    """A reply's label with its probability among the allowed labels, and the runners-up."""

    label: str | None
    probability: float | None
    alternatives: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": self.probability,
            "alternatives": [{"label": label, "probability": p} for label, p in self.alternatives],
        }


def label_choice(
    probabilities: np.ndarray, labels: Sequence[str], reply: str | None, top: int = TOP_ALTERNATIVES
) -> LabelChoice:
    """One row's reply with its probability (None if it names no label) and the `top` most likely
    other labels, most likely first."""
    ranked = [int(i) for i in np.argsort(-probabilities, kind="stable")]
    index = {label: i for i, label in enumerate(labels)}
    chosen = index.get(reply) if reply is not None else None
    others = [i for i in ranked if i != chosen][:top]
    return LabelChoice(
        label=reply if chosen is not None else None,
        probability=float(probabilities[chosen]) if chosen is not None else None,
        alternatives=tuple((labels[i], float(probabilities[i])) for i in others),
    )


def reply_confidence(
    probabilities: np.ndarray, labels: Sequence[str], replies: Sequence[str | None]
) -> list[Any]:
    """The probability of the label each row replied (None where the reply names no label)."""
    index = {label: i for i, label in enumerate(labels)}
    return [
        None if reply is None or reply not in index else float(probabilities[row, index[reply]])
        for row, reply in enumerate(replies)
    ]
