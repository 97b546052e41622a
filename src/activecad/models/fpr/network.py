"""The 3D encoder-decoder fully-convolutional FP-reduction classifier (Park et al.).

Layout, for the cpu preset (32^3 patch, a stride-2 stem, widths 16-32-64)::

    stem     32^3 -> 3^3 conv, stride 2 -> 16^3 x16
    encoder  16^3 x16 -> pool -> 8^3 x32 -> pool -> 4^3 x64   (the bottleneck)
    decoder  4^3 -> up x2, + skip 8^3 x32 -> 8^3 x32
    head     1x1x1 conv to the classes, mean over the voxels -> logits

The stem halves the first, most expensive resolution: a training step of 16 patches then
takes about a third of a second on one CPU core instead of three. The paper preset keeps
full resolution (stride 1).

Every layer is a convolution, so the classifier is fully convolutional: on a larger input
the head's map before the mean is a dense score map. The *mid-level feature* of Park et al.
(their Fig. 1 takes the feature between encoder and decoder) is the bottleneck averaged
over its voxels: a ``widths[-1]``-dimensional nodule embedding.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn
from torch.nn import functional


def _normalise(c: int, norm: Literal["batch", "instance"]) -> nn.Module:
    return nn.BatchNorm3d(c) if norm == "batch" else nn.InstanceNorm3d(c, affine=True)


def _block(
    c_in: int, c_out: int, norm: Literal["batch", "instance"], stride: int = 1
) -> nn.Sequential:
    normalise = functools.partial(_normalise, norm=norm)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        normalise(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        normalise(c_out),
        nn.ReLU(inplace=True),
    )


class FprNet(nn.Module):
    """Encoder-decoder classifier; ``forward`` gives logits, ``embed`` the mid-level feature.

    Args:
        widths: channels of the encoder stages (one 2x pooling between stages).
        n_classes: output classes (2: non-nodule, nodule).
        norm: ``batch`` or ``instance``.
        stem_stride: stride of the first convolution (1: full resolution).
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        n_classes: int = 2,
        norm: Literal["batch", "instance"] = "batch",
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            _block(c_in, c_out, norm, stride=stem_stride if i == 0 else 1)
            for i, (c_in, c_out) in enumerate(zip((1, *widths[:-1]), widths, strict=True))
        )
        # One decoder stage back to the second-finest scale: enough context for a
        # classifier, half the cost of decoding to full resolution.
        skip = widths[-2] if len(widths) > 1 else widths[-1]
        self.decoder = _block(widths[-1] + skip, skip, norm)
        self.head = nn.Conv3d(skip, n_classes, 1)
        self.embedding_dim = widths[-1]

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else functional.max_pool3d(x, 2))
            features.append(x)
        return features

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, S, S, S) patches -> (B, n_classes) logits and (B, D) embeddings."""
        features = self._encode(x)
        bottleneck = features[-1]
        skip = features[-2] if len(features) > 1 else bottleneck
        up = functional.interpolate(
            bottleneck, size=skip.shape[2:], mode="trilinear", align_corners=False
        )
        decoded = self.decoder(torch.cat([up, skip], dim=1))
        logits = self.head(decoded).mean(dim=(2, 3, 4))
        return logits, bottleneck.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) patches -> (B, n_classes) logits."""
        return self.forward_with_embedding(x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) patches -> (B, D) mid-level features (bottleneck, voxel mean)."""
        return self._encode(x)[-1].mean(dim=(2, 3, 4))
