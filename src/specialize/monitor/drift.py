"""Has live traffic moved away from the training data? Calibrated two-sample tests per check.

A window of requests from the request log is compared with the run's reference profile
(`profile.py`). Every check is a hypothesis test whose p-value is valid for any window size:

- input_length, output_length, non_ascii, digits, oov: two-sample Kolmogorov-Smirnov distance
  between the reference sample and the window, p-value by permutation (exact under ties, which
  integer lengths and mostly-zero shares are full of); PSI is reported alongside.
- embedding: MMD with a Gaussian kernel (median bandwidth) on input embeddings, p-value by
  permutation; the effect size is the ROC AUC of a leave-one-out kernel domain classifier
  (0.5: live traffic cannot be told from training data, 1.0: always can).
- labels (classification): Jensen-Shannon divergence of reference vs live label shares, p-value
  by the exact permutation distribution (multivariate hypergeometric), valid with 77 labels and
  30 requests. The reference is the fine-tuned model's own outputs on the test split when the
  run has been evaluated (eval/report.json): live labels are model outputs too, and a model's
  output mix differs from the true label mix by its own confusions. Otherwise the training labels.
- json_fields (JSON tasks): presence rates of the reference's fields, p-value by permutation.
- invalid_outputs: share of outputs outside the label set or unparseable. Against the evaluated
  model's outputs: one-sided Fisher exact test (invalid share higher live than at evaluation);
  without an evaluation, or with `invalid_baseline` set: one-sided exact binomial test.

Multiple testing: with k checks run, a check warns at p < warn_alpha/k and alerts at
p < alert_alpha/k (Bonferroni), so on unshifted traffic the chance that *any* check alerts is at
most alert_alpha. A check must also exceed a small effect size to fire, so that a very large
window does not alert on a shift too small to matter. Windows smaller than `min_window` get a
"not enough data" answer, never a verdict.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from specialize.config import DriftConfig
from specialize.errors import ConfigError, DataError

Level = Literal["ok", "warn", "alert", "skipped"]
Overall = Literal["ok", "warn", "alert", "not_enough_data"]
_RANK = {"skipped": -1, "ok": 0, "warn": 1, "alert": 2}
DEFAULT_INVALID_BASELINE = 0.02
MIN_EVAL_OUTPUTS = 10  # fewer valid evaluated outputs than this: compare labels with training instead


class CheckResult(BaseModel):
    name: str
    test: str
    n_ref: int = 0
    n_live: int = 0
    statistic: float | None = None
    p_value: float | None = None
    effect: float | None = None
    effect_name: str = ""
    min_effect: float = 0.0
    warn_threshold: float | None = None  # p-value thresholds after the Bonferroni correction
    alert_threshold: float | None = None
    level: Level = "skipped"
    note: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)
    plot: dict[str, Any] = Field(default_factory=dict, repr=False)


class DriftReport(BaseModel):
    level: Overall
    message: str
    n_rows: int
    n_used: int
    n_errors: int = 0
    min_window: int
    window: dict[str, float | None] = Field(default_factory=dict)
    task: str
    embedder: str
    length_unit: str
    correction: str = ""
    permutations: int = 0
    checks: list[CheckResult] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    run: str | None = None
    adapter: str | None = None

    @property
    def alert(self) -> bool:
        return self.level == "alert"

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)


# ------------------------------------------------------------------------------ the request log

_COLUMNS = (
    "id",
    "ts",
    "model",
    "adapter",
    "prompt",
    "completion",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "finish_reason",
)
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(since: str | float | None, now: float | None = None) -> float | None:
    """Unix seconds from a number, a duration back from now ('90m', '24h', '7d') or an ISO date."""
    if since is None or since == "":
        return None
    if isinstance(since, int | float):
        return float(since)
    text = since.strip()
    match = _RELATIVE.match(text)
    if match:
        return (now if now is not None else time.time()) - float(match.group(1)) * _UNIT_SECONDS[
            match.group(2)
        ]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {since!r}: give unix seconds, a duration like 24h / 7d / 30m, or an ISO date/time"
        ) from None
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


def read_window(
    log_path: str | Path,
    adapter: str | None = None,
    since: str | float | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Requests from the request log, oldest first: the most recent `limit` since `since`,
    for one adapter (by its name in `adapter`, or in `model` when the log has no adapter)."""
    path = Path(log_path)
    if not path.is_file():
        raise DataError(f"{path}: request log not found (start the server with request logging on)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot open the request log: {exc}") from None
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        if not present:
            raise DataError(f"{path}: not a request log (no table 'requests')")
        cols = ", ".join(c if c in present else f"NULL AS {c}" for c in _COLUMNS)
        where, args = [], []
        if adapter:
            where.append("(adapter = ? OR (adapter IS NULL AND model = ?))")
            args += [adapter, adapter]
        start = parse_since(since)
        if start is not None:
            where.append("ts >= ?")
            args.append(start)
        query = f"SELECT {cols} FROM requests"
        query += (" WHERE " + " AND ".join(where)) if where else ""
        query += " ORDER BY ts DESC, id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        cursor = conn.execute(query, args)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: cannot read the request log: {exc}") from None
    finally:
        conn.close()
    rows.reverse()
    return rows


