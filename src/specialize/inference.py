"""Load a trained run for inference and generate replies in batches.

Shared by `specialize generate`/`chat` and by evaluation, so the fine-tuned model is always
prompted exactly as it was trained: the run's system prompt and prompt template, the base
model's chat template, greedy decoding, stopping at the template's end-of-turn token.
"""

from __future__ import annotations

import contextlib
import copy
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from specialize.config import RunConfig
from specialize.constrain.contract import OutputContract
from specialize.data.contract import DefaultContract, default_contract, run_contract
from specialize.errors import ConfigError
from specialize.models.chat import render_prompt
from specialize.models.load import LoadedModel, inference_dtype, load_model
from specialize.records.run import RunRecord
from specialize.run_dir import RunDir, open_run


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # Under an output constraint: whether the text is a complete reply (a whole label, a whole JSON
    # value); False when max_new_tokens ran out first. None when decoding was unconstrained.
    complete: bool | None = None


@dataclass
class GenerationBatchStats:
    seconds: float
    items: int
    decoding: int = 0  # which of `generate_each`'s decodings the batch was decoded for


@dataclass
class TrainedModel:
    loaded: LoadedModel
    config: RunConfig
    run: RunDir
    record: RunRecord | None = None  # None while training has not finished (no run.json)

    def messages_for(self, text: str) -> list[dict[str, str]]:
        return request_messages(self.config, text)

    def output_contract(self) -> OutputContract:
        """What the run's replies must be (its label set, its JSON schema): `run_contract`."""
        return run_contract(self.run)

    def default_contract(self) -> DefaultContract:
        """The contract `generate` and `chat` apply unless told otherwise, and why it may be off."""
        return default_contract(self.run)


def load_run(path: str | Any, dtype: str | None = None) -> TrainedModel:
    """Base model plus the run's adapter (or its fully fine-tuned weights), in eval mode.

    `dtype` overrides the run's `model.dtype` (whose auto means bf16 where it is native): a
    comparison with another engine must decode in the precision that engine uses."""
    run = open_run(path)
    config = run.config()
    weights = run.weights_dir()
    precision = inference_dtype(dtype or config.model.dtype)
    if weights == run.full_model:
        loaded = load_model(str(weights), dtype=precision)
    else:
        from peft import PeftModel

        loaded = load_model(config.model.base, dtype=precision)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(weights))
    loaded.model.eval()
    record = run.record() if run.finished else None
    return TrainedModel(loaded=loaded, config=config, run=run, record=record)


def request_messages(config: RunConfig, text: str) -> list[dict[str, str]]:
    """The messages a raw request becomes under a run's data settings (system prompt, template).

    A prompt template names row fields; a free-form request fills the input field, or the
    template's only placeholder.
    """
    d = config.data
    content = text
    if d.prompt_template:
        names = [n for _, n, _, _ in string.Formatter().parse(d.prompt_template) if n]
        key = d.input_field or (names[0] if len(set(names)) == 1 else None)
        if key is None:
            raise ConfigError(
                f"the run's prompt template has several fields ({', '.join(sorted(set(names)))}); "
                "send chat messages instead of a single text"
            )
        content = d.prompt_template.format(**{name: text for name in names} | {key: text})
    messages = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
    return [*messages, {"role": "user", "content": content}]


@dataclass(frozen=True)
class Decoding:
    """One way to decode a set of prompts: free text cut at `stop` strings, or under a contract."""

    stop: tuple[str, ...] = ()
    constraint: OutputContract | None = None


@dataclass
class GenerationPass:
    """One decoding's replies, and the seconds its batches took: its own decoding plus the prefill
    it shared with the other decodings of the same call (charged to each of them in full)."""

    generations: list[Generation]
    seconds: float


