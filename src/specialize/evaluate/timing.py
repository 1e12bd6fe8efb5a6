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

The evaluation decodes each contender's prompts freely and under the output contract. Both
batched passes would prefill the very same batches, so `timed_generations` prefills each batch
once and replays it for the second decoding (`models.replayed_prefill`: the same tokens as a pass
of its own), and charges the prefill to both: each pass's throughput is still what it costs alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specialize.constrain import OutputContract
from specialize.inference import Decoding, Generation, generate, generate_each, shared_prefix
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
    """One decoding (free, or under `contract`) timed: `timed_generations` with one entry."""
    (only,) = timed_generations(
        loaded,
        conversations,
        [Decoding(tuple(stop), contract)],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        latency_samples=latency_samples,
        on_batch=on_batch,
    )
    return only


def timed_generations(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    decodings: list[Decoding],
    *,
    max_new_tokens: int,
    batch_size: int,
    latency_samples: int,
    on_batch: Callable[[Any], None] | None = None,
) -> list[TimedGeneration]:
    """Each decoding of the same prompts timed as if it ran alone.

    The batched passes prefill every batch once for all decodings (`inference.generate_each`), and
    each is charged the whole prefill, the shared prefix's included, plus its own decoding. The
    batch-1 samples are real requests, one decoding at a time: a latency is never pieced together.
    """
    began = time.perf_counter()
    prefix = shared_prefix(loaded, conversations)
    prefix_seconds = time.perf_counter() - began
    passes = generate_each(
        loaded,
        conversations,
        decodings,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
        cached_prefix=prefix,
    )
    timed = [
        TimedGeneration(outputs=p.generations, batched_seconds=prefix_seconds + p.seconds) for p in passes
    ]
    for decoding, result in zip(decodings, timed, strict=True):
        for conversation in conversations[:latency_samples]:
            t0 = time.perf_counter()
            generate(
                loaded,
                [conversation],
                max_new_tokens=max_new_tokens,
                batch_size=1,
                stop=decoding.stop,
                constraint=decoding.constraint,
                cached_prefix=prefix,
            )
            result.latencies.append(time.perf_counter() - t0)
    return timed


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
