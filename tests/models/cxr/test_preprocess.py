"""Lung crop, resize, CLAHE (scikit-image) and augmentation."""

from __future__ import annotations

import numpy as np
import torch
from skimage import data, exposure

from activecad.models.cxr.preprocess import (
    apply_clahe,
    augment,
    crop_box_from_mask,
    estimate_lung_box,
    preprocess_radiograph,
)


def test_clahe_matches_scikit_image_on_a_fixed_image() -> None:
    image = data.camera()[::2, ::2].astype(np.float64) / 255.0  # 256 x 256
    ours = apply_clahe(image)
    ref = exposure.equalize_adapthist(image, kernel_size=32, clip_limit=0.01)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ours.dtype == np.float32 and ours.min() >= 0.0 and ours.max() <= 1.0


def test_crop_box_from_lung_mask_with_margin() -> None:
    lungs = np.zeros((100, 100), dtype=np.uint8)
    lungs[20:60, 30:70] = 1  # 40 x 40 box; 5 % margin = 2 pixels
    assert crop_box_from_mask(lungs) == (18, 62, 28, 72)
    assert crop_box_from_mask(np.zeros((5, 5))) is None


def test_estimated_lung_field_finds_two_dark_lungs_in_a_bright_body() -> None:
    img = np.zeros((200, 200), dtype=np.float32)
    img[20:190, 30:170] = 1.0  # body
    img[50:150, 45:90] = 0.3  # right lung
    img[50:150, 110:155] = 0.3  # left lung
    y0, y1, x0, x1 = estimate_lung_box(img)
    assert 40 <= y0 <= 50 and 150 <= y1 <= 160 and 38 <= x0 <= 45 and 155 <= x1 <= 162


def test_preprocess_crops_resizes_and_carries_the_mask() -> None:
    img = np.random.default_rng(0).uniform(0, 1000, (120, 100)).astype(np.float32)
    lungs = np.zeros_like(img, dtype=np.uint8)
    lungs[10:110, 10:90] = 1
    mask = np.zeros_like(lungs)
    mask[50:60, 40:50] = 1
    out, m, box = preprocess_radiograph(img, 64, lungs=lungs, mask=mask)
    assert out.shape == (64, 64) and m is not None and m.shape == (64, 64)
    assert box == (5, 115, 6, 94)
    ys, xs = np.nonzero(m)
    # The mask's centre (55, 45) in the crop (5..115, 6..94) maps to (64 * 50/110, 64 * 39/88).
    assert abs(ys.mean() - 64 * 50 / 110) < 2 and abs(xs.mean() - 64 * 39 / 88) < 2


def test_augment_moves_image_and_mask_together() -> None:
    img = torch.zeros(4, 1, 64, 64)
    img[:, :, 20:30, 36:46] = 1.0
    mask = (img > 0).float()
    g = torch.Generator().manual_seed(3)
    a, m = augment(img, mask, g)
    assert m is not None
    for k in range(4):
        iy, ix = np.nonzero(a[k, 0].numpy() > 0.5)
        my, mx = np.nonzero(m[k, 0].numpy() > 0.5)
        assert abs(iy.mean() - my.mean()) < 1.0 and abs(ix.mean() - mx.mean()) < 1.0
