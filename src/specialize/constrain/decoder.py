"""Enforce an output contract while decoding: a token mask per sequence, from llguidance.

`compile_constraint(contract, tokenizer, eos_token_ids)` compiles a contract for one tokenizer once
(the tokenizer's own table, which takes a noticeable fraction of a second for a large vocabulary, is built once per tokenizer and kept
while the tokenizer lives; compiled contracts are kept too, the most recent 64 per tokenizer).
`Constraint.start()` gives each sequence a `ConstraintState`; `mask_logits(states, logits)` sets
every token a row's state does not allow to -inf, and `state.advance(token)` moves the state on.

When the reply is complete (a whole label, a whole JSON value) the end-of-turn tokens become
allowed, and once nothing can follow they are the only tokens allowed, so greedy decoding stops
right there. Token ids past the tokenizer's vocabulary (padded embedding rows) are never allowed.
Where JSON allows whitespace, a reply may hold one or two spaces or one line break and an indent of
up to 16 (`JSON_WHITESPACE`), so a model cannot loop on blanks; strings, numbers and arrays can still
run on, up to `max_new_tokens` (the caller sees an incomplete reply: `state.accepting` is False).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from specialize.constrain.contract import OutputContract, contract_grammar
from specialize.errors import ConstraintError

MAX_CACHED_PER_TOKENIZER = 64

_lock = threading.Lock()
_ll_tokenizers: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
_compiled: weakref.WeakKeyDictionary[Any, OrderedDict[tuple, Constraint]] = weakref.WeakKeyDictionary()
_executor: Any = None
_BIAS = np.array([-np.inf, 0.0], dtype=np.float32)  # indexed by the allowed bit


class Constraint:
    """A contract compiled for one tokenizer; reusable across requests and threads."""

    def __init__(self, contract: OutputContract, ll_tokenizer: Any, eos_token_ids: tuple[int, ...]):
        from llguidance import LLMatcher

        grammar = contract_grammar(contract)
        if grammar is None:
            raise ConstraintError("an output contract of kind 'none' has nothing to enforce")
        template = LLMatcher(ll_tokenizer, grammar, log_level=0)
        if template.is_error():
            raise ConstraintError(f"the output contract cannot be enforced: {template.get_error().strip()}")
        self.contract = contract
        self.eos_token_ids = eos_token_ids
        self.vocab_size: int = ll_tokenizer.vocab_size
        self._template = template
        self._lock = threading.Lock()
        # Computing the first mask once warms the lexer caches that every copy then shares.
        template.compute_bitmask()

    def start(self) -> ConstraintState:
        """A fresh state for one sequence, before its first generated token."""
        with self._lock:
            return ConstraintState(self, self._template.deep_copy())

    def accepts(self, token_ids: Sequence[int]) -> bool:
        """Whether these tokens spell a complete reply under the contract: how a reply decoded
        without the constraint is scored. The grammar works on bytes, so any tokenization of a
        valid text is accepted."""
        state = self.start()
        return all(state.advance(token) for token in token_ids) and state.accepting

    def __repr__(self) -> str:
        return (
            f"Constraint({self.contract.kind}, vocab_size={self.vocab_size}, eos={list(self.eos_token_ids)})"
        )


class ConstraintState:
    """Where one sequence is in its constraint. Not thread-safe: one state per sequence."""

    __slots__ = ("constraint", "_matcher")

    def __init__(self, constraint: Constraint, matcher: Any):
        self.constraint = constraint
        self._matcher = matcher

    def advance(self, token_id: int) -> bool:
        """Consume a generated token (an end-of-turn token included). A token the constraint does not
        allow returns False and leaves the state in error: it then allows only end-of-turn."""
        return bool(self._matcher.consume_token(int(token_id)))

    @property
    def accepting(self) -> bool:
        """The text so far is a complete reply (a whole label, a whole JSON value)."""
        return self._matcher.is_accepting() and not self._matcher.is_error()

    @property
    def finished(self) -> bool:
        """The reply is complete and nothing may follow: the only valid next token is end-of-turn
        (or end-of-turn was already consumed)."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() or None

    def allowed_token_ids(self) -> list[int]:
        """The token ids allowed next (for tests and debugging; `mask_logits` is the fast path)."""
        bits = np.unpackbits(
            np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8),
            bitorder="little",
            count=self.constraint.vocab_size,
        )
        return np.flatnonzero(bits).tolist()


