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
