"""A tiny detector configuration shared by the detector tests (32^3 patches, 8 channels)."""

from __future__ import annotations

import pytest

from activecad.models.detector3d import DetectorConfig, preset_config

TINY = {
    "preprocess": {"spacing": (1.0, 1.0, 1.0), "lung_crop": False},
    "backbone_widths": (4, 8, 8, 8),
    "fpn_channels": 8,
    "loss_hidden": 4,
    "patch_size": (32, 32, 32),
    "base_anchor_shapes": ((4.0, 4.0, 4.0), (8.0, 8.0, 8.0)),
    "epochs": 1,
    "steps_per_epoch": 2,
    "val_fraction": 0.0,
    "score_thresh": 0.0,
    "sw_roi_size": (32, 32, 32),
}


@pytest.fixture
def tiny_config() -> DetectorConfig:
    return preset_config("cpu", **TINY)
