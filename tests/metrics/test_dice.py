"""Dice of heat maps against masks, hard and soft, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from activecad.metrics import dice_score


def test_dice_by_hand():
    mask = np.array([[[1, 1], [0, 0]]])
    heat = np.array([[[0.9, 0.2], [0.6, 0.0]]])
    # Threshold 0.5: P = {(0,0), (1,0)}, G = {(0,0), (0,1)} -> 2*1 / (2+2) = 0.5.
    assert dice_score(mask, heat) == pytest.approx(0.5)
    # Soft: 2 * (0.9 + 0.2) / (1.7 + 2) = 2.2 / 3.7.
    assert dice_score(mask, heat, threshold=None) == pytest.approx(2.2 / 3.7)


def test_per_image_and_empty_images():
    masks = np.zeros((2, 3, 3))
    masks[1, 1, 1] = 1
    heats = np.zeros((2, 3, 3))
    heats[1, 1, 1] = 1
    np.testing.assert_array_equal(dice_score(masks, heats, per_image=True), [1.0, 1.0])
    assert dice_score(masks, heats, per_image=True, empty_score=0.0)[0] == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        dice_score(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))
