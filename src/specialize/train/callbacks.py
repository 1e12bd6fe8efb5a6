"""Trainer callbacks: the metrics log and progress reporting.

The library never prints; it hands `TrainProgress` events to whatever callable the caller gives
(the CLI draws a rich progress bar with them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


@dataclass
class TrainProgress:
    step: int
    max_steps: int
    epoch: float
    loss: float | None
    val_loss: float | None
    tokens_per_second: float | None
    done: bool = False


class MetricsLogCallback(TrainerCallback):
    """Append one JSON line per log event to metrics.jsonl, with throughput.

    On resume, lines logged after the checkpoint's step are dropped first, so the file describes
    exactly one history even when a run was killed between a checkpoint and its next log line.
    """

    def __init__(self, path: Path, *, resume_step: int = 0, is_main: bool = True):
        self.path = path
        self.is_main = is_main
        self._start = time.perf_counter()
        self._tokens_at_start = 0
        self.last_tokens_per_second: float | None = None
        if is_main:
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short by a kill
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._tokens_at_start = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not logs:
            return
        elapsed = time.perf_counter() - self._start
        tokens = (state.num_input_tokens_seen or 0) - self._tokens_at_start
        if elapsed > 0 and tokens > 0:
            self.last_tokens_per_second = tokens / elapsed
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": time.time()}
        record.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
        if self.last_tokens_per_second is not None:
            record["tokens_per_second"] = round(self.last_tokens_per_second, 2)
        if self.is_main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class ProgressCallback(TrainerCallback):
    def __init__(self, report: Callable[[TrainProgress], None], metrics: MetricsLogCallback):
        self.report = report
        self.metrics = metrics
        self.loss: float | None = None
        self.val_loss: float | None = None

    def _emit(self, state, done: bool = False) -> None:
        self.report(
            TrainProgress(
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                loss=self.loss,
                val_loss=self.val_loss,
                tokens_per_second=self.metrics.last_tokens_per_second,
                done=done,
            )
        )

    def on_step_end(self, args, state, control, **kwargs):
        self._emit(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
        if "eval_loss" in logs:
            self.val_loss = float(logs["eval_loss"])
        self._emit(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._emit(state, done=True)
