"""The detector's pool scores become the heuristics' plain records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.active.heuristics import get_heuristic
from activecad.active.items import Detections, ItemScores, item_scores_from_pool


def test_pool_score_to_item_scores():
    from activecad.models.detector3d.scoring import PoolScore

    detections = pd.DataFrame(
        {
            "seriesuid": ["1.2"] * 2,
            "coordX": [1.0, 2.0],
            "coordY": [0.0, 0.0],
            "coordZ": [0.0, 0.0],
            "probability": [0.9, 0.2],
            "diameter_mm": [5.0, 6.0],
        }
    )
    scored = PoolScore(
        detections=detections,
        l_scan=0.4,
        l_roi=0.7,
        l_roi_variants={"loss_of_confident": 0.7, "loss_above_tau": 0.0, "score_above_tau": 0.9},
        embedding=np.ones(8, np.float32),
        seriesuid="1.2",
    )
    item = item_scores_from_pool(scored)
    assert item.item == "1.2" and item.l_scan == pytest.approx(0.4)
    assert item.l_roi["score_above_tau"] == pytest.approx(0.9)
    assert item.probabilities.tolist() == pytest.approx([0.9, 0.2])
    assert item.embedding.shape == (8,)
    # every heuristic that needs no TTA runs on it
    for name in ("learning_loss", "roi", "combined", "entropy", "coreset"):
        assert get_heuristic(name).select([item], 1).items == ("1.2",)


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="equal N"):
        Detections(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="kind"):
        ItemScores("x", kind="patch")  # type: ignore[arg-type]
