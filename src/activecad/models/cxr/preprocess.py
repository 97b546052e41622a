"""Chest-radiograph preprocessing of Kim et al.: lung-field crop, resize, CLAHE, augmentation.

1. **Lung-field crop.** From a lung mask where one exists (the phantom writes
   ``cxr/lungs/<id>.png``): the bounding box of the mask plus a 5 % margin. Otherwise a
   simple estimate, :func:`estimate_lung_box`: the lungs are the large dark regions inside
   the bright body, found by an Otsu threshold of the smoothed image inside the body's
   bounding box (the central 80 % of the image when that fails).
2. **Resize** to ``size`` x ``size`` (512 in the ``paper`` preset, 256 in ``cpu``), the
   aspect ratio not kept (as the paper's 512 x 512 input).
3. **CLAHE** through scikit-image's :func:`skimage.exposure.equalize_adapthist` (kernel
   size 1/8 of the image, clip limit 0.01), on the image scaled to [0, 1] by its 0.5 and
   99.5 percentiles.
4. **Augmentation** (training only, :func:`augment`): horizontal flip, shift, scale,
   rotation and shear, the same affine map applied to the image and its nodule mask.

Arrays are (y, x); images float32 in [0, 1], masks uint8 0/1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage
from skimage import exposure, filters, transform

__all__ = [
    "CLAHE_CLIP",
    "apply_clahe",
    "augment",
    "crop_box_from_mask",
    "estimate_lung_box",
    "preprocess_radiograph",
]

CLAHE_CLIP = 0.01
CROP_MARGIN = 0.05


def apply_clahe(image: np.ndarray, clip_limit: float = CLAHE_CLIP) -> np.ndarray:
    """CLAHE of a (y, x) image already in [0, 1]; kernel 1/8 of the image side.

    Returns:
        (y, x) float32 in [0, 1], equal to ``skimage.exposure.equalize_adapthist(image,
        kernel_size=max(side // 8, 8), clip_limit=clip_limit)``.
    """
    side = max(image.shape)
    out = exposure.equalize_adapthist(
        np.clip(image, 0.0, 1.0), kernel_size=max(side // 8, 8), clip_limit=clip_limit
    )
    return out.astype(np.float32)


def _normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def crop_box_from_mask(lungs: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, ...] | None:
    """(y0, y1, x0, x1), end exclusive, of the mask's bounding box plus ``margin``; or None."""
    ys, xs = np.nonzero(lungs)
    if len(ys) == 0:
        return None
    h, w = lungs.shape
    my, mx = margin * (ys.max() - ys.min() + 1), margin * (xs.max() - xs.min() + 1)
    return (
        max(int(ys.min() - my), 0),
        min(math.ceil(ys.max() + 1 + my), h),
        max(int(xs.min() - mx), 0),
        min(math.ceil(xs.max() + 1 + mx), w),
    )


def estimate_lung_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Lung-field box (y0, y1, x0, x1) of a radiograph without a lung mask (brighter = denser).

    The body is the largest component above an Otsu threshold of the smoothed image; the
    lungs are the two largest components below a second Otsu threshold taken inside the
    body's bounding box. Falls back to the central 80 % when no such regions are found.
    """
    h, w = image.shape
    fallback = (int(0.1 * h), math.ceil(0.9 * h), int(0.1 * w), math.ceil(0.9 * w))
    small = _normalise(ndimage.gaussian_filter(image.astype(np.float32), max(h, w) / 200))
    if small.max() <= small.min():
        return fallback
    body = small > filters.threshold_otsu(small)
    lab, n = ndimage.label(body)
    if n == 0:
        return fallback
    sizes = ndimage.sum_labels(body, lab, range(1, n + 1))
    body = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    bbox = crop_box_from_mask(body, margin=0.0)
    if bbox is None:
        return fallback
    y0, y1, x0, x1 = bbox
    inside = small[y0:y1, x0:x1]
    dark = (inside < filters.threshold_otsu(inside)) & body[y0:y1, x0:x1]
    # Dark pixels touching the body's edge are air outside the patient, not lung.
    lab, n = ndimage.label(dark)
    if n == 0:
        return fallback
    sizes = ndimage.sum_labels(dark, lab, range(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    keep = keep[sizes[keep - 1] > 0.02 * dark.size]
    if len(keep) == 0:
        return fallback
    lungs = np.zeros((h, w), dtype=bool)
    lungs[y0:y1, x0:x1] = np.isin(lab, keep)
    box = crop_box_from_mask(lungs)
    return box if box is not None else fallback  # type: ignore[return-value]


def preprocess_radiograph(
    image: np.ndarray,
    size: int,
    lungs: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    clahe: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int, int]]:
    """Crop to the lung field, resize to ``size`` x ``size``, CLAHE.

    Args:
        image: (y, x) radiograph, larger = brighter.
        size: output side, pixels.
        lungs: (y, x) lung mask (non-zero = lung) or None (the box is estimated).
        mask: (y, x) nodule mask to crop and resize the same way, or None.
        clahe: apply CLAHE.

    Returns:
        ``(image, mask, box)``: (size, size) float32 in [0, 1]; the (size, size) uint8 0/1
        mask or None; the crop box (y0, y1, x0, x1) in input pixels.
    """
    box = None
    if lungs is not None:
        box = crop_box_from_mask(np.asarray(lungs) > 0)
    if box is None:
        box = estimate_lung_box(np.asarray(image, dtype=np.float32))
    y0, y1, x0, x1 = box
    crop = _normalise(np.asarray(image, dtype=np.float32)[y0:y1, x0:x1])
    out = transform.resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if clahe:
        out = apply_clahe(out)
    m = None
    if mask is not None:
        mc = (np.asarray(mask)[y0:y1, x0:x1] > 0).astype(np.float32)
        m = (transform.resize(mc, (size, size), order=1, anti_aliasing=False) > 0.25).astype(
            np.uint8
        )
    return out, m, (y0, y1, x0, x1)


def augment(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator,
    shift: float = 0.06,
    scale: float = 0.1,
    rotate_deg: float = 10.0,
    shear_deg: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random flip, shift, scale, rotation and shear of a batch (same map for image and mask).

    Args:
        image: (B, 1, H, W) float.
        mask: (B, 1, H, W) float 0/1 or None.
        generator: torch random generator (CPU).
        shift: largest shift, share of the side; scale: largest relative zoom;
        rotate_deg, shear_deg: largest rotation and shear, degrees.

    Returns:
        The augmented image (bilinear, zero outside) and mask (nearest).
    """
    b = image.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    s = u(1 - scale, 1 + scale)
    r = torch.deg2rad(u(-rotate_deg, rotate_deg))
    sh = torch.tan(torch.deg2rad(u(-shear_deg, shear_deg)))
    tx, ty = u(-2 * shift, 2 * shift), u(-2 * shift, 2 * shift)
    cos, sin = torch.cos(r), torch.sin(r)
    # theta maps output (x, y) in [-1, 1] to input: rotation @ shear @ scale, x flipped.
    a11 = cos / s * flip
    a12 = (cos * sh - sin) / s
    a21 = sin / s * flip
    a22 = (sin * sh + cos) / s
    theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1).to(
        image.dtype
    )
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    img = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = None
    if mask is not None:
        m = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, m
