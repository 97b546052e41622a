"""Augmentation of a detection patch together with its boxes (flip, crop, rotate).

The augmentations Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule
Detection" (MICCAI 2020) name in §3.1.

Frames: a patch is (X, Y, Z) (the network's order, see
:mod:`activecad.models.detector3d.network`) and boxes are (N, 6)
xmin, ymin, zmin, xmax, ymax, zmax in voxels of that patch. Nodules are near-spherical, so
after a rotation a box keeps its size around the moved centre.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from activecad.config import StrictConfig


class AugmentConfig(StrictConfig):
    """Probabilities and ranges of each augmentation.

    Attributes:
        flip_prob: chance of flipping each axis.
        rot90_prob: chance of a random multiple of 90 degrees in the axial (x-y) plane.
        affine_prob: chance of a small rotation about z plus isotropic scaling.
        max_rotation_deg: largest small rotation, degrees.
        scale_range: (low, high) isotropic scale factor.
        intensity_prob: chance of intensity jitter.
        intensity_scale: largest relative change of contrast.
        intensity_shift: largest additive shift (normalised units).
        noise_std: standard deviation of added Gaussian noise (normalised units).
    """

    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    affine_prob: float = 0.3
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.01


def _centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[:, :3] + boxes[:, 3:]) / 2, boxes[:, 3:] - boxes[:, :3]


def _boxes(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


def augment_patch(
    patch: np.ndarray, boxes: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly flip, rotate, scale and jitter a patch, moving its boxes along.

    Args:
        patch: (X, Y, Z) float32 normalised intensities.
        boxes: (N, 6) voxels of ``patch``, x-y-z min then max.
        config: what to apply and how strongly.
        rng: the source of every random choice.

    Returns:
        the augmented patch (same shape) and boxes (N, 6); boxes are not clipped.
    """
    patch = np.asarray(patch, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6).copy()
    shape = np.array(patch.shape, dtype=np.float64)
    centres, sizes = _centres_sizes(boxes)
    for axis in range(3):
        if rng.random() < config.flip_prob:
            patch = np.flip(patch, axis=axis)
            # Index i maps to n - 1 - i, so a continuous centre c maps to n - 1 - c.
            centres[:, axis] = shape[axis] - 1 - centres[:, axis]
    if patch.shape[0] == patch.shape[1] and rng.random() < config.rot90_prob:
        for _ in range(int(rng.integers(1, 4))):
            # np.rot90 over axes (0, 1): new[i, j] = old[j, n - 1 - i].
            patch = np.rot90(patch, axes=(0, 1))
            x, y = centres[:, 0].copy(), centres[:, 1].copy()
            centres[:, 0], centres[:, 1] = shape[1] - 1 - y, x
            sizes[:, [0, 1]] = sizes[:, [1, 0]]
    if rng.random() < config.affine_prob:
        angle = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
        scale = rng.uniform(*config.scale_range)
        patch, centres = _rotate_scale(patch, centres, angle, scale)
        sizes = sizes * scale
    if rng.random() < config.intensity_prob:
        gain = 1 + rng.uniform(-config.intensity_scale, config.intensity_scale)
        shift = rng.uniform(-config.intensity_shift, config.intensity_shift)
        noise = rng.normal(0.0, config.noise_std, size=patch.shape).astype(np.float32)
        patch = patch * gain + shift + noise
    return np.ascontiguousarray(patch, dtype=np.float32), _boxes(centres, sizes)


def _rotate_scale(
    patch: np.ndarray, centres: np.ndarray, angle: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle`` about the z axis and zoom by ``scale`` around the patch centre."""
    shape = np.array(patch.shape, dtype=np.float64)
    mid = (shape - 1) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    # forward maps an input voxel (x, y, z) to its output position about the centre.
    forward = scale * np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    # grid_sample wants, per output voxel, the input position in [-1, 1] with the last
    # grid component indexing the last tensor axis; build the grid in index space.
    axes = [torch.arange(int(n), dtype=torch.float64) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) - torch.from_numpy(mid)
    source = grid @ torch.from_numpy(inverse).T + torch.from_numpy(mid)
    normalised = 2 * source / torch.from_numpy(shape - 1) - 1
    # grid_sample's grid is (x_last, ..., x_first): reverse the component order.
    normalised = normalised.flip(-1).float()[None]
    tensor = torch.from_numpy(np.ascontiguousarray(patch))[None, None]
    out = nn.functional.grid_sample(
        tensor, normalised, mode="bilinear", padding_mode="border", align_corners=True
    )
    moved = (centres - mid) @ forward.T + mid
    return out[0, 0].numpy(), moved
