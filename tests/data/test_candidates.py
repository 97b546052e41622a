"""Candidates: the LUNA16 hit rule, both input formats, and their augmented patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.data import PreparedScan
from activecad.data.candidates import (
    PatchPlan,
    cut_patches,
    label_candidates,
    read_candidates,
    training_candidates,
)


def _table(rows: list[tuple[str, float, float, float]], **extra: list[float]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ"])
    for name, values in extra.items():
        table[name] = values
    return table


def test_labels_follow_the_luna16_hit_rule() -> None:
    annotations = _table([("a", 0, 0, 0), ("a", 3, 0, 0)], diameter_mm=[10.0, 4.0])
    excluded = _table([("a", 20, 0, 0)], diameter_mm=[-1.0])  # unknown: read as 10 mm
    candidates = _table(
        [
            ("a", 4.9, 0, 0),  # inside the first nodule (radius 5) and the second (3 +- 2)
            ("a", 0, 5.0, 0),  # on the sphere, not strictly inside: a non-nodule
            ("a", 24.0, 0, 0),  # inside the excluded finding's 10 mm default: ignored
            ("b", 0, 0, 0),  # another scan: a non-nodule
        ]
    )
    labelled = label_candidates(candidates, annotations, excluded)
    assert labelled["label"].tolist() == [1, 0, -1, 0]
    # 4.9 mm from the first nodule, 1.9 mm from the second: the closer one is kept.
    assert labelled["nodule_index"].tolist() == [1, -1, -1, -1]


def test_training_candidates_add_every_nodule_and_drop_ignored_ones() -> None:
    annotations = _table([("a", 0, 0, 0)], diameter_mm=[8.0])
    excluded = _table([("a", 20, 0, 0)], diameter_mm=[6.0])
    candidates = _table([("a", 50, 0, 0), ("a", 21, 0, 0)], det_probability=[0.3, 0.9])
    table = training_candidates(candidates, annotations, excluded)
    assert table["label"].tolist() == [0, 1]
    assert table["diameter_mm"].iloc[1] == 8.0 and np.isnan(table["diameter_mm"].iloc[0])


def test_detections_and_luna16_candidates_are_both_read(tmp_path: Path) -> None:
    detections = tmp_path / "detections.csv"
    detections.write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.25\n")
    luna = tmp_path / "candidates.csv"
    luna.write_text("seriesuid,coordX,coordY,coordZ,class\na,1,2,3,1\n")
    assert read_candidates(detections)["det_probability"].tolist() == [0.25]
    assert read_candidates(luna)["det_probability"].tolist() == [1.0]


def _blob_scan() -> PreparedScan:
    """A 60^3 scan, 1 mm voxels, origin 0, one bright 4 mm-radius ball at index (30, 30, 30)."""
    zz, yy, xx = np.mgrid[:60, :60, :60]
    array = (((zz - 30) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2) <= 16).astype(np.float32)
    return PreparedScan(array, np.ones(3), np.zeros(3), np.eye(3), "a")


def test_the_plain_patch_is_centred_on_the_candidate() -> None:
    patches = cut_patches(
        _blob_scan(), np.array([[30.0, 30.0, 30.0]]), PatchPlan(size=16, m=2), augment=False
    )
    assert patches.shape == (1, 2, 1, 16, 16, 16)
    centroid = np.argwhere(patches[0, 0, 0] > 0.5).mean(axis=0)
    # A 16-voxel patch centred on index 30 would span 22.5..37.5 (ball centre at 7.5); cut on
    # the voxel grid it starts at 22 or 23, so the ball's centre is within half a voxel.
    assert centroid == pytest.approx([7.5, 7.5, 7.5], abs=0.5)


def test_augmented_views_keep_the_candidate_inside_and_repeat_with_the_seed() -> None:
    plan = PatchPlan(size=16, m=6, scales=(1.0, 1.5), translate=0.1)
    scan = _blob_scan()
    first = cut_patches(scan, np.array([[30.0, 30.0, 30.0]]), plan, seeds=np.array([7]))
    again = cut_patches(scan, np.array([[30.0, 30.0, 30.0]]), plan, seeds=np.array([7]))
    np.testing.assert_array_equal(first, again)
    for view in first[0, :, 0]:
        centroid = np.argwhere(view > 0.5).mean(axis=0)
        # Shifts are at most 10 % of 16 voxels (1.6) per axis, before a 1.5x zoom-out.
        assert np.all(np.abs(centroid - 7.5) <= 1.7)
    # The 1.5x views show the ball smaller than the 1x views.
    assert (first[0, 1, 0] > 0.5).sum() < (first[0, 0, 0] > 0.5).sum()
