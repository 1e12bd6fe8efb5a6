"""Batching of pre-tokenized examples for completion-only training.

Examples are tokenized once, up front (see `data.tokenize.encode`), so the collator only pads:
nothing slow runs per batch.

Why left padding: a reply always ends its example, so with padding on the left every reply in
the batch sits in the last few positions. The model then computes logits only for those
positions (`logits_to_keep`) instead of a (batch x length x vocabulary) tensor of which, for a
short-answer task, over 80% is prompt that the loss ignores. For SmolLM2's 49k vocabulary that
is most of the memory of a step and a fifth of its compute. Position ids are given explicitly so
that left padding does not shift positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from specialize.data.tokenize import IGNORE_INDEX, Encoded


class EncodedDataset(Dataset):
    """A list of encoded examples in the mapping shape `Trainer` expects."""

    def __init__(self, encoded: list[Encoded]):
        self.items = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


@dataclass
class CompletionCollator:
    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, width - n :] = torch.tensor(feature["input_ids"])
            labels[row, width - n :] = torch.tensor(feature["labels"])
            attention_mask[row, width - n :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # The first supervised position over the batch; one more logit before it predicts it.
        supervised = (labels != IGNORE_INDEX).any(0).nonzero()
        first = int(supervised[0]) if len(supervised) else width - 1
        keep = max(2, width - first + 1)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels[:, width - keep :],
            "logits_to_keep": keep,
        }


@dataclass
class PackedCollator:
    """Padding-free batches: the examples of a batch laid end to end in rows of bounded length.

    Position ids restart at 0 for each example; with no attention mask, transformers builds a
    block-diagonal causal mask from those restarts, so no token attends across examples. Rows
    are capped at `row_tokens` (by default the batch's longest example) because attention under
    such a mask costs (row x row) per head and layer, and keeps that matrix for the backward pass:
    one long row would trade padding for a quadratic matrix (benchmarks/train_throughput.py
    compares row lengths). Rows are filled first-fit, longest example first, and only their ends
    are padded (the padding forms its own block).

    The LM head runs only at positions that predict a reply token: `logits_to_keep` takes the
    union of those positions over the rows (plus the last position, so that the one-step shift
    in `supervised_loss` lines the kept logits up with their targets).
    """

    pad_token_id: int = 0
    row_tokens: int | None = None  # None: as long as the batch's longest example

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        capacity = max(self.row_tokens or 0, max(len(f["input_ids"]) for f in features))
        rows: list[list[dict[str, Any]]] = []
        room: list[int] = []
        for feature in sorted(features, key=lambda f: -len(f["input_ids"])):
            n = len(feature["input_ids"])
            slot = next((i for i, free in enumerate(room) if free >= n), None)
            if slot is None:
                rows.append([])
                room.append(capacity)
                slot = len(rows) - 1
            rows[slot].append(feature)
            room[slot] -= n
        width = max(capacity - free for free in room)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, row in enumerate(rows):
            offset = 0
            for feature in row:
                n = len(feature["input_ids"])
                input_ids[r, offset : offset + n] = torch.tensor(feature["input_ids"])
                labels[r, offset : offset + n] = torch.tensor(feature["labels"])
                positions[r, offset : offset + n] = torch.arange(n)
                offset += n
            positions[r, offset:] = torch.arange(width - offset)  # padding: a block of its own
        # Position p predicts token p+1; keep the positions whose next token is supervised.
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        predicts[:, :-1] &= positions[:, 1:] != 0  # never across an example boundary
        kept = predicts.any(0).nonzero().flatten().tolist() + [width - 1]
        targets = torch.full((len(rows), len(kept)), IGNORE_INDEX, dtype=torch.long)
        index = torch.tensor(kept[:-1], dtype=torch.long)
        targets[:, 1:] = torch.where(predicts[:, index], labels[:, index + 1], IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "position_ids": positions,
            "labels": targets,
            "logits_to_keep": torch.tensor(kept),
            # transformers only derives the per-example mask from position ids when there is no
            # KV cache; a cache is created by default whenever `use_cache` is on.
            "use_cache": False,
        }


def supervised_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Next-token cross-entropy over the kept logits, only at supervised positions.

    `labels` are aligned with the kept logits (the collator cuts both to the same last positions).
    With gradient accumulation the Trainer passes the supervised-token count of the whole
    accumulated batch, so every token weighs the same whatever batch it fell in.
    """
    logits = outputs.logits[:, :-1, :]
    target = labels[:, 1:].to(logits.device)
    mask = target != IGNORE_INDEX
    loss = F.cross_entropy(logits[mask].float(), target[mask], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
    return loss / denominator
