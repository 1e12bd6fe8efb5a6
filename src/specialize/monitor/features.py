"""Per-text features, computed the same way for the reference (training rows, when the profile
is built) and for live traffic (logged requests, when drift is measured).

The two sides must agree exactly, or a check would measure the difference between two ways of
counting instead of a change in traffic: lengths in the profile's unit, descriptors rounded as
the profile stores them, live embeddings rounded to float16 like the stored reference sample.
The fine-tuned model's outputs on the test split (`ReferenceOutputs`) are featurized here too:
they are the reference of the output checks when the run has been evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from specialize.monitor.embed import Embedder, embedder_from_state
from specialize.outputs import flatten_json, match_label, parse_json_output
from specialize.records.profile import Profile

if TYPE_CHECKING:
    # Only the type: importing the serve package loads the whole server (torch included), and
    # building a profile at the end of training must not pay for that.
    from specialize.serve.request_log import LoggedRequest

_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)


# ------------------------------------------------------------------------------ per-text features


def word_count(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


def token_count(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    if not texts:
        return np.zeros(0)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.array([len(i) for i in ids], dtype=np.float64)


def letter_words(text: str) -> list[str]:
    """The lower-cased words of letters (no digits, no underscores) that the vocabulary holds."""
    return _LETTERS.findall(text.lower())


def vocab_words(text: str) -> set[str]:
    return set(letter_words(text))


def char_shares(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(share of non-ASCII characters, share of digit characters) per text; 0 for empty text."""
    non_ascii = np.zeros(len(texts))
    digits = np.zeros(len(texts))
    for i, text in enumerate(texts):
        if text:
            non_ascii[i] = sum(ord(c) > 127 for c in text) / len(text)
            digits[i] = sum(c.isdigit() for c in text) / len(text)
    return non_ascii, digits


def oov_share(texts: Sequence[str], vocab: set[str]) -> np.ndarray:
    out = np.zeros(len(texts))
    for i, text in enumerate(texts):
        words = letter_words(text)
        if words:
            out[i] = sum(w not in vocab for w in words) / len(words)
    return out


def json_paths(completion: str | None) -> set[str] | None:
    """Dotted leaf paths of a JSON completion, or None when it does not parse."""
    ok, value = parse_json_output(completion or "")
    if not ok:
        return None
    return {".".join(path) if path else "$" for path in flatten_json(value)}


# ---------------------------------------------------------------------------- live features


@dataclass
class LiveFeatures:
    """Per-request features of a window, aligned row by row (nan/None where a row lacks text)."""

    ts: np.ndarray
    has_text: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    non_ascii: np.ndarray
    digits: np.ndarray
    oov: np.ndarray
    embeddings: np.ndarray
    labels: list[str | None]
    invalid: np.ndarray  # 1.0 invalid, 0.0 valid, nan: no completion
    json_fields: list[list[int] | None]
    length_unit: str
    n_rows: int = 0
    n_errors: int = 0

    def __len__(self) -> int:
        return int(self.ts.size)

    def take(self, idx: np.ndarray | Sequence[int]) -> LiveFeatures:
        idx = np.asarray(idx, dtype=np.int64)
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value[idx]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in idx]
        return replace(self, **out)


def featurize(
    rows: Sequence[LoggedRequest],
    profile: Profile,
    *,
    tokenizer: Any = None,
    embedder: Embedder | None = None,
) -> LiveFeatures:
    """Features of logged requests, computed exactly as the profile computed the reference's.
    Requests answered with an error status are left out (counted in `n_errors`)."""
    used = [r for r in rows if r.succeeded]
    texts = [r.text for r in used]
    completions = [r.completion for r in used]
    has_text = np.array([t is not None for t in texts], dtype=bool)
    has_out = np.array([c is not None for c in completions], dtype=bool)
    n = len(used)
    tokens = profile.length_unit == "tokens" and tokenizer is not None

    def lengths(values: list[str | None], present: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        if present.any():
            chosen = [v for v in values if v is not None]
            out[present] = token_count(chosen, tokenizer) if tokens else word_count(chosen)
        return out

    shown = [t for t in texts if t is not None]
    vocab = set(profile.vocabulary.words)
    non_ascii, digits, oov = (np.full(n, np.nan) for _ in range(3))
    if shown:
        na, dg = char_shares(shown)
        non_ascii[has_text], digits[has_text] = np.round(na, 5), np.round(dg, 5)
        oov[has_text] = np.round(oov_share(shown, vocab), 5)
    embeddings = np.zeros((n, int(profile.embedder.dim)), dtype=np.float32)
    if shown:
        model = embedder or embedder_from_state(profile.embedder)
        # The reference sample is stored as float16; round live vectors the same way.
        embeddings[has_text] = model.embed(shown).astype(np.float16).astype(np.float32)

    label_set = list(profile.labels.counts) if profile.labels else []
    labels: list[str | None] = [None] * n
    invalid = np.full(n, np.nan)
    json_rows: list[list[int] | None] = [None] * n
    field_index = {f: j for j, f in enumerate(profile.json_fields.fields if profile.json_fields else [])}
    for i, completion in enumerate(completions):
        if completion is None:
            continue
        if profile.task == "classification":
            labels[i] = match_label(completion, label_set)
            invalid[i] = float(labels[i] is None)
        elif profile.task == "json":
            paths = json_paths(completion)
            invalid[i] = float(not parse_json_output(completion)[0])
            if paths is not None:
                json_rows[i] = sorted(field_index[p] for p in paths if p in field_index)
    return LiveFeatures(
        ts=np.array([float(r.ts or 0.0) for r in used]),
        has_text=has_text,
        input_len=lengths(texts, has_text),
        output_len=lengths(completions, has_out),
        non_ascii=non_ascii,
        digits=digits,
        oov=oov,
        embeddings=embeddings,
        labels=labels,
        invalid=invalid,
        json_fields=json_rows,
        length_unit="tokens" if tokens else "words",
        n_rows=len(rows),
        n_errors=len(rows) - n,
    )


# ----------------------------------------------------------------------- reference outputs


@dataclass
class ReferenceOutputs:
    """The fine-tuned model's outputs on the test split, featurized for the output checks."""

    labels: list[str | None]
    labels_valid: int  # outputs that are one of the labels
    invalid: np.ndarray  # 1.0 per output outside the label set or not parsing, else 0.0


def featurize_outputs(profile: Profile, outputs: Sequence[str] | None) -> ReferenceOutputs | None:
    """None without outputs, or for a task without output checks (free text)."""
    if not outputs:
        return None
    if profile.task == "classification" and profile.labels is not None:
        label_set = list(profile.labels.counts)
        labels = [match_label(o, label_set) for o in outputs]
        return ReferenceOutputs(
            labels,
            sum(lab is not None for lab in labels),
            np.array([lab is None for lab in labels], dtype=float),
        )
    if profile.task == "json":
        return ReferenceOutputs([], 0, np.array([not parse_json_output(o)[0] for o in outputs], dtype=float))
    return None
