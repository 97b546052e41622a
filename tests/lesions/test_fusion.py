"""MELD's Eq. 1 on hand-worked numbers: s = sum_i w_i s_i / sum_i w_i with w_0 = 1."""

from __future__ import annotations

import numpy as np
import pytest

from activecad.lesions import fuse_head_scores, head_weights


def test_eq1_by_hand():
    # Heads: whole body 0.8, lymph node 0.2, lung 0.6, liver 0.4; gates 0.5, 1, 0.
    # Weights (1, 0.5, 1, 0): (0.8 + 0.1 + 0.6 + 0) / (1 + 0.5 + 1 + 0) = 1.5 / 2.5 = 0.6.
    assert fuse_head_scores([0.8, 0.2, 0.6, 0.4], [0.5, 1.0, 0.0]) == pytest.approx(0.6)


def test_whole_body_weight_is_always_one():
    # No organ: only the whole-body head counts, whatever the organ heads say.
    assert fuse_head_scores([0.3, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == pytest.approx(0.3)
    # Every organ fully: the plain mean, (0.9 + 0.1 + 0.5 + 0.3) / 4 = 0.45.
    assert fuse_head_scores([0.9, 0.1, 0.5, 0.3], [1.0, 1.0, 1.0]) == pytest.approx(0.45)
    np.testing.assert_array_equal(head_weights([[0.0, 0.2, 1.0]]), [[1.0, 0.0, 0.2, 1.0]])


def test_the_whole_body_weight_is_not_an_input():
    # Four gates for four heads would let w_0 differ from 1: refused.
    with pytest.raises(ValueError, match=r"organ_gates of shape \(3,\).*got \(4,\)"):
        fuse_head_scores([0.8, 0.2, 0.6, 0.4], [1.0, 0.5, 1.0, 0.0])


def test_fuses_a_batch_of_proposals_row_by_row():
    scores = [[0.8, 0.2, 0.6, 0.4], [0.3, 1.0, 1.0, 1.0]]
    gates = [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(fuse_head_scores(scores, gates), [0.6, 0.3])


@pytest.mark.parametrize(("scores", "gates"), [([0.8, 1.2], [0.5]), ([0.8, 0.2], [-0.1])])
def test_values_outside_zero_one_are_refused(scores, gates):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fuse_head_scores(scores, gates)
