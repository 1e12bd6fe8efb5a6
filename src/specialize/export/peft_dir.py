"""A clean PEFT adapter directory, the unit that vLLM and LoRAX serve many of per GPU.

Only what a server reads is copied (adapter_config.json and the adapter weights); the config's
`base_model_name_or_path` is rewritten to name the original base model (the hub id for the
bundled alias, the directory for a local model) rather than the converted copy in our cache,
because that is what `vllm serve BASE` must be given.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path
from typing import Any

from specialize.errors import RunError
from specialize.models.bundled import BUNDLED
from specialize.run_dir import RunDir

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
VLLM_DEFAULT_MAX_RANK = 16


def base_model_name(base: dict[str, Any]) -> str:
    """How deployment tools should name the base model: hub id when there is one, else a path."""
    kind = base.get("kind")
    if kind == "bundled-gguf":
        bundled = BUNDLED.get(str(base.get("model_id", "")).lower()) or BUNDLED.get(
            str(base.get("ref", "")).lower()
        )
        if bundled is not None:
            return bundled.hub_id
    if kind == "hf-cache":
        return str(base.get("ref") or base.get("model_id"))
    return str(base.get("path") or base.get("ref"))


def write_peft_dir(run: RunDir, out: Path, base_name: str) -> dict[str, Any]:
    if run.weights_dir() != run.adapter:
        raise RunError(
            f"{run.path}: this run fine-tuned the whole model (model/), so there is no adapter to "
            "export; use --format merged or --format gguf"
        )
    config = json.loads((run.adapter / "adapter_config.json").read_text(encoding="utf-8"))
    weights = next((run.adapter / f for f in WEIGHT_FILES if (run.adapter / f).is_file()), None)
    if weights is None:
        raise RunError(
            f"{run.adapter}: adapter_config.json but no adapter weights ({' or '.join(WEIGHT_FILES)})"
        )
    config["base_model_name_or_path"] = base_name
    config["inference_mode"] = True
    (out / "adapter_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    shutil.copyfile(weights, out / weights.name)
    if not filecmp.cmp(weights, out / weights.name, shallow=False):
        raise RunError(f"{out / weights.name}: copy differs from {weights}")
    return _check(out, weights.name)


def _check(out: Path, weights_name: str) -> dict[str, Any]:
    """Parse the directory the way peft does, and note what vLLM would refuse or need flags for."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(out))
    tensors = None
    if weights_name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(out / weights_name), "pt") as handle:
            tensors = len(list(handle.keys()))
    warnings = []
    rank = getattr(config, "r", None)
    if rank and rank > VLLM_DEFAULT_MAX_RANK:
        warnings.append(
            f"rank {rank} > vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_RANK}; pass --max-lora-rank {rank}"
        )
    if getattr(config, "modules_to_save", None):
        warnings.append("modules_to_save (fully trained extra modules) are not served by vLLM's LoRA support")
    if base_name_is_gguf(config.base_model_name_or_path):
        warnings.append("the base is a .gguf file; vLLM needs the original Hugging Face weights as BASE")
    target = getattr(config, "target_modules", None)
    return {
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)),
        "rank": rank,
        "alpha": getattr(config, "lora_alpha", None),
        "target_modules": sorted(target) if isinstance(target, (set, list)) else target,
        "adapter_tensors": tensors,
        "base_model_name_or_path": config.base_model_name_or_path,
        "warnings": warnings,
    }


def base_name_is_gguf(name: str | None) -> bool:
    return bool(name) and str(name).endswith(".gguf")
