"""The fine-tuned model as a single-adapter deployment would run it: the adapter merged into the base.

An unmerged LoRA adds two small matrix products to every adapted layer of every decode step, so
the adapter's batch-1 latency in the main table is what a multi-adapter server pays per row, not
what a team that deploys one specialist pays: they merge it (`specialize export --format merged`)
and run a plain model. Judging "faster than the prompt" on the unmerged figure would penalise
fine-tuning for a cost nobody deploying one adapter has.

So the evaluation also merges the adapter into a copy of the base (PEFT's `merge_and_unload`, the
same operation the merged export uses) and times it the same way: a batched pass over a slice of
the test rows (throughput, and whether its greedy replies equal the unmerged adapter's, since the
merged weights round differently) and the batch-1 latency samples. Full fine-tunes have nothing
to merge, so they get no such record.

A team serving several specialists does not merge: `specialize serve` keeps the adapter apart and
batches requests in its engine (`specialize.batching`), with the LoRA matrices in the model's
dtype. `measure_served` runs that engine, on a fresh copy of the base, over the same rows: every
request at once (throughput at the engine's batch size), then one at a time (latency), and how
many greedy replies equal the evaluation's. So the report holds both deployments' figures, and
the serving figure is the server's own code, not an estimate.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import time
from typing import Any, TypeVar

from specialize.config import EvalConfig
from specialize.constrain import OutputContract
from specialize.errors import SpecializeError
from specialize.evaluate.cost import cost_per_1k_requests
from specialize.evaluate.timing import percentile, timed_generation
from specialize.inference import TrainedModel, end_of_turn_ids
from specialize.models.chat import prompt_ids
from specialize.models.load import LoadedModel, inference_dtype, load_model
from specialize.records.eval import Deployment, Latency, MergedDeployment, ServedDeployment, Throughput

log = logging.getLogger(__name__)

DeploymentT = TypeVar("DeploymentT", bound=Deployment)

# Rows of the batched pass: enough full batches to compare answers and measure throughput, without
# a second generation pass over a large test split.
COMPARE_ROWS = 64


def merged_copy(loaded: LoadedModel) -> LoadedModel | None:
    """A copy of `loaded` with its PEFT adapter merged into the weights; None if it has no adapter."""
    if not hasattr(loaded.model, "merge_and_unload"):
        return None
    merged = copy.deepcopy(loaded.model).merge_and_unload()
    merged.eval()
    return dataclasses.replace(loaded, model=merged)


def measure_merged(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    unmerged_replies: list[str],
    *,
    max_new_tokens: int,
    stop: list[str],
    eval_cfg: EvalConfig,
    contract: OutputContract | None = None,
) -> MergedDeployment | None:
    """Time the merged adapter on the contender's own prompts; compare its replies to the unmerged ones."""
    merged = merged_copy(loaded)
    if merged is None:
        return None
    try:
        rows = conversations[:COMPARE_ROWS]
        timed = timed_generation(
            merged,
            rows,
            max_new_tokens=max_new_tokens,
            batch_size=eval_cfg.batch_size,
            stop=stop,
            latency_samples=eval_cfg.latency_samples,
            contract=contract,
        )
    finally:
        # The copy is as large as the base; free it before the next contender loads anything.
        del merged
        gc.collect()
    return _deployment(
        MergedDeployment,
        [o.text.strip() for o in timed.outputs],
        unmerged_replies,
        latencies=timed.latencies,
        batched_seconds=timed.batched_seconds,
        prompt_tokens=[o.prompt_tokens for o in timed.outputs],
        completion_tokens=[o.completion_tokens for o in timed.outputs],
        eval_cfg=eval_cfg,
    )


def measure_served(
    trained: TrainedModel,
    conversations: list[list[dict[str, str]]],
    unmerged_replies: list[str],
    *,
    max_new_tokens: int,
    stop: list[str],
    eval_cfg: EvalConfig,
) -> ServedDeployment | None:
    """Time the run's adapter in the batching engine, as `specialize serve` runs it; compare its
    greedy replies to the evaluation's. None for a run without an adapter, or one the server
    cannot serve (the reason is logged: the evaluation itself does not depend on serving)."""
    from specialize.batching import AdapterDir, Engine, ResidentAdapters, SamplingParams

    weights = trained.run.weights_dir()
    if weights == trained.run.full_model:
        return None
    # A fresh base: the engine wraps the base's linear layers, which must not touch the PeftModel
    # the evaluation is still using.
    base = load_model(trained.config.model.base, dtype=inference_dtype(trained.config.model.dtype))
    rows = conversations[:COMPARE_ROWS]
    prompts = [prompt_ids(base.tokenizer, messages) for messages in rows]
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop))
    adapter = AdapterDir(key=f"eval:{weights}", path=weights)
    engine = Engine(
        base.model,
        base.tokenizer,
        adapters=ResidentAdapters(base.model, capacity=1),
        max_batch=eval_cfg.batch_size,
        max_queue=max(len(rows), 1),
        eos_token_ids=end_of_turn_ids(base),
    )
    engine.start()
    try:
        engine.generate(prompts[0], params, adapter)  # loads the adapter: not part of any timing
        began = time.perf_counter()
        handles = [engine.submit(p, params, adapter) for p in prompts]
        completions = [h.wait() for h in handles]
        batched = time.perf_counter() - began
        latencies = [
            engine.generate(p, params, adapter).total_seconds for p in prompts[: eval_cfg.latency_samples]
        ]
    except SpecializeError as exc:
        log.warning("the adapter was not timed in the serving engine: %s", exc)
        return None
    finally:
        engine.stop(drain=False)
        del engine, base
        gc.collect()
    generated = sum(c.completion_tokens for c in completions)
    return _deployment(
        ServedDeployment,
        [c.text.strip() for c in completions],
        unmerged_replies,
        latencies=latencies,
        batched_seconds=batched,
        prompt_tokens=[c.prompt_tokens for c in completions],
        completion_tokens=[c.completion_tokens for c in completions],
        eval_cfg=eval_cfg,
        tokens_per_s=generated / batched if batched else None,
    )


def _deployment(
    kind: type[DeploymentT],
    replies: list[str],
    unmerged_replies: list[str],
    *,
    latencies: list[float],
    batched_seconds: float,
    prompt_tokens: list[int],
    completion_tokens: list[int],
    eval_cfg: EvalConfig,
    **extra: Any,
) -> DeploymentT:
    """A `Deployment` record from one batched pass over the rows and the batch-1 samples:
    latency, throughput, cost, and how many replies equal the evaluation's (plus `extra` fields
    of the kind)."""
    rows = len(replies)
    return kind(
        latency=Latency(
            batch1_p50_s=percentile(latencies, 50),
            batch1_p95_s=percentile(latencies, 95),
            samples=len(latencies),
        ),
        throughput=Throughput(
            requests_per_s=rows / batched_seconds if batched_seconds else None,
            batch_size=eval_cfg.batch_size,
            seconds=batched_seconds,
        ),
        cost_per_1k=cost_per_1k_requests(
            eval_cfg.price,
            prompt_tokens=_mean(prompt_tokens),
            completion_tokens=_mean(completion_tokens),
            seconds_per_request=batched_seconds / rows if rows else 0.0,
        ),
        rows_compared=rows,
        replies_equal=sum(a == b for a, b in zip(replies, unmerged_replies, strict=False)),
        **extra,
    )


def _mean(values: list[Any]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
