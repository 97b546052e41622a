"""Typed configuration of the 3D nodule detector and its two presets.

"Liu et al. 2020" below is Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary
Nodule Detection" (MICCAI 2020).

Frames: ``spacing`` is (x, y, z) mm; ``patch_size`` is (x, y, z) voxels of the resampled
array, the order in which the network sees it (see :mod:`.network`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from activecad.config import StrictConfig, preset_values, validate_config
from activecad.data.augment import AugmentConfig
from activecad.data.preprocess import PreprocessConfig

Preset = Literal["cpu", "paper"]


class DetectorConfig(StrictConfig):
    """Everything that defines a detector: network shape, anchors, losses and training.

    Attributes:
        preset: the preset these values started from (``cpu`` or ``paper``).
        preprocess: resampling, HU window and cropping.
        backbone_widths: channels of the four ResNet-18 stages (full width: 64-128-256-512).
        backbone_norm: the backbone's normalisation: ``batch`` (MONAI's ResNet default),
            ``group`` (8 groups) or ``instance``. Batch statistics of the few patches a CPU
            step holds (and of fine-tuning on a few labelled scans) are noisy; GroupNorm and
            InstanceNorm do not depend on the batch.
        fpn_channels: channels of every FPN output P2..P5.
        head_convs: conv layers in each detection head before its output layer (MONAI: 4).
        head_levels: how many pyramid levels, from P2 upwards, carry detection heads.
        base_anchor_shapes: anchor sizes (x, y, z voxels) at P2; level k scales them by 2**k.
        loss_hidden: width of the loss-prediction FC layers (Yoo & Kweon use 128).
        patch_size: training/inference window, x-y-z voxels; must be divisible by 32.
        batch_size: patches per step; the ranking losses pair them, so it must be even.
        positive_fraction: share of nodule-centred patches in a batch.
        hard_negative_fraction: share of the other patches centred on a hard negative (a
            false positive given to training, ``train detector --hard-negatives``); only
            applies when hard negatives are given.
        cls_loss: ``focal`` (RetinaNet's focal loss over every anchor, normalised by the
            positives) or ``sampled_bce`` (binary cross-entropy over MONAI's hard-negative
            sample, as MONAI's LUNA16 recipe does).
        focal_alpha: weight of positives in the focal loss (Lin et al. 2017: 0.25).
        focal_gamma: focusing exponent of the focal loss (Lin et al. 2017: 2).
        epochs: passes over the training scans.
        steps_per_epoch: optimiser steps per epoch.
        optimizer: ``sgd`` (momentum 0.9, as Liu et al. 2020) or ``adamw`` (converges in
            fewer steps, which a CPU budget needs).
        lr: learning rate (Liu et al. 2020: 0.01 with SGD); divided by 10 for the last tenth
            of the epochs, as Liu et al. 2020 §3.1 do.
        weight_decay: weight decay.
        ema_decay: validate and keep an exponential moving average of the weights with
            this decay per step (0: the trained weights themselves; see
            :class:`activecad.training.FitPlan`).
        augment: augmentation of training patches.
        val_fraction: share of the scans held out for validation FROC/CPM (0 for none).
        val_every: validate every this many epochs (and after the last).
        lambda_scan: weight lambda1 of the scan-level loss-prediction term (Eq. 3).
        lambda_roi: weight lambda2 of the RoI-level loss-prediction term (Eq. 3).
        margin: margin of the pairwise ranking loss (Yoo & Kweon: 1).
        stop_grad_epoch: from this epoch on, loss-prediction gradients no longer reach the
            detector features (Yoo & Kweon stop them after 120 of 200 epochs). Default 0:
            on a CPU budget, joint training from the first step left the classifier
            collapsed (see the README's detector section); the paper preset uses 180.
        roi_tau: detection-score threshold tau of L_RoI (Eq. 2; Liu et al. 2020: 0.5).
        score_thresh: minimum probability of a reported detection.
        nms_thresh: IoU above which NMS suppresses the lower-scored box.
        detections_per_scan: at most this many detections per scan.
        sw_overlap: overlap of sliding windows at inference.
        sw_roi_size: largest inference window, x-y-z voxels (multiples of 32). The network
            is fully convolutional, so a lung-cropped scan that fits is run in one pass,
            which on a CPU is ~3x faster than overlapping training-size windows.
        mirror_tta: test-time augmentation at inference: the scan is also run mirrored
            along every subset of its axes (8 passes; training flips each axis, so each is
            a view the network learned) and the passes' boxes are fused by weighted box
            clustering (:func:`~.inference.fuse_passes`); 8 times the inference time.
        seed: seed of every random choice in training.
        amp: use mixed precision where the device supports it (CUDA).
    """

    preset: Preset = "cpu"
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    backbone_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    backbone_norm: Literal["batch", "group", "instance"] = "batch"
    fpn_channels: int = 64
    head_levels: int = Field(default=3, ge=1, le=4)
    head_convs: int = Field(default=1, ge=0, le=4)
    base_anchor_shapes: tuple[tuple[float, float, float], ...] = ((4.0, 4.0, 4.0), (8.0, 8.0, 8.0))
    loss_hidden: int = 32
    patch_size: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = Field(default=2, ge=2)
    positive_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    hard_negative_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    cls_loss: Literal["focal", "sampled_bce"] = "focal"
    focal_alpha: float = Field(default=0.25, ge=0, le=1)
    focal_gamma: float = Field(default=2.0, ge=0)
    epochs: int = Field(default=20, ge=1)
    steps_per_epoch: int = Field(default=50, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=3e-5, ge=0)
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    val_every: int = Field(default=5, ge=1)
    lambda_scan: float = Field(default=1.0, ge=0)
    lambda_roi: float = Field(default=1.0, ge=0)
    margin: float = Field(default=1.0, ge=0)
    stop_grad_epoch: int = Field(default=0, ge=0)
    roi_tau: float = Field(default=0.5, ge=0, le=1)
    # Which reading of Eq. 2 is L_RoI (see loss_prediction.ROI_VARIANTS; ENGINE-B's field).
    roi_variant: Literal["loss_of_confident", "loss_above_tau", "score_above_tau"] = (
        "loss_of_confident"
    )
    score_thresh: float = Field(default=0.05, ge=0, le=1)
    nms_thresh: float = Field(default=0.1, ge=0, le=1)
    detections_per_scan: int = Field(default=100, ge=1)
    sw_overlap: float = Field(default=0.25, ge=0, lt=1)
    sw_roi_size: tuple[int, int, int] = (320, 320, 320)
    mirror_tta: bool = False
    seed: int = 0
    amp: bool = True

    @model_validator(mode="after")
    def _check(self) -> DetectorConfig:
        if any(p % 32 for p in self.patch_size):
            raise ValueError(
                f"patch_size must be divisible by 32 (the P5 stride), got {self.patch_size}"
            )
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (ranking pairs), got {self.batch_size}")
        if any(p % 32 for p in self.sw_roi_size):
            raise ValueError(f"sw_roi_size must be divisible by 32, got {self.sw_roi_size}")
        if self.backbone_norm == "group" and any(w % 8 for w in self.backbone_widths):
            raise ValueError(
                f"backbone_widths must be divisible by 8 for GroupNorm, got {self.backbone_widths}"
            )
        if self.backbone_norm == "instance" and min(self.patch_size) < 64:
            raise ValueError(
                "backbone_norm 'instance' needs patch_size >= 64 on every axis (the stride-32 "
                f"stage must hold more than one voxel), got {self.patch_size}"
            )
        if self.fpn_channels % 8:
            raise ValueError(
                f"fpn_channels must be divisible by 8 (GroupNorm), got {self.fpn_channels}"
            )
        return self


PRESETS: dict[str, dict[str, object]] = {
    # About a quarter of ResNet-18's width and 64 FPN channels: ~1 s a step on 2 CPU cores.
    # One inference window of 384 voxels covers every lung crop at 1 mm seen so far: one
    # pass over a 352-voxel input took 37.7 s against 61.1 s for four even windows (README,
    # detector benchmarks), at about the same peak memory.
    "cpu": {"sw_roi_size": (384, 384, 384)},
    # Liu, Cao & Tian (MICCAI 2020): full ResNet-18, 256 FPN channels; LUNA16-style
    # 0.7 x 0.7 x 1.25 mm voxels.
    "paper": {
        "preprocess": {"spacing": (0.7, 0.7, 1.25)},
        "backbone_widths": (64, 128, 256, 512),
        "fpn_channels": 256,
        "head_convs": 4,
        "loss_hidden": 128,
        "patch_size": (128, 128, 96),
        "batch_size": 4,
        "base_anchor_shapes": ((6.0, 6.0, 4.0), (12.0, 12.0, 7.0)),
        "optimizer": "sgd",
        "lr": 0.01,
        "epochs": 300,
        "stop_grad_epoch": 180,
    },
}


def preset_config(preset: str, **overrides: object) -> DetectorConfig:
    """The configuration of a named preset with ``overrides`` applied on top.

    Raises:
        InputError: ``preset`` is not one of the known presets, or an override is invalid.
    """
    values = preset_values(PRESETS, preset)
    for key, value in overrides.items():
        if key == "preprocess" and isinstance(value, dict):
            base = dict(values.get("preprocess", {}))  # type: ignore[call-overload]
            base.update(value)
            values["preprocess"] = base
        else:
            values[key] = value
    return validate_config(DetectorConfig, values)
