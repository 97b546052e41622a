"""Recall@K for similar-nodule search (Park et al. 2017, Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from activecad.metrics._validation import as_ids, check_finite, check_same_length


def recall_at_k(
    embeddings: ArrayLike,
    labels: ArrayLike,
    k: Sequence[int] = (1, 2, 3, 4),
    *,
    metric: str = "euclidean",
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Fraction of queries with at least one same-label item among their K nearest neighbours.

    Every item is a query against all others (the query itself excluded). Distance ties
    are broken by item order, so the result is deterministic.

    Args:
        embeddings: (N, D) feature vectors.
        labels: (N,) labels (e.g. malignancy groups; map "1,2 vs 4,5" before calling and
            drop the items to leave out, as Park et al. 2017 drops score 3).
        k: the K values.
        metric: ``"euclidean"`` or ``"cosine"``.
        chunk_size: queries processed at once (memory ~ chunk_size x N).

    Returns:
        {K: recall} for each K.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}.")
    check_finite(x, "embeddings")
    y = as_ids(labels, "labels")
    check_same_length(embeddings=x, labels=y)
    ks = sorted({int(v) for v in k})
    if not ks or ks[0] < 1 or ks[-1] > len(x) - 1:
        raise ValueError(f"k must lie in [1, N - 1] = [1, {len(x) - 1}], got {list(k)}.")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("cosine distance is undefined for an all-zero embedding.")
        x = x / norms
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")
    sq = np.sum(x**2, axis=1)
    k_max = ks[-1]
    first_hit = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), chunk_size):
        hi = min(lo + chunk_size, len(x))
        d = sq[lo:hi, None] + sq[None, :] - 2.0 * x[lo:hi] @ x.T
        d[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k_max]
        same = y[nearest] == y[lo:hi, None]
        # Rank of the first same-label neighbour; k_max + 1 when none is within k_max.
        first_hit[lo:hi] = np.where(same.any(axis=1), np.argmax(same, axis=1) + 1, k_max + 1)
    return {kk: float(np.mean(first_hit <= kk)) for kk in ks}
