"""Batching of pre-tokenized examples for completion-only training.

Examples are tokenized once, up front (see `data.tokenize.encode`), so the collator only pads:
nothing slow runs per batch. Padding goes on the right for training; labels are padded with the
ignore index so that padding never enters the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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

    @property
    def lengths(self) -> list[int]:
        return [len(item["input_ids"]) for item in self.items]


@dataclass
class CompletionCollator:
    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
