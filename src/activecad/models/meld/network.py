"""MELD's network: a 2.5D Faster R-CNN with dataset experts, organ heads and organ gating.

Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
Datasets" (2020), section 3.1, built from torchvision's detection parts (anchor generator,
RPN, FPN, RoIAlign, two-FC box head). The mask head of the paper is left out: the samples
carry boxes, not masks.

- **2.5D backbone with 3D context fusion** (MULAN): a sample's 9 slices are three groups of
  three neighbouring slices; one backbone, shared, sees each group as a 3-channel image, and
  at every level the three groups' feature maps are concatenated and fused by a 1x1
  convolution before the feature pyramid.
- **Dataset experts**: "each dataset has its own RPN and bounding-box regression layer", so
  there is one RPN head (3x3 convolution, objectness, deltas) per dataset and the box
  regressor has one output group per dataset (``DATASETS`` order); a sample of dataset
  ``d`` uses and trains head and group ``d`` only.
- **Organ heads**: K = 4 classification heads (whole body, lung, liver, lymph node; paper:
  two FC-1024 and an FC-4 each) read a shared box feature. Each head "splits in the last
  layer and outputs 4 detection scores", one per dataset; "when a training sample comes from
  dataset d, only the d'th detection score in each classification head will be learned".
- **Gating**: a head of two FCs and an FC-3 with a sigmoid predicts the organ weights
  ``w_1..w_3`` of a proposal (``w_0 = 1``); the classification loss is
  ``L = sum_i w_i L_i`` and the test score is Eq. 1 (:func:`activecad.lesions.fuse_head_scores`).
  The gate is trained with binary cross-entropy against the soft organ targets of the boxes
  its positive proposals match. Which tensor the paper lets the loss ``sum_i w_i L_i``
  back-propagate into is not said; here the weights are detached there, because the gradient
  of ``w_i L_i`` with respect to ``w_i`` is ``L_i >= 0`` and would only push every gate to 0
  (turning the organ heads off) instead of teaching organs.
- **Ignore regions**: an anchor or proposal that matches no box but overlaps an ignore box
  (IoU above ``ignore_iou``) is labelled -1, which torchvision's balanced sampler never
  draws: it is neither positive nor negative in the RPN's and the RoI heads' losses.
- **Lesion embedding** (for missing-annotation matching): the shared box feature of a box,
  L2-normalised. The paper used LesaNet's 256-d embedding instead, a separate network
  trained on report-mined tags, which this project does not have.

Frames: boxes are ``x1, y1, x2, y2`` pixels (continuous corners) of the network's input, a
sample's image resized by the batch's scale (see :func:`make_batch`).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn import functional
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_iou
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from activecad.data.lesion_slices import DATASETS, ORGANS, SLICES_PER_SAMPLE, SliceSample
from activecad.lesions import fuse_head_scores, head_weights
from activecad.models.meld.config import MeldConfig

__all__ = [
    "HEADS",
    "MeldBatch",
    "MeldNet",
    "SliceDetections",
    "ignore_unmatched",
    "make_batch",
]

HEADS: tuple[str, ...] = ("whole_body", *ORGANS)
"""The classification heads, in the order of Eq. 1: the whole-body head (w_0 = 1), then one
head per organ of the gating head's outputs."""

SIZE_DIVISIBLE = 32
"""Padded image sides are multiples of this, so every pyramid level halves exactly."""

_GROUPS = 3
"""Slice groups of the 2.5D input (MULAN: 9 slices as three 3-channel images)."""


