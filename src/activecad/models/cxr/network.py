"""DenseNet with squeeze-and-excitation blocks: Networks 1 and 2 of Kim et al.

Kim, Ryu, Kim, Kim, "Better performance of deep learning pulmonary nodule detection using
chest radiography with reference to computed tomography: data quality is matter" (2023).

* The backbone is torchvision's DenseNet (its dense blocks and transitions unchanged) with
  one input channel and a squeeze-and-excitation block (Hu et al., CVPR 2018) after every
  dense block. Its output stride is 32: a 512 x 512 radiograph gives 16 x 16 features.
* A sub-network of two convolutions reduces the channels to one while keeping height and
  width: a map of nodule logits.
* **Network 1** (image-level labels): the sub-network on the 16 x 16 features; global average
  pooling of its logits is the image logit; the logit map is the class activation map.
* **Network 2** (pixel-level labels): the features are up-sampled 2x before the sub-network,
  giving a 32 x 32 probability map at 512 input; the image probability is the map's
  maximum. Trained with the classification loss plus the mean pixel binary cross entropy
  against the nodule mask resized to the map (:func:`cxr_loss`).

Arrays are (batch, channel, y, x); the input is one channel, the preprocessed radiograph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.models.densenet import DenseNet

__all__ = ["CxrNet", "CxrOutput", "SEBlock", "SEDenseNetFeatures", "cxr_loss"]


class SEBlock(nn.Module):
    """Squeeze-and-excitation: scale each channel by a gate computed from all channels.

    ``y = x * sigmoid(W2 relu(W1 mean_yx(x)))`` with ``W1``: C -> C/r, ``W2``: C/r -> C.

    Args:
        channels: C.
        reduction: r (the hidden width is ``max(C // r, 4)``).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) channel gates in (0, 1) of a (B, C, H, W) input."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each channel scaled by its gate."""
        return x * self.gate(x)[:, :, None, None]


class SEDenseNetFeatures(nn.Module):
    """torchvision's DenseNet feature extractor, one input channel, SE after each dense block.

    Args:
        growth_rate, block_config, num_init_features, bn_size: as torchvision's DenseNet
            (DenseNet-121: 32, (6, 12, 24, 16), 64, 4).
        se_reduction: reduction of the SE blocks.

    Shapes: (B, 1, H, W) -> (B, out_channels, H / 32, W / 32).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        base = DenseNet(
            growth_rate=growth_rate,
            block_config=block_config,
            num_init_features=num_init_features,
            bn_size=bn_size,
        ).features
        layers: list[tuple[str, nn.Module]] = []
        channels = num_init_features
        for name, module in base.named_children():
            if name == "conv0":
                module = nn.Conv2d(1, num_init_features, 7, stride=2, padding=3, bias=False)
            layers.append((name, module))
            if name.startswith("denseblock"):
                channels += len(module) * growth_rate
                layers.append((f"se{name[len('denseblock') :]}", SEBlock(channels, se_reduction)))
            elif name.startswith("transition"):
                channels //= 2
        self.body = nn.Sequential()
        for name, module in layers:
            self.body.add_module(name, module)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C, H / 32, W / 32), after the final batch norm and a ReLU."""
        return F.relu(self.body(x))


@dataclass
class CxrOutput:
    """What a network gives for a batch.

    Attributes:
        logit: (B,) image-level nodule logit; ``sigmoid(logit)`` is the probability.
        map_logit: (B, 1, h, w) logits of the sub-network's map (Network 1: the class
            activation map at H/32; Network 2: the pixel probability map's logits at H/16).
        cam: whether ``map_logit`` is a class activation map (Network 1), which the image
            logit averages, rather than a probability map (Network 2).
    """

    logit: torch.Tensor
    map_logit: torch.Tensor
    cam: bool = False

    @property
    def probability(self) -> torch.Tensor:
        """(B,) image-level nodule probability."""
        return torch.sigmoid(self.logit)

    @property
    def heatmap(self) -> torch.Tensor:
        """(B, 1, h, w) map in [0, 1] whose maximum is the image's probability.

        Network 2: its probability map. Network 1: the class activation map scaled to [0, 1]
        within the image (Zhou et al.'s CAM ranks regions by their share of the evidence)
        and multiplied by the image's probability, so a confident nodule image shows its
        most telling regions above 0.5 and a normal one shows nothing. The map's own
        sigmoid would not do: the image logit is the map's mean, so a nodule image raises
        every cell and the sigmoid covers the whole lung field.
        """
        if not self.cam:
            return torch.sigmoid(self.map_logit)
        low = self.map_logit.amin(dim=(2, 3), keepdim=True)
        high = self.map_logit.amax(dim=(2, 3), keepdim=True)
        scaled = (self.map_logit - low) / (high - low).clamp_min(1e-6)
        return scaled * self.probability[:, None, None, None]


class CxrNet(nn.Module):
    """Network 1 (``network=1``) or Network 2 (``network=2``) of Kim et al.

    Args:
        network: 1 (image-level, CAM) or 2 (pixel-level map, 2x up-sampled features).
        growth_rate, block_config, num_init_features, bn_size, se_reduction: backbone.
        sub_channels: width of the sub-network's first convolution.
    """

    def __init__(
        self,
        network: int = 1,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        se_reduction: int = 16,
        sub_channels: int = 128,
    ) -> None:
        super().__init__()
        if network not in (1, 2):
            raise ValueError(f"network must be 1 or 2, got {network}")
        self.network = network
        self.features = SEDenseNetFeatures(
            growth_rate, tuple(block_config), num_init_features, bn_size, se_reduction
        )
        c = self.features.out_channels
        self.upsample = (
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            if network == 2
            else nn.Identity()
        )
        # Two convolutions: fewer channels, same height and width.
        self.subnet = nn.Sequential(
            nn.Conv2d(c, sub_channels, 3, padding=1),
            nn.BatchNorm2d(sub_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(sub_channels, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> CxrOutput:
        """(B, 1, H, W) preprocessed radiographs -> :class:`CxrOutput`."""
        m = self.subnet(self.upsample(self.features(x)))
        # Network 2: max of sigmoid = sigmoid of max, so the probability is the map's maximum.
        logit = m.mean(dim=(1, 2, 3)) if self.network == 1 else m.amax(dim=(1, 2, 3))
        return CxrOutput(logit=logit, map_logit=m, cam=self.network == 1)


def cxr_loss(
    out: CxrOutput,
    label: torch.Tensor,
    mask: torch.Tensor | None = None,
    pixel_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Classification BCE, plus (Network 2) the mean pixel BCE of the map against the mask.

    Args:
        out: the network's output.
        label: (B,) 0/1 image labels.
        mask: (B, 1, H, W) 0/1 nodule masks at the input size, or None (image-level only).
            Resized to the map by max pooling: a map cell is positive when any mask pixel
            in it is (averaging would turn nodules smaller than a cell into faint targets).
        pixel_weight: weight of the localisation loss.

    Returns:
        The loss and its parts as floats.
    """
    cls = F.binary_cross_entropy_with_logits(out.logit, label.float())
    parts = {"cls": float(cls.detach())}
    if mask is None:
        return cls, parts
    target = F.adaptive_max_pool2d(mask.float(), out.map_logit.shape[-2:])
    loc = F.binary_cross_entropy_with_logits(out.map_logit, target)
    parts["loc"] = float(loc.detach())
    return cls + pixel_weight * loc, parts
