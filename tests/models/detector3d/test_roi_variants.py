"""The three readings of Eq. 2 (Liu, Cao & Tian, MICCAI 2020) on hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from activecad.models.detector3d import preset_config
from activecad.models.detector3d.loss_prediction import (
    ROI_VARIANTS,
    roi_uncertainties,
    roi_uncertainty,
)

# Four detections: scores s_i and predicted losses l_i.
SCORES = torch.tensor([0.9, 0.6, 0.5, 0.2])
LOSSES = torch.tensor([0.3, 1.2, 2.0, 0.7])


def test_loss_of_confident_sums_losses_of_detections_scored_above_tau() -> None:
    # s > 0.5: detections 0 and 1 (0.5 itself does not count) -> 0.3 + 1.2 = 1.5
    assert float(roi_uncertainty(LOSSES, SCORES, 0.5)) == pytest.approx(1.5)
    assert float(roi_uncertainty(LOSSES, SCORES, 0.5, "loss_of_confident")) == pytest.approx(1.5)


def test_loss_above_tau_sums_the_losses_themselves_above_tau() -> None:
    # l > 0.5: 1.2, 2.0, 0.7 -> 3.9 (whatever the scores)
    assert float(roi_uncertainty(LOSSES, SCORES, 0.5, "loss_above_tau")) == pytest.approx(3.9)


def test_score_above_tau_sums_the_scores_above_tau() -> None:
    # s > 0.5: 0.9 + 0.6 = 1.5; the predicted losses play no part
    assert float(roi_uncertainty(LOSSES, SCORES, 0.5, "score_above_tau")) == pytest.approx(1.5)
    assert float(roi_uncertainty(torch.zeros(4), SCORES, 0.5, "score_above_tau")) == pytest.approx(
        1.5
    )


def test_all_variants_at_once_and_zero_without_detections() -> None:
    values = roi_uncertainties(LOSSES, SCORES, 0.5)
    assert list(values) == list(ROI_VARIANTS)
    assert values == pytest.approx(
        {"loss_of_confident": 1.5, "loss_above_tau": 3.9, "score_above_tau": 1.5}
    )
    assert roi_uncertainties(torch.zeros(0), torch.zeros(0), 0.5) == dict.fromkeys(
        ROI_VARIANTS, 0.0
    )


def test_the_config_names_the_variant_and_rejects_others() -> None:
    assert preset_config("cpu").roi_variant == "loss_of_confident"
    assert preset_config("cpu", roi_variant="score_above_tau").roi_variant == "score_above_tau"
    with pytest.raises(Exception, match="roi_variant"):
        preset_config("cpu", roi_variant="sum")
    with pytest.raises(ValueError, match="unknown L_RoI variant"):
        roi_uncertainty(LOSSES, SCORES, 0.5, "sum")  # type: ignore[arg-type]
