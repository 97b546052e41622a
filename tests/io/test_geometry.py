"""World mm (x, y, z) <-> voxel (z, y, x) conversion."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from activecad.io import (
    scan_voxel_to_world,
    scan_world_to_voxel,
    voxel_to_world,
    world_to_voxel,
)
from tests.io.helpers import ROTATION, make_scan


def test_known_world_point_lands_on_its_voxel_identity_direction() -> None:
    # Hand computation: x = (11 - 10) / 0.5 = 2, y = (-16 - -20) / 2 = 2, z = (39 - 30) / 3 = 3.
    voxel = world_to_voxel([11.0, -16.0, 39.0], origin=[10, -20, 30], spacing=[0.5, 2, 3])
    np.testing.assert_allclose(voxel, [3.0, 2.0, 2.0])


def test_known_voxel_lands_on_its_world_point_rotated_direction() -> None:
    # Array x runs along world +y and array y along world -x (90 degrees about z).
    # Hand computation for voxel (z, y, x) = (1, 2, 3), spacing (1, 2, 3):
    # offsets along the array axes are x: 3 * 1 = 3, y: 2 * 2 = 4, z: 1 * 3 = 3 mm;
    # world = origin + 3 * (0, 1, 0) + 4 * (-1, 0, 0) + 3 * (0, 0, 1) = (5 - 4, 6 + 3, 7 + 3).
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    world = voxel_to_world([1, 2, 3], origin=[5, 6, 7], spacing=[1, 2, 3], direction=direction)
    np.testing.assert_allclose(world, [1.0, 9.0, 10.0])
    back = world_to_voxel(world, origin=[5, 6, 7], spacing=[1, 2, 3], direction=direction)
    np.testing.assert_allclose(back, [1.0, 2.0, 3.0], atol=1e-12)


def test_matches_simpleitk_for_a_rotated_volume() -> None:
    # Reference implementation: ITK's continuous index <-> physical point (index x, y, z).
    scan = make_scan()
    image = sitk.GetImageFromArray(scan.array)
    image.SetOrigin(scan.origin.tolist())
    image.SetSpacing(scan.spacing.tolist())
    image.SetDirection(scan.direction.reshape(9).tolist())
    indices = np.array([[0.0, 0.0, 0.0], [5.0, 7.0, 9.0], [2.5, -1.25, 3.75]])
    expected = np.array(
        [image.TransformContinuousIndexToPhysicalPoint(idx[::-1].tolist()) for idx in indices]
    )
    np.testing.assert_allclose(scan_voxel_to_world(scan, indices), expected, atol=1e-9)


def test_world_voxel_world_is_identity_within_a_micrometre() -> None:
    rng = np.random.default_rng(7)
    # A general (sheared, as from a tilted gantry) invertible direction, not only rotations.
    direction = ROTATION + 0.1 * rng.normal(size=(3, 3))
    points = rng.uniform(-400, 400, size=(1000, 3))
    kwargs = {"origin": [-180.3, 22.1, -1200.5], "spacing": [0.68, 0.68, 1.25]}
    voxels = world_to_voxel(points, direction=direction, **kwargs)
    back = voxel_to_world(voxels, direction=direction, **kwargs)
    assert np.abs(back - points).max() < 1e-6


def test_scan_helpers_round_trip() -> None:
    scan = make_scan()
    voxels = np.array([[0, 0, 0], [5, 7, 9], [1.5, 2.5, 3.5]])
    back = scan_world_to_voxel(scan, scan_voxel_to_world(scan, voxels))
    np.testing.assert_allclose(back, voxels, atol=1e-9)


def test_single_point_keeps_its_shape_and_many_points_theirs() -> None:
    one = voxel_to_world([1, 2, 3], origin=[0, 0, 0], spacing=[1, 1, 1])
    many = voxel_to_world([[1, 2, 3]], origin=[0, 0, 0], spacing=[1, 1, 1])
    assert one.shape == (3,)
    assert many.shape == (1, 3)
    # Empty input is a valid "no findings" case.
    assert world_to_voxel(np.zeros((0, 3)), origin=[0, 0, 0], spacing=[1, 1, 1]).shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [[1, 2]]}, "shape"),
        ({"spacing": [1, 0, 1]}, "positive"),
        ({"direction": np.zeros((3, 3))}, "invertible"),
        ({"direction": np.eye(2)}, "9 elements"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, message: str) -> None:
    call = {"points": [1, 2, 3], "origin": [0, 0, 0], "spacing": [1, 1, 1], **kwargs}
    points = call.pop("points")
    with pytest.raises(ValueError, match=message):
        world_to_voxel(points, **call)
