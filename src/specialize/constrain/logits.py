"""A `transformers` logits processor that keeps every row of a `model.generate` batch in its contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import LogitsProcessor

from specialize.constrain.decoder import Constraint, ConstraintState, mask_logits


class ConstraintLogitsProcessor(LogitsProcessor):
    """One `ConstraintState` per row (None: the row is free). Rows may be left-padded: the processor
    only reads the tokens generated after the prompt. On its first call it notes the prompt width;
    on every later call it first advances each row's state by the tokens generated since. A row
    that has produced an end-of-turn token is not advanced further (generate pads it), and its
    finished state allows only end-of-turn. Call `sync(sequences)` on generate's output to consume
    the last generated token, which no processor call sees."""

    def __init__(self, states: Sequence[ConstraintState | None], eos_token_ids: Sequence[int]):
        self.states = list(states)
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self._prompt_width: int | None = None
        self._consumed = 0
        self._done = [False] * len(self.states)

    @classmethod
    def for_batch(cls, constraint: Constraint, batch_size: int) -> ConstraintLogitsProcessor:
        return cls([constraint.start() for _ in range(batch_size)], constraint.eos_token_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._prompt_width is None:
            self._prompt_width = input_ids.shape[1]
        else:
            self.sync(input_ids)
        return mask_logits(self.states, scores)

    def sync(self, sequences: Any) -> list[ConstraintState | None]:
        """Advance every row's state by the generated tokens of `sequences` it has not consumed yet."""
        if self._prompt_width is None:
            return self.states
        start = self._prompt_width + self._consumed
        new = sequences[:, start:].tolist()
        for row, tokens in enumerate(new):
            for token in tokens:
                if self._done[row]:
                    break
                state = self.states[row]
                if state is not None:
                    state.advance(token)
                if token in self.eos_token_ids:
                    self._done[row] = True
        self._consumed += sequences.shape[1] - start
        return self.states