def prompt_text(prompt: str | None) -> str | None:
    """The user's request in a logged prompt: the last user message of a logged chat (a JSON
    list of messages), or the prompt string itself."""
    if prompt is None:
        return None
    stripped = prompt.lstrip()
    if stripped.startswith("["):
        try:
            messages = json.loads(stripped)
        except ValueError:
            return prompt
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            for message in reversed(messages):
                if message.get("role") == "user":
                    content = message.get("content")
                    if isinstance(content, list):  # OpenAI content parts
                        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                    return "" if content is None else str(content)
            return ""
    return prompt


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
    rows: Sequence[dict[str, Any]], profile: dict[str, Any], *, tokenizer: Any = None, embedder: Any = None
) -> LiveFeatures:
    """Features of logged requests, computed exactly as the profile computed the reference's."""
    from specialize.monitor.embed import embedder_from_state
    from specialize.monitor.profile import char_shares, json_paths, oov_share, token_count, word_count
    from specialize.outputs import match_label, parse_json_output

    used = [r for r in rows if r.get("status") is None or int(r["status"]) < 400]
    texts = [prompt_text(r.get("prompt")) for r in used]
    completions = [r.get("completion") for r in used]
    has_text = np.array([t is not None for t in texts], dtype=bool)
    has_out = np.array([c is not None for c in completions], dtype=bool)
    n = len(used)
    tokens = profile["length_unit"] == "tokens" and tokenizer is not None

    def lengths(values: list[str | None], present: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        if present.any():
            chosen = [v for v in values if v is not None]
            out[present] = token_count(chosen, tokenizer) if tokens else word_count(chosen)
        return out

    shown = [t for t in texts if t is not None]
    vocab = set(profile["vocabulary"]["words"])
    non_ascii, digits, oov = (np.full(n, np.nan) for _ in range(3))
    if shown:
        na, dg = char_shares(shown)
        non_ascii[has_text], digits[has_text] = np.round(na, 5), np.round(dg, 5)
        oov[has_text] = np.round(oov_share(shown, vocab), 5)
    state = profile["embedder"]
    embeddings = np.zeros((n, int(state["dim"])), dtype=np.float32)
    if shown:
        model = embedder or embedder_from_state(state)
        # The reference sample is stored as float16; round live vectors the same way.
        embeddings[has_text] = model.embed(shown).astype(np.float16).astype(np.float32)

    task = profile["task"]
    label_set = list((profile.get("labels") or {}).get("counts", {}))
    labels: list[str | None] = [None] * n
    invalid = np.full(n, np.nan)
    json_rows: list[list[int] | None] = [None] * n
    field_index = {f: j for j, f in enumerate((profile.get("json_fields") or {}).get("fields", []))}
    for i, completion in enumerate(completions):
        if completion is None:
            continue
        if task == "classification":
            labels[i] = match_label(completion, label_set)
            invalid[i] = float(labels[i] is None)
        elif task == "json":
            paths = json_paths(completion)
            invalid[i] = float(not parse_json_output(completion)[0])
            if paths is not None:
                json_rows[i] = sorted(field_index[p] for p in paths if p in field_index)
    return LiveFeatures(
        ts=np.array([float(r.get("ts") or 0.0) for r in used]),
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


# -------------------------------------------------------------------------------- statistics


def _memberships(rng: np.random.Generator, n_ref: int, n_live: int, permutations: int) -> np.ndarray:
    """(permutations, n_ref + n_live) bool: each row marks a random `n_live` of the pooled items
    as 'live'. Row order of the pool is reference first, then live."""
    keys = rng.random((permutations, n_ref + n_live))
    chosen = np.argpartition(keys, n_live - 1, axis=1)[:, :n_live]
    z = np.zeros(keys.shape, dtype=bool)
    np.put_along_axis(z, chosen, True, axis=1)
    return z


def _observed(n_ref: int, n_live: int) -> np.ndarray:
    return np.r_[np.zeros(n_ref, dtype=bool), np.ones(n_live, dtype=bool)]


def _p_value(observed: float, null: np.ndarray) -> float:
    # (1 + #{null >= observed}) / (1 + P): the observed labelling counts as one permutation, so
    # the p-value is exact (never below its nominal rate) rather than approximate.
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


def ks_permutation(ref: np.ndarray, live: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(KS distance, permutation p-value); `z` from `_memberships(len(ref), len(live))`."""
    pooled = np.concatenate([ref, live])
    m, n = ref.size, live.size
    order = np.argsort(pooled, kind="stable")
    ordered = pooled[order]
    ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # the last item of each tie
    seen = (ends + 1).astype(np.float64)

    def distance(members: np.ndarray) -> np.ndarray:
        live_seen = np.cumsum(members[..., order], axis=-1, dtype=np.int32)[..., ends]
        return np.abs(live_seen / n - (seen - live_seen) / m).max(axis=-1)

    observed = float(distance(_observed(m, n)))
    return observed, _p_value(observed, distance(z))


def psi(ref: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's deciles (ties merged)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, live, side="right"), minlength=edges.size + 1) / live.size
    r, q = np.clip(r, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - r) * np.log(q / r)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U / n m, ties count one half)."""
    ranks = _average_ranks(np.concatenate([positive, negative]))
    n, m = positive.size, negative.size
    return float((ranks[:n].sum() - n * (n + 1) / 2.0) / (n * m))


def mmd_permutation(ref: np.ndarray, live: np.ndarray, z: np.ndarray) -> tuple[float, float, float]:
    """(MMD^2, permutation p-value, leave-one-out domain-classifier AUC) on embeddings."""
    x = np.concatenate([ref, live]).astype(np.float32)
    m, n = ref.shape[0], live.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    off = d2[np.triu_indices(m + n, k=1)]
    scale = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / scale).astype(np.float32)

    def stat(members: np.ndarray) -> np.ndarray:
        a = np.where(members, np.float32(1.0 / n), np.float32(-1.0 / m))
        return np.einsum("...i,...i->...", a @ k, a)

    z0 = _observed(m, n)
    observed = float(stat(z0))
    p = _p_value(observed, stat(z))
    # Domain classifier: score each item by its mean similarity to the other live items minus
    # its mean similarity to the other reference items (the MMD witness, leave-one-out).
    k_off = k.astype(np.float64)
    np.fill_diagonal(k_off, 0.0)
    to_live, to_ref = k_off[:, m:].sum(1), k_off[:, :m].sum(1)
    score = to_live / (n - z0) - to_ref / (m - ~z0)
    return observed, p, auc(score[m:], score[:m])


def _xlogx(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)


def labels_permutation(
    ref_counts: np.ndarray, live_counts: np.ndarray, rng: np.random.Generator, permutations: int
) -> tuple[float, float]:
    """(Jensen-Shannon divergence of the label shares, exact permutation p-value).

    The null is the permutation distribution of the live counts given the pooled counts (a
    multivariate hypergeometric), so it is exact with 77 labels and 30 requests. JS rather than
    chi-square: chi-square divides by expected counts, so a few hits on a label that is rare in
    training dominate it, and a window merely more balanced than training would alert."""
    total = ref_counts + live_counts
    keep = total > 0
    total, live_counts = total[keep].astype(np.int64), live_counts[keep]
    n, m = int(live_counts.sum()), int(total.sum() - live_counts.sum())

    def js(live: np.ndarray) -> np.ndarray:
        p, q = live / n, (total - live) / m
        return (_xlogx(p).sum(-1) + _xlogx(q).sum(-1)) / 2 - _xlogx((p + q) / 2).sum(-1)

    observed = float(js(live_counts.astype(np.float64)))
    null = rng.multivariate_hypergeometric(total, n, size=permutations).astype(np.float64)
    return observed, _p_value(observed, js(null))


def presence_permutation(ref: np.ndarray, live: np.ndarray, z: np.ndarray) -> tuple[float, float, float]:
    """(statistic, p-value, largest presence-rate difference) for binary field-presence rows."""
    pooled = np.concatenate([ref, live]).astype(np.float32)
    m, n = ref.shape[0], live.shape[0]
    col = pooled.sum(0)
    rate = col / (m + n)
    weight = 1.0 / (rate * (1 - rate) + 1e-9)

    def stat(members: np.ndarray) -> np.ndarray:
        live_sum = members.astype(np.float32) @ pooled
        diff = live_sum / n - (col - live_sum) / m
        return (diff**2 * weight).sum(-1)

    observed = float(stat(_observed(m, n)))
    diff = live.mean(0) - ref.mean(0) if ref.size and live.size else np.zeros(1)
    return observed, _p_value(observed, stat(z)), float(np.abs(diff).max(initial=0.0))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    i = np.arange(k, n + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def hypergeom_sf(k: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= k) for X ~ Hypergeometric(total, marked, drawn): the one-sided Fisher exact test."""
    lo, hi = max(k, 0, drawn - (total - marked)), min(marked, drawn)
    if lo > hi:
        return 0.0 if k > hi else 1.0

    def log_choose(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    terms = np.array(
        [log_choose(marked, x) + log_choose(total - marked, drawn - x) for x in range(lo, hi + 1)]
    )
    top = terms.max()
    return float(min(1.0, math.exp(top - log_choose(total, drawn)) * np.exp(terms - top).sum()))


@dataclass
class _ReferenceOutputs:
    labels: list[str | None]
    labels_valid: int
    invalid: np.ndarray


def _reference_outputs(profile: dict[str, Any], outputs: Sequence[str] | None) -> _ReferenceOutputs | None:
    if not outputs:
        return None
    from specialize.outputs import match_label, parse_json_output

    if profile["task"] == "classification":
        label_set = list(profile["labels"]["counts"])
        labels = [match_label(o, label_set) for o in outputs]
        return _ReferenceOutputs(
            labels,
            sum(lab is not None for lab in labels),
            np.array([lab is None for lab in labels], dtype=float),
        )
    if profile["task"] == "json":
        return _ReferenceOutputs([], 0, np.array([not parse_json_output(o)[0] for o in outputs], dtype=float))
    return None


def _histograms(ref: np.ndarray, live: np.ndarray, bins: int = 20) -> dict[str, Any]:
    lo, hi = float(min(ref.min(), live.min())), float(max(ref.max(), live.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    return {
        "edges": np.round(edges, 4).tolist(),
        "ref": np.histogram(ref, edges)[0].tolist(),
        "live": np.histogram(live, edges)[0].tolist(),
    }


# ------------------------------------------------------------------------------------ checks

_NUMERIC = {  # check name -> (profile sample feature, live attribute)
    "input_length": ("input", "input_len"),
    "output_length": ("output", "output_len"),
    "non_ascii": ("non_ascii", "non_ascii"),
    "digits": ("digits", "digits"),
    "oov": ("oov", "oov"),
}


def _plan(profile: dict[str, Any], live: LiveFeatures, min_window: int) -> list[CheckResult]:
    """The checks that apply to this task, each with its sizes; too-small ones are skipped."""
    task = profile["task"]
    n_ref = int(profile["sample"]["n"])
    n_text = int(live.has_text.sum())
    plan = [CheckResult(name="input_length", test="KS permutation", n_ref=n_ref, n_live=n_text)]
    if task != "classification":  # a label's length says nothing the label check does not
        plan.append(
            CheckResult(
                name="output_length",
                test="KS permutation",
                n_ref=n_ref,
                n_live=int(np.count_nonzero(~np.isnan(live.output_len))),
            )
        )
    plan += [
        CheckResult(name=name, test="KS permutation", n_ref=n_ref, n_live=n_text)
        for name in ("non_ascii", "digits", "oov")
    ]
    plan.append(CheckResult(name="embedding", test="MMD permutation", n_ref=n_ref, n_live=n_text))
    if task == "classification":
        plan.append(
            CheckResult(
                name="labels",
                test="JS permutation",
                n_ref=int(profile["labels"]["n"]),
                n_live=sum(lab is not None for lab in live.labels),
            )
        )
    if task == "json":
        n_ref_json = sum(r is not None for r in profile["sample"].get("json_fields") or [])
        plan.append(
            CheckResult(
                name="json_fields",
                test="presence permutation",
                n_ref=n_ref_json,
                n_live=sum(r is not None for r in live.json_fields),
            )
        )
    if task in ("classification", "json"):
        plan.append(
            CheckResult(
                name="invalid_outputs",
                test="binomial (one-sided)",
                n_live=int(np.count_nonzero(~np.isnan(live.invalid))),
            )
        )
    for check in plan:
        if check.n_live < min_window:
            check.note = f"{check.n_live} usable requests, {min_window} needed"
        if check.name != "invalid_outputs" and check.n_ref < 2:
            check.note = "too few reference rows"
    return plan


def _reference(profile: dict[str, Any], name: str, unit: str) -> np.ndarray:
    feats = profile["sample"]["features"]
    key = _NUMERIC[name][0]
    if key in ("input", "output"):
        key = f"{key}_{unit}"
    return np.asarray(feats[key], dtype=np.float64)


def compare(
    profile: dict[str, Any],
    live: LiveFeatures,
    config: DriftConfig | None = None,
    *,
    reference_outputs: Sequence[str] | None = None,
    plots: bool = True,
) -> DriftReport:
    """Run every applicable check on a featurized window; see the module docstring.

    `reference_outputs`: the fine-tuned model's outputs on the test split (`evaluated_outputs`),
    the reference of the label and invalid-output checks when given. `plots=False` leaves out
    the data behind the report's plots (histograms, projections)."""
    from specialize.monitor.embed import decode_array

    config = config or DriftConfig()
    if len(live) > config.max_window:
        live = live.take(np.arange(len(live) - config.max_window, len(live)))
    base = {
        "n_rows": live.n_rows,
        "n_used": len(live),
        "n_errors": live.n_errors,
        "min_window": config.min_window,
        "window": {
            "start": float(live.ts.min()) if len(live) else None,
            "end": float(live.ts.max()) if len(live) else None,
        },
        "task": profile["task"],
        "embedder": profile["embedder"]["name"],
        "length_unit": live.length_unit,
        "config": config.model_dump(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": profile.get("run"),
    }
    if len(live) < config.min_window:
        return DriftReport(
            level="not_enough_data",
            **base,
            message=(
                f"not enough data: {len(live)} usable requests in the window, {config.min_window} needed for a verdict"
            ),
        )

    plan = _plan(profile, live, config.min_window)
    active = [c for c in plan if not c.note]
    if not active:
        return DriftReport(
            level="not_enough_data",
            checks=plan,
            **base,
            message=(
                "not enough data: no check has enough requests with text (is the log keeping only hashes?)"
            ),
        )
    k = len(active)
    warn_thr, alert_thr = config.warn_alpha / k, config.alert_alpha / k
    # Enough permutations that the smallest attainable p-value is well below the alert threshold.
    permutations = max(config.permutations, math.ceil(2.0 / alert_thr))
    rng = np.random.default_rng(config.seed)
    cache: dict[tuple[int, int], np.ndarray] = {}
    ref_out = _reference_outputs(profile, reference_outputs)

    def z_for(m: int, n: int) -> np.ndarray:
        if (m, n) not in cache:
            cache[(m, n)] = _memberships(rng, m, n, permutations)
        return cache[(m, n)]

    for check in active:
        check.warn_threshold, check.alert_threshold = warn_thr, alert_thr
        name = check.name
        if name in _NUMERIC:
            ref = _reference(profile, name, live.length_unit)
            values = getattr(live, _NUMERIC[name][1])
            current = values[~np.isnan(values)]
            check.statistic, check.p_value = ks_permutation(ref, current, z_for(ref.size, current.size))
            check.effect, check.effect_name, check.min_effect = check.statistic, "KS distance", config.min_ks
            check.extra = {
                "psi": psi(ref, current),
                "ref_mean": float(ref.mean()),
                "live_mean": float(current.mean()),
            }
            check.plot = _histograms(ref, current) if plots else {}
        elif name == "embedding":
            ref = decode_array(profile["sample"]["embeddings"])
            current = live.embeddings[live.has_text]
            check.statistic, check.p_value, check.effect = mmd_permutation(
                ref, current, z_for(len(ref), len(current))
            )
            check.effect_name, check.min_effect = "domain AUC", config.min_domain_auc
            check.plot = _projection(ref, current) if plots else {}
        elif name == "labels":
            names = list(profile["labels"]["counts"])
            index = {lab: i for i, lab in enumerate(names)}
            ref_counts = np.array([profile["labels"]["counts"][lab] for lab in names], dtype=np.int64)
            source = "training labels"
            if ref_out is not None and ref_out.labels_valid >= MIN_EVAL_OUTPUTS:
                ref_counts = np.bincount(
                    [index[lab] for lab in ref_out.labels if lab is not None], minlength=len(names)
                )
                source = "fine-tuned outputs on the test split"
            check.n_ref = int(ref_counts.sum())
            live_counts = np.bincount(
                [index[lab] for lab in live.labels if lab is not None], minlength=len(names)
            )
            check.statistic, check.p_value = labels_permutation(ref_counts, live_counts, rng, permutations)
            p_ref, p_live = ref_counts / ref_counts.sum(), live_counts / live_counts.sum()
            check.effect, check.effect_name = _js_distance(p_ref, p_live), "JS distance"
            top = np.argsort(-np.abs(p_live - p_ref))[:15]
            check.extra = {"reference": source}
            check.plot = (
                {
                    "labels": [names[i] for i in top],
                    "ref": p_ref[top].round(4).tolist(),
                    "live": p_live[top].round(4).tolist(),
                }
                if plots
                else {}
            )
        elif name == "json_fields":
            n_fields = len(profile["json_fields"]["fields"])
            ref = _presence([r for r in profile["sample"]["json_fields"] if r is not None], n_fields)
            current = _presence([r for r in live.json_fields if r is not None], n_fields)
            check.statistic, check.p_value, check.effect = presence_permutation(
                ref, current, z_for(len(ref), len(current))
            )
            check.effect_name = "largest presence difference"
        elif name == "invalid_outputs":
            flags = live.invalid[~np.isnan(live.invalid)]
            bad, n = int(flags.sum()), int(flags.size)
            check.min_effect, check.effect_name = config.min_invalid_excess, "share above reference"
            if config.invalid_baseline is None and ref_out is not None and ref_out.invalid.size:
                ref_bad, ref_n = int(ref_out.invalid.sum()), int(ref_out.invalid.size)
                check.test, check.n_ref = "Fisher exact (one-sided)", ref_n
                check.statistic, check.p_value = bad / n, hypergeom_sf(bad, ref_n + n, ref_bad + bad, n)
                check.effect = bad / n - ref_bad / ref_n
                check.extra = {
                    "invalid": bad,
                    "reference": "fine-tuned outputs on the test split",
                    "reference_share": ref_bad / ref_n,
                }
            else:
                baseline = (
                    config.invalid_baseline
                    if config.invalid_baseline is not None
                    else DEFAULT_INVALID_BASELINE
                )
                check.statistic, check.p_value = bad / n, binomial_sf(bad, n, baseline)
                check.effect = bad / n - baseline
                check.extra = {"invalid": bad, "reference": "baseline rate", "reference_share": baseline}
        big_enough = check.effect is None or check.effect >= check.min_effect
        p = check.p_value if check.p_value is not None else 1.0
        check.level = (
            "alert" if p < alert_thr and big_enough else "warn" if p < warn_thr and big_enough else "ok"
        )

    level: Overall = max((c.level for c in active), key=_RANK.__getitem__)  # type: ignore[assignment]
    fired = [c for c in active if c.level == level and level != "ok"]
    if fired:
        what = ", ".join(f"{c.name} (p={c.p_value:.2g}, {c.effect_name} {c.effect:.2f})" for c in fired)
        message = f"{level}: {what}"
    else:
        message = f"ok: no drift found by {k} checks over {len(live)} requests"
    return DriftReport(
        level=level,
        message=message,
        checks=plan,
        permutations=permutations,
        correction=f"Bonferroni over {k} checks: warn at p < {warn_thr:.2g}, alert at p < {alert_thr:.2g}",
        **base,
    )


def _presence(rows: list[list[int]], n_fields: int) -> np.ndarray:
    out = np.zeros((len(rows), max(n_fields, 1)), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, row] = 1.0
    return out


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def _projection(ref: np.ndarray, live: np.ndarray, iterations: int = 12) -> dict[str, Any]:
    """Both samples on the first two principal axes of the reference (for the scatter plot),
    found by subspace iteration: a full SVD costs seconds on a busy CPU for two axes."""
    centre = ref.mean(0)
    centred = (ref - centre).astype(np.float64)
    axes = np.random.default_rng(0).standard_normal((ref.shape[1], 2))
    for _ in range(iterations):
        axes, _ = np.linalg.qr(centred.T @ (centred @ axes))
    return {
        "ref": np.round((ref - centre) @ axes, 3).tolist(),
        "live": np.round((live - centre) @ axes, 3).tolist(),
    }


# ------------------------------------------------------------------------------- entry points


def detect_drift(
    profile: dict[str, Any],
    window_rows: Sequence[dict[str, Any]],
    config: DriftConfig | None = None,
    *,
    tokenizer: Any = None,
    embedder: Any = None,
    reference_outputs: Sequence[str] | None = None,
) -> DriftReport:
    """Compare request-log rows (dicts with prompt, completion, ts, status) with a profile."""
    live = featurize(window_rows, profile, tokenizer=tokenizer, embedder=embedder)
    return compare(profile, live, config, reference_outputs=reference_outputs)


def drift_over_time(
    profile: dict[str, Any],
    live: LiveFeatures | Sequence[dict[str, Any]],
    config: DriftConfig | None = None,
    *,
    n_windows: int | None = None,
    reference_outputs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The checks over consecutive windows of traffic (oldest first), each at least `min_window`
    requests: what the time plot shows. A compact dict per window."""
    config = config or DriftConfig()
    if not isinstance(live, LiveFeatures):
        live = featurize(live, profile)
    order = np.argsort(live.ts, kind="stable")
    size = max(config.min_window, math.ceil(len(live) / (n_windows or config.time_windows)))
    starts = list(range(0, len(live), size))
    if len(starts) > 1 and len(live) - starts[-1] < config.min_window:
        starts.pop()  # the short tail joins the window before it
    out = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(live)
        part = live.take(order[start:stop])
        part.n_rows, part.n_errors = len(part), 0
        report = compare(profile, part, config, reference_outputs=reference_outputs, plots=False)
        out.append(
            {
                "start": report.window.get("start"),
                "end": report.window.get("end"),
                "n": len(part),
                "level": report.level,
                "checks": {
                    c.name: {
                        "p_value": c.p_value,
                        "effect": c.effect,
                        "level": c.level,
                        "alert_threshold": c.alert_threshold,
                    }
                    for c in report.checks
                },
            }
        )
    return out


def load_drift_config(run_dir: str | Path | None = None, path: str | Path | None = None) -> DriftConfig:
    """DriftConfig from a YAML file (its keys, or a run config's `monitor:` section), else from the
    run's config.yaml `monitor:` section, else the defaults."""
    import yaml
    from pydantic import ValidationError

    sources = [Path(path)] if path is not None else []
    if run_dir is not None:
        sources.append(Path(run_dir) / "config.yaml")
    for source in sources:
        if not source.is_file():
            if path is not None and source == Path(path):
                raise ConfigError(f"{source}: drift config not found")
            continue
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of drift settings")
        section = data.get("monitor", data if source == Path(path or "") else None)
        if section is None:
            continue
        try:
            return DriftConfig.model_validate(section)
        except ValidationError as exc:
            lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise ConfigError(f"{source}: invalid drift settings\n" + "\n".join(lines)) from None
    return DriftConfig()


def evaluated_outputs(run_dir: str | Path) -> list[str] | None:
    """The fine-tuned model's outputs on the test split, if the run was evaluated."""
    report = Path(run_dir) / "eval" / "report.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        tuned = next(c for c in data["contenders"] if c["name"] == "fine-tuned")
        return [str(p) for p in tuned["predictions"]]
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


@dataclass
class DriftRun:
    report: DriftReport
    over_time: list[dict[str, Any]] = field(default_factory=list)


def run_drift(
    run_dir: str | Path,
    log_path: str | Path,
    *,
    adapter: str | None = None,
    since: str | float | None = None,
    config: DriftConfig | None = None,
    tokenizer: Any = None,
    over_time: bool = True,
    history: int = 20_000,
    profile: dict[str, Any] | None = None,
) -> DriftRun:
    """Drift of one run's traffic: the most recent window, and (optionally) windows over time."""
    from specialize.monitor.profile import load_profile

    profile = profile or load_profile(run_dir)
    config = config or load_drift_config(run_dir)
    rows = read_window(
        log_path, adapter=adapter, since=since, limit=history if over_time else config.max_window
    )
    live = featurize(rows, profile, tokenizer=tokenizer)
    outputs = evaluated_outputs(run_dir) if Path(run_dir).is_dir() else None
    report = compare(profile, live, config, reference_outputs=outputs)
    report.adapter = adapter
    timeline = (
        drift_over_time(profile, live, config, reference_outputs=outputs) if over_time and len(live) else []
    )
    return DriftRun(report=report, over_time=timeline)


def drift_for_adapter(
    run_dir: str | Path,
    log_path: str | Path,
    adapter: str | None,
    window: int = 500,
    *,
    since: str | float | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """For the server's GET /v1/adapters/{name}/drift: the report over the last `window`
    requests of `adapter`, as JSON-ready data. `run_dir` is the run (or its adapter directory,
    or the profile.json file). CPU-bound for up to a second or two: call it off the event loop."""
    from specialize.monitor.profile import load_profile

    run_path = Path(run_dir)
    root = run_path if (run_path / "profile.json").is_file() else run_path.parent
    config = load_drift_config(root if root.is_dir() else None).model_copy(update={"max_window": window})
    result = run_drift(
        root,
        log_path,
        adapter=adapter,
        since=since,
        config=config,
        tokenizer=tokenizer,
        over_time=False,
        profile=load_profile(run_path),
    )
    data = result.report.model_dump()
    for check in data["checks"]:
        check.pop("plot", None)
    return data