@dataclass
class MeldBatch:
    """Samples as the network takes them.

    Attributes:
        images: (B, 9, H, W) float32, padded (bottom, right) to a common size.
        image_sizes: (height, width) of each image before padding, network pixels.
        datasets: (B,) int64 index of each sample's dataset in ``DATASETS``.
        targets: per sample ``boxes`` (N, 4), ``organs`` (N, 3) and ``ignore_boxes``
            (K, 4), float32, network pixels.
        scales: network pixels per sample pixel, per sample.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    datasets: Tensor
    targets: list[dict[str, Tensor]]
    scales: list[float]

    def to(self, device: str | torch.device) -> MeldBatch:
        """The same batch on ``device``."""
        return MeldBatch(
            self.images.to(device),
            self.image_sizes,
            self.datasets.to(device),
            [{k: v.to(device) for k, v in t.items()} for t in self.targets],
            self.scales,
        )


def make_batch(
    samples: Sequence[SliceSample],
    *,
    image_size: int | None,
    device: str | torch.device = "cpu",
    sizes_before: Sequence[tuple[int, int]] | None = None,
) -> MeldBatch:
    """Resize, pad and stack samples; move their boxes into network pixels.

    Args:
        samples: one or more samples (any image sizes).
        image_size: each image's longer side is resized to this (bilinear, aspect kept);
            ``None`` keeps it.
        device: where the tensors go.
        sizes_before: (height, width) per sample to take the resize factor from instead of
            its image's: training passes the sizes before augmentation, which would
            otherwise be undone by resizing the augmented image to ``image_size``.

    Raises:
        ValueError: no samples, or ``sizes_before`` of another length.
    """
    if not samples:
        raise ValueError("make_batch needs at least one sample, got none.")
    if sizes_before is not None and len(sizes_before) != len(samples):
        raise ValueError(f"sizes_before has {len(sizes_before)} sizes for {len(samples)} samples.")
    images, sizes, scales, targets = [], [], [], []
    for k, sample in enumerate(samples):
        image = torch.from_numpy(np.ascontiguousarray(sample.image, dtype=np.float32))
        height, width = image.shape[-2:]
        reference = max(height, width) if sizes_before is None else max(sizes_before[k])
        scale = 1.0 if image_size is None else image_size / reference
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = functional.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False
            )[0]
        images.append(image)
        sizes.append((int(image.shape[-2]), int(image.shape[-1])))
        scales.append(scale)
        targets.append(
            {
                "boxes": torch.as_tensor(sample.boxes * scale, dtype=torch.float32).reshape(-1, 4),
                "organs": torch.as_tensor(sample.organs, dtype=torch.float32).reshape(-1, 3),
                "regressed": torch.as_tensor(sample.regressed, dtype=torch.bool),
                "ignore_boxes": torch.as_tensor(
                    sample.ignore_boxes * scale, dtype=torch.float32
                ).reshape(-1, 4),
            }
        )
    height = SIZE_DIVISIBLE * math.ceil(max(s[0] for s in sizes) / SIZE_DIVISIBLE)
    width = SIZE_DIVISIBLE * math.ceil(max(s[1] for s in sizes) / SIZE_DIVISIBLE)
    padded = torch.zeros(len(samples), SLICES_PER_SAMPLE, height, width)
    for k, image in enumerate(images):
        padded[k, :, : image.shape[-2], : image.shape[-1]] = image
    datasets = torch.tensor([DATASETS.index(s.dataset) for s in samples], dtype=torch.int64)
    return MeldBatch(padded, sizes, datasets, targets, scales).to(device)


def ignore_unmatched(
    labels: Tensor, boxes: Tensor, ignore_boxes: Tensor, ignore_iou: float
) -> Tensor:
    """Relabel as ignored (-1) the negatives that overlap an ignore box.

    Args:
        labels: (P,) 1 positive (matched to a box), 0 negative, -1 ignored; changed in place.
        boxes: (P, 4) the anchors or proposals, ``x1, y1, x2, y2``.
        ignore_boxes: (K, 4) the regions to ignore, same frame.
        ignore_iou: overlap (IoU) above which a negative is ignored.

    Returns:
        ``labels``. Positives stay positive: a proposal on an annotated lesion is a lesion
        whatever else it overlaps.
    """
    if ignore_boxes.numel() and boxes.numel():
        overlap = box_iou(ignore_boxes, boxes).amax(dim=0) > ignore_iou
        labels[overlap & (labels == 0)] = -1
    return labels


def _norm_groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        # GroupNorm: statistics per image, so batches of 2-4 slices train as well as large ones.
        nn.GroupNorm(_norm_groups(c_out), c_out),
        nn.ReLU(inplace=True),
    )


class _SmallBody(nn.Module):
    """A stride-2 stem and three stages (two 3x3 convs, the first strided): strides 4, 8, 16."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stem = _conv(3, widths[0], 2)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(c_in, c_out, 2), _conv(c_out, c_out, 1))
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.out_channels: tuple[int, ...] = tuple(widths[1:])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class _DenseNetBody(nn.Module):
    """DenseNet-121's features (randomly initialised) up to dense block 3: strides 4, 8, 16.

    The fourth dense block is left out, as MULAN does; the pyramid's max-pool level gives
    the coarsest level instead.
    """

    def __init__(self) -> None:
        super().__init__()
        f = torchvision.models.densenet121(weights=None).features
        self.stages = nn.ModuleList(
            [
                nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1),
                nn.Sequential(f.transition1, f.denseblock2),
                nn.Sequential(f.transition2, f.denseblock3),
            ]
        )
        self.out_channels: tuple[int, ...] = (256, 512, 1024)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class ContextFeaturePyramid(nn.Module):
    """The shared backbone on three slice groups, 3D context fusion per level, then an FPN.

    Args:
        body: maps (G, 3, H, W) to three feature maps at strides 4, 8, 16, with channels
            ``body.out_channels``.
        fpn_channels: channels of every pyramid output.
    """

    def __init__(self, body: nn.Module, fpn_channels: int) -> None:
        super().__init__()
        self.body = body
        channels: tuple[int, ...] = body.out_channels  # type: ignore[assignment]
        self.fuse = nn.ModuleList(nn.Conv2d(_GROUPS * c, c, 1) for c in channels)
        self.fpn = FeaturePyramidNetwork(
            list(channels), fpn_channels, extra_blocks=LastLevelMaxPool()
        )

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 9, H, W) -> pyramid levels ``"0", "1", "2"`` (strides 4-16) and ``"pool"``."""
        b, s, h, w = images.shape
        if s != SLICES_PER_SAMPLE:
            raise ValueError(f"images must be (B, {SLICES_PER_SAMPLE}, H, W), got {images.shape}.")
        # Slices 0-2, 3-5 and 6-8 become three images of the backbone's batch, in that order.
        levels = self.body(images.reshape(b * _GROUPS, s // _GROUPS, h, w))
        fused: OrderedDict[str, Tensor] = OrderedDict()
        for k, (level, conv) in enumerate(zip(levels, self.fuse, strict=True)):
            fused[str(k)] = conv(level.reshape(b, _GROUPS * level.shape[1], *level.shape[2:]))
        return self.fpn(fused)


class MultiDatasetRPNHead(nn.Module):
    """One torchvision RPN head (3x3 convolution, objectness, deltas) per dataset.

    "Each dataset has its own RPN": each sample goes through its own dataset's head only, so
    a single-type set's missing labels of other lesion types never train the universal
    expert's convolution (a first version shared the 3x3 convolution across datasets).
    """

    def __init__(self, channels: int, num_anchors: int, num_datasets: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.experts = nn.ModuleList(RPNHead(channels, num_anchors) for _ in range(num_datasets))

    def forward(
        self, features: list[Tensor], datasets: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness (B, A, h, w) and deltas (B, 4A, h, w) of each sample's dataset."""
        b = len(datasets)
        objectness = [f.new_zeros(b, self.num_anchors, *f.shape[-2:]) for f in features]
        deltas = [f.new_zeros(b, 4 * self.num_anchors, *f.shape[-2:]) for f in features]
        for d in datasets.unique().tolist():
            rows = (datasets == d).nonzero(as_tuple=True)[0]
            logits, boxes = self.experts[d]([f[rows] for f in features])
            for level in range(len(features)):
                objectness[level] = objectness[level].index_copy(0, rows, logits[level])
                deltas[level] = deltas[level].index_copy(0, rows, boxes[level])
        return objectness, deltas


