"""Load a base model and its tokenizer, ready to train or generate.

GGUF weights are quantized: transformers dequantizes them on load (about 20 s for the bundled
model) and then marks the model as GGUF-quantized, which `Trainer` refuses to train and
`save_pretrained` refuses to save. So the first load converts the GGUF file into a plain
safetensors checkpoint in the cache directory (atomically: a temp directory renamed into place),
and every later load reads that checkpoint in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.atomic import make_temp_dir
from specialize.models.chat import ensure_chat_template
from specialize.models.registry import ModelRef, resolve_model, weights_fingerprint

log = logging.getLogger(__name__)

CACHE_ENV = "SPECIALIZE_CACHE_DIR"


def cache_dir() -> Path:
    """Where converted models live; `$SPECIALIZE_CACHE_DIR` overrides the user cache."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "specialize"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    ref: ModelRef
    hf_path: Path  # the plain HF directory the weights were read from


def hf_directory(ref: ModelRef) -> Path:
    """A plain HF directory for the reference, converting a GGUF file once if needed."""
    if ref.kind in ("hf-dir", "hf-cache"):
        return Path(ref.path)
    target = cache_dir() / "models" / f"{Path(ref.path).stem}-{weights_fingerprint(ref)}"
    if (target / "config.json").is_file():
        return target
    _convert_gguf(Path(ref.path), target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once) in %s", gguf_path.name, target)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tmp = make_temp_dir(target)
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Tied embeddings are stored once; save_model handles the shared tensor.
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "SOURCE").write_text(f"converted from {gguf_path}\n")
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(ref: str | ModelRef) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_model(ref) if isinstance(ref, str) else ref
    tokenizer = AutoTokenizer.from_pretrained(hf_directory(resolved))
    ensure_chat_template(tokenizer)
    return tokenizer


def load_model(ref: str | ModelRef, *, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load base model + tokenizer. `dtype='auto'` is fp32 on CPU and bf16 on CUDA when supported;
    training chooses its own precision (`train.precision`, see `native_bf16`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(ref) if isinstance(ref, str) else ref
    path = hf_directory(resolved)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, ref=resolved, hf_path=path)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run natively here (and so beat fp32): CUDA with bf16 support, or a
    CPU with AVX512-BF16 or AMX instructions. Other CPUs emulate bf16 and are slower than fp32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # private helpers, but the only way torch exposes these CPU features
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "f32": torch.float32,
        "float32": torch.float32,
        "f16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    if dtype not in table:
        from specialize.errors import ConfigError

        raise ConfigError(f"unknown dtype '{dtype}'; choose one of auto, f32, f16, bf16")
    return table[dtype]
