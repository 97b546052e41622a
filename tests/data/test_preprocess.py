"""Preprocessing keeps world positions, windows HU, crops lungs and caches by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK

from activecad.data import PreprocessCache, PreprocessConfig, lung_box, preprocess_scan
from activecad.data.preprocess import anterior_posterior_axis
from activecad.io.geometry import voxel_to_world
from activecad.io.scan import Scan

ROTATED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _blob_scan() -> tuple[Scan, np.ndarray]:
    array = np.full((30, 40, 40), -1000.0, dtype=np.float32)
    zz, yy, xx = np.mgrid[:30, :40, :40]
    centre = np.array([12.0, 25.0, 9.0])  # z, y, x voxels
    array[(zz - centre[0]) ** 2 + ((yy - centre[1]) / 2) ** 2 + ((xx - centre[2]) / 2) ** 2 < 9] = (
        100
    )
    scan = Scan(array=array, spacing=(0.5, 0.5, 1.0), origin=(-3.0, 4.0, 50.0), direction=ROTATED)
    return scan, voxel_to_world(centre, origin=scan.origin, spacing=scan.spacing, direction=ROTATED)


def test_resampling_keeps_a_blob_at_its_world_position() -> None:
    scan, world = _blob_scan()
    config = PreprocessConfig(spacing=(1.0, 1.0, 1.0), lung_crop=False)
    prepared = preprocess_scan(scan, config)
    assert prepared.array.shape == (30, 20, 20)
    weights = prepared.array.astype(np.float64)
    weights = np.where(weights > 0.5, weights, 0)
    centroid = (np.argwhere(weights > 0) * weights[weights > 0][:, None]).sum(0) / weights.sum()
    # The blob is symmetric, so its centroid is its centre; half a coarse voxel of slack.
    assert prepared.index_to_world(centroid) == pytest.approx(world, abs=0.5)


def test_hu_window_maps_to_zero_one() -> None:
    scan = Scan(
        array=np.array([[[-2000.0, -1000.0, -300.0, 400.0, 3000.0]]] * 2, dtype=np.float32),
        spacing=(1, 1, 1),
        origin=(0, 0, 0),
    )
    prepared = preprocess_scan(scan, PreprocessConfig(lung_crop=False))
    # (clip(hu, -1000, 400) + 1000) / 1400 by hand: 0, 0, 0.5, 1, 1.
    assert prepared.array[0, 0] == pytest.approx([0, 0, 0.5, 1, 1])


def test_lung_box_ignores_the_air_around_the_body() -> None:
    array = np.full((20, 30, 30), -1000.0, dtype=np.float32)
    array[:, 5:25, 5:25] = 40.0  # body
    array[4:16, 8:20, 10:14] = -850.0  # a lung
    lo, hi = lung_box(array)
    assert lo.tolist() == [4, 8, 10]
    assert hi.tolist() == [16, 20, 14]


def test_lung_box_follows_a_scan_rotated_in_plane() -> None:
    # An axial scan stored rotated by 90 degrees: index x runs posterior (LPS +y), so the
    # rows of the array are left-right and a tight field of view cuts the body there.
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ap_axis = anterior_posterior_axis(direction)
    assert ap_axis == 2
    array = np.full((20, 30, 30), -1000.0, dtype=np.float32)
    array[:, :, 5:25] = 40.0  # body touching the first and last row
    array[4:16, 8:20, 10:14] = -850.0  # a lung
    lo, hi = lung_box(array, ap_axis=ap_axis)
    assert lo.tolist() == [4, 8, 10]
    assert hi.tolist() == [16, 20, 14]


def test_cache_returns_a_memmap_keyed_by_content_and_parameters(tmp_path: Path) -> None:
    scan, _ = _blob_scan()
    image = SimpleITK.GetImageFromArray(scan.array)
    image.SetSpacing(scan.spacing.tolist())
    path = tmp_path / "a.mhd"
    SimpleITK.WriteImage(image, str(path))
    cache = PreprocessCache(tmp_path / "cache")
    config = PreprocessConfig(lung_crop=False)
    first = cache.load(path, config)
    second = cache.load(path, config)
    assert isinstance(second.array, np.memmap)
    np.testing.assert_array_equal(first.array, second.array)
    other = PreprocessConfig(lung_crop=False, hu_max=200.0)
    assert cache.key(path, config, None) != cache.key(path, other, None)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
