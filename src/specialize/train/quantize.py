"""QLoRA's frozen base: the base model with its linear layers stored in 4-bit NF4 (bitsandbytes).

The model is loaded through transformers' `BitsAndBytesConfig`, so PEFT recognises the 4-bit
layers and puts its own LoRA layers on them (`peft.tuners.lora.bnb.Linear4bit`): nothing here
re-implements quantisation. bitsandbytes because it is what QLoRA was defined on and what
transformers and PEFT integrate, and since 0.4x its 4-bit layers run on CPU as well as CUDA
(forward and backward), so one code path serves both.

The trained adapter is an ordinary PEFT LoRA adapter: evaluation, serving and export load it on
the unquantised base like any other (`inference.load_run`), the usual way to deploy a QLoRA
adapter. It was fitted to the dequantised 4-bit weights, so its replies on the plain base can
differ slightly from the ones it gave in training; evaluation measures them on the plain base.
"""

from __future__ import annotations

import logging
from typing import Any

from specialize.errors import ConfigError
from specialize.models.chat import ensure_chat_template
from specialize.models.load import LoadedModel, default_device, hf_directory, resolve_dtype
from specialize.models.registry import resolve_model

log = logging.getLogger(__name__)


def load_quantized(ref: str, *, dtype: str, bf16: bool) -> LoadedModel:
    """Base model + tokenizer with the linear layers in 4-bit NF4 (double-quantised, as QLoRA).

    `bf16` picks the dtype the 4-bit weights are dequantised to for each matmul: bf16 where
    training runs under bf16 autocast, else fp32.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "method.kind: qlora needs bitsandbytes (4-bit NF4 weights): pip install 'specialize[qlora]'"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    resolved = resolve_model(ref)
    path = hf_directory(resolved)
    device = default_device()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, device), quantization_config=quantization, device_map={"": device}
    )
    quantised = keep_training_kernels(model) if device == "cpu" else None
    log.info(
        "qlora: base %s loaded with %s linear layers in 4-bit NF4", resolved.model_id, quantised or "its"
    )
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, ref=resolved, hf_path=path)


def keep_training_kernels(model: Any) -> int:
    """Turn off bitsandbytes' CPU inference repacking in every 4-bit layer; returns how many.

    On CPUs with AVX512-BF16, a 4-bit layer's first forward pass in eval mode without gradients
    (the Trainer's validation loss) repacks its weight for a fast inference kernel, for good
    (bitsandbytes 0.50.2). Training after that (1) runs through `gemv_4bit`, which has no
    autograd kernel, so the gradient no longer flows back through the frozen layers (torch warns
    "silently incorrect behavior"); (2) dequantises with the block scales rounded to bf16, so the
    frozen base itself changes at the first evaluation and a resumed run diverges from an
    uninterrupted one; and (3) the repacking fails on input widths that are not a multiple of 64.
    The generic path (dequantise, then matmul) is what training uses anyway.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
