"""Table 2 figures on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.models.cxr.evaluate import ModelPredictions, compare_models, evaluate_predictions


def test_figures_by_hand() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # AUC by hand: of the 16 (positive, negative) pairs, only (0.4, 0.6) is ordered wrong.
    masks = [np.zeros((8, 8))] * 4 + [np.pad(np.ones((2, 2)), 3)] * 4
    maps = [m * 0.9 for m in masks]  # a perfect heat map: Dice 1 on every nodule image
    ids = [f"i{k}" for k in range(8)]
    boxes = pd.DataFrame(
        {"image_id": ids[4:], "x": 3, "y": 3, "width": 2, "height": 2, "box_probability": 0.9}
    )
    gt = pd.DataFrame({"image_id": ids[4:], "x1": 3, "y1": 3, "x2": 5, "y2": 5})
    r = evaluate_predictions(y, ModelPredictions(p, maps, boxes), masks, ids, gt)
    assert r["auc"] == pytest.approx(15 / 16)
    # Youden: threshold 0.7 gives Se 3/4, Sp 1 (J 0.75); 0.4 gives Se 1, Sp 3/4 (J 0.75);
    # ties go to the highest threshold.
    assert (r["youden_threshold"], r["sensitivity_youden"], r["specificity_youden"]) == (
        0.7,
        0.75,
        1.0,
    )
    assert r["specificity_at_sp90"] >= 0.9 and r["sensitivity_at_sp90"] == 0.75
    assert r["dice"] == 1.0 and r["froc_sens_at_0.25"] == 1.0


def test_delong_between_models() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    t = compare_models(y, {"a": np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), "b": np.arange(6.0)})
    assert list(t[["model_a", "model_b"]].iloc[0]) == ["a", "b"]
    assert t["p_value"].iloc[0] == 1.0  # identical rankings: identical curves
