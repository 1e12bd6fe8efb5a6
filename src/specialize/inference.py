"""Load a trained run for inference and generate replies in batches.

Shared by `specialize generate`/`chat` and by evaluation, so the fine-tuned model is always
prompted exactly as it was trained: the run's system prompt and prompt template, the base
model's chat template, greedy decoding, stopping at the template's end-of-turn token.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from specialize.config import RunConfig
from specialize.data.tokenize import render_prompt
from specialize.errors import ConfigError
from specialize.models.load import LoadedModel, load_model
from specialize.run_dir import RunDir, open_run


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationBatchStats:
    seconds: float
    items: int


@dataclass
class TrainedModel:
    loaded: LoadedModel
    config: RunConfig
    run: RunDir
    meta: dict[str, Any] = field(default_factory=dict)

    def messages_for(self, text: str) -> list[dict[str, str]]:
        return request_messages(self.config, text)


def load_run(path: str | Any) -> TrainedModel:
    """Base model plus the run's adapter (or its fully fine-tuned weights), in eval mode."""
    run = open_run(path)
    config = run.config()
    weights = run.weights_dir()
    if weights == run.full_model:
        loaded = load_model(str(weights), dtype=config.model.dtype)
    else:
        from peft import PeftModel

        loaded = load_model(config.model.base, dtype=config.model.dtype)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(weights))
    loaded.model.eval()
    meta = run.meta() if run.meta_file.is_file() else {}
    return TrainedModel(loaded=loaded, config=config, run=run, meta=meta)


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


def generate(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    on_batch: Callable[[GenerationBatchStats], None] | None = None,
) -> list[Generation]:
    """Greedy replies to many conversations, batched with left padding.

    Conversations are sorted by prompt length before batching so that a batch holds prompts of
    similar length (less padding); results come back in the input order.
    """
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    eos_ids = _eos_ids(loaded)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        pad = tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=pad,
                stop_strings=list(stop) or None,
                tokenizer=tokenizer if stop else None,
            )
        for row, i in enumerate(batch):
            new = out[row, width:].tolist()
            n_new = _until_eos(new, eos_ids)
            text = tokenizer.decode(new[:n_new], skip_special_tokens=True)
            results[i] = Generation(_cut_at_stop(text, stop), len(encoded[i]), n_new)
        if on_batch is not None:
            on_batch(GenerationBatchStats(time.perf_counter() - began, len(batch)))
    return [r for r in results if r is not None]


def _eos_ids(loaded: LoadedModel) -> list[int]:
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
