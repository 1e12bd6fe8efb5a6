"""The reference profile of a run: what its training data looks like, written as `profile.json`.

Drift is measured against this file, so it holds both summaries (for people: length
distributions, label shares, JSON field presence, text descriptors) and a seeded sample of
reference rows with every per-row feature and input embedding (for the two-sample tests in
`checks.py`, which need reference *rows*, not summaries, to be calibrated). The file's typed
form is `specialize.records.profile.Profile`; per-text features are computed by `features.py`,
the same code that featurizes live traffic.

Two details keep the reference comparable with live traffic:
- out-of-vocabulary share: the vocabulary is every word of the training inputs, so a sampled
  training row would trivially have no unknown words. A sampled row's OOV share is computed
  leave-one-out (a word counts as known only if another training row has it), which is what a
  new request drawn from the same distribution experiences.
- the hashed embedder's IDF is fitted on the training rows outside the sample when there are
  enough of them, so the sample is not embedded with weights fitted on itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specialize.data.example import Example
from specialize.errors import DataError, RunError
from specialize.monitor.embed import HashedTfidfEmbedder, encode_array, new_embedder
from specialize.monitor.features import (
    char_shares,
    json_paths,
    letter_words,
    token_count,
    vocab_words,
    word_count,
)
from specialize.outputs import TaskKind, detect_task
from specialize.records.profile import (
    PROFILE_VERSION,
    Descriptors,
    Histogram,
    JsonFields,
    LabelCounts,
    Lengths,
    Profile,
    Sample,
    SampleFeatures,
    Summary,
    Vocabulary,
    read_profile,
    write_profile_file,
)
from specialize.run_dir import RunDir

log = logging.getLogger(__name__)

SAMPLE_SIZE = 500
MAX_VOCAB = 50_000
MAX_JSON_FIELDS = 50


def summarize(values: np.ndarray, bins: int = 30) -> Summary:
    if values.size == 0:
        return Summary(n=0)
    hi = float(values.max())
    edges = np.linspace(float(values.min()), hi if hi > values.min() else hi + 1, bins + 1)
    counts, _ = np.histogram(values, edges)
    q = np.percentile(values, [50, 90, 99])
    return Summary(
        n=int(values.size),
        mean=float(values.mean()),
        std=float(values.std()),
        p50=float(q[0]),
        p90=float(q[1]),
        p99=float(q[2]),
        max=hi,
        histogram=Histogram(edges=[round(float(e), 4) for e in edges], counts=counts.tolist()),
    )


def profile_from_examples(
    examples: Sequence[Example],
    *,
    task: TaskKind | None = None,
    labels: Sequence[str] | None = None,
    tokenizer: Any = None,
    embedder: str = "auto",
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
) -> Profile:
    """The reference profile of training examples (see the module docstring)."""
    if not examples:
        raise DataError("cannot profile an empty training split")
    inputs = [e.user_text for e in examples]
    outputs = [e.completion or "" for e in examples]
    task = task or detect_task(outputs)
    rng = np.random.default_rng(seed)
    n = len(examples)
    sample = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True

    # Vocabulary with document frequencies, and the leave-one-out OOV share of sampled rows.
    row_words = [vocab_words(t) for t in inputs]
    df = Counter(w for words in row_words for w in words)
    min_df = 1
    while sum(1 for c in df.values() if c >= min_df) > MAX_VOCAB:
        min_df += 1
    vocab = {w for w, c in df.items() if c >= min_df}
    sample_inputs = [inputs[i] for i in sample]
    loo_oov = np.zeros(len(sample))
    for k, i in enumerate(sample):
        words = letter_words(inputs[i])
        if words:
            loo_oov[k] = sum(df[w] - 1 < min_df for w in words) / len(words)

    non_ascii, digits = char_shares(sample_inputs)
    features = SampleFeatures(
        input_words=word_count(sample_inputs).tolist(),
        output_words=word_count([outputs[i] for i in sample]).tolist(),
        non_ascii=np.round(non_ascii, 5).tolist(),
        digits=np.round(digits, 5).tolist(),
        oov=np.round(loo_oov, 5).tolist(),
    )
    unit = "words"
    all_in_len, all_out_len = word_count(inputs), word_count(outputs)
    if tokenizer is not None:
        unit = "tokens"
        all_in_len, all_out_len = token_count(inputs, tokenizer), token_count(outputs, tokenizer)
        features.input_tokens = all_in_len[sample].tolist()
        features.output_tokens = all_out_len[sample].tolist()

    model = new_embedder(embedder)
    if isinstance(model, HashedTfidfEmbedder):
        rest = [inputs[i] for i in np.flatnonzero(~in_sample)]
        model.fit(rest if len(rest) >= 200 else inputs)
    embeddings = model.embed(sample_inputs)

    label_counts: LabelCounts | None = None
    json_fields: JsonFields | None = None
    sample_record = Sample(
        n=int(len(sample)), seed=seed, features=features, embeddings=encode_array(embeddings, "float16")
    )
    if task == "classification":
        counts = Counter(o.strip() for o in outputs)
        label_list = sorted(set(labels or []) | set(counts))
        label_counts = LabelCounts(n=n, counts={lab: int(counts.get(lab, 0)) for lab in label_list})
    elif task == "json":
        paths = [json_paths(o) for o in outputs]
        presence = Counter(p for ps in paths if ps is not None for p in ps)
        fields = [f for f, _ in sorted(presence.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_JSON_FIELDS]]
        parsed = sum(ps is not None for ps in paths)
        json_fields = JsonFields(
            n=n, parsed=parsed, fields=fields, presence={f: presence[f] / max(parsed, 1) for f in fields}
        )
        index = {f: j for j, f in enumerate(fields)}
        sample_record.json_fields = [
            None if paths[i] is None else sorted(index[p] for p in paths[i] if p in index) for i in sample
        ]
    return Profile(
        version=PROFILE_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        task=task,
        n_train=n,
        length_unit=unit,
        tokenizer=(str(getattr(tokenizer, "name_or_path", "")) or "unnamed")
        if tokenizer is not None
        else None,
        lengths=Lengths(input=summarize(all_in_len), output=summarize(all_out_len)),
        descriptors=Descriptors(
            non_ascii=summarize(non_ascii), digits=summarize(digits), oov=summarize(loo_oov)
        ),
        labels=label_counts,
        json_fields=json_fields,
        vocabulary=Vocabulary(min_df=min_df, size=len(vocab), words=sorted(vocab)),
        embedder=model.state(),
        sample=sample_record,
    )


def build_profile(run_dir: RunDir | str | Path, tokenizer: Any = None, *, embedder: str = "auto") -> Profile:
    """The profile of a run's train split; token lengths with `tokenizer` when given, else words."""
    from specialize.data.prepare import read_splits

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    record = run.record() if run.meta_file.is_file() else None  # profiled before training finished
    splits = read_splits(run)
    profile = profile_from_examples(
        splits.train,
        task=record.task if record else None,
        labels=record.labels if record else None,
        tokenizer=tokenizer,
        embedder=embedder,
        seed=run.config().seed if run.config_file.is_file() else 0,
    )
    profile.run = str(run.path)
    return profile


def write_profile(run_dir: RunDir | str | Path, tokenizer: Any = None, *, embedder: str = "auto") -> Path:
    """Build and atomically write `profile.json` into the run; returns its path."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    profile = build_profile(run, tokenizer, embedder=embedder)
    write_profile_file(run.profile, profile)
    log.info("wrote %s (%s lengths, embedder %s)", run.profile, profile.length_unit, profile.embedder.name)
    return run.profile


def load_run_tokenizer(run_dir: RunDir | str | Path) -> Any:
    """The tokenizer saved with the run's weights, or None (then lengths are counted in words)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(run.weights_dir()), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back to word counts
        log.info("no tokenizer in %s (%s); lengths in words", run.path, exc)
        return None


def load_profile(path: str | Path) -> Profile:
    """A profile from a run directory, a directory holding profile.json, or the file itself.

    An adapter directory inside a run (runs/x/adapter) resolves to the run's profile."""
    path = Path(path)
    candidates = [path] if path.suffix == ".json" else [path / "profile.json", path.parent / "profile.json"]
    for candidate in candidates:
        if candidate.is_file():
            return read_profile(candidate)
    raise RunError(f"{path}: no profile.json; build it with `specialize profile {path}`")
