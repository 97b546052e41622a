"""MAM and NRM on tiny hand-made tables whose answers are read off by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import activecad.lesions as lesions
from activecad.lesions import ignore_boxes_by_image, mine_missing, suspicious_regions


def _table(rows: list[tuple], columns: tuple[str, ...], index: list[str] | None = None):
    return pd.DataFrame(rows, columns=list(columns), index=index)


BOX = ("x1", "y1", "x2", "y2")
ANN = ("patient", "image", *BOX)


def _annotations() -> pd.DataFrame:
    # Patient 1 has a lesion marked on slice 10 of study 1; patient 2 one on slice 5.
    return _table(
        [("p1", "p1_01_01_010", 10, 10, 20, 20), ("p2", "p2_01_01_005", 10, 10, 20, 20)], ANN
    )


def test_exports():
    assert sorted(lesions.__all__) == lesions.__all__
    assert all(hasattr(lesions, name) for name in lesions.__all__)


def test_mam_matches_only_within_a_patient_and_under_theta():
    annotations = _annotations()
    annotation_embeddings = [[0.0, 0.0], [1.0, 0.0]]
    proposals = _table(
        [
            ("p1", "p1_02_01_012", 30, 30, 40, 40),  # another study: L2 distance 0.1
            ("p1", "p1_01_01_011", 10, 10, 20, 20),  # another slice: distance 0.2 > 0.15
            ("p2", "p2_01_01_007", 10, 10, 20, 20),  # 0.05 from p1's lesion, 0.95 from p2's
            ("p1", "p1_01_01_010", 12, 12, 22, 22),  # on the annotation itself: distance 0
            ("p1", "p1_01_01_010", 50, 50, 60, 60),  # same slice, elsewhere: distance 0.1
        ],
        ANN,
        index=["a", "b", "c", "d", "e"],
    )
    proposal_embeddings = [[0.1, 0.0], [0.0, 0.2], [0.05, 0.0], [0.0, 0.0], [0.0, 0.1]]
    mined = mine_missing(proposals, annotations, proposal_embeddings, annotation_embeddings)
    assert list(mined.index) == ["a", "e"]
    assert mined["annotation"].tolist() == [0, 0]
    np.testing.assert_allclose(mined["distance"], [0.1, 0.1])
    # The proposal of patient 2 would match patient 1's lesion if patients were mixed.
    assert "c" not in mined.index


def test_mam_threshold_is_strict_and_keeps_the_nearest_annotation():
    # Distances are exact in binary: 0.5 is not below theta = 0.5.
    annotations = _table(
        [("p1", "p1_01_01_010", 10, 10, 20, 20), ("p1", "p1_02_01_030", 10, 10, 20, 20)], ANN
    )
    proposals = _table(
        [("p1", "p1_03_01_001", 0, 0, 5, 5), ("p1", "p1_03_01_002", 0, 0, 5, 5)], ANN
    )
    # Annotation embeddings (0, 0) and (0.5, 0.5).
    # Proposal 0 at (0.5, 0): 0.5 from both -> not below theta, not mined.
    # Proposal 1 at (0.25, 0.375): sqrt(0.203125) ~ 0.45 from annotation 0 and
    # sqrt(0.078125) ~ 0.28 from annotation 1; both under theta, the nearest is 1.
    mined = mine_missing(
        proposals, annotations, [[0.5, 0.0], [0.25, 0.375]], [[0.0, 0.0], [0.5, 0.5]], theta=0.5
    )
    assert list(mined.index) == [1]
    assert mined["annotation"].tolist() == [1]
    assert mined["distance"].tolist() == [pytest.approx(np.sqrt(0.078125))]


def test_mam_rejects_misaligned_embeddings_and_missing_columns():
    annotations = _annotations()
    proposals = annotations.copy()
    with pytest.raises(ValueError, match=r"proposal_embeddings must have shape \(2, D\)"):
        mine_missing(proposals, annotations, [[0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="lacks column"):
        mine_missing(
            proposals.drop(columns="patient"), annotations, np.zeros((2, 2)), np.zeros((2, 2))
        )
    with pytest.raises(ValueError, match="theta must be a positive distance"):
        mine_missing(proposals, annotations, np.zeros((2, 2)), np.zeros((2, 2)), theta=0)


def _nrm_case() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    annotations = _table([("a", 10, 10, 20, 20)], ("image", *BOX))
    mined = _table([("b", 10, 10, 20, 20)], ("image", *BOX))
    experts = _table(
        [
            ("a", 12, 12, 22, 22, 0.9),  # overlaps the annotation -> not suspicious
            ("a", 40, 40, 50, 50, 0.9),  # overlaps nothing, above sigma -> suspicious
            ("a", 40, 40, 50, 50, 0.5),  # not above sigma = 0.5 -> not suspicious
            ("b", 11, 11, 19, 19, 0.8),  # inside the mined lesion -> not suspicious
            ("c", 10, 10, 20, 20, 0.7),  # the annotation's place but on image c -> suspicious
            ("a", 20, 20, 30, 30, 0.6),  # shares only the corner point (20, 20) -> suspicious
        ],
        ("image", *BOX, "score"),
        index=["e0", "e1", "e2", "e3", "e4", "e5"],
    )
    return experts, annotations, mined


def test_nrm_returns_exactly_the_confident_proposals_that_overlap_no_annotation():
    experts, annotations, mined = _nrm_case()
    suspicious = suspicious_regions(experts, annotations, mined)
    assert list(suspicious.index) == ["e1", "e4", "e5"]
    pd.testing.assert_frame_equal(suspicious, experts.loc[["e1", "e4", "e5"]])
    # Without MAM the proposal inside the mined lesion is suspicious too.
    assert list(suspicious_regions(experts, annotations).index) == ["e1", "e3", "e4", "e5"]


def test_nrm_ignore_boxes_per_image():
    experts, annotations, mined = _nrm_case()
    ignore = ignore_boxes_by_image(suspicious_regions(experts, annotations, mined))
    assert list(ignore) == ["a", "c"]
    np.testing.assert_array_equal(ignore["a"], [[40, 40, 50, 50], [20, 20, 30, 30]])
    np.testing.assert_array_equal(ignore["c"], [[10, 10, 20, 20]])
    listed = ignore_boxes_by_image(
        suspicious_regions(experts, annotations, mined), images=["b", "c"]
    )
    assert list(listed) == ["b", "c"]
    assert listed["b"].shape == (0, 4)


def test_nrm_overlap_threshold():
    # e0 meets the annotation with IoU 64 / 136 ~ 0.47 (hand): above 0.4, not above 0.5.
    experts, annotations, mined = _nrm_case()
    strict = suspicious_regions(experts, annotations, mined, overlap_iou=0.5)
    loose = suspicious_regions(experts, annotations, mined, overlap_iou=0.4)
    assert "e0" in strict.index and "e0" not in loose.index
