"""The running batch's KV cache, kept in place: requests join and leave without copying the batch.

transformers' `DynamicCache` grows by `torch.cat` at every forward pass, so each decode step
copies the whole cache of every row, and a continuous-batching engine built on it also copies it
whenever a request joins (concatenate along the batch) or leaves (select the remaining rows). At
64 rows of a few hundred tokens that traffic is as large as the model's own weights, every step.

`SlotBatch` holds, per layer, one preallocated buffer `[rows, kv_heads, columns, head_dim]` and a
window of columns `[start, end)` that the rows share (rows are left-padded to the window, with a
0/1 attention mask per row, as in the engine before). Rows are *slots*:

- a decode step writes one new column per layer in place (`WindowLayer.update`) and moves `end`;
- a request that joins is written into a free slot, right-aligned to `end` (its prefill ran on
  its own, so a long prompt costs one prefill, not a copy of the batch);
- a request that leaves frees its slot (its mask row is cleared); the forward pass covers slots
  `[0, live)`, the lowest slots are reused first, and the batch is compacted only when most
  slots below `live` are free;
- columns that no row attends to any more are dropped from the window's left end by moving
  `start`, and buffers are reallocated (doubling) only when the window reaches the right end.

The layers subclass transformers' `DynamicLayer`, so the model's attention and mask code use them
through the ordinary `Cache` interface: the cache's sequence length is the window's width, which
is what the 2-D attention mask and the explicit position ids the engine passes are built for.

A free slot inside `[0, live)` still goes through the forward pass (a pad token at position 0
that attends only to itself, so its values stay finite: a fully masked row could produce NaN,
and a NaN left in a buffer would poison the slot's next occupant even under a zero mask).

The buffers are made under `torch.inference_mode` (in the engine's forward passes), so every
method that writes them runs in that mode too: the engine also clears the batch outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Extra columns allocated past what is needed, so that decode steps rarely reallocate.
_GROW_COLUMNS = 64


class WindowLayer(DynamicLayer):
    """One decoder layer's K/V: a view of the batch's buffers, written in place."""

    def __init__(self, batch: SlotBatch, index: int):
        super().__init__()
        self.batch = batch
        self.index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the buffers belong to the batch and exist before the first forward pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch
        keys, values = batch.keys[self.index], batch.values[self.index]
        width = key_states.shape[-2]
        end = batch.end
        keys[: batch.live, :, end : end + width] = key_states
        values[: batch.live, :, end : end + width] = value_states
        self.keys = keys[: batch.live, :, batch.start : end + width]
        self.values = values[: batch.live, :, batch.start : end + width]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.batch.end - self.batch.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class SlotBatch:
    """The running rows (one per slot, None where free) and their KV cache, for one engine."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.rows: list[Any] = []  # per slot: the engine's row object, or None
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.start = 0
        self.end = 0
        self.live = 0  # slots [0, live) take part in the forward pass
        self.cache: Cache | None = None
        self.reallocations = 0

    # What the engine reads ---------------------------------------------------------------

    @property
    def occupied(self) -> list[int]:
        """The slots holding a row, in slot order."""
        return [i for i in range(self.live) if self.rows[i] is not None]

    @property
    def count(self) -> int:
        return sum(row is not None for row in self.rows[: self.live])

    @property
    def free(self) -> int:
        return self.max_rows - self.count

    @property
    def width(self) -> int:
        return self.end - self.start

    # Joining -------------------------------------------------------------------------------

    @torch.inference_mode()  # the buffers are inference tensors: mutate them in that mode
    def place(
        self, rows: Sequence[Any], cache: Any, mask: torch.Tensor, *, slots: Sequence[int] | None = None
    ) -> list[int]:
        """Put freshly prefilled rows (their own `DynamicCache` and 0/1 mask, left-padded to one
        width) into free slots, right-aligned to the window's end; returns their slots. `slots`
        (distinct, from `free_slots`) says which slot each row takes; by default the lowest free."""
        if len(rows) > self.free:
            raise ValueError(f"{len(rows)} rows do not fit in {self.free} free slots")
        if slots is not None and (
            len(set(slots)) != len(rows)
            or any(
                not 0 <= s < self.max_rows or (s < len(self.rows) and self.rows[s] is not None) for s in slots
            )
        ):
            raise ValueError(
                f"slots {list(slots)} are not {len(rows)} distinct free slots below {self.max_rows}"
            )
        layers = cache.layers
        width = mask.shape[1]
        if not self.keys:
            self._allocate(layers, rows=len(rows), columns=width + _GROW_COLUMNS)
        if self.count == 0:  # an empty batch starts a new, empty window just wide enough on its left
            self.start = self.end = min(width, self.mask.shape[1])
        slots = list(slots) if slots is not None else self.free_slots(len(rows))
        self.rows.extend([None] * (max(slots) + 1 - len(self.rows)))
        self._ensure(rows=max(slots) + 1, left=width, right=0)
        if self.end - width < self.start:
            self.start = self.end - width  # the new columns are zero in every other row's mask
        index = torch.tensor(slots, dtype=torch.long)
        low = self.end - width
        for n, layer in enumerate(layers):
            self.keys[n][index, :, low : self.end] = layer.keys
            self.values[n][index, :, low : self.end] = layer.values
        self.mask[index] = 0
        self.mask[index, low : self.end] = mask.to(self.mask.dtype)
        for slot, row in zip(slots, rows, strict=True):
            self.rows[slot] = row
        self.live = max(self.live, max(slots) + 1)
        return slots

    # Decoding ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step_mask(self) -> torch.Tensor:
        """Make room for one more column and return the forward pass's attention mask
        `[live, width + 1]`; every slot below `live` attends to its new column (see the module)."""
        self._ensure(rows=self.live, left=0, right=1)
        self.mask[: self.live, self.end] = 1
        return self.mask[: self.live, self.start : self.end + 1]

    @torch.inference_mode()
    def advance(self, columns: int = 1) -> None:
        """The forward pass wrote `columns` new columns: move the window's end over them."""
        self.end += columns
        for slot in range(self.live):  # free slots' own columns are never attended to again
            if self.rows[slot] is None:
                self.mask[slot, self.end - columns : self.end] = 0

    def model_cache(self) -> Cache:
        assert self.cache is not None
        return self.cache

    # Leaving ------------------------------------------------------------------------------

    @torch.inference_mode()
    def release(self, slots: Sequence[int]) -> None:
        """Free the slots of rows that finished; shrink `live`, drop dead columns, and compact
        when most of the forward pass would be free slots."""
        for slot in slots:
            self.rows[slot] = None
            self.mask[slot] = 0
        while self.live and self.rows[self.live - 1] is None:
            self.live -= 1
        if self.live == 0:
            self.start = self.end = 0
            return
        used = self.mask[: self.live, self.start : self.end].any(0)
        first = int(used.int().argmax()) if bool(used.any()) else self.width
        self.start += first
        if self.count * 2 <= self.live and self.live > 4:
            self._compact()

    @torch.inference_mode()
    def clear(self) -> None:
        for slot in range(len(self.rows)):
            self.rows[slot] = None
        self.mask.zero_()
        self.live = self.start = self.end = 0

    # Storage -------------------------------------------------------------------------------

    def free_slots(self, n: int) -> list[int]:
        """The `n` lowest free slots (new ones past the last if too few are free): where `place`
        puts `n` rows unless told otherwise."""
        slots = [i for i, row in enumerate(self.rows) if row is None][:n]
        return slots + list(range(len(self.rows), len(self.rows) + n - len(slots)))

    def _allocate(self, layers: Sequence[Any], *, rows: int, columns: int) -> None:
        rows = min(self.max_rows, max(rows, 1))
        self.keys = [
            torch.zeros(_shape(layer.keys, rows, columns), dtype=layer.keys.dtype) for layer in layers
        ]
        self.values = [
            torch.zeros(_shape(layer.values, rows, columns), dtype=layer.values.dtype) for layer in layers
        ]
        self.mask = torch.zeros((rows, columns), dtype=torch.long)
        self.cache = Cache(layers=[WindowLayer(self, n) for n in range(len(layers))])

    def _ensure(self, *, rows: int, left: int, right: int) -> None:
        """Buffers with at least `rows` slots, `left` columns before `end`, and `right` after it."""
        have_rows, have_columns = self.mask.shape
        if rows <= have_rows and self.end >= left and self.end + right <= have_columns:
            return
        # Reallocate: keep the window, put it where `left` fits, and add room on the right.
        new_rows = max(rows, have_rows)
        if rows > have_rows:
            new_rows = min(self.max_rows, max(rows, 2 * have_rows))
        offset = max(left - self.width, 0)  # columns before the window's start in the new buffers
        columns = max(offset + self.width + right + _GROW_COLUMNS, have_columns, 2 * self.width)
        if right and self.end + right > have_columns:
            columns = max(columns, 2 * have_columns)
        width, start, end = self.width, self.start, self.end
        new_start = offset

        def moved(old: torch.Tensor) -> torch.Tensor:
            new = old.new_zeros((new_rows, old.shape[1], columns, old.shape[3]))
            new[: old.shape[0], :, new_start : new_start + width] = old[:, :, start:end]
            return new

        self.keys = [moved(k) for k in self.keys]
        self.values = [moved(v) for v in self.values]
        mask = self.mask.new_zeros((new_rows, columns))
        mask[:have_rows, new_start : new_start + width] = self.mask[:, start:end]
        self.mask = mask
        self.start, self.end = new_start, new_start + width
        self.reallocations += 1

    def _compact(self) -> None:
        """Move the occupied slots to the lowest ones, so the forward pass covers only them."""
        occupied = self.occupied
        index = torch.tensor(occupied, dtype=torch.long)
        n, start, end = len(occupied), self.start, self.end
        for buffer in (*self.keys, *self.values):  # the window only: other columns are dead
            buffer[:n, :, start:end] = buffer[index, :, start:end]
        self.mask[:n] = self.mask[index]
        self.mask[n:] = 0
        rows = [self.rows[i] for i in occupied]
        self.rows = rows + [None] * (len(self.rows) - n)
        self.live = n


def _shape(like: torch.Tensor, rows: int, columns: int) -> tuple[int, int, int, int]:
    return (rows, like.shape[1], columns, like.shape[3])
