"""2D-to-3D stacking and the sub-volume FROC of papers/003 §4.3, worked by hand."""

from __future__ import annotations

import numpy as np

from activecad.metrics import match_stacked_boxes, stack_slice_boxes


def _example():
    # Volume v: a chain on slices 3-5 (IoU 90/110 between neighbours), a distant box on
    # slice 4, and a box on slice 7 that cannot join the chain across the gap at slice 6.
    vols = ["v"] * 5
    slices = [3, 4, 5, 4, 7]
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [50, 50, 60, 60], [2, 0, 12, 10]]
    scores = [0.3, 0.9, 0.5, 0.4, 0.8]
    return stack_slice_boxes(vols, slices, boxes, scores)


def test_stacking_by_hand():
    st = _example()
    assert len(st.scores) == 3
    chain = st.track[0]
    assert st.track[1] == chain and st.track[2] == chain
    assert len({st.track[3], st.track[4], chain}) == 3
    # The chain spans x 0-12, y 0-10, slices 3..5 -> z [3, 6); its score is its best slice.
    np.testing.assert_array_equal(st.boxes[chain], [0, 0, 3, 12, 10, 6])
    assert st.scores[chain] == 0.9


def test_greedy_linking_prefers_the_larger_overlap():
    # Two boxes on slice 1 both overlap the slice-0 box; the one with IoU 0.9 continues it.
    st = stack_slice_boxes(
        ["v"] * 3,
        [0, 1, 1],
        [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 7]],
        [0.5, 0.5, 0.5],
    )
    assert st.track[1] == st.track[0] and st.track[2] != st.track[0]


def test_stacked_froc_by_hand():
    st = _example()
    # Lesion 1 on slice 5 overlaps the chain's slice-5 box exactly -> TP at 0.9;
    # lesion 2 on slice 7 is elsewhere -> missed. Volume w has no box and no lesion but
    # counts in FPs per sub-volume.
    m = match_stacked_boxes(
        st, ["v", "v"], [5, 7], [[2, 0, 12, 10], [30, 30, 40, 40]], volumes=["v", "w"]
    )
    assert m.counts() == {
        "nodules": 2,
        "detected": 1,
        "tp": 1,
        "fp": 2,
        "ignored": 0,
        "double_hits": 0,
        "scans": 2,
    }
    np.testing.assert_array_equal(m.tp_probs, [0.9])


def test_cross_section_on_another_slice_does_not_count():
    st = _example()
    m = match_stacked_boxes(st, ["v"], [6], [[2, 0, 12, 10]])
    assert m.n_detected == 0


def test_pixel_convention_links_and_matches_what_continuous_does_not():
    # Slice 0 [0,0,9,9] and slice 1 [3,0,12,9]: IoU exactly 0.5 in the continuous convention
    # (54 / 108), 7/13 in the pixel one (70 / 130), by hand. The 0.5 threshold is strict, so
    # only the pixel convention chains them and only its cross-section on slice 1 hits the
    # lesion drawn there as [0,0,9,9].
    args = (["v", "v"], [0, 1], [[0, 0, 9, 9], [3, 0, 12, 9]], [0.4, 0.8])
    continuous = stack_slice_boxes(*args)
    pixel = stack_slice_boxes(*args, iou_convention="pixel")
    assert len(continuous.scores) == 2 and len(pixel.scores) == 1
    np.testing.assert_array_equal(pixel.boxes[0], [0, 0, 0, 12, 9, 2])
    gt = (["v"], [1], [[0, 0, 9, 9]])
    # Continuous: the slice-1 box misses (IoU 0.5 is not > 0.5); both 3D boxes are FPs.
    m = match_stacked_boxes(continuous, *gt)
    assert (m.n_detected, m.n_fp) == (0, 2)
    m = match_stacked_boxes(pixel, *gt, iou_convention="pixel")
    assert (m.n_detected, m.n_fp) == (1, 0)
    np.testing.assert_array_equal(m.tp_probs, [0.8])
