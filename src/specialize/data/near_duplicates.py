"""Near-duplicate requests: MinHash with banding (LSH), verified by exact Jaccard on 3-grams.

Exact comparison of every pair is quadratic; MinHash signatures put similar texts in a shared
bucket with high probability, and only the pairs inside a bucket are compared exactly.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

_PRIME = (1 << 31) - 1
_NEAR_DUPLICATE_CHARS = 1000
_BANDS, _BAND_ROWS = 16, 8  # 128 hashes; pairs at Jaccard 0.9 share a band with p > 0.999
_rng = np.random.default_rng(0)
_A = _rng.integers(1, _PRIME, size=_BANDS * _BAND_ROWS, dtype=np.int64)[:, None]
_B = _rng.integers(0, _PRIME, size=_BANDS * _BAND_ROWS, dtype=np.int64)[:, None]


def _shingles(text: str) -> frozenset[str]:
    # Long requests are compared by their start: near-copies of documents share it, and the cost
    # (128 hashes per 3-gram) stays bounded however long the inputs are.
    text = text[:_NEAR_DUPLICATE_CHARS]
    return frozenset(text[i : i + 3] for i in range(len(text) - 2)) or frozenset([text])


def _jaccard(a: frozenset[str], b: frozenset[str], threshold: float) -> float:
    if min(len(a), len(b)) < threshold * max(len(a), len(b)):
        return 0.0  # cannot reach the threshold: skip the set operations
    return len(a & b) / len(a | b)


def near_pairs(texts: list[str], threshold: float = 0.9) -> list[tuple[int, int]]:
    """Pairs of (distinct) texts whose 3-gram Jaccard similarity reaches the threshold."""
    shingles = [_shingles(t) for t in texts]
    buckets: dict[bytes, list[int]] = defaultdict(list)
    for i, sh in enumerate(shingles):
        ids = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.int64, count=len(sh)) % _PRIME
        signature = ((_A * ids + _B) % _PRIME).min(axis=1)
        for band in range(_BANDS):
            buckets[
                band.to_bytes(1, "little") + signature[band * _BAND_ROWS : (band + 1) * _BAND_ROWS].tobytes()
            ].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        # Compare each member with the bucket's first and previous one, not with all: linear even
        # when thousands of templated requests share a bucket; groups still join transitively.
        for k in range(1, len(members)):
            for j in {members[0], members[k - 1]}:
                if _jaccard(shingles[j], shingles[members[k]], threshold) >= threshold:
                    pairs.add((j, members[k]))
    return sorted(pairs)
