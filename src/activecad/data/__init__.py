"""Preprocessing, patch sampling and augmentation for the models."""

from activecad.data.augment import AugmentConfig, augment_patch
from activecad.data.patches import LabelledScan, PatchSampler, crop_patch
from activecad.data.preprocess import (
    PreparedScan,
    PreprocessCache,
    PreprocessConfig,
    file_digest,
    lung_box,
    preprocess_scan,
)

__all__ = [
    "AugmentConfig",
    "LabelledScan",
    "PatchSampler",
    "PreparedScan",
    "PreprocessCache",
    "PreprocessConfig",
    "augment_patch",
    "crop_patch",
    "file_digest",
    "lung_box",
    "preprocess_scan",
]
