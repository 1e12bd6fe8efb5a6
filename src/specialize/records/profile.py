"""The reference profile of a run (`profile.json`): what its training data looks like.

`specialize.monitor.profile` builds it, the drift checks read it. It holds summaries for people
(length distributions, label shares, JSON field presence, text descriptors) and a seeded sample
of reference rows with every per-row feature and input embedding, because the two-sample tests
need reference *rows*, not summaries, to be calibrated.

Field names are those of the files written before this model existed, so those files still
load. Parts that an older writer left out (the token lengths of a profile counted in words, the
JSON fields of a classification sample, an embedder's IDF) stay out when a profile is written
again: `write_profile_file` dumps only the fields that were set, so a profile read and written
back is the same JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from specialize.atomic import atomic_write_text
from specialize.errors import RunError
from specialize.outputs import TaskKind

PROFILE_VERSION = 1
LengthUnit = Literal["words", "tokens"]


class EncodedArray(BaseModel):
    """A numpy array as base64 in JSON (`specialize.monitor.embed` encodes and decodes it)."""

    dtype: str
    shape: list[int]
    b64: str


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class Summary(BaseModel):
    """A distribution for people to read; an empty one has only `n` = 0."""

    n: int
    mean: float | None = None
    std: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    histogram: Histogram | None = None


class Lengths(BaseModel):
    input: Summary
    output: Summary


class Descriptors(BaseModel):
    non_ascii: Summary
    digits: Summary
    oov: Summary


class LabelCounts(BaseModel):
    """Classification: how often each label occurs in the training split (0 for a declared label
    that never does)."""

    n: int
    counts: dict[str, int]


class JsonFields(BaseModel):
    """JSON tasks: the most common dotted leaf paths of the training outputs and their presence
    rates among the outputs that parse."""

    n: int
    parsed: int
    fields: list[str]
    presence: dict[str, float]


class Vocabulary(BaseModel):
    min_df: int
    size: int
    words: list[str]


class EmbedderState(BaseModel):
    """What rebuilds the embedder for live traffic: the hashed embedder's IDF, or the package
    that ships the sentence-transformer."""

    name: str
    dim: int
    idf: EncodedArray | None = None
    package: str | None = None


class SampleFeatures(BaseModel):
    """Per-row features of the reference sample, aligned with its embeddings. Token lengths
    exist only when the profile was built with a tokenizer."""

    input_words: list[float]
    output_words: list[float]
    non_ascii: list[float]
    digits: list[float]
    oov: list[float]
    input_tokens: list[float] | None = None
    output_tokens: list[float] | None = None

    def lengths(self, side: Literal["input", "output"], unit: LengthUnit) -> list[float]:
        values = getattr(self, f"{side}_{unit}")
        if values is None:
            raise RunError(
                f"this profile has no {side} lengths in {unit}; rebuild it with `specialize profile`"
            )
        return values


class Sample(BaseModel):
    n: int
    seed: int
    features: SampleFeatures
    embeddings: EncodedArray
    # JSON tasks: per sampled row, the indices (into JsonFields.fields) of the paths its output
    # has, or None when it does not parse.
    json_fields: list[list[int] | None] | None = None


class Profile(BaseModel):
    version: int = PROFILE_VERSION
    created: str
    task: TaskKind
    n_train: int
    length_unit: LengthUnit
    tokenizer: str | None
    lengths: Lengths
    descriptors: Descriptors
    labels: LabelCounts | None
    json_fields: JsonFields | None
    vocabulary: Vocabulary
    embedder: EmbedderState
    sample: Sample
    run: str | None = None

    def json_text(self) -> str:
        """The file's text; only set fields, so that what was read is written back unchanged."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), ensure_ascii=False) + "\n"


def read_profile(path: str | Path) -> Profile:
    """A profile.json file; RunError (with how to rebuild it) when it is unreadable, of another
    version, or not a profile."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not a valid profile ({exc}); rebuild it with `specialize profile`") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != PROFILE_VERSION:
        raise RunError(f"{path}: profile version {version}; rebuild it with `specialize profile`")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise RunError(
            f"{path}: not a valid profile ({where}: {first['msg']}); rebuild it with `specialize profile`"
        ) from None


def write_profile_file(path: str | Path, profile: Profile) -> Path:
    """Write atomically, so that a server reading the profile never sees half a file."""
    path = Path(path)
    atomic_write_text(path, profile.json_text())
    return path
