"""Loss prediction for active learning, after Yoo & Kweon, "Learning Loss for Active Learning"
(CVPR 2019).

Eq. 1-3 of Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule Detection"
(MICCAI 2020).

Scan level (Eq. 1): each pyramid map P2..P5 is globally average-pooled and passed through
an FC layer; one scalar is predicted from each level and one from the concatenation of the
four, and l_scan is their sum. RoI level (Eq. 2): a small convolutional head predicts, at
each anchor, the loss that candidate box will incur; L_RoI sums the predictions over
candidates whose detection score exceeds tau (two other readings of the paper are
available, see :data:`ROI_VARIANTS`). Both are trained with the pairwise margin
ranking loss against the real losses (Eq. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn


class ScanLossPredictor(nn.Module):
    """The scan-level loss predictor of Eq. 1.

    Args:
        in_channels: channels of each pyramid map.
        levels: number of pyramid maps (4 for P2..P5).
        hidden: width of each level's FC layer.
    """

    def __init__(self, in_channels: int, levels: int = 4, hidden: int = 32):
        super().__init__()
        self.fcs = nn.ModuleList(
            nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU()) for _ in range(levels)
        )
        self.level_out = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(levels))
        self.concat_out = nn.Linear(hidden * levels, 1)

    def forward_pooled(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """l_scan from already pooled maps.

        Args:
            pooled: per level, (B, C) globally averaged features.

        Returns:
            (B,) l_scan = l_P2 + l_P3 + l_P4 + l_P5 + l_Pconcat.
        """
        hidden = [fc(p) for fc, p in zip(self.fcs, pooled, strict=True)]
        per_level = [out(h) for out, h in zip(self.level_out, hidden, strict=True)]
        concat = self.concat_out(torch.cat(hidden, dim=1))
        return (torch.stack(per_level, dim=0).sum(dim=0) + concat).squeeze(1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """l_scan of a batch.

        Args:
            features: per level, (B, C, X, Y, Z) pyramid maps.

        Returns:
            (B,) predicted loss of each sample.
        """
        return self.forward_pooled([f.mean(dim=(2, 3, 4)) for f in features])


class RoILossHead(nn.Module):
    """Predicts each anchor's own loss from the pyramid features around it (Eq. 2).

    Args:
        in_channels: channels of each pyramid map.
        num_anchors: anchors per location.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(in_channels, in_channels, kernel_size=3, padding=1),
            nn.GroupNorm(8, in_channels),
            nn.ReLU(),
        )
        self.out = nn.Conv3d(in_channels, num_anchors, kernel_size=1)
        # A loss is never negative; softplus keeps the sums of Eq. 2 meaningful while the
        # ranking loss, which only sees differences, is unaffected in what it orders.
        self.positive = nn.Softplus()

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-anchor predicted loss maps.

        Args:
            features: per level, (B, C, X, Y, Z).

        Returns:
            per level, (B, A, X, Y, Z) predicted losses (>= 0) (A anchors per location), laid out as
            MONAI's classification maps with one class so the same reshaping applies.
        """
        return [self.positive(self.out(self.conv(f))) for f in features]


def ranking_loss(
    predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Pairwise margin ranking loss of Yoo & Kweon (2019), Eq. 2 of their paper.

    The batch is split in halves and sample i of the first half is paired with sample i
    of the reversed second half; for a pair (i, j) the loss is
    ``max(0, -sign(l_i - l_j) * (p_i - p_j) + margin)``, averaged over pairs. Only the
    order of the real losses matters, so their scale changing during training does not.

    Args:
        predicted: (N,) predicted losses, N even.
        target: (N,) real losses (detached inside).
        margin: the margin xi.

    Returns:
        scalar loss.
    """
    if predicted.shape != target.shape or predicted.ndim != 1:
        raise ValueError(
            f"predicted and target must be 1D of equal shape, got {tuple(predicted.shape)} "
            f"and {tuple(target.shape)}"
        )
    if predicted.numel() % 2:
        raise ValueError(f"ranking_loss needs an even number of samples, got {predicted.numel()}")
    if predicted.numel() == 0:
        return predicted.sum()
    target = target.detach()
    half = predicted.numel() // 2
    p_i, p_j = predicted[:half], predicted[half:].flip(0)
    t_i, t_j = target[:half], target[half:].flip(0)
    sign = torch.sign(t_i - t_j)
    return torch.clamp(-sign * (p_i - p_j) + margin, min=0).mean()


RoIVariant = Literal["loss_of_confident", "loss_above_tau", "score_above_tau"]

#: The three readings of Eq. 2 of Liu, Cao & Tian, "Deep Active Learning for Effective
#: Pulmonary Nodule Detection" (MICCAI 2020), over a scan's detections i with score s_i and
#: predicted loss l_i:
#:
#: * ``loss_of_confident`` (the default): sum of l_i over detections with s_i > tau. §3.1
#:   says "the RoIs with the prediction score greater than 0.5 are applied to obtain the
#:   RoI-level loss", and Eq. 3 trains l_i as a loss (ranked against real losses), so tau
#:   thresholds the detection score and the sum is over predicted losses.
#: * ``loss_above_tau``: sum of l_i over detections with l_i > tau, Eq. 2 as typeset
#:   ("l_i if l_i > tau"). It mixes a loss with a probability threshold, so its meaning
#:   depends on the scale the RoI head learned.
#: * ``score_above_tau``: sum of s_i over detections with s_i > tau, as the caption of the
#:   paper's Fig. 2 puts it ("summing predicted scores greater than the threshold tau").
#:   It uses no loss prediction at all: a count of confident detections, weighted by score.
ROI_VARIANTS: tuple[RoIVariant, ...] = ("loss_of_confident", "loss_above_tau", "score_above_tau")


def roi_uncertainty(
    roi_losses: torch.Tensor,
    scores: torch.Tensor,
    tau: float = 0.5,
    variant: RoIVariant = "loss_of_confident",
) -> torch.Tensor:
    """L_RoI of Eq. 2 in one of its three readings (see :data:`ROI_VARIANTS`).

    Args:
        roi_losses: (N,) predicted loss l_i of each detection.
        scores: (N,) detection probability s_i of each detection.
        tau: the threshold (Liu et al. §3.1: 0.5); a value equal to tau does not count.
        variant: ``loss_of_confident`` (sum of l_i where s_i > tau), ``loss_above_tau``
            (sum of l_i where l_i > tau) or ``score_above_tau`` (sum of s_i where s_i > tau).

    Returns:
        scalar L_RoI (0 when no detection passes).
    """
    if roi_losses.shape != scores.shape:
        raise ValueError(
            f"roi_losses and scores must have equal shapes, got {tuple(roi_losses.shape)} "
            f"and {tuple(scores.shape)}"
        )
    if variant == "loss_of_confident":
        return roi_losses[scores > tau].sum()
    if variant == "loss_above_tau":
        return roi_losses[roi_losses > tau].sum()
    if variant == "score_above_tau":
        return scores[scores > tau].sum()
    raise ValueError(f"unknown L_RoI variant {variant!r}; use one of {', '.join(ROI_VARIANTS)}")


def roi_uncertainties(
    roi_losses: torch.Tensor, scores: torch.Tensor, tau: float = 0.5
) -> dict[str, float]:
    """L_RoI in every reading of :data:`ROI_VARIANTS`, as ``{variant: value}``."""
    return {v: float(roi_uncertainty(roi_losses, scores, tau, v)) for v in ROI_VARIANTS}
