"""Resident adapters: many LoRA adapters applied to one batch in one forward pass.

PEFT's mixed-adapter batches (`adapter_names=`) loop over the distinct adapters of a batch in
every LoRA layer, so a decode step with 16 different adapters costs 16 small matmuls per layer
plus Python overhead, so a step costs more the more distinct adapters it holds. Here every
target `nn.Linear` is wrapped once by `BatchedLoraLinear`, which keeps the resident adapters
stacked in slots, `A: [slots, r, in]` and `B: [slots, r, out]` (B pre-multiplied by the LoRA
scaling), and computes each row's update with two batched matmuls over its gathered slot:

    y = x W^T + bmm(bmm(x, A[slot]^T), B[slot])

That is the same formula as PEFT's LoRA forward (`lora_B(lora_A(x)) * scaling`), for any mix of
adapters, in a fixed number of ops. Slot 0 is all zeros: the base model. Adapters of a smaller
rank are zero-padded, which adds exact zeros. The adapter files are the PEFT files from the
registry (safetensors only), so the same directories serve unchanged on vLLM. The scaling is
the one PEFT uses: alpha/r, or alpha/sqrt(r) for rsLoRA (`use_rslora` in adapter_config.json).

Over a bf16 (or fp16) base the slots are float32 and so is the update, which is added to the base
output with one rounding: that is PEFT's own arithmetic (it keeps adapter weights in float32,
`autocast_adapter_dtype`, casts x up, and adds in float32), so the adapter served is the adapter
the evaluation measured (a PeftModel), not a bf16 rounding of its float32 weights. It costs twice
the slot memory; in speed the float32 batched matmuls held their own against the bf16 ones on a
CPU with native bf16 (`benchmarks/lora_precision.py`).

DoRA adapters (`use_dora`) add a trained magnitude per output feature. PEFT's DoRA forward
(peft/tuners/lora/dora.py) is, with W the frozen weight, m the magnitude, and s the scaling,

    g = m / ||W + s B A||_row        (the norm is treated as a constant, so it is computed once)
    y = x W^T + b + (g - 1) (x W^T) + g s (x A^T B^T)

It is re-implemented here rather than called because PEFT's version serves one adapter per
layer call; with g stacked per slot (1 for plain LoRA slots, which turns the formula back into
plain LoRA) a batch mixing DoRA and LoRA rows still costs the same batched matmuls.

`ResidentAdapters` is the LRU over slots: an adapter is read from its directory on first use,
pinned while a request uses it, and the least recently used unpinned one is evicted when slots
run out. All mutation happens on the engine thread, between forward passes. Reading and checking
an adapter's files (`adapter_files.read_adapter`) happens before any slot is touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from specialize.batching.adapter_files import (
    AdapterSource,
    lora_dtype,
    read_adapter,
)

log = logging.getLogger(__name__)


class LoraRouting:
    """Which slot each row of the next forward pass uses; set by the engine before every call.

    `uniform` is set when every row uses the same slot (one plain matmul pair, no gather).
    `version` changes whenever the row-to-slot map or a slot's weights change.

    Mixed batches read each row's A and B from per-layer row buffers (`held`: the slot each
    buffer row holds). Gathering all of them again whenever the batch changes would copy every
    row's adapter weights (64 rank-16 adapters on all linear layers of a 135M model are several
    hundred MB) at nearly every decode step, since with continuous batching a row joins or
    leaves at most steps; so `set` only records the rows whose slot changed (`changed_rows`,
    `changed_slots`, one `epoch` per mixed call) and each layer copies just those. A layer that
    missed an epoch (new, resized) gathers every held row again. A copy is still one gather of
    the row's A and B in every adapted layer, so the engine also spares them where it can: free
    rows keep what they hold (`None` in `set`), and a joining request goes to a free row that
    holds its adapter (`held_slot`).

    A `transient` call (the engine's prefill of a few new rows) gathers its rows' weights for
    that pass only and leaves the buffers alone: written into the first rows' buffers, they
    would be copied back at the next decode step.
    """

    __slots__ = (
        "rows",
        "uniform",
        "version",
        "_last",
        "held",
        "epoch",
        "changed_rows",
        "changed_slots",
        "transient",
    )

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        self.uniform: int | None = 0
        self.version = 0
        self._last: list[int] = []
        self.held: list[int] = []
        self.epoch = 0
        self.changed_rows = torch.zeros(0, dtype=torch.long)
        self.changed_slots = torch.zeros(0, dtype=torch.long)
        self.transient = False

    def set(self, slots: Sequence[int | None], *, transient: bool = False) -> None:
        """Route the next pass's rows; None marks a row whose output is thrown away (a free slot
        of the running batch), which takes whatever its buffers hold: a free row neither turns a
        one-adapter batch into a mixed one nor costs a copy, now or when its next occupant brings
        back the adapter it held."""
        if slots == self._last and transient == self.transient:
            return
        self._last = list(slots)
        self.version += 1
        self.transient = transient
        present = [s for s in slots if s is not None]
        if not present or all(s == present[0] for s in present):
            self.uniform, self.rows = (present[0] if present else 0), None
            return
        held = self.held
        if not transient and len(held) < len(slots):
            # grow by doubling: a filling batch regathers only log2 times
            held.extend([0] * (max(len(slots), 2 * len(held)) - len(held)))
            self.epoch += 1  # layers' buffers are too short: every layer gathers again
        filled = [s if s is not None else (held[i] if i < len(held) else 0) for i, s in enumerate(slots)]
        self.uniform, self.rows = None, torch.tensor(filled, dtype=torch.long)
        if transient:
            return
        slots = filled
        changed = [i for i, slot in enumerate(slots) if held[i] != slot]
        for i in changed:
            held[i] = slots[i]
        self.changed_rows = torch.tensor(changed, dtype=torch.long)
        self.changed_slots = torch.tensor([slots[i] for i in changed], dtype=torch.long)
        self.epoch += 1

    @property
    def slots(self) -> list[int | None]:
        """Each row's slot in the current batch (None: a row whose output is not used)."""
        return self._last

    def held_slot(self, row: int) -> int | None:
        """The slot whose weights row `row`'s buffers hold, None if it has none yet."""
        return self.held[row] if row < len(self.held) else None

    def invalidate(self) -> None:
        """A slot's weights changed: every layer's row buffers are stale."""
        self._last = []
        self.version += 1
        self.epoch += 1


