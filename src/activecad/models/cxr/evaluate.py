"""Table 2 of Kim et al. for any set of CXR models: AUC, DeLong, Se/Sp, Dice, box FROC.

Per model and test set: AUC with DeLong's 95 % interval; sensitivity and specificity at the
Youden point and at a fixed specificity (0.90); the Dice coefficient of the heat map (CAM
for Network 1, probability map for Network 2) thresholded at ``DICE_THRESHOLD`` against
the nodule mask, averaged over the nodule images (as the paper, which scores localisation on
its pixel-labelled set); FROC of the heat-map boxes per image (IoU > 0.1, a box on a small
nodule being coarse at the map's resolution). Between every pair of models on the same
images: DeLong's test of the AUC difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from activecad.metrics import (
    delong_interval,
    delong_test,
    dice_score,
    froc_curve,
    match_boxes,
    roc_curve,
    sensitivity_at_fp_rates,
    youden_threshold,
)

__all__ = [
    "BOX_IOU",
    "DICE_THRESHOLD",
    "FIXED_SPECIFICITY",
    "ModelPredictions",
    "compare_models",
    "evaluate_predictions",
]

DICE_THRESHOLD = 0.5
FIXED_SPECIFICITY = 0.90
BOX_IOU = 0.1


@dataclass
class ModelPredictions:
    """One model's output on one test set.

    Attributes:
        probability: (N,) image nodule probabilities.
        heatmaps: N (y, x) maps in [0, 1] on the masks' grid, or None.
        boxes: table ``image_id, x, y, width, height, box_probability`` or None.
    """

    probability: np.ndarray
    heatmaps: list[np.ndarray] | None = None
    boxes: pd.DataFrame | None = None


def _at_specificity(y: np.ndarray, p: np.ndarray, spec: float) -> tuple[float, float]:
    fpr, tpr, _ = roc_curve(y, p)
    ok = (1.0 - fpr) >= spec - 1e-12
    k = int(np.flatnonzero(ok)[-1])
    return float(tpr[k]), float(1.0 - fpr[k])


def evaluate_predictions(
    labels: np.ndarray,
    pred: ModelPredictions,
    masks: list[np.ndarray] | None = None,
    image_ids: list[str] | None = None,
    gt_boxes: pd.DataFrame | None = None,
) -> dict[str, float]:
    """The Table 2 figures of one model on one test set.

    Args:
        labels: (N,) 0/1 image labels (the truth of the test set).
        pred: the model's predictions.
        masks: N (y, x) nodule masks (for Dice), or None.
        image_ids: N ids (for the box FROC), or None.
        gt_boxes: truth boxes ``image_id, x1, y1, x2, y2`` (cxr_boxes layout), or None.

    Returns:
        ``auc, auc_lower, auc_upper, youden_threshold, sensitivity_youden,
        specificity_youden, sensitivity_at_sp90, specificity_at_sp90`` and, when given the
        inputs, ``dice`` and ``froc_sens_at_0.25|0.5|1|2`` (FPs per image).
    """
    y = np.asarray(labels).astype(int)
    p = np.asarray(pred.probability, dtype=float)
    ci = delong_interval(y, p)
    thr, se, sp = youden_threshold(y, p)
    se90, sp90 = _at_specificity(y, p, FIXED_SPECIFICITY)
    out = {
        "n": len(y),
        "positives": int(y.sum()),
        "auc": ci.auc,
        "auc_lower": ci.lower,
        "auc_upper": ci.upper,
        "youden_threshold": thr,
        "sensitivity_youden": se,
        "specificity_youden": sp,
        "sensitivity_at_sp90": se90,
        "specificity_at_sp90": sp90,
    }
    if masks is not None and pred.heatmaps is not None:
        pos = np.flatnonzero(y == 1)
        if len(pos):
            d = [
                float(
                    dice_score(masks[i][None] > 0, pred.heatmaps[i][None], threshold=DICE_THRESHOLD)
                )
                for i in pos
            ]
            out["dice"] = float(np.mean(d))
    if image_ids is not None and gt_boxes is not None and pred.boxes is not None:
        b = pred.boxes.dropna(subset=["x"])
        pb = (
            np.column_stack([b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]])
            .astype(float)
            .reshape(-1, 4)
        )
        g = gt_boxes[gt_boxes["image_id"].isin(image_ids)]
        m = match_boxes(
            b["image_id"].astype(str).to_numpy(),
            pb,
            b["box_probability"].to_numpy(dtype=float),
            g["image_id"].astype(str).to_numpy(),
            g[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float).reshape(-1, 4),
            iou_threshold=BOX_IOU,
            images=list(image_ids),
        )
        rates = (0.25, 0.5, 1.0, 2.0)
        fps, sens, _ = froc_curve(
            m.tp_probs, m.fp_probs, n_nodules=len(m.nodule_scans), n_scans=len(m.scans)
        )
        for r, s in zip(rates, sensitivity_at_fp_rates(fps, sens, rates), strict=True):
            out[f"froc_sens_at_{r:g}"] = float(s)
    return out


def compare_models(labels: np.ndarray, probabilities: dict[str, np.ndarray]) -> pd.DataFrame:
    """DeLong's test between every pair of models scored on the same images.

    Returns:
        ``model_a, model_b, auc_a, auc_b, z, p_value`` per pair.
    """
    rows = []
    for a, b in combinations(probabilities, 2):
        t = delong_test(labels, probabilities[a], probabilities[b])
        rows.append(
            {
                "model_a": a,
                "model_b": b,
                "auc_a": t.auc_a,
                "auc_b": t.auc_b,
                "z": t.z,
                "p_value": t.p_value,
            }
        )
    return pd.DataFrame(rows)
