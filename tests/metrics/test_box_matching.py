"""FROC by box IoU: hand-worked overlaps and MONAI's box_iou as reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou as monai_box_iou

from activecad.metrics import (
    KEY_SLICE_FP_RATES,
    box_iou,
    froc_curve,
    match_boxes,
    sensitivity_at_fp_rates,
)


def test_iou_by_hand():
    # 2D: overlap 1x1, union 4 + 4 - 1 = 7. 3D: overlap 1, union 8 + 8 - 1 = 15.
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    assert box_iou([[0, 0, 0, 2, 2, 2]], [[1, 1, 1, 3, 3, 3]])[0, 0] == pytest.approx(1 / 15)
    assert box_iou([[0, 0, 1, 1]], [[5, 5, 6, 6]])[0, 0] == 0.0


def test_iou_matches_monai():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 20, (12, 3))
    a = np.c_[lo, lo + rng.uniform(1, 10, (12, 3))]
    lo = rng.uniform(0, 20, (9, 3))
    b = np.c_[lo, lo + rng.uniform(1, 10, (9, 3))]
    ref = monai_box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    # MONAI computes IoU in float32, hence the tolerance.
    np.testing.assert_allclose(box_iou(a, b), ref, atol=1e-6)


def test_iou_of_exactly_the_threshold_is_not_a_hit():
    # IoU = 2 / 4 = 0.5; papers/003 asks for IoU > 0.5.
    m = match_boxes(["a"], [[0, 0, 2, 1]], [0.9], ["a"], [[0, 0, 2, 2]])
    assert (m.n_detected, m.n_fp) == (0, 1)


def test_box_over_two_lesions_detects_both_and_extra_boxes_are_ignored():
    gt = [[0, 0, 2, 2], [0, 0, 2, 2.2]]
    # The first box has IoU ~0.95 with both; the second hits the first lesion again.
    pred = [[0, 0, 2, 2.1], [0, 0, 2, 2]]
    m = match_boxes(["a", "a"], pred, [0.6, 0.8], ["a", "a"], gt)
    assert m.counts() == {
        "nodules": 2,
        "detected": 2,
        "tp": 2,
        "fp": 0,
        "ignored": 0,
        "double_hits": 2,
        "scans": 1,
    }
    np.testing.assert_array_equal(m.nodule_probs, [0.8, 0.8])


def test_ignore_boxes_absorb_false_positives():
    m = match_boxes(
        ["a", "a"],
        [[10, 10, 12, 12], [30, 30, 32, 32]],
        [0.9, 0.8],
        [],
        np.empty((0, 4)),
        ignore_ids=["a"],
        ignore_boxes=[[10, 10, 12, 12.5]],
    )
    assert (m.n_ignored, m.n_fp) == (1, 1)


def test_sensitivity_at_four_fps_per_image():
    # 2 images, 4 lesions; a TP at .9, 8 FPs at .8 .. .1 (4 per image), a TP at .05.
    # The curve steps up from (4, 1/4) to (4, 1/2) at the last TP. Below 4 FPs per image
    # only the first TP counts; exactly at 4, np.interp (as the LUNA16 script uses it)
    # reads the top of the step (hand).
    gt_ids = ["a", "a", "b", "b"]
    gt = [[0, 0, 4, 4], [10, 10, 14, 14], [0, 0, 4, 4], [20, 20, 24, 24]]
    ids = ["a"] + ["a", "b"] * 4 + ["b"]
    boxes = [[0, 0, 4, 4]] + [[50, 50, 52, 52]] * 8 + [[0, 0, 4, 4]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    m = match_boxes(ids, boxes, scores, gt_ids, gt)
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=m.n_nodules, n_scans=2)
    np.testing.assert_allclose(sensitivity_at_fp_rates(fps, sens, [3.5, 4.0]), [0.25, 0.5])


def test_bad_boxes():
    with pytest.raises(ValueError, match="max corner below"):
        box_iou([[2, 2, 0, 0]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 6\)"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="mix 2D and 3D"):
        match_boxes(["a"], [[0, 0, 1, 1]], [0.5], ["a"], [[0, 0, 0, 1, 1, 1]])


def test_key_slice_froc_counts_fps_per_slice():
    # papers/003 Table 3: key-slice FROC, each key slice an image. Two key slices, one
    # lesion each; slice s1 has its TP at .9 then 2 FPs, s2 has 2 FPs then its TP at .3.
    # At 1 FP per slice (2 FPs) only s1's lesion is found; at 2 per slice (4 FPs) the
    # curve steps up to both and np.interp reads the top of the step (hand).
    ids = ["s1", "s1", "s1", "s2", "s2", "s2"]
    boxes = [[0, 0, 4, 4]] + [[9, 9, 10, 10]] * 4 + [[0, 0, 4, 4]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
    m = match_boxes(ids, boxes, scores, ["s1", "s2"], [[0, 0, 4, 4], [0, 0, 4, 4]])
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=2, n_scans=2)
    np.testing.assert_allclose(
        sensitivity_at_fp_rates(fps, sens, KEY_SLICE_FP_RATES), [0.5, 0.5, 1.0, 1.0]
    )


def test_pixel_iou_by_hand():
    # [0,0,9,9] vs [5,0,14,9]. Pixel convention (DeepLesion's evaluation, x2 - x1 + 1):
    # each box 10 x 10 = 100 px, overlap columns 5..9 -> 5 x 10 = 50, union 150 -> 1/3.
    # Continuous: each box 9 x 9 = 81, overlap 4 x 9 = 36, union 126 -> 2/7.
    a, b = [[0, 0, 9, 9]], [[5, 0, 14, 9]]
    assert box_iou(a, b, iou_convention="pixel")[0, 0] == pytest.approx(1 / 3)
    assert box_iou(a, b, iou_convention="continuous")[0, 0] == pytest.approx(2 / 7)
    assert box_iou(a, b)[0, 0] == pytest.approx(2 / 7)  # the default is unchanged
    # Boxes sharing only the column x = 9 share 10 pixels in the pixel convention
    # (10 / (100 + 100 - 10) = 1/19) and no area in the continuous one.
    assert box_iou(a, [[9, 0, 18, 9]], iou_convention="pixel")[0, 0] == pytest.approx(1 / 19)
    assert box_iou(a, [[9, 0, 18, 9]])[0, 0] == 0.0


def test_pixel_iou_counts_every_axis_of_3d_boxes():
    # 2 x 2 x 2 voxels each in the pixel convention, overlapping in 1 x 2 x 2 = 4: 4 / 12.
    iou = box_iou([[0, 0, 0, 1, 1, 1]], [[1, 0, 0, 2, 1, 1]], iou_convention="pixel")
    assert iou[0, 0] == pytest.approx(1 / 3)


def test_the_convention_decides_a_hit_at_the_threshold():
    # Lesion [0,0,9,9], detection [3,0,12,9]. Continuous: overlap 6 x 9 = 54, union
    # 81 + 81 - 54 = 108, IoU exactly 0.5 -> not > 0.5, an FP. Pixel: overlap 7 x 10 = 70,
    # union 100 + 100 - 70 = 130, IoU 7/13 ~ 0.54 -> a hit (hand).
    args = (["s"], [[3, 0, 12, 9]], [0.9], ["s"], [[0, 0, 9, 9]])
    continuous = match_boxes(*args)
    pixel = match_boxes(*args, iou_convention="pixel")
    assert (continuous.n_detected, continuous.n_fp) == (0, 1)
    assert (pixel.n_detected, pixel.n_fp) == (1, 0)


def test_the_convention_applies_to_ignore_boxes_too():
    # The detection meets the ignore box with IoU 0.5 (continuous) or 7/13 (pixel).
    kwargs = {"ignore_ids": ["s"], "ignore_boxes": [[0, 0, 9, 9]]}
    args = (["s"], [[3, 0, 12, 9]], [0.9], [], np.empty((0, 4)))
    assert match_boxes(*args, **kwargs).n_fp == 1
    assert match_boxes(*args, **kwargs, iou_convention="pixel").n_ignored == 1


def test_unknown_iou_convention_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"continuous, pixel, got 'pixels'.*Did you mean 'pixel'"):
        box_iou([[0, 0, 1, 1]], [[0, 0, 1, 1]], iou_convention="pixels")
    with pytest.raises(ValueError, match="iou_convention"):
        match_boxes(["a"], [[0, 0, 1, 1]], [0.5], ["a"], [[0, 0, 1, 1]], iou_convention="x")
