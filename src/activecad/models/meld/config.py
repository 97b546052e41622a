"""Typed configuration of MELD, the 2.5D multi-expert lesion detector, and its two presets.

"The paper" below is Yan et al., "Universal Lesion Detection by Learning from Multiple
Heterogeneously Labeled Datasets" (2020); "MULAN" is Yan et al., MICCAI 2019, whose 2.5D
backbone with 3D context fusion MELD reuses.

Frames: every size in pixels is a pixel of the network's input, i.e. of a sample's image
after it is resized to ``image_size`` (see :func:`activecad.models.meld.network.make_batch`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from activecad.config import StrictConfig, preset_values, validate_config

Preset = Literal["cpu", "paper"]


class MeldConfig(StrictConfig):
    """Everything that defines a MELD network and how it trains.

    Attributes:
        preset: the preset these values started from (``cpu`` or ``paper``).
        image_size: the longer image side the network sees; a sample is resized to it
            (aspect kept, the rest padded) and its detections scaled back. ``None`` keeps the
            sample's own size (the paper feeds 0.8 mm pixels, up to 512 px).
        backbone: ``small`` (a few GroupNorm conv stages, for a CPU) or ``densenet121``
            (torchvision's DenseNet-121 features, randomly initialised; the paper starts from
            ImageNet weights, which cannot be downloaded here).
        widths: channels of the small backbone's stem and its three stages (strides 2, 4, 8,
            16); the stages feed the pyramid. Unused by ``densenet121``.
        fpn_channels: channels of every feature-pyramid output.
        anchor_sizes: anchor side per pyramid level, finest first; one more than the
            backbone's three levels, for the pyramid's max-pool level.
        aspect_ratios: anchor height/width ratios, the same at every level.
        rpn_batch_per_image: anchors sampled per image for the RPN losses.
        rpn_pre_nms_train / rpn_pre_nms_test: proposals per level kept before NMS.
        rpn_post_nms_train / rpn_post_nms_test: proposals per image kept after NMS.
        roi_batch_per_image: proposals sampled per image for the RoI losses.
        roi_positive_fraction: share of positives in that sample.
        representation: width of the shared box feature (two FC layers after RoIAlign); its
            L2-normalised value is the lesion embedding.
        cls_width: width of the two FC layers of each classification head (paper: 1024).
        gate_width: width of the two FC layers of the organ-gating head (paper: 512).
        ignore_iou: an unmatched anchor or proposal whose IoU with an ignore box exceeds this
            is neither positive nor negative (0: any shared area, as
            :func:`activecad.lesions.ignore_boxes_by_image` describes).
        score_thresh: lowest fused score of a reported detection.
        nms_iou: IoU above which NMS suppresses the lower-scored detection.
        detections_per_image: at most this many detections per slice.
        batch_size: samples per step (paper: 4).
        epochs: epochs of a training run (paper: 8).
        steps_per_epoch: optimiser steps per epoch; ``None``: one pass over the epoch's
            samples.
        single_type_share: when the data come as lesion sets, at most this share of each
            epoch is drawn from the single-type sets (see
            :meth:`activecad.data.lesion_samples.LesionSets.train_source`); ``None``: all
            of their samples. Use it when the universal set is small beside them.
        optimizer: ``radam`` (the paper's Rectified Adam) or ``adamw``. The CPU preset uses
            AdamW: RAdam's variance rectification damps its first few hundred steps like a
            warm-up, and a CPU budget has only a few hundred steps in all (on bright-blob
            slices RAdam at 3e-3 had barely moved the loss after 48 steps, AdamW had learned).
        lr: base learning rate (paper: 1e-4).
        lr_drop_epochs: after each of these epochs the rate is divided by 10 (paper: 4, 6).
        weight_decay: weight decay.
        keep_epoch_weights: write each epoch's weights to the model folder, so fine-tuning
            can start from an intermediate checkpoint as the paper does (from its 4th epoch).
        seed: seed of every random draw.
        amp: mixed precision where the device supports it (CUDA).
    """

    preset: Preset = "cpu"
    image_size: int | None = Field(default=160, ge=32)
    backbone: Literal["small", "densenet121"] = "small"
    widths: tuple[int, int, int, int] = (16, 24, 32, 48)
    fpn_channels: int = Field(default=32, ge=4)
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch_per_image: int = Field(default=128, ge=1)
    rpn_pre_nms_train: int = Field(default=600, ge=1)
    rpn_pre_nms_test: int = Field(default=300, ge=1)
    rpn_post_nms_train: int = Field(default=300, ge=1)
    rpn_post_nms_test: int = Field(default=150, ge=1)
    roi_batch_per_image: int = Field(default=64, ge=1)
    roi_positive_fraction: float = Field(default=0.25, gt=0, lt=1)
    representation: int = Field(default=128, ge=2)
    cls_width: int = Field(default=64, ge=1)
    gate_width: int = Field(default=32, ge=1)
    ignore_iou: float = Field(default=0.0, ge=0, lt=1)
    score_thresh: float = Field(default=0.01, ge=0, lt=1)
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    detections_per_image: int = Field(default=20, ge=1)
    batch_size: int = Field(default=4, ge=1)
    epochs: int = Field(default=8, ge=1)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    single_type_share: float | None = Field(default=None, gt=0, lt=1)
    optimizer: Literal["radam", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    lr_drop_epochs: tuple[int, ...] = (4, 6)
    weight_decay: float = Field(default=1e-4, ge=0)
    keep_epoch_weights: bool = True
    seed: int = 0
    amp: bool = True

    @model_validator(mode="after")
    def _check(self) -> MeldConfig:
        if len(self.anchor_sizes) != 4:
            raise ValueError(
                f"anchor_sizes needs 4 sizes (three backbone levels and the pyramid's "
                f"max-pool level), got {len(self.anchor_sizes)}: {self.anchor_sizes}"
            )
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive, got {self.aspect_ratios}")
        bad = [e for e in self.lr_drop_epochs if not 0 < e < self.epochs]
        if bad:
            raise ValueError(
                f"lr_drop_epochs must lie strictly between 0 and epochs={self.epochs}, got {bad}"
            )
        return self


PRESETS: dict[str, dict[str, object]] = {
    # Far narrower than the paper (heads of two FC-64 and gate of two FC-32 instead of
    # FC-1024 and FC-512): a step of batch 4 at 160 px takes about 0.4 s on two CPU cores.
    "cpu": {},
    # The paper's sizes (section 4.2) for a GPU: DenseNet-121, classification heads of two
    # FC-1024, gating head of two FC-512, batch 4, RAdam for 8 epochs at 1e-4 divided by 10
    # after epochs 4 and 6. Proposal and sample counts are maskrcnn-benchmark's FPN
    # defaults (the paper's code base); anchors start at 16 px (13 mm at 0.8 mm pixels).
    "paper": {
        "image_size": None,
        "backbone": "densenet121",
        "fpn_channels": 256,
        "anchor_sizes": (16, 32, 64, 128),
        "rpn_batch_per_image": 256,
        "rpn_pre_nms_train": 2000,
        "rpn_pre_nms_test": 1000,
        "rpn_post_nms_train": 2000,
        "rpn_post_nms_test": 1000,
        "roi_batch_per_image": 512,
        "representation": 1024,
        "cls_width": 1024,
        "gate_width": 512,
        "detections_per_image": 100,
        "optimizer": "radam",
        "lr": 1e-4,
        "weight_decay": 0.0,
    },
}


def preset_config(preset: str, **overrides: object) -> MeldConfig:
    """The configuration of a named preset with ``overrides`` applied on top.

    Raises:
        InputError: an unknown preset or an invalid override.
    """
    return validate_config(MeldConfig, {**preset_values(PRESETS, preset), **overrides})


class MeldPreprocessing(StrictConfig):
    """How a model's slices were prepared; inference must prepare its slices the same way.

    Attributes:
        pixel_mm: in-plane pixel size every slice was resized to, mm (paper 0.8).
        slice_mm: interval of a sample's 9 slices, mm (paper 2).
        crop_borders: rows and columns of air on every slice were clipped.
        hu_window: (low, high) HU mapped to [0, 1]. The paper's single window -1024..3071
            (appendix 7.2) is the default, and what a model folder written before this
            field existed was trained with.
    """

    pixel_mm: float = Field(gt=0)
    slice_mm: float = Field(gt=0)
    crop_borders: bool = True
    hu_window: tuple[float, float] = (-1024.0, 3071.0)

    @model_validator(mode="after")
    def _check_window(self) -> MeldPreprocessing:
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        return self
