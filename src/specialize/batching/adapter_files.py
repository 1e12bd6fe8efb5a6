"""An adapter's PEFT files, read and checked against the model that will serve it.

`read_adapter` turns `adapter_config.json` + `adapter_model.safetensors` (the files PEFT writes,
which vLLM serves unchanged) into the matrices a slot of `adapters.ResidentAdapters` holds:
A^T and B^T pre-multiplied by PEFT's scaling (alpha/r, or alpha/sqrt(r) for rsLoRA, with
`alpha_pattern`), in `lora_dtype`, and for DoRA the per-row magnitude scale. Everything a file
can get wrong is an `AdapterLoadError` naming the file and what does not fit (another model's
shapes, modules_to_save, embedding LoRA, a rank over the server's limit), raised before any slot
is touched, so a bad adapter never leaves a half-installed one behind.

Apart from the slots and the batched layer (`adapters`) because it only reads: it needs the
model's layer shapes, not the engine's state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from peft.utils.constants import CONFIG_NAME as CONFIG_FILE
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_FILE
from torch import nn

from specialize.errors import SpecializeError

_PREFIX = "base_model.model."


def lora_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the LoRA slots over a base of `base_dtype`: float32 over half types (PEFT's own
    arithmetic; the module docstring of `adapters` says why), the base's own otherwise."""
    return torch.float32 if base_dtype in (torch.bfloat16, torch.float16) else base_dtype


@runtime_checkable
class AdapterSource(Protocol):
    """What the engine needs of an adapter: a PEFT directory and a key naming its exact weights.

    The registry's `AdapterRecord` is one (its key changes with every new version); an evaluation
    serving a run's own adapter builds another. A protocol, not the registry's record, so the
    engine sits below both the registry and the evaluation."""

    @property
    def key(self) -> str: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class AdapterDir:
    """An adapter directory outside the registry (a run's `adapter/`, which the evaluation times
    in the engine), under a key its caller chooses to name those weights."""

    key: str
    path: Path


class AdapterLoadError(SpecializeError):
    """An adapter's files do not fit the served base model or use an unsupported LoRA feature."""

    exit_code = 2  # as the registry's errors: the adapter cannot be used


@dataclass
class AdapterWeights:
    """One adapter version read from disk, validated against the model, ready to copy into a slot."""

    key: str
    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A^T [in, r], B^T*scale [r, out])
    nbytes: int
    # DoRA adapters: module path -> g = magnitude / ||W + scale B A||_row [out]; empty for plain LoRA.
    dora_scales: dict[str, torch.Tensor] = field(default_factory=dict)


def read_adapter(path: Path, model: nn.Module, key: str, *, max_rank: int = 64) -> AdapterWeights:
    """Read `adapter_config.json` + `adapter_model.safetensors` and check them against `model`."""
    from safetensors.torch import load_file

    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise AdapterLoadError(f"{path}: {WEIGHTS_FILE} is missing (only safetensors are loaded)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"{config_file}: unreadable adapter config: {exc}") from None
    _check_supported(config, config_file)
    tensors = load_file(str(weights_file), device="cpu")
    dora = bool(config.get("use_dora"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        module, sep, part = name.removeprefix(_PREFIX).rpartition(".lora_")
        if dora and sep and part in ("magnitude_vector", "magnitude_vector.weight"):
            pairs.setdefault(module, {})["m"] = tensor
            continue
        if not sep or part not in ("A.weight", "B.weight"):
            raise AdapterLoadError(
                f"{weights_file}: tensor '{name}' is not a LoRA A/B weight (or a DoRA magnitude); "
                "adapters with modules_to_save, embedding LoRA or bias terms are not served"
            )
        pairs.setdefault(module, {})[part[0]] = tensor
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    dtype = lora_dtype(next(model.parameters()).dtype)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    dora_scales: dict[str, torch.Tensor] = {}
    rank = 0
    for module_path, pair in sorted(pairs.items()):
        if set(pair) != ({"A", "B", "m"} if dora else {"A", "B"}):
            raise AdapterLoadError(
                f"{weights_file}: module '{module_path}' lacks its lora_A or lora_B weight"
                + (" or its DoRA lora_magnitude_vector" if dora else "")
            )
        target = _linear_at(model, module_path, weights_file)
        a, b = pair["A"], pair["B"]
        r = a.shape[0]
        if a.shape != (r, target.in_features) or b.shape != (target.out_features, r):
            raise AdapterLoadError(
                f"{weights_file}: '{module_path}' has LoRA shapes {tuple(a.shape)} x {tuple(b.shape)}, "
                f"but the base layer is {target.in_features} -> {target.out_features}; "
                "the adapter was trained on another model"
            )
        if r > max_rank:
            raise AdapterLoadError(
                f"{path}: rank {r} exceeds the server's limit of {max_rank} (--max-lora-rank)"
            )
        alpha = float(
            alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module_path), config["lora_alpha"])
        )
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        modules[module_path] = (
            a.t().to(dtype).contiguous(),
            (b.t().to(torch.float32) * scale).to(dtype).contiguous(),
        )
        if dora:
            dora_scales[module_path] = _dora_scale(target, a, b, scale, pair["m"], weights_file, module_path)
        rank = max(rank, r)
    if not modules:
        raise AdapterLoadError(f"{weights_file}: holds no LoRA weights")
    nbytes = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in modules.values())
    nbytes += sum(g.numel() * g.element_size() for g in dora_scales.values())
    return AdapterWeights(key=key, rank=rank, modules=modules, nbytes=nbytes, dora_scales=dora_scales)


def _dora_scale(
    target: nn.Linear,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    magnitude: torch.Tensor,
    file: Path,
    module_path: str,
) -> torch.Tensor:
    """DoRA's g = m / ||W + scale B A|| per output row (PEFT's get_weight_norm, dim=1), in fp32.

    PEFT detaches the norm from the graph and recomputes it every call; the base is frozen here,
    so it is computed once when the adapter is loaded."""
    if magnitude.shape != (target.out_features,):
        raise AdapterLoadError(
            f"{file}: '{module_path}' has a DoRA magnitude of shape {tuple(magnitude.shape)}, but the base "
            f"layer has {target.out_features} outputs; the adapter was trained on another model"
        )
    with torch.no_grad():
        weight = target.weight.to(torch.float32) + scale * (b.to(torch.float32) @ a.to(torch.float32))
        norm = torch.linalg.norm(weight, dim=1)
        return (magnitude.to(torch.float32) / norm).to(lora_dtype(target.weight.dtype)).contiguous()


def _check_supported(config: dict[str, Any], file: Path) -> None:
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterLoadError(f"{file}: peft_type {config.get('peft_type')!r} is not LoRA")
    for flag in ("fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            raise AdapterLoadError(f"{file}: '{flag}' adapters are not supported by the server")
    if config.get("modules_to_save"):
        raise AdapterLoadError(f"{file}: adapters with modules_to_save are not supported by the server")
    if "lora_alpha" not in config:
        config["lora_alpha"] = config["r"]


def _linear_at(model: nn.Module, module_path: str, file: Path) -> nn.Linear:
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        raise AdapterLoadError(
            f"{file}: the base model has no layer '{module_path}'; the adapter was trained on another model"
        ) from None
    wrapped = getattr(module, "base", None)
    if isinstance(wrapped, nn.Linear):  # already wrapped for batched LoRA (`adapters.BatchedLoraLinear`)
        return wrapped
    if not isinstance(module, nn.Linear):
        raise AdapterLoadError(
            f"{file}: '{module_path}' is a {type(module).__name__}; only Linear layers are served"
        )
    return module
