"""Merge a run's adapter into its base model, save plain transformers weights, and check them.

Merging is done in float32 whatever the export dtype, so the only rounding is the final cast.
The check is the one a user cares about: the saved directory, loaded back with plain
`transformers` (no peft, no specialize), gives the same greedy replies as base + adapter on test
prompts, prompted exactly as in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data.example import Example
from specialize.errors import ConfigError
from specialize.inference import generate, request_messages
from specialize.models.load import LoadedModel, load_model
from specialize.run_dir import RunDir

DTYPES = ("f32", "f16", "bf16")


def load_trained(run: RunDir, config: RunConfig) -> LoadedModel:
    """Base + adapter (a PeftModel) or the fully fine-tuned model, in float32, eval mode."""
    weights = run.weights_dir()
    if weights == run.full_model:
        loaded = load_model(str(weights), dtype="f32")
    else:
        from peft import PeftModel

        loaded = load_model(config.model.base, dtype="f32")
        loaded.model = PeftModel.from_pretrained(loaded.model, str(weights))
    loaded.model.eval()
    return loaded


def load_base(config: RunConfig) -> LoadedModel:
    """The run's base model alone, in float32, eval mode: what `--format base` writes."""
    loaded = load_model(config.model.base, dtype="f32")
    loaded.model.eval()
    return loaded


def merge(loaded: LoadedModel) -> Any:
    """Fold the adapter into the base weights (in place); a full fine-tune is returned as is."""
    from peft import PeftModel

    if isinstance(loaded.model, PeftModel):
        loaded.model = loaded.model.merge_and_unload()
    return loaded.model


def save_merged(loaded: LoadedModel, out: Path, dtype: str) -> None:
    """Safetensors weights, config, generation config, tokenizer and chat template."""
    from specialize.models.load import resolve_dtype

    model = loaded.model
    model.to(resolve_dtype(dtype, "cpu"))
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    # Written explicitly as well: some runtimes read only tokenizer_config.json or only the .jinja file.
    config_file = out / "tokenizer_config.json"
    if config_file.is_file():
        data = json.loads(config_file.read_text(encoding="utf-8"))
        if "chat_template" not in data:
            data["chat_template"] = loaded.tokenizer.chat_template
            config_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sample_prompts(run: RunDir, config: RunConfig, n: int) -> list[list[dict[str, str]]]:
    """The first `n` conversations of the run's test split (falling back to val, then train)."""
    if n <= 0:
        return []
    for split in ("test", "val", "train"):
        path = run.split_file(split)
        if not path.is_file():
            continue
        conversations = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                conversations.append(Example.from_dict(json.loads(line)).messages)
            if len(conversations) >= n:
                break
        if conversations:
            return conversations
    return [request_messages(config, "Hello")][:n]


class Reference:
    """Greedy replies and last-token logits of the model before export, to compare against."""

    def __init__(self, loaded: LoadedModel, prompts: list[list[dict[str, str]]], max_new_tokens: int):
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.replies = [g.text for g in generate(loaded, prompts, max_new_tokens=max_new_tokens)]
        self.logits = _last_logits(loaded, prompts)


def check_agreement(reference: Reference, exported: Path, dtype: str) -> dict[str, Any]:
    """Load the export with plain transformers and compare greedy replies and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.models.load import resolve_dtype
    from specialize.models.registry import resolve_model

    if not reference.prompts:
        return {"agreement": None, "samples": 0}
    tokenizer = AutoTokenizer.from_pretrained(exported)
    if not tokenizer.chat_template:
        raise ConfigError(f"{exported}: the exported tokenizer lost its chat template")
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=resolve_dtype(dtype, "cpu"))
    model.eval()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, ref=resolve_model(str(exported)), hf_path=exported)
    replies = [g.text for g in generate(loaded, reference.prompts, max_new_tokens=reference.max_new_tokens)]
    same = sum(a == b for a, b in zip(replies, reference.replies, strict=True))
    logits = _last_logits(loaded, reference.prompts)
    diff = max(float((a - b).abs().max()) for a, b in zip(logits, reference.logits, strict=True))
    return {
        "agreement": same / len(replies),
        "samples": len(replies),
        "max_new_tokens": reference.max_new_tokens,
        "max_logit_diff": diff,
        "disagreements": [
            {"reference": a, "exported": b} for a, b in zip(reference.replies, replies, strict=True) if a != b
        ][:3],
    }


def _last_logits(loaded: LoadedModel, prompts: list[list[dict[str, str]]]) -> list[Any]:
    """Next-token logits after each prompt, one prompt at a time (no padding in the comparison)."""
    import torch

    from specialize.models.chat import prompt_ids

    out = []
    with torch.inference_mode():
        for messages in prompts:
            ids = torch.tensor([prompt_ids(loaded.tokenizer, messages)], device=loaded.model.device)
            out.append(loaded.model(input_ids=ids).logits[0, -1].float().cpu())
    return out
