"""Typed configuration of the FP-reduction classifier and its two presets.

"Park et al." below is Park, Lee, Park & Jung, "How transferable are the deep features
from false positive reduction network for lung nodule detection in CT to malignancy
prediction?" (2017): the FP-reduction classifier whose mid-level feature is the nodule
embedding. "Dou et al." is Dou, Chen, Jin, Lin, Qin & Heng, "Automated
pulmonary nodule detection via 3D ConvNets with online sample filtering and hybrid-loss
residual learning", MICCAI 2017 (the training recipe Park et al. follow).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from activecad.config import StrictConfig, preset_values, validate_config
from activecad.data.candidates import PatchPlan
from activecad.data.preprocess import PreprocessConfig

Preset = Literal["cpu", "paper"]


class FprConfig(StrictConfig):
    """Everything that defines an FP-reduction classifier and how it trains.

    Attributes:
        preset: the preset these values started from.
        preprocess: resampling (1 mm: the classifier looks at nodule detail), HU window,
            lung crop.
        patch_size: patch side, voxels of the preprocessed grid (cubic).
        patches_per_candidate: m, the augmented patches of a candidate; its probability is
            the mean over them.
        scales: field-of-view factors of the augmented patches (Zhou et al. §4.1.2).
        widths: channels of the encoder stages; each stage but the last halves the size.
        stem_stride: stride of the first convolution (2 halves the cost-dominating full
            resolution on a CPU; 1 keeps it).
        norm: ``batch`` or ``instance`` normalisation (instance is independent of batch
            size, for fine-tuning on a handful of candidates).
        batch_size: patches per step.
        positive_fraction: share of nodule patches in a batch.
        steps: optimiser steps of a training run.
        lr: learning rate (AdamW; cosine to 0 over the steps).
        weight_decay: weight decay.
        curriculum_share: share of the steps in the easy phase (see :mod:`.train`).
        mine_from_detector: start hard-example mining from the detector's scores (each
            negative's initial hardness ``-log(1 - p_detector)``) instead of 1 for all.
        keep_negatives: online sample filtering: the share of a batch's negative patches,
            hardest first, that enter the loss (positives always do).
        val_fraction: share of the training patients held out for validation AUC.
        seed: seed of every random draw.
    """

    preset: Preset = "cpu"
    preprocess: PreprocessConfig = PreprocessConfig(spacing=(1.0, 1.0, 1.0))
    patch_size: int = 32
    patches_per_candidate: int = 8
    scales: tuple[float, ...] = (1.0, 1.2, 1.5)
    widths: tuple[int, ...] = (16, 32, 64)
    stem_stride: Literal[1, 2] = 2
    norm: Literal["batch", "instance"] = "batch"
    batch_size: int = 16
    positive_fraction: float = 0.5
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 1e-4
    curriculum_share: float = 0.2
    mine_from_detector: bool = False
    keep_negatives: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FprConfig:
        factor = self.stem_stride * 2 ** (len(self.widths) - 1)
        if self.patch_size % factor:
            raise ValueError(
                f"patch_size {self.patch_size} must be divisible by {factor} (the stem's "
                "stride and one halving per encoder stage but the last)"
            )
        if not 0 < self.positive_fraction < 1 or not 0 < self.keep_negatives <= 1:
            raise ValueError("positive_fraction must be in (0, 1), keep_negatives in (0, 1]")
        if not 0 <= self.curriculum_share < 1:
            raise ValueError("curriculum_share must be in [0, 1)")
        return self

    def patch_plan(self) -> PatchPlan:
        """How candidates become patches for this classifier."""
        return PatchPlan(self.patch_size, self.patches_per_candidate, tuple(self.scales))


PRESETS: dict[str, dict[str, object]] = {
    # Trains in minutes on two CPU cores.
    "cpu": {},
    # Dou et al.'s scale: larger patches and network, m = 16 views, for a GPU.
    "paper": {
        "patch_size": 48,
        "widths": (32, 64, 128, 256),
        "stem_stride": 1,
        "patches_per_candidate": 16,
        "batch_size": 64,
        "steps": 20000,
        "lr": 3e-4,
    },
}


def preset_config(preset: str, **overrides: object) -> FprConfig:
    """The configuration of a named preset with ``overrides`` applied on top.

    Raises:
        InputError: an unknown preset or an invalid override.
    """
    return validate_config(FprConfig, {**preset_values(PRESETS, preset), **overrides})
