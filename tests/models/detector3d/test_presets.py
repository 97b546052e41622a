"""The two presets: the paper preset is the full ResNet-18 + 256-channel FPN of papers/000."""

from __future__ import annotations

import pytest
import torch

from activecad.errors import InputError
from activecad.models import MODELS
from activecad.models.detector3d import NoduleDetector, preset_config


def test_paper_preset_is_full_width_and_trains_at_tiny_scale() -> None:
    config = preset_config("paper", patch_size=(32, 32, 32), batch_size=2)
    assert config.backbone_widths == (64, 128, 256, 512)
    assert config.fpn_channels == 256
    assert config.head_convs == 4  # MONAI's RetinaNet heads left as they are
    assert config.preprocess.spacing == (0.7, 0.7, 1.25)
    torch.manual_seed(0)
    detector = NoduleDetector(config)
    backbone = detector.network.feature_extractor.body
    # 3D ResNet-18 body (conv1 7^3 + 8 basic blocks, no FC): MONAI's own
    # resnet18(spatial_dims=3, n_input_channels=1) has 33,366,096 weights, 205,200 of them
    # in its 400-class FC layer.
    assert sum(p.numel() for p in backbone.parameters()) == 33_366_096 - 205_200
    images = torch.rand(2, 1, 32, 32, 32)
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 8.0, 16.0, 16.0, 14.0]]),
            "labels": torch.zeros(1).long(),
        },
        {"boxes": torch.zeros(0, 6), "labels": torch.zeros(0).long()},
    ]
    losses = detector.compute_losses(images, targets, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(losses.total)


def test_cpu_preset_is_about_a_quarter_width() -> None:
    config = preset_config("cpu")
    assert config.backbone_widths == (16, 32, 64, 128)
    assert config.fpn_channels == 64


def test_unknown_preset_and_bad_override_are_input_errors() -> None:
    with pytest.raises(InputError, match="did you mean 'paper'"):
        preset_config("papers")
    with pytest.raises(InputError, match="patch_size"):
        preset_config("cpu", patch_size=(50, 64, 64))


def test_model_registry_builds_the_detector() -> None:
    assert "detector3d" in MODELS
    with pytest.raises(InputError, match="did you mean 'detector3d'"):
        MODELS.get("detector3")