def generate(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    on_batch: Callable[[GenerationBatchStats], None] | None = None,
    share_prefix: bool = True,
    constraint: OutputContract | None = None,
    shared_attention: bool = True,
    cached_prefix: SharedPrefix | None = None,
) -> list[Generation]:
    """Greedy replies to many conversations, batched.

    Conversations are sorted by prompt length before batching so that a batch holds prompts of
    similar length (less padding); results come back in the input order.

    Prompt-engineering baselines repeat one long instruction (every label, say) in every
    request. With `share_prefix`, the token prefix common to all prompts is run through the model
    once and its KV cache reused by every batch, as vLLM's prefix caching does; each row is laid
    out as [shared prefix][padding][own suffix] with the padding masked out, so positions and
    outputs are those of the unpadded prompt. A `cached_prefix` from `shared_prefix` over a larger set
    of conversations (these among them) is used instead of one computed from these alone: a
    request one at a time then finds the instruction already cached, as it would on a server
    with prefix caching.

    With a `constraint` (other than kind "none"), every token is chosen under the contract's mask
    (`specialize.constrain`), so a reply that ends is exactly one label or one JSON value valid under
    the schema, and it ends right there (end-of-turn is then the only token allowed). Its text is
    returned as decoded, neither stripped nor cut at `stop` strings (which are not used). If
    max_new_tokens runs out first the text is the truncated prefix and `Generation.complete` is
    False; budgets should leave room for the longest reply.
    """
    (only,) = generate_each(
        loaded,
        conversations,
        [Decoding(tuple(stop), constraint)],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
        share_prefix=share_prefix,
        shared_attention=shared_attention,
        cached_prefix=cached_prefix,
    )
    return only.generations


