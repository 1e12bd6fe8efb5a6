"""What `specialize adapters add PATH` finds at PATH, checked before anything is written.

PATH is a run directory (adapter/ plus run.json, config.yaml, eval/) or a bare PEFT directory.
The adapter's config and weights are validated (LoRA, safetensors only: pickled weights can run
code when loaded), its base model identified (the run's record, else --base, else the PEFT
config's base_model_name_or_path when it resolves here), and the run's output contract and eval
headline read through the run directory's records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.data.contract import default_contract
from specialize.errors import ConstraintError, DataError, RunError, SpecializeError
from specialize.models.bundled import BUNDLED
from specialize.models.registry import resolve_model, weights_fingerprint
from specialize.records.run import RunRecord
from specialize.registry.errors import IncompatibleAdapterError, RegistryError
from specialize.run_dir import RunDir

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class AdapterSource:
    """What `add` found at a path, before anything is written."""

    adapter_dir: Path
    run_dir: Path | None
    config: dict[str, Any]
    base_ref: dict[str, str]
    base_fingerprint: str
    eval_headline: str | None = None
    tensor_names: list[str] = field(default_factory=list)
    output_contract: dict[str, Any] | None = None
    contract_off_reason: str | None = None


def inspect_source(path: str | Path, base: str | None = None) -> AdapterSource:
    """Find and validate the adapter at `path` (a run directory or a PEFT directory)."""
    path = Path(path).expanduser()
    if (path / "adapter" / CONFIG_FILE).is_file():
        adapter_dir, run_dir = path / "adapter", path
    elif (path / CONFIG_FILE).is_file():
        adapter_dir = path
        run_dir = path.parent if (path.parent / "run.json").is_file() else None
    elif path.is_dir():
        if (path / "model" / "config.json").is_file():
            raise RegistryError(f"{path}: a full fine-tune, not a LoRA adapter; serve it as a model instead")
        raise RegistryError(f"{path}: no adapter found (neither {CONFIG_FILE} nor adapter/{CONFIG_FILE})")
    else:
        raise RegistryError(f"{path}: no such run or adapter directory")

    config = _read_adapter_config(adapter_dir)
    tensor_names = _check_weights(adapter_dir)
    run = RunDir(run_dir) if run_dir is not None else None
    base_ref, fingerprint = _base_of(adapter_dir, run, config, base)
    contract, off_reason = _contracts(run)
    return AdapterSource(
        adapter_dir=adapter_dir,
        run_dir=run_dir,
        config=config,
        base_ref=base_ref,
        base_fingerprint=fingerprint,
        eval_headline=_eval_headline(run),
        tensor_names=tensor_names,
        output_contract=contract,
        contract_off_reason=off_reason,
    )


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    file = adapter_dir / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{file}: not a readable JSON adapter config: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryError(f"{file}: an adapter config is a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise RegistryError(
            f"{file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are served"
        )
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise RegistryError(f"{file}: field 'r' (the LoRA rank) must be a positive integer")
    return config


def _check_weights(adapter_dir: Path) -> list[str]:
    weights = adapter_dir / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [p.name for p in adapter_dir.iterdir() if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise RegistryError(
                f"{adapter_dir}: weights are pickled ({', '.join(pickles)}), which can run code when "
                f"loaded; only {WEIGHTS_FILE} is accepted (re-save with save_pretrained(..., "
                "safe_serialization=True))"
            )
        raise RegistryError(f"{adapter_dir}: {WEIGHTS_FILE} is missing")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            names = list(handle.keys())
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise RegistryError(f"{weights}: not a valid safetensors file: {exc}") from None
    if not any(".lora_A." in n for n in names):
        raise RegistryError(f"{weights}: holds no LoRA tensors (no '*.lora_A.weight')")
    return names


def _base_of(
    adapter_dir: Path, run: RunDir | None, config: dict[str, Any], base: str | None
) -> tuple[dict[str, str], str]:
    """The base model the adapter belongs to: the run's record, else --base, else the adapter
    config's base_model_name_or_path if it resolves on this machine. An explicit --base that
    disagrees with the run's record is refused."""

    given = None
    if base is not None:
        ref = resolve_model(base)
        given = (ref.to_dict(), weights_fingerprint(ref))
    if run is not None:
        record = _run_record(run)
        recorded, fingerprint = record.base_model, record.base_fingerprint
        if recorded is not None and fingerprint is not None:
            if given is not None and given[1] != fingerprint:
                raise IncompatibleAdapterError(
                    f"{adapter_dir} was trained on '{recorded.model_id}' (weights {fingerprint}), "
                    f"not on '{given[0]['model_id']}' (weights {given[1]}); an adapter only works on "
                    "the exact base weights it was trained on"
                )
            return {k: str(v) for k, v in recorded.model_dump().items()}, fingerprint
    if given is not None:
        return given
    name = config.get("base_model_name_or_path")
    if name:
        try:
            ref = _unconverted(resolve_model(str(name)))
            return ref.to_dict(), weights_fingerprint(ref)
        except SpecializeError:
            pass
    raise RegistryError(
        f"{adapter_dir}: cannot tell which base model this adapter was trained on (no run.json, and "
        f"base_model_name_or_path={name!r} does not resolve here); pass --base MODEL"
    )


def _unconverted(ref: Any) -> Any:
    """A GGUF model converted to safetensors by specialize records its source; runs fingerprint
    the GGUF reference, so an adapter pointing at the converted copy gets the same identity."""

    source = Path(ref.path) / "SOURCE"
    if ref.kind != "hf-dir" or not source.is_file():
        return ref
    text = source.read_text(encoding="utf-8").strip()
    gguf = text.removeprefix("converted from ").strip()
    if not gguf.endswith(".gguf") or not Path(gguf).is_file():
        return ref
    for alias, bundled in BUNDLED.items():
        located = bundled.locate()
        if located is not None and Path(located).resolve() == Path(gguf).resolve():
            return resolve_model(alias)
    return resolve_model(gguf)


def _run_record(run: RunDir) -> RunRecord:
    try:
        return run.record()
    except RunError as exc:
        raise RegistryError(str(exc)) from None


def _eval_headline(run: RunDir | None) -> str | None:
    if run is None or not run.evaluated:
        return None
    try:
        return run.eval_report().headline or None
    except RunError as exc:
        raise RegistryError(str(exc)) from None


def _contracts(run: RunDir | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the run's output contract, why it is off by default or None), validated and normalised."""
    if run is None:
        return None, None
    try:
        default = default_contract(run)
    except ConstraintError as exc:
        raise RegistryError(f"{run.meta_file}: output_contract is invalid: {exc}") from None
    except (RunError, DataError) as exc:
        raise RegistryError(str(exc)) from None
    # A run that records "none" (free text) says so; a bare adapter dir without a run says nothing.
    recorded = run.finished and run.record().output_contract is not None
    contract = default.recorded.to_dict() if recorded or default.recorded.kind != "none" else None
    return contract, (default.reason or None) if default.switched_off else None