class MultiDatasetRPN(RegionProposalNetwork):
    """torchvision's RPN with per-dataset outputs and ignore regions.

    Matching, sampling, losses and proposal filtering are torchvision's; anchors that match
    no box but overlap an ignore box are labelled -1, which the sampler never draws.
    """

    head: MultiDatasetRPNHead

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: MultiDatasetRPNHead,
        config: MeldConfig,
    ) -> None:
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=config.rpn_batch_per_image,
            positive_fraction=0.5,
            pre_nms_top_n={
                "training": config.rpn_pre_nms_train,
                "testing": config.rpn_pre_nms_test,
            },
            post_nms_top_n={
                "training": config.rpn_post_nms_train,
                "testing": config.rpn_post_nms_test,
            },
            nms_thresh=0.7,
        )
        self.ignore_iou = config.ignore_iou

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for lab, anc, target in zip(labels, anchors, targets, strict=True):
            ignore_unmatched(lab, anc, target["ignore_boxes"], self.ignore_iou)
        return labels, matched

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        datasets: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals of each sample's dataset expert; losses when training.

        Returns:
            (P_b, 4) proposals per sample, and ``rpn_objectness`` / ``rpn_box`` losses
            (empty in eval mode).
        """
        maps = list(features.values())
        objectness, deltas = self.head(maps, datasets)
        anchors = self.anchor_generator(images, maps)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("training the RPN needs targets; give the batch's targets.")
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            regression = self.box_coder.encode(matched, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression)
            losses = {"rpn_objectness": loss_objectness, "rpn_box": loss_box}
        return boxes, losses


@dataclass
class SliceDetections:
    """One slice's detections by one dataset expert, network pixels.

    Attributes:
        boxes: (n, 4) ``x1, y1, x2, y2``, after the expert's box regression.
        scores: (n,) the expert's fused score (Eq. 1), highest first.
        dataset_scores: (n, D) the fused score of every dataset's output, ``DATASETS`` order.
        head_scores: (n, K) the expert's score from each head, ``HEADS`` order.
        gates: (n, K - 1) organ weights ``w_1 .. w_{K-1}``, ``ORGANS`` order.
        embeddings: (n, E) L2-normalised box features of ``boxes``.
    """

    boxes: NDArray[np.float32]
    scores: NDArray[np.float64]
    dataset_scores: NDArray[np.float64]
    head_scores: NDArray[np.float32]
    gates: NDArray[np.float32]
    embeddings: NDArray[np.float32]


def _mlp(c_in: int, width: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(c_in, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, c_out),
    )


class MultiExpertRoIHeads(nn.Module):
    """RoIAlign, the shared box feature, K organ heads, the gating head and box regression.

    Args:
        channels: pyramid channels.
        config: widths, sampling and inference settings.
    """

    def __init__(self, channels: int, config: MeldConfig) -> None:
        super().__init__()
        n_data, n_heads = len(DATASETS), len(HEADS)
        self.config = config
        # Torchvision's level mapping sends boxes under 224 px to the finest level; the
        # max-pool level carries anchors only.
        self.roi_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
        self.box_head = TwoMLPHead(channels * 7 * 7, config.representation)
        self.box_regressor = nn.Linear(config.representation, 4 * n_data)
        self.cls_heads = nn.ModuleList(
            _mlp(config.representation, config.cls_width, n_data) for _ in range(n_heads)
        )
        self.gate_head = _mlp(config.representation, config.gate_width, n_heads - 1)
        self.box_coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(
            config.roi_batch_per_image, config.roi_positive_fraction
        )
        nn.init.normal_(self.box_regressor.weight, std=0.001)
        nn.init.zeros_(self.box_regressor.bias)

    def box_features(
        self, features: dict[str, Tensor], boxes: list[Tensor], padded: tuple[int, int]
    ) -> Tensor:
        """(sum P_b, representation) shared box features of per-image ``boxes``."""
        # The padded size gives RoIAlign the exact stride of each level (it infers them from
        # the image size it is told).
        pooled = self.roi_pool(features, boxes, [padded] * len(boxes))
        return self.box_head(pooled)

    def heads(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (P, K, D) of every head and dataset, gate logits (P, K-1), deltas (P, D, 4)."""
        logits = torch.stack([head(feats) for head in self.cls_heads], dim=1)
        deltas = self.box_regressor(feats).view(len(feats), len(DATASETS), 4)
        return logits, self.gate_head(feats), deltas

    def label_proposals(
        self, proposals: Tensor, target: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Labels (P,) 1 / 0 / -1 (positive, negative, ignored) and matched box index (P,)."""
        gt = target["boxes"]
        if gt.numel() == 0:
            labels = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
            matched = torch.zeros_like(labels)
        else:
            index = self.matcher(box_iou(gt, proposals))
            labels = (index >= 0).to(torch.int64)
            labels[index == self.matcher.BETWEEN_THRESHOLDS] = -1
            matched = index.clamp(min=0)
        return ignore_unmatched(
            labels, proposals, target["ignore_boxes"], self.config.ignore_iou
        ), matched

    def loss(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        padded: tuple[int, int],
        datasets: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The RoI losses: ``roi_cls`` (sum_i w_i L_i), ``roi_box`` and ``gate``.

        Args:
            features: pyramid levels.
            proposals: (P_b, 4) per sample (the annotated boxes are added, as torchvision
                does, so every annotated lesion has a positive).
            padded: (height, width) of the padded batch.
            datasets: (B,) dataset index of each sample.
            targets: per sample ``boxes``, ``organs``, ``ignore_boxes`` and ``regressed``
                (boxes a detector found train the scores, not box regression).
        """
        props, labels, matched = [], [], []
        for p, target in zip(proposals, targets, strict=True):
            p = torch.cat([p.detach(), target["boxes"]])
            lab, idx = self.label_proposals(p, target)
            props.append(p)
            labels.append(lab)
            matched.append(idx)
        positive, negative = self.sampler(labels)
        keep = [torch.where(pos | neg)[0] for pos, neg in zip(positive, negative, strict=True)]
        sampled = [p[k] for p, k in zip(props, keep, strict=True)]
        y = torch.cat([lab[k] for lab, k in zip(labels, keep, strict=True)]).to(torch.float32)
        # An image without boxes has no positives, so its stand-in rows are never read.
        gt_boxes = torch.cat(
            [
                t["boxes"][i[k]] if len(t["boxes"]) else p[k]
                for t, i, k, p in zip(targets, matched, keep, props, strict=True)
            ]
        )
        organs = torch.cat(
            [
                t["organs"][i[k]] if len(t["organs"]) else p.new_zeros(len(k), len(HEADS) - 1)
                for t, i, k, p in zip(targets, matched, keep, props, strict=True)
            ]
        )
        # Boxes a detector found (mined lesions) train the scores but not box regression.
        regressed = torch.cat(
            [
                t["regressed"][i[k]]
                if len(t["boxes"]) and "regressed" in t
                else torch.full_like(k, bool(len(t["boxes"])), dtype=torch.bool)
                for t, i, k in zip(targets, matched, keep, strict=True)
            ]
        )
        data = torch.cat([datasets[b].expand(len(k)) for b, k in enumerate(keep)])
        logits, gate_logits, deltas = self.heads(self.box_features(features, sampled, padded))
        rows = torch.arange(len(y), device=y.device)
        # Only the sample's own dataset output of each head is learned (section 3.1).
        chosen = logits[rows, :, data]
        # w_0 = 1 and the predicted organ gates, detached (see the module doc for why).
        gates = gate_logits.detach().sigmoid().double().cpu().numpy()
        weights = torch.as_tensor(head_weights(gates), dtype=chosen.dtype, device=chosen.device)
        ce = functional.binary_cross_entropy_with_logits(
            chosen, y[:, None].expand_as(chosen), reduction="none"
        )
        n = max(len(y), 1)
        pos = y > 0
        fit = pos & regressed.to(pos.device)
        sampled_boxes = torch.cat(sampled)
        regression = self.box_coder.encode_single(gt_boxes[fit], sampled_boxes[fit])
        box_loss = functional.smooth_l1_loss(
            deltas[rows, data][fit], regression, beta=1 / 9, reduction="sum"
        )
        if pos.any():
            gate = functional.binary_cross_entropy_with_logits(gate_logits[pos], organs[pos])
        else:
            gate = gate_logits.sum() * 0.0
        return {"roi_cls": (weights * ce).sum() / n, "roi_box": box_loss / n, "gate": gate}

    @torch.no_grad()
    def detect(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        padded: tuple[int, int],
        dataset: int,
    ) -> list[SliceDetections]:
        """Detections of dataset expert ``dataset`` on each image (see :class:`SliceDetections`)."""
        config = self.config
        logits, gate_logits, deltas = self.heads(self.box_features(features, proposals, padded))
        probs = logits.sigmoid().double().cpu().numpy()
        gates = gate_logits.sigmoid().double().cpu().numpy()
        # Eq. 1 for every dataset's output: (P, D, K) head scores, the same gates for each.
        fused = fuse_head_scores(
            probs.transpose(0, 2, 1),
            np.broadcast_to(gates[:, None], (len(gates), len(DATASETS), gates.shape[1])),
        )
        boxes = self.box_coder.decode_single(deltas[:, dataset], torch.cat(proposals)).cpu()
        kept_rows, kept_boxes = [], []
        start = 0
        for props, size in zip(proposals, image_sizes, strict=True):
            rows = torch.arange(start, start + len(props))
            start += len(props)
            b = box_ops.clip_boxes_to_image(boxes[rows], size)
            score = torch.from_numpy(fused[rows.numpy(), dataset])
            keep = box_ops.remove_small_boxes(b, 1e-2)
            keep = keep[score[keep] > config.score_thresh]
            keep = keep[box_ops.nms(b[keep].double(), score[keep], config.nms_iou)]
            keep = keep[: config.detections_per_image]
            kept_rows.append(rows[keep].numpy())
            kept_boxes.append(b[keep])
        # The embedding of a detection is that of its final (regressed) box, the box that
        # missing-annotation matching compares with annotated boxes embedded the same way.
        device = deltas.device
        kept_features = self.box_features(features, [b.to(device) for b in kept_boxes], padded)
        embeddings = functional.normalize(kept_features, dim=1).cpu().numpy().astype(np.float32)
        out: list[SliceDetections] = []
        first = 0
        for picked, b in zip(kept_rows, kept_boxes, strict=True):
            out.append(
                SliceDetections(
                    boxes=b.numpy().astype(np.float32),
                    scores=fused[picked, dataset],
                    dataset_scores=fused[picked],
                    head_scores=probs[picked, :, dataset].astype(np.float32),
                    gates=gates[picked].astype(np.float32),
                    embeddings=embeddings[first : first + len(picked)],
                )
            )
            first += len(picked)
        return out


class MeldNet(nn.Module):
    """The multi-expert lesion detector (see the module doc).

    ``forward`` takes a :class:`MeldBatch` and returns the training losses (``total`` and its
    parts), so the shared training engine can call it; :meth:`detect` and :meth:`embed`
    are for inference.

    Args:
        config: network shape and settings; kept as ``self.config``.
    """

    def __init__(self, config: MeldConfig) -> None:
        super().__init__()
        self.config = config
        body: nn.Module = (
            _SmallBody(config.widths) if config.backbone == "small" else _DenseNetBody()
        )
        self.features = ContextFeaturePyramid(body, config.fpn_channels)
        ratios = tuple(float(r) for r in config.aspect_ratios)
        anchors = AnchorGenerator(
            tuple((int(s),) for s in config.anchor_sizes), (ratios,) * len(config.anchor_sizes)
        )
        head = MultiDatasetRPNHead(config.fpn_channels, len(ratios), len(DATASETS))
        self.rpn = MultiDatasetRPN(anchors, head, config)
        self.roi_heads = MultiExpertRoIHeads(config.fpn_channels, config)

    @property
    def embedding_dim(self) -> int:
        """Length of a lesion embedding."""
        return self.config.representation

    def forward(self, batch: MeldBatch) -> dict[str, Tensor]:
        """Training losses of ``batch``: RPN, ``sum_i w_i L_i``, box regression, gating."""
        features = self.features(batch.images)
        images = ImageList(batch.images, batch.image_sizes)
        proposals, losses = self.rpn(images, features, batch.datasets, batch.targets)
        padded = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        losses.update(
            self.roi_heads.loss(features, proposals, padded, batch.datasets, batch.targets)
        )
        losses["total"] = torch.stack(list(losses.values())).sum()
        return losses

    @torch.no_grad()
    def detect(self, batch: MeldBatch, dataset: str = "universal") -> list[SliceDetections]:
        """Detections of one dataset expert (its RPN and box regressor) on every image.

        Args:
            batch: the images (targets unused).
            dataset: the expert, one of ``DATASETS``; ``universal`` is the whole-body
                detector, the others the single-type experts that negative-region mining uses.

        Returns:
            One :class:`SliceDetections` per image, network pixels of the batch.
        """
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
        index = DATASETS.index(dataset)
        features = self.features(batch.images)
        experts = torch.full_like(batch.datasets, index)
        proposals, _ = self.rpn(ImageList(batch.images, batch.image_sizes), features, experts)
        padded = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        return self.roi_heads.detect(features, proposals, batch.image_sizes, padded, index)

    @torch.no_grad()
    def embed(self, batch: MeldBatch, boxes: list[Tensor]) -> list[Tensor]:
        """L2-normalised box features of given boxes (network pixels), one (N_b, E) per image."""
        features = self.features(batch.images)
        padded = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        feats = self.roi_heads.box_features(features, boxes, padded)
        return list(functional.normalize(feats, dim=1).split([len(b) for b in boxes]))
