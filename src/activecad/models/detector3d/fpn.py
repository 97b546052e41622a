"""A 3D ResNet-18 backbone with a feature pyramid P2..P5 of configurable width.

MONAI's ``resnet_fpn_feature_extractor`` fixes 256 pyramid channels, which dominates the
cost on a CPU, so the pyramid is assembled here from MONAI's ResNet with its own
lateral/top-down layers (Lin et al. 2017, as the 3DFPN of Liu, Cao & Tian, MICCAI 2020,
§2.1 uses it).

Tensors are (B, C, X, Y, Z): the first spatial axis is x, as MONAI's detection boxes
(xmin, ymin, zmin, xmax, ymax, zmax) expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

PYRAMID_STRIDES = (4, 8, 16, 32)


def _swap_batch_norm(module: nn.Module, norm: str) -> None:
    """Replace every BatchNorm3d below ``module`` by GroupNorm (8 groups) or InstanceNorm."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            channels = child.num_features
            swapped: nn.Module = (
                nn.GroupNorm(8, channels)
                if norm == "group"
                else nn.InstanceNorm3d(channels, affine=True)
            )
            setattr(module, name, swapped)
        else:
            _swap_batch_norm(child, norm)


class ResNetFPN3D(nn.Module):
    """ResNet-18 stages C2..C5 feeding a top-down pyramid P2..P5.

    Args:
        widths: channels of the four residual stages (64-128-256-512 is ResNet-18).
        out_channels: channels of every pyramid level.
        in_channels: image channels.
        norm: ``batch``, ``group`` (8 groups) or ``instance`` (with affine weights).

    Attributes:
        out_channels: channels of every output map (read by MONAI's RetinaNet parts).
    """

    def __init__(
        self,
        widths: Sequence[int],
        out_channels: int,
        in_channels: int = 1,
        norm: str = "batch",
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give 4 stage widths, got {list(widths)}")
        self.body = ResNet(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=list(widths),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
        )
        if norm != "batch":
            # MONAI's ResNet applies its ``norm`` argument to the stem only, not to the
            # residual blocks, so every BatchNorm is swapped here.
            _swap_batch_norm(self.body, norm)
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(nn.Conv3d(w, out_channels, kernel_size=1) for w in widths)
        self.smooth = nn.ModuleList(
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1) for _ in widths
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid maps of ``images``.

        Args:
            images: (B, C, X, Y, Z), each spatial size divisible by 32.

        Returns:
            [P2, P3, P4, P5], each (B, out_channels, X/s, Y/s, Z/s) for s = 4, 8, 16, 32.
        """
        body = self.body
        x = body.act(body.bn1(body.conv1(images)))
        x = body.maxpool(x)
        stages = []
        for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
            x = layer(x)
            stages.append(x)
        top = self.lateral[3](stages[3])
        merged = [top]
        for level in (2, 1, 0):
            lateral = self.lateral[level](stages[level])
            top = lateral + nn.functional.interpolate(top, size=lateral.shape[2:], mode="nearest")
            merged.insert(0, top)
        return [smooth(m) for smooth, m in zip(self.smooth, merged, strict=True)]
