"""Blob candidates: the Hessian dot filter's response, where its candidates land, the merge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.data.preprocess import PreparedScan, PreprocessConfig
from activecad.models.blobs import BlobConfig, blob_candidates, dot_strength, merge_candidates

WINDOW = PreprocessConfig(spacing=(1.0, 1.0, 1.0))


def _normalised(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, WINDOW.hu_min, WINDOW.hu_max) - WINDOW.hu_min) / 1400).astype(np.float32)


def test_dot_strength_of_a_gaussian_blob_matches_the_hand_computation() -> None:
    # I = exp(-r^2 / 2s^2) smoothed by sigma is A exp(-r^2 / 2(s^2 + sigma^2)) with
    # A = (s^2 / (s^2 + sigma^2))^(3/2). At its centre the Hessian is -A / (s^2 + sigma^2)
    # times the identity; scale-normalised by sigma^2 all three eigenvalues are
    # l = -A sigma^2 / (s^2 + sigma^2), so the dot strength l^2 / |l| is
    # A sigma^2 / (s^2 + sigma^2).
    s, radius = 3.0, 2.0 * np.sqrt(3.0)  # radius 2 sqrt(3) mm -> sigma = 2 mm
    zz, yy, xx = np.mgrid[:41, :41, :41] - 20.0
    image = np.exp(-(xx**2 + yy**2 + zz**2) / (2 * s * s)).astype(np.float32)
    where = np.zeros(image.shape, dtype=bool)
    where[20, 20, 20] = True
    strength, best = dot_strength(image, where, np.ones(3), (radius,))
    sigma = 2.0
    a = (s * s / (s * s + sigma * sigma)) ** 1.5
    assert strength[20, 20, 20] == pytest.approx(a * sigma**2 / (s * s + sigma**2), rel=1e-2)
    assert best[20, 20, 20] == pytest.approx(radius)


def _lung_with_ball_and_rod() -> tuple[PreparedScan, np.ndarray, np.ndarray]:
    """Soft tissue around a lung (-850 HU) holding a 4 mm-radius ball (0 HU) and a
    2 mm-radius rod along x (0 HU); 1 mm voxels. Returns the scan, the ball's centre and a
    point on the rod's middle (z-y-x indices)."""
    hu = np.full((48, 56, 64), 40.0)
    hu[6:42, 8:48, 6:58] = -850.0
    zz, yy, xx = np.mgrid[:48, :56, :64]
    ball = np.array([24.0, 20.0, 20.0])
    hu[(zz - ball[0]) ** 2 + (yy - ball[1]) ** 2 + (xx - ball[2]) ** 2 <= 16] = 0.0
    hu[((zz - 24) ** 2 + (yy - 38) ** 2 <= 4) & (xx >= 10) & (xx < 54)] = 0.0
    scan = PreparedScan(
        array=_normalised(hu),
        spacing=np.ones(3),
        origin=np.array([-32.0, -28.0, -100.0]),
        direction=np.eye(3),
        seriesuid="1.2.3",
    )
    return scan, ball, np.array([24.0, 38.0, 32.0])


def test_the_strongest_blob_is_the_ball_and_the_rod_middle_is_not_a_blob() -> None:
    scan, ball, rod = _lung_with_ball_and_rod()
    found = blob_candidates(scan, WINDOW, BlobConfig(per_scan=20))
    xyz = found[["coordX", "coordY", "coordZ"]].to_numpy()
    assert np.linalg.norm(xyz[0] - scan.index_to_world(ball[None])[0]) <= 1.0
    assert found["diameter_mm"].iloc[0] == pytest.approx(8.0)  # the 4 mm-radius scale
    # A tube has no downward curvature along its axis: far from its ends, no candidate.
    middle = scan.index_to_world(rod[None])[0]
    assert np.linalg.norm(xyz - middle, axis=1).min() > 8.0
    assert (found["seriesuid"] == "1.2.3").all()
    assert found["blob_strength"].is_monotonic_decreasing


def test_outside_the_lungs_nothing_is_a_candidate() -> None:
    scan, _, _ = _lung_with_ball_and_rod()
    array = np.asarray(scan.array).copy()
    array[6:42, 8:48, 6:58] = _normalised(np.array(40.0))  # no lung left: all soft tissue
    solid = PreparedScan(array, scan.spacing, scan.origin, scan.direction, scan.seriesuid)
    assert blob_candidates(solid, WINDOW).empty


def test_merge_drops_blobs_a_mark_already_covers() -> None:
    marks = pd.DataFrame(
        {"seriesuid": ["a", "b"], "coordX": [0.0, 0.0], "coordY": [0.0, 0.0],
         "coordZ": [0.0, 0.0], "probability": [0.9, 0.2], "diameter_mm": [6.0, 5.0]}
    )  # fmt: skip
    blobs = pd.DataFrame(
        {"seriesuid": ["a", "a", "c"], "coordX": [3.0, 6.0, 0.0], "coordY": [4.0, 0.0, 0.0],
         "coordZ": [0.0, 0.0, 0.0], "blob_strength": [2.0, 1.0, 1.0], "diameter_mm": [4, 4, 3]}
    )  # fmt: skip
    merged = merge_candidates(marks, blobs, blob_score=0.05, within_mm=5.0)
    # The blob 5 mm from a's mark is covered (<= 5 mm); 6 mm away, and on scan c, it is not.
    assert merged["source"].tolist() == ["detector", "detector", "blob", "blob"]
    assert merged["coordX"].tolist() == [0.0, 0.0, 6.0, 0.0]
    assert merged["seriesuid"].tolist() == ["a", "b", "a", "c"]
    assert merged["probability"].iloc[2:].tolist() == [0.05, 0.05]
    assert "blob_strength" not in merged.columns