def generate_each(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    decodings: Sequence[Decoding],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    on_batch: Callable[[GenerationBatchStats], None] | None = None,
    share_prefix: bool = True,
    shared_attention: bool = True,
    cached_prefix: SharedPrefix | None = None,
) -> list[GenerationPass]:
    """`generate` for several decodings of the same conversations, prefilling each batch once.

    Batch by batch, the first decoding prefills and decodes as `generate` does, and every other
    decoding replays that prefill (`models.replayed_prefill`) and decodes from it: its tokens are
    those it would give alone, without computing the prompts again. Each pass is charged its own
    decoding plus the whole prefill (the shared prefix's and the batch's), so its `seconds` is
    what it costs on its own. `on_batch` gets one call per batch and decoding
    (`GenerationBatchStats.decoding` is its index).
    """
    import torch

    from specialize.models.replayed_prefill import PrefillReplay
    from specialize.models.shared_prefix import (
        SharedPrefixCache,
        shared_prefix_attention,
        supports_shared_prefix,
    )

    if not decodings:
        raise ValueError("no decoding asked for")
    began_all = time.perf_counter()
    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if cached_prefix is not None:
        n = len(cached_prefix.tokens)
        if not all(len(e) > n and e[:n] == cached_prefix.tokens for e in encoded):
            raise ValueError("a prompt does not start with the cached prefix (and go on past it)")
        shared_state = cached_prefix
    else:
        shared_state = _shared_prefix(model, encoded) if share_prefix else None
    prefix = shared_state.tokens if shared_state is not None else []
    prefix_cache = shared_state.cache if shared_state is not None else None
    shared = shared_attention and supports_shared_prefix(model)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[list[Generation | None]] = [[None] * len(prompts) for _ in decodings]
    eos_ids = end_of_turn_ids(loaded)
    pad = tokenizer.pad_token_id
    # Tokenizing, the shared prefix: common to every decoding, so each is charged all of it.
    seconds = [time.perf_counter() - began_all] * len(decodings)
    compiled = []
    for which, decoding in enumerate(decodings):
        began = time.perf_counter()
        compiled.append(_compiled(decoding.constraint, tokenizer, eos_ids))
        seconds[which] += time.perf_counter() - began
    for start in range(0, len(order), batch_size):
        batch_began = time.perf_counter()
        batch = order[start : start + batch_size]
        suffixes = [encoded[i][len(prefix) :] for i in batch]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(batch), len(prefix) + width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for row, suffix in enumerate(suffixes):
            ids[row, ids.shape[1] - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[row, ids.shape[1] - len(suffix) :] = 1
        replay = PrefillReplay(model)
        built = time.perf_counter() - batch_began
        for which, (decoding, grammar) in enumerate(zip(decodings, compiled, strict=True)):
            extra: dict[str, Any] = {}
            attention = contextlib.nullcontext()
            if prefix_cache is not None and shared:
                cache = SharedPrefixCache(prefix_cache)  # the prefix once for all rows, not copied per row
                attention = shared_prefix_attention(model, cache)
                extra["cache"] = cache
            elif prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
                extra["cache"] = cache
            processor = None
            if grammar is None:
                criteria = _stop_criteria(tokenizer, decoding.stop, ids.shape[1])
            else:  # the constraint decides where a reply ends; stop strings could only cut it short
                from transformers import LogitsProcessorList

                from specialize.constrain.logits import ConstraintLogitsProcessor

                criteria = None
                processor = ConstraintLogitsProcessor.for_batch(grammar, len(batch))
                extra["logits_processor"] = LogitsProcessorList([processor])
            began = time.perf_counter()
            # One decoding has nothing to replay: `generate` then leaves the model as it is.
            recording = replay.active() if len(decodings) > 1 else contextlib.nullcontext()
            with torch.inference_mode(), attention, recording:
                out = model.generate(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos_ids,
                    pad_token_id=pad,
                    stopping_criteria=criteria,
                    **extra,
                )
            states = processor.sync(out) if processor is not None else None
            for row, i in enumerate(batch):
                new = out[row, ids.shape[1] :].tolist()
                n_new = _until_eos(new, eos_ids)
                if states is None:
                    text = tokenizer.decode(new[:n_new], skip_special_tokens=True)
                    results[which][i] = Generation(_cut_at_stop(text, decoding.stop), len(encoded[i]), n_new)
                else:
                    text = tokenizer.decode(
                        new[:n_new], skip_special_tokens=True, clean_up_tokenization_spaces=False
                    )
                    results[which][i] = Generation(
                        text, len(encoded[i]), n_new, complete=states[row].accepting
                    )
            # A replayed pass did not run the prefill it decoded from; it is charged the recorded one.
            took = (
                built
                + time.perf_counter()
                - began
                + (replay.seconds if which > 0 and replay.replays else 0.0)
            )
            seconds[which] += took
            if on_batch is not None:
                on_batch(GenerationBatchStats(took, len(batch), decoding=which))
    return [
        GenerationPass([r for r in per_decoding if r is not None], spent)
        for per_decoding, spent in zip(results, seconds, strict=True)
    ]


def _compiled(constraint: OutputContract | None, tokenizer: Any, eos_ids: list[int]) -> Any:
    if constraint is None or constraint.kind == "none":
        return None
    from specialize.constrain import compile_constraint

    return compile_constraint(constraint, tokenizer, eos_ids)


MIN_SHARED_PREFIX = 32  # below this, a shared prefill saves less than it costs


@dataclass
class SharedPrefix:
    """The token prefix common to a set of prompts and its KV cache, computed once; read, never
    written, by every batch that uses it."""

    tokens: list[int]
    cache: Any


def shared_prefix(loaded: LoadedModel, conversations: Sequence[list[dict[str, str]]]) -> SharedPrefix | None:
    """What `generate` shares among these conversations' prompts (None below MIN_SHARED_PREFIX)."""
    tokenizer = loaded.tokenizer
    encoded = [
        tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in conversations
    ]
    return _shared_prefix(loaded.model, encoded)


def _shared_prefix(model: Any, encoded: list[list[int]]) -> SharedPrefix | None:
    tokens = common_prefix(encoded) if len(encoded) > 1 else []
    if len(tokens) < MIN_SHARED_PREFIX:
        return None
    return SharedPrefix(tokens, _prefill(model, tokens))


def common_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest token prefix shared by all prompts, leaving each at least one own token."""
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in sequences):
        n += 1
    return first[:n]


def _prefill(model: Any, prefix: list[int]) -> Any:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix], device=model.device), cache=cache, use_cache=True)
    return cache


def _stop_criteria(tokenizer: Any, stop: Sequence[str], prompt_width: int) -> Any:
    """Stop a batch once every row's new text contains a stop string.

    transformers' own `stop_strings` precomputes tables over the whole vocabulary on every
    `generate` call (seconds for a 49k vocabulary), which dominated short classification
    batches; decoding the few new tokens per step is cheaper.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    stop = [s for s in stop if s]
    if not stop:
        return None

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])


def end_of_turn_ids(loaded: LoadedModel) -> list[int]:
    ids = {loaded.tokenizer.eos_token_id}
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def _until_eos(tokens: list[int], eos_ids: list[int]) -> int:
    """Generated tokens up to and including the first end-of-turn (counted as output)."""
    for n, token in enumerate(tokens):
        if token in eos_ids:
            return n + 1
    return len(tokens)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s and s in text:
            cut = min(cut, text.index(s))
    return text[:cut].strip()
