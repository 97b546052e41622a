"""Dice between heat maps and masks (Kim et al. 2023: nodule localisation on radiographs)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from activecad.metrics._validation import check_finite


def dice_score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    threshold: float | None = 0.5,
    per_image: bool = False,
    empty_score: float = 1.0,
) -> float | NDArray[np.float64]:
    """Dice coefficient 2|P ∩ G| / (|P| + |G|) per image, or its mean over images.

    Args:
        y_true: (N, ...) ground-truth masks (nonzero = lesion), one image per first index;
            the rest of the shape is (y, x) for radiographs or (z, y, x) for CT.
        y_pred: (N, ...) heat maps of the same shape (probabilities or activations).
        threshold: heat-map values >= threshold form the predicted mask; ``None`` gives the
            soft Dice 2 sum(p g) / (sum p + sum g) with the raw values (expected in [0, 1]).
        per_image: return the (N,) per-image scores instead of their mean.
        empty_score: score of an image where both prediction and mask are empty.

    Returns:
        The mean Dice (float) or the (N,) per-image Dice.
    """
    g = np.asarray(y_true)
    p = np.asarray(y_pred, dtype=np.float64)
    if g.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {g.shape} vs {p.shape}.")
    if g.ndim < 2:
        raise ValueError(f"expected (N, ...) images with a leading image axis, got {g.shape}.")
    check_finite(p, "y_pred")
    truth = (g != 0).reshape(len(g), -1).astype(np.float64)
    flat = p.reshape(len(p), -1)
    if threshold is None:
        if np.any((flat < 0) | (flat > 1)):
            raise ValueError("soft Dice needs heat maps in [0, 1]; pass a threshold instead.")
        pred = flat
    else:
        pred = (flat >= threshold).astype(np.float64)
    inter = np.sum(pred * truth, axis=1)
    denom = pred.sum(axis=1) + truth.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(denom > 0, 2.0 * inter / denom, empty_score)
    return scores if per_image else float(scores.mean())
