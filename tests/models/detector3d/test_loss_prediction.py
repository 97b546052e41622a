"""The loss-prediction parts of papers/000: Eq. 1 (l_scan), Eq. 2 (L_RoI), ranking loss."""

from __future__ import annotations

import pytest
import torch

from activecad.models.detector3d import ScanLossPredictor, ranking_loss, roi_uncertainty


def test_ranking_loss_on_hand_worked_pairs() -> None:
    # Pairs (first half, reversed second half): (p=3, t=1) with (p=0, t=2) and (p=1, t=0)
    # with (p=2, t=5). Both real losses of the first elements are smaller, sign = -1:
    # max(0, (3 - 0) + 1) = 4 and max(0, (1 - 2) + 1) = 0; the mean is 2 (by hand).
    predicted = torch.tensor([3.0, 1.0, 2.0, 0.0])
    target = torch.tensor([1.0, 0.0, 5.0, 2.0])
    assert ranking_loss(predicted, target, margin=1.0).item() == pytest.approx(2.0)


def test_ranking_loss_is_zero_when_order_is_right_by_more_than_the_margin() -> None:
    # One pair: target says sample 0 is worse, prediction agrees by 3 > margin 1.
    assert ranking_loss(torch.tensor([5.0, 2.0]), torch.tensor([1.0, 0.5])).item() == 0.0
    # Same pair with margin 4: max(0, -(5 - 2) + 4) = 1 (by hand).
    assert ranking_loss(
        torch.tensor([5.0, 2.0]), torch.tensor([1.0, 0.5]), margin=4.0
    ).item() == pytest.approx(1.0)


def test_ranking_loss_does_not_backpropagate_into_the_real_losses() -> None:
    target = torch.tensor([1.0, 2.0], requires_grad=True)
    predicted = torch.tensor([0.0, 0.0], requires_grad=True)
    ranking_loss(predicted, target).backward()
    assert target.grad is None
    assert predicted.grad is not None


def test_ranking_loss_rejects_odd_batches() -> None:
    with pytest.raises(ValueError, match="even"):
        ranking_loss(torch.zeros(3), torch.zeros(3))


def test_roi_uncertainty_sums_only_candidates_scored_above_tau() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0])
    scores = torch.tensor([0.9, 0.5, 0.51, 0.1])
    # Eq. 2 with tau = 0.5: 0.9 and 0.51 pass, 0.5 itself does not -> 1 + 4 = 5.
    assert roi_uncertainty(losses, scores, tau=0.5).item() == pytest.approx(5.0)
    assert roi_uncertainty(losses, scores, tau=0.95).item() == 0.0


def test_scan_loss_is_the_sum_of_four_level_terms_and_the_concat_term() -> None:
    torch.manual_seed(0)
    head = ScanLossPredictor(in_channels=3, levels=4, hidden=2)
    features = [torch.rand(2, 3, 4, 4, 4) for _ in range(4)]
    pooled = [f.mean(dim=(2, 3, 4)) for f in features]
    hidden = [fc(p) for fc, p in zip(head.fcs, pooled, strict=True)]
    terms = [out(h)[:, 0] for out, h in zip(head.level_out, hidden, strict=True)]
    terms.append(head.concat_out(torch.cat(hidden, dim=1))[:, 0])
    expected = torch.stack(terms).sum(dim=0)
    torch.testing.assert_close(head(features), expected)
