"""Write a merged Llama-architecture model as one GGUF file for llama.cpp, and read it back.

The file follows what llama.cpp's `convert_hf_to_gguf.py` writes for `LlamaForCausalLM`: the
`llama.*` hyper-parameters, a gpt2-style BPE tokenizer with its merges and chat template, tensors
under llama.cpp's names, and q_proj/k_proj rows permuted, because llama.cpp's rope pairs adjacent
dimensions where Hugging Face pairs the two halves of each head. Tied embeddings are written once
as `token_embd` (llama.cpp reuses it for the output when `output.weight` is absent).

`verify_gguf` reads the file with the `gguf` package, dequantizes every tensor, undoes the
permutation and compares it with the source, so a wrong name, shape or layout fails the export
instead of shipping.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import ConfigError, SpecializeError

log = logging.getLogger(__name__)

QUANTS = ("f32", "f16", "q8_0")

# Largest error of a dequantized tensor relative to the tensor's largest magnitude. f16 keeps
# 11 significant bits (2^-11 relative); q8_0 stores 32-value blocks as int8 times a scale of
# block_max/127, so an element is off by at most half a step, block_max/254.
TOLERANCE = {"f32": 0.0, "f16": 2.0**-10, "q8_0": 1.0 / 127}

_SUPPORTED_ROPE = ("default", "linear")


@dataclass
class GGUFSource:
    """What goes into the file: float32 tensors by HF name, the model config, the tokenizer."""

    tensors: dict[str, np.ndarray]
    config: Any
    tokenizer: Any
    name: str
    tokenizer_pre: str | None = None  # llama.cpp pre-tokenizer id, when known (e.g. from a GGUF base)


def check_supported(config: Any, tokenizer: Any) -> None:
    """Raise a clear ConfigError when the model is not one this writer handles."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if getattr(config, "model_type", None) != "llama" or arch != "LlamaForCausalLM":
        raise ConfigError(
            f"GGUF export supports Llama-architecture models (LlamaForCausalLM, e.g. SmolLM2, "
            f"TinyLlama); this run's base is {arch} (model_type '{getattr(config, 'model_type', '?')}'). "
            "Export with --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope_type, _ = _rope_scaling(config)
    if rope_type not in _SUPPORTED_ROPE:
        raise ConfigError(
            f"GGUF export does not support rope scaling '{rope_type}' yet; export with --format merged "
            "and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if _tokenizer_json(tokenizer)["model"].get("type") != "BPE" or not _is_byte_level(tokenizer):
        raise ConfigError(
            "GGUF export supports byte-level BPE (gpt2-style) tokenizers only; this model's tokenizer "
            "is different. Export with --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )


def write_gguf(source: GGUFSource, path: Path, quant: str) -> None:
    import gguf

    config, tokenizer = source.config, source.tokenizer
    check_supported(config, tokenizer)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_hparams(writer, config, source.name, quant)
        _add_tokenizer(writer, tokenizer, config.vocab_size, source.tokenizer_pre)
        for name, array, qtype in _gguf_tensors(source, quant):
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                writer.add_tensor(name, gguf.quants.quantize(array, qtype))
            else:
                writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def verify_gguf(path: Path, source: GGUFSource, quant: str) -> dict[str, Any]:
    """Read the file back and compare metadata and every tensor with the source.

    Returns the largest absolute and relative (to each tensor's largest magnitude) error; raises
    when a tensor is missing, extra, mis-shaped or outside the quantisation's tolerance.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    config = source.config
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    expected_meta = {
        "general.architecture": "llama",
        "llama.block_count": config.num_hidden_layers,
        "llama.embedding_length": config.hidden_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": _n_kv_heads(config),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.chat_template": source.tokenizer.chat_template,
    }
    for key, value in expected_meta.items():
        if meta.get(key) != value:
            raise SpecializeError(f"GGUF verification failed: {key} is {meta.get(key)!r}, expected {value!r}")
    if len(meta.get("tokenizer.ggml.tokens") or []) != config.vocab_size:
        raise SpecializeError("GGUF verification failed: the token list does not match the vocabulary size")

    expected = {name: array for name, array, _ in _gguf_tensors(source, quant, permute=False)}
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise SpecializeError(f"GGUF verification failed: missing tensors {missing}, unexpected {extra}")
    worst_abs = worst_rel = 0.0
    worst_name = ""
    for name, tensor in found.items():
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
        data = _unpermute_if_qk(name, data.astype(np.float32), config)
        want = expected[name]
        if data.shape != want.shape:
            raise SpecializeError(
                f"GGUF verification failed: {name} has shape {data.shape}, expected {want.shape}"
            )
        err = float(np.max(np.abs(data - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        rel = err / scale if scale > 0 else err
        if rel > worst_rel:
            worst_rel, worst_name = rel, name
        worst_abs = max(worst_abs, err)
    tolerance = TOLERANCE[quant]
    if worst_rel > tolerance:
        raise SpecializeError(
            f"GGUF verification failed: {worst_name} differs from the source by {worst_rel:.3g} of its "
            f"largest value (tolerance for {quant}: {tolerance:.3g})"
        )
    return {
        "tensors": len(found),
        "max_abs_error": worst_abs,
        "max_rel_error": worst_rel,
        "worst_tensor": worst_name or None,
        "tolerance": tolerance,
        "tokens": len(meta["tokenizer.ggml.tokens"]),
    }


# --- tensors -------------------------------------------------------------------------------


def _gguf_tensors(source: GGUFSource, quant: str, *, permute: bool = True):
    """(gguf name, float32 array, ggml type) for every tensor llama.cpp needs, in HF order."""
    import gguf

    config = source.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, array in source.tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(
                f"GGUF export: tensor '{hf_name}' has no llama.cpp name; unsupported model layout"
            )
        if permute:
            array = _permute_if_qk(name, array, config)
        yield name, array, _ggml_type(array, quant)


def _ggml_type(array: np.ndarray, quant: str):
    from gguf import GGMLQuantizationType as T

    if quant == "f32" or array.ndim == 1:  # norms and biases stay f32, as llama.cpp keeps them
        return T.F32
    if quant == "q8_0" and array.shape[-1] % 32 == 0:
        return T.Q8_0
    return T.F16  # q8_0 needs rows in blocks of 32; llama.cpp falls back to f16 likewise


def _n_kv_heads(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _heads_for(name: str, config: Any) -> int | None:
    if ".attn_q." in name:
        return config.num_attention_heads
    if ".attn_k." in name:
        return _n_kv_heads(config)
    return None


def _permute_if_qk(name: str, w: np.ndarray, config: Any) -> np.ndarray:
    # llama.cpp's LlamaModel.permute: within each head, interleave the two rotary halves.
    n_head = _heads_for(name, config)
    if n_head is None:
        return w
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute_if_qk(name: str, w: np.ndarray, config: Any) -> np.ndarray:
    n_head = _heads_for(name, config)
    if n_head is None:
        return w
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- metadata --------------------------------------------------------------------------------


def _rope_scaling(config: Any) -> tuple[str, dict[str, Any]]:
    # transformers 5 keeps rope settings in `rope_parameters`; older configs in rope_theta/rope_scaling.
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return str(rope_type), params


def _add_hparams(writer: Any, config: Any, name: str, quant: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope_type, rope = _rope_scaling(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(_n_kv_heads(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]
    writer.add_file_type(file_type)
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("GGUF export needs a fast (tokenizer.json) tokenizer")
    return json.loads(backend.to_str())


def _is_byte_level(tokenizer: Any) -> bool:
    pre = _tokenizer_json(tokenizer).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p.get("type") == "ByteLevel" for p in parts)


def tokenizer_pre(tokenizer: Any) -> str:
    """llama.cpp's pre-tokenizer id for a byte-level BPE tokenizer (its regex split)."""
    pre = _tokenizer_json(tokenizer).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"  # SmolLM/StarCoder style: each digit alone, then the GPT-2 split
    log.warning("unknown pre-tokenizer %s; llama.cpp will use its default split", kinds)
    return "default"


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: str | None) -> None:
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(vocab)} tokens but the model only {vocab_size} embeddings")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = _tokenizer_json(tokenizer)["model"].get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or tokenizer_pre(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    writer.add_add_bos_token(_adds_bos(tokenizer))
    writer.add_chat_template(tokenizer.chat_template)


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return (
        bool(with_special)
        and with_special[0] == bos
        and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]
    )


def source_tokenizer_pre(base_meta: dict[str, Any]) -> str | None:
    """The pre-tokenizer id stored in a GGUF base model, so the export splits text like the original."""
    if base_meta.get("kind") not in ("gguf", "bundled-gguf"):
        return None
    path = Path(str(base_meta.get("path", "")))
    if not path.is_file():
        return None
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None
