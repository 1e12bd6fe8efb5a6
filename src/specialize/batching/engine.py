"""The scheduler: continuous batching of generation requests over one base model and many adapters.

One background thread owns the model. Every iteration of its loop:

1. runs control commands (adapter loads and unloads) between forward passes, never during one;
2. admits waiting requests while the batch has room: their prompts are prefilled together
   (left-padded, each row routed to its own adapter slot), their first token is sampled, and
   their KV cache is written into free slots of the running batch's cache (`kv_batch.SlotBatch`,
   preallocated: nothing of the running rows is copied when a request joins or leaves), each
   into a slot whose LoRA row buffers already hold its adapter where a free one does;
   The part of the prompts that recent requests shared (the chat template's system turn, say) is
   not prefilled again: its K/V comes from the per-adapter prefix cache (`prefix_cache.py`).
   A prompt with more than `prefill_chunk` tokens left past that cached part that arrives while
   rows are decoding is prefilled in chunks instead, one chunk per iteration between decode
   steps, so that a long prompt delays each running row by one chunk's forward pass at a time
   rather than by its whole prefill (a long prompt whose start is cached prefills its tail with
   the batch);
3. runs one decode step for the whole batch, samples each row with its own parameters, and
   frees the slots of the rows that finished (end of turn, a stop string, max_tokens, or
   cancellation).

A request may carry a compiled output constraint (`SamplingParams.constraint`): its row gets its
own `ConstraintState`, the logits of constrained rows are masked before sampling (greedy or not;
free rows are untouched, and the step is skipped when no row is constrained), and the row ends
with "stop" as soon as its reply is complete and nothing else may follow.

Left padding, the attention mask and explicit position ids make each row's computation the same
as if it ran alone, so a greedy request gets the same tokens whatever else shares its batch.
The queue of waiting requests is bounded: `submit` raises `QueueFull` instead of letting latency
grow without limit, and the HTTP layer turns that into a 503 the client can retry.

Why one file of this size: what is here is the loop and the per-row steps it runs in order
(admission, chunked prefill, prefill, decode, sampling, finishing), all sharing the engine
thread's state; the pieces with a concept of their own already live apart (the batch's KV
cache in `kv_batch.py`, the prefix cache in `prefix_cache.py`, a request's state in
`requests.py`, adapter slots in `adapters.py`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from specialize.batching.adapter_files import AdapterSource
from specialize.batching.adapters import ResidentAdapters
from specialize.batching.kv_batch import SlotBatch
from specialize.batching.prefix_cache import PrefixCache
from specialize.batching.requests import (
    Completion,
    EngineStopped,
    Event,
    QueueFull,
    RequestHandle,
    RunningRow,
    SamplingParams,
    TokenLogprob,
)
from specialize.batching.threads import release_thread_pool
from specialize.constrain.contract import OutputContract
from specialize.constrain.decoder import Constraint, compile_constraint, mask_logits
from specialize.errors import SpecializeError
from specialize.models.decode_attention import use_decode_attention
from specialize.models.label_scores import normalise, trie_log_probs

log = logging.getLogger(__name__)


class Engine:
    """Continuous batching over one model; requests may each use a different adapter."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        adapters: ResidentAdapters | None = None,
        max_batch: int = 16,
        max_queue: int = 64,
        eos_token_ids: Sequence[int] | None = None,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
    ):
        if max_batch < 1 or max_queue < 1 or prefill_chunk < 1:
            raise ValueError("max_batch, max_queue and prefill_chunk must be at least 1")
        self.model = model.eval()
        # Decode steps of unpadded batches (equally long rows, a single row) take transformers'
        # folded-heads sdpa route, not its slow enable_gqa one (models/decode_attention.py);
        # padded steps and prefills compute exactly what they did.
        use_decode_attention(model)
        # A private copy: the HTTP threads encode with the shared tokenizer while this thread decodes.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.adapters = adapters if adapters is not None else ResidentAdapters(model)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.eos_ids = frozenset(eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer))
        self._cv = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._batch = SlotBatch(max_batch)
        self.prefill_chunk = prefill_chunk
        self.prefixes = PrefixCache() if prefix_cache else None
        self._chunked: deque[_ChunkedPrefill] = deque()  # long prompts being prefilled in chunks
        self._accepting = True
        self._stopping = False
        self._drain = True
        self._paused = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.step_rows = 0
        self.generated_tokens = 0
        self.prefills = 0
        release_thread_pool()  # the thread that loaded the model holds an OpenMP pool: threads.py

    # Public API (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._check_cache_layout()
        release_thread_pool()
        self._thread = threading.Thread(target=self._run, name="specialize-engine", daemon=True)
        self._thread.start()

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with `drain`, finish every accepted request first."""
        with self._cv:
            self._accepting = False
            self._stopping = True
            self._drain = drain
            self._paused = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        adapter: AdapterSource | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> RequestHandle:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        handle = RequestHandle(prompt_ids, params, adapter, on_event)
        with self._cv:
            if not self._accepting:
                raise EngineStopped("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(handle)
            self._cv.notify_all()
        return handle

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: AdapterSource | None = None
    ) -> Completion:
        return self.submit(prompt_ids, params, adapter).wait()

    def compile(self, contract: OutputContract | None) -> Constraint | None:
        """An `OutputContract` compiled for this engine's tokenizer and end-of-turn tokens (cached),
        for `SamplingParams.constraint`; None for no contract. Raises ConstraintError. Any thread."""
        return compile_constraint(contract, self.tokenizer, sorted(self.eos_ids))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the engine thread between two forward passes (adapter loads, unloads)."""
        future: Future = Future()
        with self._cv:
            running = self._thread is not None and self._thread.is_alive()
            if running:
                self._commands.append((fn, future))
                self._cv.notify_all()
        if not running:
            _run_command(fn, future)
        return future

    def pause(self) -> None:
        """Hold the scheduler between steps (maintenance, tests); requests keep queueing."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._batch.count + len(self._chunked)

    def _running_rows(self) -> list[RunningRow]:
        """Every admitted row that has not finished: decoding, or still being prefilled in chunks."""
        return [self._batch.rows[i] for i in self._batch.occupied] + [c.row for c in self._chunked]

    # The loop (engine thread) ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    busy = bool(self._waiting or self._batch.count or self._chunked)
                    finished = self._stopping and (not busy or not self._drain)
                    if self._commands or finished or (busy and not self._paused):
                        break
                    self._cv.wait()
                commands = list(self._commands)
                self._commands.clear()
            for fn, future in commands:
                _run_command(fn, future)
            if finished:
                self._abandon(EngineStopped("the server stopped before this request ran"))
                return
            try:
                self._iterate()
            except Exception as exc:  # keep serving: fail the batch, not the server
                log.exception("decode step failed")
                self._fail_rows(self._running_rows(), exc)
                self._batch.clear()
                self._chunked.clear()

    def _iterate(self) -> None:
        """One turn of the loop: admit what fits, one chunk of a long prompt, one decode step."""
        self._admit()
        if self._chunked and not self._paused:
            self._prefill_chunk()
        if self._batch.count and not self._paused:
            self._decode()

    def _admit(self) -> None:
        room = self.max_batch - self._batch.count - len(self._chunked)
        with self._cv:
            if room <= 0 or self._paused or not self._waiting:
                return
            taken = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        rows: list[RunningRow] = []
        for n, handle in enumerate(taken):
            if handle.cancelled:
                handle.emit("done", _cancelled(handle))
                continue
            try:
                slot = self.adapters.acquire(handle.adapter) if handle.adapter is not None else 0
            except Exception as exc:
                log.warning("request %d: adapter failed to load: %s", handle.id, exc)
                handle.emit("error", exc)
                continue
            if slot is None:  # every slot pinned by running requests: keep FIFO order, retry later
                with self._cv:
                    self._waiting.extendleft(reversed(taken[n:]))
                break
            handle.admitted = time.perf_counter()
            rows.append(RunningRow(handle, slot))
        if self._batch.count or self._chunked:  # rows are decoding: long prompts wait their turn
            # Long counts what is left to compute: a prompt whose start the prefix cache already
            # holds (a long shared instruction) prefills only its own tail, with the batch.
            for row in [r for r in rows if self._uncached(r.handle.prompt_ids) > self.prefill_chunk]:
                rows.remove(row)
                self._chunked.append(_ChunkedPrefill(row))
        if rows:
            try:
                self._prefill(rows)
            except Exception as exc:
                log.exception("prefill failed")
                self._fail_rows(rows, exc)

    def _uncached(self, prompt: Sequence[int]) -> int:
        """The tokens of `prompt` a prefill would compute: those past the cached shared prefix."""
        return len(prompt) - (self.prefixes.known(prompt) if self.prefixes is not None else 0)

    @torch.inference_mode()
    def _prefill_chunk(self) -> None:
        """The next `prefill_chunk` tokens of the oldest chunked prompt, alone, into its own cache;
        after the last chunk its first token is sampled and it joins the running batch."""
        job = self._chunked[0]
        row, prompt, device = job.row, job.row.handle.prompt_ids, self.model.device
        if row.handle.cancelled:
            self._chunked.popleft()
            row.finish_reason = "cancelled"
            self._finish(row)
            return
        ids = prompt[job.done : job.done + self.prefill_chunk]
        try:
            self.adapters.route([row.slot])
            out = self.model(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones((1, job.done + len(ids)), dtype=torch.long, device=device),
                position_ids=torch.arange(job.done, job.done + len(ids), device=device).unsqueeze(0),
                cache=job.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except Exception as exc:
            log.exception("request %d: chunked prefill failed", row.handle.id)
            self._chunked.popleft()
            self._fail_rows([row], exc)
            return
        job.cache = out.cache
        job.done += len(ids)
        if job.done < len(prompt):
            return
        self._chunked.popleft()
        self.prefills += 1
        self._start(out.logits[:, -1, :], [row], job.cache, torch.ones((1, len(prompt)), dtype=torch.long))

    @torch.inference_mode()
    def _prefill(self, rows: list[RunningRow]) -> None:
        """Prefill new rows together: the prefix their prompts share comes from the prefix cache
        (computed once per adapter), the rest is laid out [prefix][padding][own suffix]."""
        prefix = self.prefixes.shared([r.handle.prompt_ids for r in rows]) if self.prefixes else []
        shared = len(prefix)
        suffixes = [r.handle.prompt_ids[shared:] for r in rows]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, suffix in enumerate(suffixes):
            ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[i, shared + width - len(suffix) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        device = self.model.device
        cache = None
        if shared and self.prefixes is not None:
            cache = self.prefixes.batch_cache([(r.key, r.slot) for r in rows], prefix, self._prefill_prefix)
        self.adapters.route([r.slot for r in rows], transient=True)  # the batch's row buffers stay
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.prefills += 1
        self._start(out.logits[:, -1, :], rows, out.cache, mask)

    def _prefill_prefix(self, slots: list[int], prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`prefix`'s K/V under each adapter slot, one row per slot, in one forward pass."""
        device = self.model.device
        self.adapters.route(slots, transient=True)
        out = self.model(
            input_ids=torch.tensor([prefix] * len(slots), device=device), use_cache=True, logits_to_keep=1
        )
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def _start(self, logits: torch.Tensor, rows: list[RunningRow], cache: Any, mask: torch.Tensor) -> None:
        """Prefilled rows: sample their first tokens, finish the ones already done, and put the
        others (with their rows of `cache` and `mask`) into free slots of the running batch."""
        device = logits.device
        tokens, logprobs = self._sample(logits, rows)
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if row.accept(token, self.tokenizer, self.eos_ids, logprobs[i]):
                self._finish(row)
            else:
                keep.append(i)
        self.generated_tokens += len(rows)
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            _select(cache, index)
            mask = mask.index_select(0, index)
        joining = [rows[i] for i in keep]
        self._batch.place(joining, cache, mask, slots=self._slots_for(joining))

    def _slots_for(self, rows: list[RunningRow]) -> list[int]:
        """The batch slots the joining rows take. Any free slot that keeps the forward pass as
        short as the lowest free ones would (a free slot below `live` runs as a pad row anyway)
        may be taken, and each row goes to one whose LoRA row buffers already hold its adapter
        where there is one: joining then copies no adapter weights (a copy costs every adapted
        layer a gather of the row's A and B). The other rows take the lowest slots left."""
        batch = self._batch
        bound = max(batch.live, max(batch.free_slots(len(rows))) + 1)
        candidates = [s for s in batch.free_slots(bound) if s < bound]
        holding: dict[int | None, list[int]] = {}
        for slot in candidates:
            holding.setdefault(self.adapters.held_slot(slot), []).append(slot)
        chosen = [holding[row.slot].pop(0) if holding.get(row.slot) else None for row in rows]
        taken = {c for c in chosen if c is not None}
        rest = iter([s for s in candidates if s not in taken])
        return [c if c is not None else next(rest) for c in chosen]

    @torch.inference_mode()
    def _decode(self) -> None:
        batch = self._batch
        slots: list[RunningRow | None] = batch.rows[: batch.live]
        device = self.model.device
        # A free slot below `live` runs a pad token at position 0 (see kv_batch: it must stay finite).
        ids = torch.tensor(
            [[r.pending if r else self.pad_id] for r in slots], dtype=torch.long, device=device
        )
        positions = torch.tensor([[r.position if r else 0] for r in slots], dtype=torch.long, device=device)
        mask = batch.step_mask()
        self.adapters.route([r.slot if r else None for r in slots])  # free rows: see LoraRouting.set
        out = self.model(
            input_ids=ids,
            attention_mask=mask.to(device),
            position_ids=positions,
            cache=batch.model_cache(),
            use_cache=True,
            logits_to_keep=1,
        )
        batch.advance()
        occupied = batch.occupied
        rows = [slots[i] for i in occupied]
        logits = out.logits[:, -1, :]
        if len(occupied) < len(slots):
            logits = logits[torch.tensor(occupied, device=logits.device)]
        self.steps += 1
        self.step_rows += len(rows)
        self.generated_tokens += len(rows)
        tokens, logprobs = self._sample(logits, rows)
        finished = []
        for i, (slot, row, token) in enumerate(zip(occupied, rows, tokens, strict=True)):
            row.position += 1
            if row.handle.cancelled:
                row.finish_reason = "cancelled"
                self._finish(row)
                finished.append(slot)
            elif row.accept(token, self.tokenizer, self.eos_ids, logprobs[i]):
                self._finish(row)
                finished.append(slot)
        if finished:
            batch.release(finished)

    def _sample(
        self, logits: torch.Tensor, rows: list[RunningRow]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Each row's next token, and its log-probability where the request asked for them."""
        logits = logits.float()
        wanted = [i for i, row in enumerate(rows) if row.handle.params.logprobs is not None]
        # The model's own distribution, before the constraint mask changes the logits in place.
        logp = torch.log_softmax(logits[wanted], dim=-1) if wanted else None
        states = [row.state for row in rows]
        if any(state is not None for state in states):
            mask_logits(states, logits)  # in place, constrained rows only
        chosen = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            params = row.handle.params
            if params.temperature > 0:
                chosen[i] = _sample_row(logits[i], params.temperature, params.top_p, row.generator)
        found: list[TokenLogprob | None] = [None] * len(rows)
        if logp is not None:
            for n, i in enumerate(wanted):
                found[i] = _token_logprob(logp[n], chosen[i], rows[i].handle.params.logprobs or 0)
        return chosen, found

    def _finish(self, row: RunningRow) -> None:
        if row.key is not None:
            self.adapters.release(row.key)
        handle = row.handle
        scored = handle.params.labels is not None and row.finish_reason != "cancelled"
        labels = self._label_probabilities(row) if scored else None
        now = time.perf_counter()
        handle.emit(
            "done",
            Completion(
                text=row.text,
                finish_reason=row.finish_reason or "stop",
                prompt_tokens=len(handle.prompt_ids),
                completion_tokens=len(row.tokens),
                token_ids=list(row.tokens),
                queued_seconds=(handle.admitted or now) - handle.submitted,
                first_token_seconds=(handle.first_token - handle.submitted) if handle.first_token else None,
                total_seconds=now - handle.submitted,
                logprobs=list(row.logprobs) if row.logprobs is not None else None,
                label_probabilities=labels,
            ),
        )

    def _label_probabilities(self, row: RunningRow) -> list[float] | None:
        """Every label of the request's trie scored as a whole reply after its prompt, with the
        row's adapter (still pinned): one forward pass, outside the running batch's cache."""
        trie = row.handle.params.labels
        assert trie is not None
        try:
            self.adapters.route([row.slot])
            scores = trie_log_probs(self.model, [row.handle.prompt_ids], trie, self.pad_id)
        except Exception:  # the reply stands without its distribution
            log.exception("request %d: scoring its labels failed", row.handle.id)
            return None
        return [float(p) for p in normalise(scores)[0]]

    def _fail_rows(self, rows: list[RunningRow], exc: BaseException) -> None:
        for row in rows:
            if row.key is not None:
                self.adapters.release(row.key)
            if not row.handle.done:
                row.handle.emit("error", exc)

    def _abandon(self, exc: BaseException) -> None:
        with self._cv:
            waiting = list(self._waiting)
            self._waiting.clear()
        for handle in waiting:
            handle.emit("error", exc)
        self._fail_rows(self._running_rows(), exc)
        self._batch.clear()
        self._chunked.clear()

    @torch.inference_mode()
    def _check_cache_layout(self) -> None:
        """Cache surgery (merge, select, trim) assumes plain growing per-layer K/V tensors."""
        from transformers.cache_utils import DynamicLayer

        self.adapters.route([0])
        ids = torch.tensor([[self.pad_id]], device=self.model.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        layers = getattr(out.cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            raise SpecializeError(
                f"{type(self.model).__name__} uses a KV cache without plain full-attention layers "
                "(sliding window or recurrent); the batching server does not support it yet"
            )


class _ChunkedPrefill:
    """A long prompt being prefilled a chunk at a time: its row, its own cache, tokens done."""

    __slots__ = ("row", "cache", "done")

    def __init__(self, row: RunningRow):
        self.row = row
        self.cache: Any = None
        self.done = 0


def _token_logprob(logp: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability and the `top` most likely tokens, most likely first."""
    best = torch.topk(logp, top) if top > 0 else None
    pairs = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return TokenLogprob(token, float(logp[token]), pairs)


def _sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the most likely token always stays
        sorted_probs = sorted_probs * keep
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def _cancelled(handle: RequestHandle) -> Completion:
    waited = time.perf_counter() - handle.submitted
    return Completion("", "cancelled", len(handle.prompt_ids), 0, [], waited, None, waited)


def _run_command(fn: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}


def _select(cache: Any, index: torch.Tensor) -> None:
    """Keep the prefilled rows at `index` (the others finished on their first token)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
