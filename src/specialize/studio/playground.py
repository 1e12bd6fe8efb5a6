"""The Playground's model: one run loaded in-process at a time, answering with the fine-tuned
adapter or with the base model (the same weights with the adapter switched off), free or under
the run's output contract, with its token counts and latency."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PlaygroundReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    constrained: bool


class Playground:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._trained: Any = None

    def _load(self, path: Path) -> Any:
        if self._path != path:
            from specialize.inference import load_run

            self._trained, self._path = load_run(path), path
        return self._trained

    def reply(
        self, run: Path, text: str, *, use_base: bool, free: bool, max_new_tokens: int = 64
    ) -> PlaygroundReply:
        from specialize.inference import generate

        with self._lock:  # one generation at a time: the model is shared and CPU-bound
            trained = self._load(run)
            contract = None if free else trained.default_contract().contract
            model = trained.loaded.model
            off = (
                model.disable_adapter()
                if use_base and hasattr(model, "disable_adapter")
                else contextlib.nullcontext()
            )
            began = time.perf_counter()
            with off:
                (out,) = generate(
                    trained.loaded,
                    [trained.messages_for(text)],
                    max_new_tokens=max_new_tokens,
                    constraint=contract,
                )
            latency = (time.perf_counter() - began) * 1000
        return PlaygroundReply(
            text=out.text,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            latency_ms=latency,
            model="base" if use_base else "fine-tuned",
            constrained=contract is not None and contract.kind != "none",
        )
