"""Turn an `Example` into token ids with completion-only labels, using the model's chat template.

The prompt is rendered with `add_generation_prompt=True`; the full conversation (prompt plus the
assistant reply) is rendered too, and the reply's tokens are whatever the full render adds after
the prompt. That keeps the template's own end-of-turn marker in the supervised part, so the model
learns to stop, and it works for any template whose generation prompt is a prefix of the full
render (ChatML, Llama, Gemma, Mistral...). Templates that break that rule fall back to
prompt + reply + EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specialize.data.example import Example
from specialize.models.chat import prompt_ids, render_reply

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool

    @property
    def completion_len(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode(tokenizer: Any, example: Example, max_seq_len: int) -> Encoded:
    """Token ids and labels for one labelled example; the prompt is masked out of the loss.

    When the pair is longer than `max_seq_len`, the prompt is cut from the left (the request's
    end is usually closest to the answer) and then the reply from the right, keeping at least one
    supervised token.
    """
    if example.completion is None:
        raise ValueError(f"{example.source}: example has no completion to train on")
    p_ids = prompt_ids(tokenizer, example.messages)
    r_ids = tokenizer(
        render_reply(tokenizer, example.messages, example.completion), add_special_tokens=False
    )["input_ids"]
    truncated = len(p_ids) + len(r_ids) > max_seq_len
    if truncated:
        keep_reply = min(len(r_ids), max(1, max_seq_len - len(p_ids)))
        r_ids = r_ids[:keep_reply]
        room = max_seq_len - len(r_ids)
        p_ids = p_ids[len(p_ids) - room :] if room > 0 else []
    return Encoded(
        input_ids=p_ids + r_ids,
        labels=[IGNORE_INDEX] * len(p_ids) + list(r_ids),
        prompt_len=len(p_ids),
        truncated=truncated,
    )
