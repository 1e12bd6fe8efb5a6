"""How every generating contender is timed: one batched pass, then requests one by one.

The batched pass gives the replies that are scored and the throughput; the batch-1 samples give
latency as a single user sees it. The same function times the unmerged adapter, the baselines and
the merged deployment (`evaluate.deployment`), so their figures are comparable by construction.

A prompt baseline repeats one long instruction in every request. The batched pass runs the
prefix all prompts share through the model once (`inference.shared_prefix`); the batch-1 samples
reuse that same prefix cache, so a request's latency is its own tokens' prefill and its decode,
as a server with prefix caching (vLLM's, or `specialize serve`'s engine, which the served row
measures) answers it. Timing every sample with the whole instruction prefilled again would
charge the baselines for a cost no such deployment pays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specialize.constrain import OutputContract
from specialize.inference import Generation, generate, shared_prefix
from specialize.models.load import LoadedModel


@dataclass
class TimedGeneration:
    outputs: list[Generation]
    batched_seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds per request at batch size 1


def timed_generation(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop: list[str],
    latency_samples: int,
    contract: OutputContract | None = None,
    on_batch: Callable[[Any], None] | None = None,
) -> TimedGeneration:
    began = time.perf_counter()
    prefix = shared_prefix(loaded, conversations)
    outputs = generate(
        loaded,
        conversations,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=stop,
        on_batch=on_batch,
        constraint=contract,
        cached_prefix=prefix,
    )
    timed = TimedGeneration(outputs=outputs, batched_seconds=time.perf_counter() - began)
    for conversation in conversations[:latency_samples]:
        t0 = time.perf_counter()
        generate(
            loaded,
            [conversation],
            max_new_tokens=max_new_tokens,
            batch_size=1,
            stop=stop,
            constraint=contract,
            cached_prefix=prefix,
        )
        timed.latencies.append(time.perf_counter() - t0)
    return timed


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
