"""The 3D nodule detector: ResNet-18 + FPN, MONAI RetinaNet heads, loss-prediction heads.

Frames: the network takes (B, 1, X, Y, Z) tensors, i.e. the preprocessed (z, y, x) array
transposed so that the first spatial axis is x, because MONAI's detection boxes are
(xmin, ymin, zmin, xmax, ymax, zmax) over the spatial axes in order. Boxes here are in
voxels of that input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import (
    RetinaNetClassificationHead,
    RetinaNetRegressionHead,
)
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler
from monai.data.box_utils import clip_boxes_to_image, non_max_suppression
from monai.inferers import SlidingWindowInferer
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from activecad.models.detector3d.config import DetectorConfig
from activecad.models.detector3d.fpn import ResNetFPN3D
from activecad.models.detector3d.loss_prediction import (
    RoILossHead,
    ScanLossPredictor,
    ranking_loss,
    roi_uncertainties,
)

CLS, BOX, ROI = "classification", "box_regression", "roi_loss"
FEATURE_KEYS = ("p2", "p3", "p4", "p5")
FEATURE_STRIDES = (4, 8, 16, 32)
# Matched index of anchors left out of the classification loss. MONAI's matchers use -1
# (background) and -2 (between thresholds); the hard-negative sampler, which sees index + 1,
# samples neither -2 nor anything below.
IGNORED = -2


def anchors_in_spheres(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Which anchors have their centre inside the sphere of any of ``boxes``.

    Args:
        anchors: (N, 6) anchor boxes, xmin, ymin, zmin, xmax, ymax, zmax voxels.
        boxes: (K, 6) boxes of spherical findings in the same voxels; the sphere is the
            ellipsoid inscribed in the box (a sphere in mm on an anisotropic grid).

    Returns:
        (N,) bool; all False when K is 0.
    """
    if len(boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
    centres = (anchors[:, None, :3] + anchors[:, None, 3:]) / 2
    middle = (boxes[None, :, :3] + boxes[None, :, 3:]) / 2
    half = ((boxes[None, :, 3:] - boxes[None, :, :3]) / 2).clamp(min=1e-6)
    return (((centres - middle) / half) ** 2).sum(dim=2).le(1.0).any(dim=1)


class DetectorNetwork(nn.Module):
    """Pyramid features, detection heads and loss-prediction heads in one module.

    Args:
        config: the detector configuration (widths, channels, anchors).
        num_anchors: anchors per location.

    Attributes:
        detach_loss_features: when True the loss-prediction heads see detached features,
            so their gradient no longer reaches the backbone (Yoo & Kweon's stop after a
            given epoch).
    """

    spatial_dims = 3
    num_classes = 1
    cls_key = CLS
    box_reg_key = BOX

    def __init__(self, config: DetectorConfig, num_anchors: int):
        super().__init__()
        channels = config.fpn_channels
        self.num_anchors = num_anchors
        self.size_divisible = (32, 32, 32)
        self.head_levels = config.head_levels
        self.feature_extractor = ResNetFPN3D(
            config.backbone_widths, channels, norm=config.backbone_norm
        )
        self.classification_head = RetinaNetClassificationHead(
            channels, num_anchors, self.num_classes, spatial_dims=3
        )
        self.regression_head = RetinaNetRegressionHead(channels, num_anchors, spatial_dims=3)
        if config.head_convs != 4:
            # MONAI's heads stack four 3x3x3 convolutions on every level, which at P2 costs
            # more than the whole backbone on a CPU; the cpu preset keeps fewer of them.
            for head in (self.classification_head, self.regression_head):
                head.conv = _conv_tower(channels, config.head_convs)
        self.scan_loss = ScanLossPredictor(channels, levels=4, hidden=config.loss_hidden)
        self.roi_loss = RoILossHead(channels, num_anchors)
        self.detach_loss_features = False

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Run the network on a batch.

        Args:
            images: (B, 1, X, Y, Z), spatial sizes divisible by 32.

        Returns:
            ``classification``: per head level (B, A, X/s, Y/s, Z/s) logits;
            ``box_regression``: per head level (B, 6A, ...) box deltas;
            ``roi_loss``: per head level (B, A, ...) predicted per-anchor losses;
            ``p2`` .. ``p5``: one-element lists holding the pyramid maps (B, C, ...).
        """
        features = self.feature_extractor(images)
        heads = features[: self.head_levels]
        loss_inputs = [f.detach() for f in features] if self.detach_loss_features else features
        out: dict[str, list[torch.Tensor]] = {
            CLS: self.classification_head(heads),
            BOX: self.regression_head(heads),
            ROI: self.roi_loss(loss_inputs[: self.head_levels]),
        }
        for key, feature in zip(FEATURE_KEYS, loss_inputs, strict=True):
            out[key] = [feature]
        return out


def _conv_tower(channels: int, depth: int) -> nn.Sequential:
    """``depth`` conv-GroupNorm-ReLU blocks initialised as MONAI initialises its heads."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        layers += [conv, nn.GroupNorm(8, channels), nn.ReLU()]
    return nn.Sequential(*layers)


@dataclass
class StepLosses:
    """The terms of Eq. 3 for one batch.

    Attributes:
        total: l_target + lambda1 * L_scan + lambda2 * L_RoI (scalar, carries gradients).
        target: mean detector loss (classification + box regression).
        scan: scan-level ranking loss L_scan.
        roi: RoI-level ranking loss.
        per_sample: (B,) each sample's real detector loss.
        predicted: (B,) each sample's predicted loss l_scan.
    """

    total: torch.Tensor
    target: torch.Tensor
    scan: torch.Tensor
    roi: torch.Tensor
    per_sample: torch.Tensor
    predicted: torch.Tensor


@dataclass
class Detections:
    """Detections of one volume, in voxels of the network input (x, y, z order).

    Attributes:
        boxes: (N, 6) xmin, ymin, zmin, xmax, ymax, zmax, sorted by score descending.
        scores: (N,) probabilities.
        roi_losses: (N,) predicted per-detection losses (Eq. 2's l_i).
        l_scan: predicted scan-level loss (Eq. 1).
        l_roi: L_RoI (Eq. 2) in the configured reading (``config.roi_variant``; default
            the sum of roi_losses over detections scored above tau).
        embedding: (4C,) P2..P5 each averaged over the scan's valid region, concatenated
            (for diversity heuristics); None when not computed.
        l_roi_variants: L_RoI in every reading of
            :data:`~activecad.models.detector3d.loss_prediction.ROI_VARIANTS`.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    roi_losses: torch.Tensor
    l_scan: float
    l_roi: float
    embedding: torch.Tensor | None = None
    l_roi_variants: dict[str, float] = field(default_factory=dict)


class NoduleDetector(nn.Module):
    """The detector of Liu, Cao & Tian (MICCAI 2020) §2.1 with the loss prediction of §2.2.

    MONAI's ``RetinaNetDetector`` supplies the anchors, the ATSS matcher, the hard-negative
    sampler, the box coder and the box loss; this class adds per-sample and per-anchor
    losses, which the loss-prediction heads need and MONAI's batch-averaged loss hides.

    Args:
        config: the detector configuration.
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        anchors = AnchorGeneratorWithAnchorShape(
            feature_map_scales=[2**k for k in range(config.head_levels)],
            base_anchor_shapes=[list(s) for s in config.base_anchor_shapes],
            indexing="ij",
        )
        self.network = DetectorNetwork(config, anchors.num_anchors_per_location()[0])
        self._retina = RetinaNetDetector(self.network, anchors)
        self._retina.set_target_keys(box_key="boxes", label_key="labels")
        self._retina.set_atss_matcher(num_candidates=4, center_in_gt=False)
        self._sampler = HardNegativeSampler(
            batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
        )
        self._retina.fg_bg_sampler = self._sampler

    def state_dict_for_bundle(self) -> dict[str, torch.Tensor]:
        """The network weights only (anchors and samplers hold no learned state)."""
        return self.network.state_dict()

    def _head_outputs(
        self, images: torch.Tensor, out: dict[str, list[torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[int], dict[str, torch.Tensor]]:
        retina = self._retina
        retina.generate_anchors(images, {CLS: out[CLS], BOX: out[BOX]})
        anchors = retina.anchors
        if anchors is None:
            raise RuntimeError("MONAI generated no anchors")
        num_locs = [c.shape[2:].numel() for c in out[CLS]]
        flat = {key: retina._reshape_maps(out[key]) for key in (CLS, BOX, ROI)}
        return anchors, num_locs, flat

    def match_anchors(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_locs: list[int],
    ) -> list[torch.Tensor]:
        """Per image, the index of the box each anchor detects, -1 for background.

        MONAI's ATSS matcher assigns the nodules. An anchor not assigned to a nodule is
        marked :data:`IGNORED` (left out of the classification loss and never drawn as a
        hard negative) when it lies on an ignored finding (``ignore_boxes``: LUNA16's
        excluded annotations), i.e. when its box centre lies inside the finding's sphere
        (the ellipsoid inscribed in its box, in voxels), or when the matcher would make it
        positive for the finding. So the detector is never taught that a small or disputed
        nodule, or the voxels right around it, are background.
        """
        retina = self._retina
        matched = retina.compute_anchor_matched_idxs(anchors, targets, num_locs)
        ignore_boxes = [t.get("ignore_boxes", t["boxes"][:0]) for t in targets]
        if not any(len(boxes) for boxes in ignore_boxes):
            return matched
        ignore_targets = [
            {
                "boxes": boxes,
                "labels": torch.zeros(len(boxes), dtype=torch.long, device=boxes.device),
            }
            for boxes in ignore_boxes
        ]
        covered = retina.compute_anchor_matched_idxs(anchors, ignore_targets, num_locs)
        result = []
        for m, c, image_anchors, boxes in zip(matched, covered, anchors, ignore_boxes, strict=True):
            on_finding = (c >= 0) | anchors_in_spheres(image_anchors, boxes.to(image_anchors))
            result.append(torch.where((m < 0) & on_finding, torch.full_like(m, IGNORED), m))
        return result

    def compute_losses(
        self,
        images: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
        *,
        generator: torch.Generator,
    ) -> StepLosses:
        """The joint objective of Eq. 3 for a batch of patches.

        Args:
            images: (B, 1, X, Y, Z) preprocessed patches, B even.
            targets: per patch, ``boxes`` (M, 6) float voxels x-y-z (M may be 0),
                ``labels`` (M,) int64 zeros and optionally ``ignore_boxes`` (K, 6) of
                findings that are neither nodule nor background (see :meth:`match_anchors`).
            generator: seeds the pairing of candidates for the RoI ranking loss.

        Returns:
            the loss terms; ``total`` carries gradients.
        """
        if images.shape[0] % 2:
            raise ValueError(f"the batch must be even for ranking pairs, got {images.shape[0]}")
        cfg = self.config
        retina = self._retina
        out = self.network(images)
        anchors, num_locs, flat = self._head_outputs(images, out)
        matched = self.match_anchors(anchors, targets, num_locs)
        sample_losses, roi_pred, roi_real = [], [], []
        for i, target in enumerate(targets):
            logits = flat[CLS][i, :, 0]
            truth = (matched[i] >= 0).to(logits.dtype)
            counted = matched[i] != IGNORED
            # The sampler's picks are the candidates whose losses the RoI head learns to
            # rank: the positives and the highest-scored negatives, i.e. what would become
            # detections at test time.
            pos, neg = self._sampler([matched[i] + 1], logits.detach().float())
            picked = torch.cat([torch.where(pos[0])[0], torch.where(neg[0])[0]])
            if cfg.cls_loss == "focal":
                # RetinaNet's focal loss over every anchor, normalised by the positives.
                per_anchor = sigmoid_focal_loss(
                    logits, truth, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none"
                ) * counted.to(logits.dtype)
                cls_loss = per_anchor.sum() / truth.sum().clamp(min=1.0)
                candidate_losses = per_anchor[picked]
            else:
                candidate_losses = nn.functional.binary_cross_entropy_with_logits(
                    logits[picked], truth[picked], reduction="none"
                )
                cls_loss = candidate_losses.mean()
            box_pred, box_true = retina.get_box_train_sample_per_image(
                flat[BOX][i], target, anchors[i], matched[i]
            )
            box_loss = (
                retina.box_loss_func(box_pred, box_true) if box_pred.shape[0] else box_pred.sum()
            )
            sample_losses.append(cls_loss + box_loss)
            roi_pred.append(flat[ROI][i, picked, 0])
            roi_real.append(candidate_losses)
        per_sample = torch.stack(sample_losses)
        target_loss = per_sample.mean()
        features = [out[key][0] for key in FEATURE_KEYS]
        predicted = self.network.scan_loss(features)
        scan_rank = ranking_loss(predicted, per_sample, cfg.margin)
        # Pair candidates at random across the batch so that easy negatives meet hard
        # positives; MONAI's sampler lists positives first, which would pair like with like.
        roi_p, roi_t = torch.cat(roi_pred), torch.cat(roi_real)
        order = torch.randperm(roi_p.numel(), generator=generator)[: roi_p.numel() // 2 * 2]
        roi_rank = ranking_loss(
            roi_p[order.to(roi_p.device)], roi_t[order.to(roi_t.device)], cfg.margin
        )
        total = target_loss + cfg.lambda_scan * scan_rank + cfg.lambda_roi * roi_rank
        return StepLosses(
            total, target_loss, scan_rank, roi_rank, per_sample.detach(), predicted.detach()
        )

    @torch.no_grad()
    def detect(
        self, image: torch.Tensor, valid_shape: tuple[int, int, int] | None = None
    ) -> Detections:
        """Detect nodules in one volume, in windows of at most ``config.sw_roi_size``.

        A volume that fits the largest window is run in one pass; a larger one is split
        into windows of equal size along each axis that needs it (see
        :func:`window_size`), so a scan a few voxels over the limit costs about the same
        as one under it instead of several full-size windows.

        Args:
            image: (1, 1, X, Y, Z) preprocessed volume, each size a multiple of 32 and at
                least the patch size.
            valid_shape: (X, Y, Z) part of ``image`` that holds the scan (the rest is
                padding); boxes are clipped to it, and l_scan and the embedding pool over
                it only. Default: the whole image.

        Returns:
            the detections in voxels of ``image``, the scan's uncertainties and embedding.
        """
        cfg = self.config
        keys = (CLS, BOX, ROI, *FEATURE_KEYS)
        shape = tuple(int(n) for n in image.shape[2:])
        valid = tuple(int(v) for v in (valid_shape or shape))
        inferer = SlidingWindowInferer(
            roi_size=window_size(shape, cfg.sw_roi_size, cfg.sw_overlap),
            sw_batch_size=1,
            overlap=cfg.sw_overlap,
            mode="constant",
            progress=False,
        )
        levels = cfg.head_levels

        def as_tuple(window: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = self.network(window)
            return tuple(t for key in keys for t in result[key])

        # MONAI's sliding window stitches each output at its own scale; the detection
        # heads and the four pyramid maps have different numbers of levels, so they travel
        # as one flat tuple and are split again here.
        flat_out = inferer(image, as_tuple)
        out = {
            CLS: list(flat_out[:levels]),
            BOX: list(flat_out[levels : 2 * levels]),
            ROI: list(flat_out[2 * levels : 3 * levels]),
        }
        for k, key in enumerate(FEATURE_KEYS):
            out[key] = [flat_out[3 * levels + k]]
        anchors, _, flat = self._head_outputs(image, out)
        boxes = self._retina.box_coder.decode_single(flat[BOX][0].float(), anchors[0])
        scores = torch.sigmoid(flat[CLS][0, :, 0].float())
        roi = flat[ROI][0, :, 0].float()
        keep = torch.where(scores > cfg.score_thresh)[0]
        if keep.numel() > 5000:
            keep = keep[torch.topk(scores[keep], 5000).indices]
        boxes, scores, roi = boxes[keep], scores[keep], roi[keep]
        clipped, inside = clip_boxes_to_image(boxes, valid, remove_empty=True)
        boxes, scores, roi = torch.as_tensor(clipped), scores[inside], roi[inside]
        kept = non_max_suppression(boxes, scores, cfg.nms_thresh, cfg.detections_per_scan)
        boxes, scores, roi = boxes[kept], scores[kept], roi[kept]
        pooled = [
            valid_mean(out[key][0].float(), valid, stride)
            for key, stride in zip(FEATURE_KEYS, FEATURE_STRIDES, strict=True)
        ]
        l_scan = float(self.network.scan_loss.forward_pooled(pooled)[0])
        variants = roi_uncertainties(roi, scores, cfg.roi_tau)
        return Detections(
            boxes,
            scores,
            roi,
            l_scan,
            variants[cfg.roi_variant],
            embedding=torch.cat(pooled, dim=1)[0],
            l_roi_variants=variants,
        )


def valid_mean(feature: torch.Tensor, valid_xyz: Sequence[int], stride: int) -> torch.Tensor:
    """Global average of a pyramid map over the part that covers the scan, not the padding.

    Args:
        feature: (B, C, X/s, Y/s, Z/s) map of an input whose first ``valid_xyz`` voxels
            hold the scan.
        valid_xyz: (X, Y, Z) valid extent of the input, voxels.
        stride: the map's stride s (4 for P2 ... 32 for P5); a map voxel that covers any
            valid input voxel counts.

    Returns:
        (B, C) mean over the valid map voxels.
    """
    ends = [max(1, -(-int(v) // stride)) for v in valid_xyz]
    return feature[:, :, : ends[0], : ends[1], : ends[2]].mean(dim=(2, 3, 4))


def window_size(
    shape_xyz: Sequence[int], max_window: Sequence[int], overlap: float
) -> tuple[int, int, int]:
    """The sliding-window size for a volume: whole axes where they fit, even splits elsewhere.

    Along an axis no longer than ``max_window`` the window is the whole axis (one pass).
    Along a longer axis the fewest windows of at most ``max_window`` that cover it with
    the given overlap are used, all of one size (a multiple of 32): a 352-voxel axis with a
    320 limit and 25 % overlap gets two 224-voxel windows (448 voxels computed), not two
    320-voxel ones (640).

    Args:
        shape_xyz: (X, Y, Z) volume size, multiples of 32.
        max_window: (X, Y, Z) largest window, multiples of 32.
        overlap: fraction of a window shared with its neighbour (MONAI's ``overlap``).

    Returns:
        (X, Y, Z) window size.
    """
    sizes = []
    for length, cap in zip(shape_xyz, max_window, strict=True):
        length, cap = int(length), int(cap)
        if length <= cap:
            sizes.append(length)
            continue
        count = 2
        while True:
            size = -(-math.ceil(length / (count - (count - 1) * overlap)) // 32) * 32
            if size <= cap:
                break
            count += 1
        sizes.append(max(32, size))
    return sizes[0], sizes[1], sizes[2]
