"""Score fusion of MELD's classification heads by the organ-gating weights (Eq. 1).

MELD (Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously
Labeled Datasets", 2020, section 3.1) scores every proposal with a whole-body head (index 0)
and one head per organ (lymph node, lung and liver in the paper). A gating head predicts
how much the proposal belongs to each organ, ``w_i`` in [0, 1]; the whole-body head always
weighs ``w_0 = 1``. Training weighs the heads' losses by the same weights,
``L = sum_i w_i L_i``, and testing fuses the scores by Eq. 1::

    s = (sum_i w_i s_i) / (sum_i w_i)

Because ``w_0 = 1`` the denominator is at least 1: the fusion is defined for every
proposal, and a proposal that belongs to no organ keeps the whole-body score.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["fuse_head_scores", "head_weights"]


def _check_unit_interval(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a last axis of heads, got a scalar {arr}.")
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must lie in [0, 1] (probabilities, after the sigmoid), got "
            f"{arr[first]} at index {first}."
        )
    return arr


def head_weights(organ_gates: ArrayLike) -> NDArray[np.float64]:
    """The weights of all heads: ``w_0 = 1`` for the whole-body head, then the organ gates.

    The same weights scale the heads' losses in training (``L = sum_i w_i L_i``) and their
    scores in testing (:func:`fuse_head_scores`).

    Args:
        organ_gates: (..., K - 1) gating-head outputs ``w_1 .. w_{K-1}`` in [0, 1], one per
            organ head, in the order of the organ heads; the leading axes index proposals.

    Returns:
        (..., K) weights, column 0 equal to 1.
    """
    gates = _check_unit_interval(organ_gates, "organ_gates")
    ones = np.ones((*gates.shape[:-1], 1))
    return np.concatenate((ones, gates), axis=-1)


def fuse_head_scores(head_scores: ArrayLike, organ_gates: ArrayLike) -> NDArray[np.float64]:
    """Fuse the heads' detection scores by the organ weights (MELD's Eq. 1).

    Args:
        head_scores: (..., K) score of each proposal from each classification head, in
            [0, 1]; column 0 is the whole-body head, columns 1 .. K-1 the organ heads.
        organ_gates: (..., K - 1) the gating head's weights of the organ heads, in [0, 1].
            There is no weight for the whole-body head: it is 1, always.

    Returns:
        (...) fused scores in [0, 1], ``sum_i w_i s_i / sum_i w_i`` with ``w_0 = 1``.

    Raises:
        ValueError: a value outside [0, 1] or not finite, or shapes that do not pair
            K scores with K - 1 gates.
    """
    scores = _check_unit_interval(head_scores, "head_scores")
    gates = _check_unit_interval(organ_gates, "organ_gates")
    if gates.shape != (*scores.shape[:-1], scores.shape[-1] - 1):
        raise ValueError(
            f"head_scores of shape {scores.shape} need organ_gates of shape "
            f"{(*scores.shape[:-1], scores.shape[-1] - 1)}, one gate per organ head (the "
            f"whole-body head's weight is 1, not an input), got {gates.shape}."
        )
    weights = head_weights(gates)
    return np.sum(weights * scores, axis=-1) / np.sum(weights, axis=-1)