def compile_constraint(
    contract: OutputContract | None, tokenizer: Any, eos_token_ids: Sequence[int]
) -> Constraint | None:
    """The contract compiled for `tokenizer` (a Hugging Face fast tokenizer), with `eos_token_ids`
    the end-of-turn tokens that may close a complete reply. None for no contract or kind "none".

    Cached per tokenizer object (weakly: dropped with the tokenizer) and per contract."""
    if contract is None or contract.kind == "none":
        return None
    eos = tuple(sorted({int(i) for i in eos_token_ids}))
    if not eos:
        raise ConstraintError("constrained decoding needs at least one end-of-turn token id")
    # Property order matters to the grammar, so the key keeps the schema's key order.
    key = (eos, contract.kind, contract.labels, json.dumps(contract.schema, ensure_ascii=False))
    with _lock:
        per_tokenizer = _compiled.setdefault(tokenizer, OrderedDict())
        constraint = per_tokenizer.get(key)
        if constraint is not None:
            per_tokenizer.move_to_end(key)
            return constraint
        constraint = Constraint(contract, _ll_tokenizer(tokenizer, eos), eos)
        per_tokenizer[key] = constraint
        while len(per_tokenizer) > MAX_CACHED_PER_TOKENIZER:
            per_tokenizer.popitem(last=False)
        return constraint


def _ll_tokenizer(tokenizer: Any, eos: tuple[int, ...]) -> Any:
    """llguidance's view of the tokenizer (its token bytes and trie); built once per tokenizer."""
    per_tokenizer = _ll_tokenizers.setdefault(tokenizer, {})
    if eos not in per_tokenizer:
        import llguidance.hf

        try:
            per_tokenizer[eos] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos))
        except ValueError as exc:  # e.g. a slow (Python) tokenizer
            raise ConstraintError(f"constrained decoding cannot use this tokenizer: {exc}") from None
    return per_tokenizer[eos]


def token_bytes(tokenizer: Any, eos: Sequence[int], token_ids: Sequence[int]) -> list[bytes]:
    """Each token's own bytes (a byte-level token may hold half a UTF-8 character), from the same
    table the constraints use; a special token is its name, as the tokenizer spells it."""
    ll = _ll_tokenizer(tokenizer, tuple(sorted(eos)))
    out = []
    for token in token_ids:
        if ll.is_special_token(token):
            out.append(str(tokenizer.convert_ids_to_tokens(int(token))).encode("utf-8"))
        else:
            out.append(ll.decode_bytes([int(token)]))
    return out


def mask_logits(states: Sequence[ConstraintState | None], logits: Any) -> Any:
    """Set the logits of tokens each row's state does not allow to -inf, in place; rows whose state
    is None are left free. `logits` is a [batch, vocab] tensor, possibly wider than the tokenizer's
    vocabulary (those extra ids are disallowed). Returns `logits`."""
    import torch

    if len(states) != logits.shape[0]:
        raise ValueError(f"{len(states)} states for {logits.shape[0]} rows of logits")
    rows = [(row, state) for row, state in enumerate(states) if state is not None]
    if not rows:
        return logits
    vocab = rows[0][1].constraint.vocab_size
    if any(state.constraint.vocab_size != vocab for _, state in rows):
        raise ValueError("states compiled for tokenizers of different vocabulary sizes cannot share a batch")
    bitmask = np.zeros((len(rows), (vocab + 31) // 32), dtype=np.int32)
    _fill_bitmask([state._matcher for _, state in rows], bitmask)
    width = min(vocab, logits.shape[1])
    allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, count=width, bitorder="little")
    # Adding 0 / -inf is much faster than masked_fill on CPU and leaves allowed logits unchanged.
    bias = torch.from_numpy(np.take(_BIAS, allowed)).to(device=logits.device, dtype=logits.dtype)
    if len(rows) == logits.shape[0]:
        logits[:, :width] += bias
        logits[:, width:] = float("-inf")
    else:
        index = torch.tensor([row for row, _ in rows], device=logits.device)
        logits[index, :width] += bias
        logits[index, width:] = float("-inf")
    return logits


def _fill_bitmask(matchers: list[Any], bitmask: np.ndarray) -> None:
    from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

    if len(matchers) == 1:
        fill_next_token_bitmask(matchers[0], bitmask, 0)
        return
    global _executor
    with _lock:
        if _executor is None:
            from llguidance import LLExecutor

            _executor = LLExecutor()
    fill_next_token_bitmask_par(_executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
