"""A generation request inside the engine: its parameters, its handle, and its running row.

`SamplingParams` is what a request asks for, `RequestHandle` what the caller holds (events, wait,
cancel), `RunningRow` the engine's state of a request while it decodes: its slot, its tokens,
its constraint state, and the text streamed so far (held back while it may still become a stop
string). Kept apart from the scheduler (`engine.py`) so that the loop reads as scheduling only.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specialize.batching.adapter_files import AdapterSource
from specialize.constrain.decoder import Constraint, ConstraintState
from specialize.errors import SpecializeError
from specialize.models.label_scores import LabelTrie

log = logging.getLogger(__name__)

# ("delta", str) | ("logprobs", list[TokenLogprob]) | ("done", Completion) | ("error", BaseException).
# A "logprobs" event (only when the request asked for them) comes right before the "delta" whose
# text those tokens produced; tokens whose text is still held back come with a later one.
Event = tuple[str, Any]
_ids = itertools.count(1)


class QueueFull(SpecializeError):
    """More requests are waiting than the server accepts; retry later."""


class EngineStopped(SpecializeError):
    """The server is shutting down and takes no new requests."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks), as vLLM's extension
    # Every token is chosen under this mask (one label, JSON under a schema); from `Engine.compile`.
    constraint: Constraint | None = None
    # Log-probabilities of each chosen token plus this many most likely alternatives (None: off).
    # They are the model's own, from the logits before any constraint mask, as vLLM reports them.
    logprobs: int | None = None
    # Score every label of this trie as a whole reply when the request finishes (the label
    # distribution of a reply under a label contract; `models.label_scores`).
    labels: LabelTrie | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the `top` most likely tokens at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(repr=False)
    queued_seconds: float
    first_token_seconds: float | None
    total_seconds: float
    # Per reply token (the end-of-turn token excluded), when the request asked for logprobs.
    logprobs: list[TokenLogprob] | None = None
    # P(label) for each label of `SamplingParams.labels`, normalised, in the trie's label order.
    label_probabilities: list[float] | None = None


class RequestHandle:
    """A submitted request. Events go to `on_event` from the engine thread; `wait()` blocks."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        adapter: AdapterSource | None,
        on_event: Callable[[Event], None] | None,
    ):
        self.id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.adapter = adapter
        self._on_event = on_event
        self.submitted = time.perf_counter()
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.cancelled = False
        self.result: Completion | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def cancel(self) -> None:
        """Stop generating (the client went away); the row is dropped at the next step."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish in {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def emit(self, kind: str, payload: Any) -> None:
        if kind == "done":
            self.result = payload
        elif kind == "error":
            self.error = payload
        if self._on_event is not None:
            try:
                self._on_event((kind, payload))
            except Exception:  # a broken consumer must not stop the engine
                log.exception("event callback of request %d failed", self.id)
        if kind in ("done", "error"):
            self._done.set()


class RunningRow:
    """One running request: its slot, position, generated tokens and the text sent so far."""

    def __init__(self, handle: RequestHandle, slot: int):
        self.handle = handle
        self.slot = slot
        self.key = handle.adapter.key if handle.adapter is not None else None
        self.position = len(handle.prompt_ids)
        self.pending = 0  # the last sampled token, fed at the next step
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if handle.params.logprobs is not None else None
        self.logprobs_sent = 0
        seed = handle.params.seed if handle.params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed) if handle.params.temperature > 0 else None
        constraint = handle.params.constraint
        self.state: ConstraintState | None = constraint.start() if constraint is not None else None

    def accept(
        self, token: int, tokenizer: Any, eos_ids: frozenset[int], logprob: TokenLogprob | None = None
    ) -> bool:
        """Record a sampled token, stream the new text, and say whether the request is done."""
        params = self.handle.params
        self.tokens.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        self.pending = token
        if self.handle.first_token is None:
            self.handle.first_token = time.perf_counter()
        reason = None
        text_tokens = self.tokens
        if token in eos_ids and not params.ignore_eos:
            reason, text_tokens = "stop", self.tokens[:-1]
            if self.logprobs:  # the end-of-turn is not part of the reply's content
                self.logprobs.pop()
        state = self.state
        if state is not None:
            if not state.advance(token):  # cannot happen under the mask; the state now allows only EOS
                log.warning(
                    "request %d: token %d broke its constraint: %s", self.handle.id, token, state.error
                )
            if state.finished:  # a whole label / JSON value, and only end-of-turn may follow
                reason = "stop"
            # Text exactly as the constraint matched it (no clean-up of spaces before punctuation).
            text = tokenizer.decode(text_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        else:
            text = tokenizer.decode(text_tokens, skip_special_tokens=True)
        if reason is None and params.stop:
            cut = first_stop(text, params.stop, start=max(0, self.emitted - max(map(len, params.stop))))
            if cut is not None:
                text, reason = text[:cut], "stop"
        if reason is None and len(self.tokens) >= params.max_tokens:
            reason = "length"
        self.text = text
        safe = len(text) if reason else len(text) - holdback(text, params.stop)
        if safe > self.emitted:
            if self.logprobs is not None and len(self.logprobs) > self.logprobs_sent:
                self.handle.emit("logprobs", self.logprobs[self.logprobs_sent :])
                self.logprobs_sent = len(self.logprobs)
            self.handle.emit("delta", text[self.emitted : safe])
            self.emitted = safe
        self.finish_reason = reason
        return reason is not None


def first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None


def holdback(text: str, stops: Sequence[str]) -> int:
    """Characters not to stream yet: a possible start of a stop string, or half a UTF-8 char."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold
