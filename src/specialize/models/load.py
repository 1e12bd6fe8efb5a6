"""Load a base model and its tokenizer, ready to train or generate.

GGUF weights are quantized: transformers dequantizes them on load (about 20 s for the bundled
model), and by default then marks the model as GGUF-quantized, which `Trainer` refuses to train
and `save_pretrained` refuses to save. So the first load converts the GGUF file, loaded with
`GgufConfig(dequantize=True)` as a plain dense model, into a safetensors checkpoint in the cache
directory (atomically: a temp directory renamed into place), and every later load reads that
checkpoint in well under a second.

The checkpoint is written by `save_pretrained`, so it uses the tensor names every other loader
expects: a model with tied embeddings stores the shared tensor once, as
`model.embed_tokens.weight` (vLLM skips `lm_head` for tied models and llama.cpp's converter
reads the embedding), and an untied one stores both. Caches written before that (format 1 saved
the tied tensor only as `lm_head.weight`, which transformers re-ties but vLLM leaves empty) carry
no `FORMAT` marker and are converted again on first use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.atomic import make_temp_dir
from specialize.models.chat import ensure_chat_template
from specialize.models.registry import ModelRef, resolve_model, weights_fingerprint

log = logging.getLogger(__name__)

CACHE_ENV = "SPECIALIZE_CACHE_DIR"
# Bump when the converted checkpoint's files change, so existing caches are rewritten on load.
CHECKPOINT_FORMAT = 2
FORMAT_FILE = "FORMAT"


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
    if cache_is_current(target):
        return target
    if (target / "config.json").is_file():
        log.warning("rewriting %s: it was converted by an older version of specialize", target)
    _convert_gguf(Path(ref.path), target)
    return target


def cache_is_current(path: Path) -> bool:
    """Whether `path` is a complete conversion written in the current checkpoint format."""
    try:
        marker = json.loads((path / FORMAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (path / "config.json").is_file() and marker.get("version") == CHECKPOINT_FORMAT


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to safetensors (once) in %s", gguf_path.name, target)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # dequantize=True: a plain dense model (not GGUF-quantized), which `save_pretrained` accepts,
    # whether or not the `kernels` package (which would keep the weights packed) is installed.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
        **kwargs,
    )
    tmp = make_temp_dir(target)
    try:
        save_checkpoint(model, tokenizer, tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path}\n")
        (tmp / FORMAT_FILE).write_text(json.dumps({"version": CHECKPOINT_FORMAT}) + "\n")
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(model: Any, tokenizer: Any, out: Path) -> None:
    """Config, generation config, tokenizer and safetensors weights, as `save_pretrained` writes
    them: it knows the model's tied weights, so the stored names are the ones transformers, vLLM
    and llama.cpp's converter all read."""
    model.config.architectures = [type(model).__name__]
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # save_pretrained writes the weights through a private temp file (mode 0600); a shared cache
    # must be readable by whoever may read the directory.
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished conversion into place, replacing a stale one. Another process may be
    converting the same model at the same time: whichever finishes second keeps the first one's."""
    if target.exists() and not cache_is_current(target):
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        try:
            target.rename(stale / "old")
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        if not cache_is_current(target):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


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
    fold_head_input(model)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, ref=resolved, hf_path=path)


def fold_head_input(model: Any) -> None:
    """Give the LM head a contiguous input, so its matmul stays one 2-D GEMM.

    Generation and scoring ask for the last position's logits only (`logits_to_keep=1`), and
    transformers slices the hidden states to `[batch, 1, hidden]` with the stride of the full
    sequence. `torch.matmul` folds such a view into one `mm` only while the weight requires grad;
    once the weights are frozen, as PEFT freezes the base model (every fine-tuned run, and the
    baselines evaluated on that same model with the adapter disabled), it falls back to `bmm`
    over a copy of the whole head weight (vocabulary x hidden) per row, on every prefill, which
    costs more than the rest of the forward pass (pytorch/pytorch#186148;
    `benchmarks/frozen_head.py`). Copying the `[batch, 1, hidden]` input instead is negligible.
    The hook travels with the module, so it also covers PEFT wrappers and merged copies
    (`copy.deepcopy`) of this model; calling this twice adds it once."""
    head = model.get_output_embeddings()
    if head is not None and _contiguous_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_input)


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


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


def inference_dtype(dtype: str, device: str | None = None) -> str:
    """What `model.dtype: auto` means for a model that only runs forward passes (serving,
    evaluation, `generate`): bf16 where bf16 matmuls are native (`native_bf16`), else fp32.

    Training keeps `resolve_dtype`'s meaning of auto (fp32 on CPU) and picks its own precision,
    since a full fine-tune must not update bf16 weights. Greedy answers in bf16 can differ from
    fp32 ones on near-ties; `model.dtype: f32` keeps fp32 for a run whose answers must not move."""
    if dtype != "auto":
        return dtype
    return "bf16" if native_bf16(device or default_device()) else "f32"


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
