"""Preprocessing, patch sampling and augmentation for the models."""

from activecad.data.augment import AugmentConfig, augment_patch
from activecad.data.patches import LabelledScan, PatchSampler, crop_patch
from activecad.data.preprocess import (
    CACHE_ENV,
    CacheInfo,
    PreparedScan,
    PreprocessCache,
    PreprocessConfig,
    default_cache_dir,
    file_digest,
    lung_box,
    preprocess_scan,
)

__all__ = [
    "CACHE_ENV",
    "AugmentConfig",
    "CacheInfo",
    "LabelledScan",
    "PatchSampler",
    "PreparedScan",
    "PreprocessCache",
    "PreprocessConfig",
    "augment_patch",
    "crop_patch",
    "default_cache_dir",
    "file_digest",
    "lung_box",
    "preprocess_scan",
]