class BatchedLoraLinear(nn.Module):
    """A frozen linear layer plus per-row LoRA updates from stacked adapter slots."""

    def __init__(self, base: nn.Linear, routing: LoraRouting, slots: int, rank: int):
        super().__init__()
        self.base = base
        self.routing = routing
        weight = base.weight
        # Plain attributes, not buffers: they are serving state, not part of the model's state_dict.
        # A as PEFT stores it, [slots, r, in]: x A^T then reads each rank's weights as one
        # contiguous row, which the batched matmul streams faster than [slots, in, r].
        dtype = lora_dtype(weight.dtype)
        self.lora_a = torch.zeros(slots, rank, base.in_features, dtype=dtype, device=weight.device)
        self.lora_b = torch.zeros(slots, rank, base.out_features, dtype=dtype, device=weight.device)
        # DoRA's per-slot output scale g [slots, out] (1 in plain slots); allocated on the first
        # DoRA adapter, so a server without one pays nothing for it.
        self.dora_scale: torch.Tensor | None = None
        self.dora_slots: set[int] = set()
        # Row buffers of the mixed-batch path (see LoraRouting): (epoch, A rows, B rows), and
        # DoRA's gathered g for one routing version.
        self._rows_ab: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._rows_g: tuple[int, torch.Tensor | None] | None = None

    def resize(self, slots: int, rank: int) -> None:
        old_slots, old_rank, _ = self.lora_a.shape
        if slots == old_slots and rank == old_rank:
            return
        a = self.lora_a.new_zeros(slots, rank, self.base.in_features)
        b = self.lora_b.new_zeros(slots, rank, self.base.out_features)
        keep_s, keep_r = min(slots, old_slots), min(rank, old_rank)
        a[:keep_s, :keep_r, :] = self.lora_a[:keep_s, :keep_r, :]
        b[:keep_s, :keep_r, :] = self.lora_b[:keep_s, :keep_r, :]
        self.lora_a, self.lora_b = a, b
        if self.dora_scale is not None:
            g = self.dora_scale.new_ones(slots, self.base.out_features)
            g[:keep_s] = self.dora_scale[:keep_s]
            self.dora_scale = g
        self._rows_ab = self._rows_g = None

    def set_slot(
        self,
        slot: int,
        a_t: torch.Tensor | None,
        b_t: torch.Tensor | None,
        dora_scale: torch.Tensor | None = None,
    ) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if a_t is not None and b_t is not None:
            r = a_t.shape[1]
            self.lora_a[slot, :r, :] = a_t.T
            self.lora_b[slot, :r, :] = b_t
        if dora_scale is not None:
            if self.dora_scale is None:
                self.dora_scale = self.lora_b.new_ones(self.lora_b.shape[0], self.base.out_features)
            self.dora_scale[slot] = dora_scale
            self.dora_slots.add(slot)
        elif slot in self.dora_slots:
            self.dora_scale[slot] = 1  # type: ignore[index]
            self.dora_slots.discard(slot)
        self._rows_ab = self._rows_g = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        routing = self.routing
        if routing.uniform == 0:
            return y
        # The update in the slots' dtype, added to y in place with one rounding (PEFT's arithmetic).
        x = x.to(self.lora_a.dtype)
        if routing.uniform is not None:
            s = routing.uniform
            flat = y.view(-1, y.shape[-1])
            lora = (x.reshape(-1, x.shape[-1]) @ self.lora_a[s].T) @ self.lora_b[s]
            if s in self.dora_slots:
                self._add_dora(flat, lora, self.dora_scale[s])  # type: ignore[index]
            else:
                flat.add_(lora)
            return y
        # Each row's A and B from the row buffers, brought up to date with only the rows whose
        # slot changed: two batched matmuls per layer however many adapters the batch mixes.
        a, b = self._row_weights(len(routing.slots))
        rows3 = y.view(y.shape[0], -1, y.shape[-1])
        lora = torch.bmm(torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), a.mT), b)
        g = self._row_dora_scale()
        if g is not None:
            self._add_dora(rows3, lora, g)
        else:
            rows3.add_(lora)
        return y

    def _row_weights(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        routing, buffers = self.routing, self._rows_ab
        if routing.transient:
            return self.lora_a[routing.rows], self.lora_b[routing.rows]
        if buffers is None or buffers[0] < routing.epoch - 1:
            held = torch.tensor(routing.held, dtype=torch.long)
            buffers = (routing.epoch, self.lora_a[held], self.lora_b[held])
        elif buffers[0] == routing.epoch - 1:
            _, a, b = buffers
            if len(routing.changed_rows):
                a.index_copy_(0, routing.changed_rows, self.lora_a[routing.changed_slots])
                b.index_copy_(0, routing.changed_rows, self.lora_b[routing.changed_slots])
            buffers = (routing.epoch, a, b)
        self._rows_ab = buffers
        return buffers[1][:rows], buffers[2][:rows]

    def _row_dora_scale(self) -> torch.Tensor | None:
        """DoRA's g per row ([rows, 1, out]), or None when no row of the batch is a DoRA slot;
        small, so simply gathered once per routing version."""
        routing, cached = self.routing, self._rows_g
        if cached is None or cached[0] != routing.version:
            g = None
            if self.dora_slots and not self.dora_slots.isdisjoint(routing.slots):
                g = self.dora_scale[routing.rows].unsqueeze(1)  # type: ignore[index]
            cached = (routing.version, g)
            self._rows_g = cached
        return cached[1]

    def _add_dora(self, y: torch.Tensor, lora: torch.Tensor, g: torch.Tensor) -> None:
        """y += (g - 1) (y - bias) + g lora: PEFT's DoRA update on top of the base output (see the
        module docstring); `lora` already carries the scaling. g = 1 adds plain LoRA."""
        bias = self.base.bias
        base = y if bias is None else y - bias
        y.add_(base * (g - 1) + lora * g)


@dataclass
class _Resident:
    record: AdapterSource
    slot: int
    pins: int = 0
    doomed: bool = False  # unload requested while pinned: evict when the last request ends


class ResidentAdapters:
    """An LRU of adapters installed in slots of the model's batched LoRA layers."""

    def __init__(self, model: nn.Module, *, capacity: int = 32, max_rank: int = 64):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.model = model
        self.capacity = capacity
        self.max_rank = max_rank
        self.routing = LoraRouting()
        self.layers: dict[str, BatchedLoraLinear] = {}
        self._alloc_slots, self._alloc_rank = 1, 1  # storage grows on demand; slot 0 is the base
        self._entries: OrderedDict[str, _Resident] = OrderedDict()
        self._free = list(range(capacity, 0, -1))
        self._lock = threading.Lock()  # guards reads from other threads (names, stats)
        self.loads = 0
        self.evictions = 0
        self.load_seconds = 0.0

    # Engine thread only ---------------------------------------------------------------------

    def acquire(self, record: AdapterSource) -> int | None:
        """The slot holding `record`, loading it on first use; pinned until `release`.
        None when every slot is pinned by running requests (the caller retries later)."""
        entry = self._entries.get(record.key)
        if entry is None:
            slot = self._take_slot()
            if slot is None:
                return None
            try:
                self._install(record, slot)
            except BaseException:
                self._free.append(slot)
                raise
            entry = _Resident(record, slot)
            with self._lock:
                self._entries[record.key] = entry
        with self._lock:
            self._entries.move_to_end(record.key)
            entry.pins += 1
        return entry.slot

    def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.pins -= 1
        if entry.pins <= 0 and entry.doomed:
            self._evict(key)

    def warm(self, record: AdapterSource) -> bool:
        """Load without running a request (POST /v1/adapters); False when no slot is free."""
        if self.acquire(record) is None:
            return False
        self._entries[record.key].doomed = False
        self.release(record.key)
        return True

    def unload(self, key: str) -> None:
        """Drop an adapter now, or when its last running request finishes."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.pins > 0:
            entry.doomed = True
        else:
            self._evict(key)

    def route(self, slots: Sequence[int | None], *, transient: bool = False) -> None:
        """The next forward pass's rows use these slots; `transient` for a pass whose rows are
        not the running batch's (see `LoraRouting`)."""
        self.routing.set(slots, transient=transient)

    def held_slot(self, row: int) -> int | None:
        """The adapter slot whose weights the mixed-batch row buffers of batch row `row` hold."""
        return self.routing.held_slot(row)

    def _take_slot(self) -> int | None:
        if not self._free:
            victim = next((k for k, e in self._entries.items() if e.pins == 0), None)
            if victim is None:
                return None
            self._evict(victim)
        return self._free.pop()

    def _evict(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key)
        self._free.append(entry.slot)
        self.evictions += 1
        log.info("evicted adapter %s from slot %d", key, entry.slot)

    def _install(self, record: AdapterSource, slot: int) -> None:
        began = time.perf_counter()
        weights = read_adapter(record.path, self.model, record.key, max_rank=self.max_rank)
        self._grow(slot + 1, weights.rank)
        for path in weights.modules:
            if path not in self.layers:
                self._wrap(path)
        with torch.no_grad():
            for path, layer in self.layers.items():
                a_t, b_t = weights.modules.get(path, (None, None))
                layer.set_slot(slot, a_t, b_t, weights.dora_scales.get(path))
        self.routing.invalidate()
        seconds = time.perf_counter() - began
        self.loads += 1
        self.load_seconds += seconds
        log.info("loaded adapter %s into slot %d in %.3f s", record.key, slot, seconds)

    def _grow(self, slots_needed: int, rank: int) -> None:
        slots = self._alloc_slots
        while slots < slots_needed:
            slots = min(self.capacity + 1, max(slots * 2, 2))
        rank = max(self._alloc_rank, rank)
        if (slots, rank) != (self._alloc_slots, self._alloc_rank):
            for layer in self.layers.values():
                layer.resize(slots, rank)
            self._alloc_slots, self._alloc_rank = slots, rank

    def _wrap(self, path: str) -> None:
        parent_path, _, child = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        base = getattr(parent, child)
        layer = BatchedLoraLinear(base, self.routing, self._alloc_slots, self._alloc_rank)
        setattr(parent, child, layer)
        self.layers[path] = layer

    # Any thread -----------------------------------------------------------------------------

    def slot_of(self, key: str) -> int | None:
        """The slot an adapter (by `AdapterSource.key`) is installed in, None if not resident."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.slot if entry is not None else None

    def resident_keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
