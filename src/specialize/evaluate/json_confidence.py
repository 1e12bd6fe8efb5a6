"""How sure a model is of a JSON reply: its mean token log-probability, and each field's weakest token.

A JSON reply has no single label to normalise over, so its confidence is read off the reply's
own tokens: the model's log-probability of each, teacher-forced after the prompt exactly as the
reply was trained (chat template, up to and including end-of-turn). The mean over the reply says
how typical the whole object is; the minimum over the tokens of one field's value says where
it hesitated ("the intent is sure, the date is a guess"). Fields are the leaf paths
`outputs.flatten_json` compares (nested objects walked, lists and scalars whole), dotted as in
the per-field scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from specialize.inference import end_of_turn_ids
from specialize.models.chat import prompt_ids, render_reply
from specialize.models.load import LoadedModel
from specialize.outputs import dotted_path

ROWS_PER_PASS = 4  # full [rows, length, vocab] logits are held for one pass
_WS = " \t\n\r"
_decoder = json.JSONDecoder()


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WS:
        at += 1
    return at


def value_spans(text: str) -> dict[str, tuple[int, int]] | None:
    """{dotted field path: (start, end) of its value in `text`}; None when `text` is not one
    JSON value (trailing whitespace allowed)."""
    spans: dict[str, tuple[int, int]] = {}

    def walk(at: int, path: tuple[str, ...]) -> int:
        at = _skip(text, at)
        if at < len(text) and text[at] == "{":
            inner = _skip(text, at + 1)
            if inner < len(text) and text[inner] == "}":  # an empty object is a leaf
                spans[dotted_path(path)] = (at, inner + 1)
                return inner + 1
            at = inner
            while True:
                key, at = _decoder.raw_decode(text, _skip(text, at))
                at = _skip(text, at)
                if text[at] != ":":
                    raise ValueError("expected ':'")
                at = walk(at + 1, (*path, str(key)))
                at = _skip(text, at)
                if text[at] == "}":
                    return at + 1
                if text[at] != ",":
                    raise ValueError("expected ',' or '}'")
                at += 1
        _, end = _decoder.raw_decode(text, at)
        spans[dotted_path(path)] = (at, end)
        return end

    try:
        end = walk(0, ())
    except (ValueError, IndexError):
        return None
    return spans if _skip(text, end) == len(text) else None


@dataclass(frozen=True)
class ReplyLogProbs:
    """One reply's tokens (with their character spans in the reply text) and log-probabilities."""

    text: str
    offsets: list[tuple[int, int]]
    logprobs: list[float]

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.logprobs)) if self.logprobs else None

    def field_minima(self) -> dict[str, float]:
        """The lowest log-probability among the tokens overlapping each field's value."""
        spans = value_spans(self.text)
        if not spans:
            return {}
        out = {}
        for path, (start, end) in spans.items():
            inside = [
                lp for (a, b), lp in zip(self.offsets, self.logprobs, strict=True) if a < end and b > start
            ]
            if inside:
                out[path] = float(min(inside))
        return out


def reply_log_probs(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    replies: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ReplyLogProbs]:
    """Teacher-forced log-probabilities of each reply's tokens after its prompt, batched."""
    import torch

    if len(conversations) != len(replies):
        raise ValueError(f"{len(conversations)} conversations for {len(replies)} replies")
    tokenizer, model = loaded.tokenizer, loaded.model
    eos = set(end_of_turn_ids(loaded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    for messages, reply in zip(conversations, replies, strict=True):
        rendered = render_reply(tokenizer, messages, reply)
        encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
        cut = next((n + 1 for n, t in enumerate(ids) if t in eos), len(ids))
        rows.append((prompt_ids(tokenizer, messages), ids[:cut], offsets[:cut], rendered.find(reply)))
    out: list[ReplyLogProbs] = []
    for start in range(0, len(rows), ROWS_PER_PASS):
        batch = rows[start : start + ROWS_PER_PASS]
        width = max(len(p) + len(r) for p, r, _, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, reply_ids, _, _) in enumerate(batch):
            n = len(prompt) + len(reply_ids)
            ids[row, :n] = torch.tensor(prompt + reply_ids, dtype=torch.long)
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
        for row, (prompt, reply_ids, offsets, content_at) in enumerate(batch):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(reply_ids))
            values = logp[row, positions, torch.tensor(reply_ids)].tolist()
            text = replies[start + row]
            # Offsets relative to the reply's own text (the template may put markers before it).
            shift = max(content_at, 0)
            out.append(ReplyLogProbs(text, [(a - shift, b - shift) for a, b in offsets], values))
        if on_progress:
            on_progress(min(start + ROWS_PER_PASS, len(rows)), len(rows))
    return out
