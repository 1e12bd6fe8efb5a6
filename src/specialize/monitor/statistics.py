"""The two-sample tests behind the drift checks, and the data behind the report's plots.

Pure numpy: no I/O, no configuration, no profile. Every permutation test takes `z`, a
(permutations, n_ref + n_live) boolean matrix from `memberships` marking which pooled items are
'live' in each permutation, so that the caller can draw it once per pair of sample sizes and
share it between the checks of those sizes. The p-values count the observed labelling as one
permutation, which makes them exact (never below their nominal rate) for any sample size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------- permutations


def memberships(rng: np.random.Generator, n_ref: int, n_live: int, permutations: int) -> np.ndarray:
    """(permutations, n_ref + n_live) bool: each row marks a random `n_live` of the pooled items
    as 'live'. Row order of the pool is reference first, then live."""
    keys = rng.random((permutations, n_ref + n_live))
    chosen = np.argpartition(keys, n_live - 1, axis=1)[:, :n_live]
    z = np.zeros(keys.shape, dtype=bool)
    np.put_along_axis(z, chosen, True, axis=1)
    return z


def observed_labels(n_ref: int, n_live: int) -> np.ndarray:
    return np.r_[np.zeros(n_ref, dtype=bool), np.ones(n_live, dtype=bool)]


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    # (1 + #{null >= observed}) / (1 + P): the observed labelling counts as one permutation, so
    # the p-value is exact (never below its nominal rate) rather than approximate.
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


def ks_permutation(ref: np.ndarray, live: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(KS distance, permutation p-value); `z` from `memberships(len(ref), len(live))`."""
    pooled = np.concatenate([ref, live])
    m, n = ref.size, live.size
    order = np.argsort(pooled, kind="stable")
    ordered = pooled[order]
    ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # the last item of each tie
    seen = (ends + 1).astype(np.float64)

    def distance(members: np.ndarray) -> np.ndarray:
        live_seen = np.cumsum(members[..., order], axis=-1, dtype=np.int32)[..., ends]
        return np.abs(live_seen / n - (seen - live_seen) / m).max(axis=-1)

    observed = float(distance(observed_labels(m, n)))
    return observed, permutation_p_value(observed, distance(z))


def psi(ref: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's deciles (ties merged)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, live, side="right"), minlength=edges.size + 1) / live.size
    r, q = np.clip(r, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - r) * np.log(q / r)))


def average_ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U / n m, ties count one half)."""
    ranks = average_ranks(np.concatenate([positive, negative]))
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

    z0 = observed_labels(m, n)
    observed = float(stat(z0))
    p = permutation_p_value(observed, stat(z))
    # Domain classifier: score each item by its mean similarity to the other live items minus
    # its mean similarity to the other reference items (the MMD witness, leave-one-out).
    k_off = k.astype(np.float64)
    np.fill_diagonal(k_off, 0.0)
    to_live, to_ref = k_off[:, m:].sum(1), k_off[:, :m].sum(1)
    score = to_live / (n - z0) - to_ref / (m - ~z0)
    return observed, p, auc(score[m:], score[:m])


def xlogx(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)


def labels_permutation(
    ref_counts: np.ndarray, live_counts: np.ndarray, rng: np.random.Generator, permutations: int
) -> tuple[float, float]:
    """(Jensen-Shannon divergence of the label shares, exact permutation p-value).

    The null is the permutation distribution of the live counts given the pooled counts (a
    multivariate hypergeometric), so it is exact for any number of labels and any window size. JS rather than
    chi-square: chi-square divides by expected counts, so a few hits on a label that is rare in
    training dominate it, and a window merely more balanced than training would alert."""
    total = ref_counts + live_counts
    keep = total > 0
    total, live_counts = total[keep].astype(np.int64), live_counts[keep]
    n, m = int(live_counts.sum()), int(total.sum() - live_counts.sum())

    def js(live: np.ndarray) -> np.ndarray:
        p, q = live / n, (total - live) / m
        return (xlogx(p).sum(-1) + xlogx(q).sum(-1)) / 2 - xlogx((p + q) / 2).sum(-1)

    observed = float(js(live_counts.astype(np.float64)))
    null = rng.multivariate_hypergeometric(total, n, size=permutations).astype(np.float64)
    return observed, permutation_p_value(observed, js(null))


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

    observed = float(stat(observed_labels(m, n)))
    diff = live.mean(0) - ref.mean(0) if ref.size and live.size else np.zeros(1)
    return observed, permutation_p_value(observed, stat(z)), float(np.abs(diff).max(initial=0.0))


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


# ---------------------------------------------------- effect sizes, inputs and the plots' data


def histograms(ref: np.ndarray, live: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """Both samples' counts over shared equal-width bins (for the report's histograms)."""
    lo, hi = float(min(ref.min(), live.min())), float(max(ref.max(), live.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    return {
        "edges": np.round(edges, 4).tolist(),
        "ref": np.histogram(ref, edges)[0].tolist(),
        "live": np.histogram(live, edges)[0].tolist(),
    }


def presence_matrix(rows: list[list[int]], n_fields: int) -> np.ndarray:
    """(rows, fields) 0/1 from each row's list of present field indices."""
    out = np.zeros((len(rows), max(n_fields, 1)), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, row] = 1.0
    return out


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, so in [0, 1]) between two share vectors."""
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def projection(ref: np.ndarray, live: np.ndarray, iterations: int = 12) -> dict[str, Any]:
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
