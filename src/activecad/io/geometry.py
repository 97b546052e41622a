"""World millimetres (x, y, z) <-> voxel indices (z, y, x), for any direction matrix.

This is the one place where activecad converts between the frame findings live in
(LUNA16-style world mm, x-y-z, the DICOM patient frame LPS) and the frame arrays are
indexed in (z, y, x). The mapping is the one ITK and DICOM use::

    world = origin + direction @ diag(spacing) @ [i_x, i_y, i_z]

where column ``k`` of ``direction`` is the world direction of array axis ``k`` in x, y, z
order (k = 0 for x/columns). Voxel indices are continuous: integer values are voxel
centres.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from activecad.io.scan import Scan

__all__ = [
    "scan_voxel_to_world",
    "scan_world_to_voxel",
    "voxel_to_world",
    "world_to_voxel",
]


def _as_points(values: ArrayLike, name: str) -> tuple[np.ndarray, bool]:
    """Return ``values`` as an (N, 3) float64 array and whether the input was a single point."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 3:
        return arr.reshape(1, 3), True
    if arr.ndim == 2 and arr.shape[1] == 3:
        return arr, False
    raise ValueError(f"{name} must have shape (3,) or (N, 3), got {arr.shape}")


def _geometry(
    origin: ArrayLike, spacing: ArrayLike, direction: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    origin_arr = np.asarray(origin, dtype=np.float64).reshape(3)
    spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(3)
    if np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be positive (x, y, z mm), got {spacing_arr.tolist()}")
    if direction is None:
        direction_arr = np.eye(3)
    else:
        direction_arr = np.asarray(direction, dtype=np.float64)
        if direction_arr.size != 9:
            raise ValueError(f"direction must have 9 elements (3 x 3), got {direction_arr.shape}")
        direction_arr = direction_arr.reshape(3, 3)
    return origin_arr, spacing_arr, direction_arr


def voxel_to_world(
    indices: ArrayLike,
    *,
    origin: ArrayLike,
    spacing: ArrayLike,
    direction: ArrayLike | None = None,
) -> np.ndarray:
    """Map continuous voxel indices to world coordinates.

    Args:
        indices: (N, 3) or (3,) continuous voxel indices in z, y, x order (array order).
        origin: (3,) world mm, x-y-z, of the centre of voxel (0, 0, 0).
        spacing: (3,) voxel size in mm, x-y-z order.
        direction: (3, 3) direction cosines, column k = world direction of array axis k in
            x-y-z order (k = 0 is x/columns); identity when ``None``. A flat 9-vector is
            read row-major, as SimpleITK's ``GetDirection()`` gives it.

    Returns:
        (N, 3) or (3,) world mm, x-y-z (same leading shape as ``indices``).
    """
    idx, single = _as_points(indices, "indices")
    origin_arr, spacing_arr, direction_arr = _geometry(origin, spacing, direction)
    # Reverse the last axis: arrays are indexed z, y, x but geometry is x, y, z.
    scaled = idx[:, ::-1] * spacing_arr
    world = scaled @ direction_arr.T + origin_arr
    return world[0] if single else world


def world_to_voxel(
    points: ArrayLike,
    *,
    origin: ArrayLike,
    spacing: ArrayLike,
    direction: ArrayLike | None = None,
) -> np.ndarray:
    """Map world coordinates to continuous voxel indices (the inverse of :func:`voxel_to_world`).

    Args:
        points: (N, 3) or (3,) world mm, x-y-z.
        origin: (3,) world mm, x-y-z, of the centre of voxel (0, 0, 0).
        spacing: (3,) voxel size in mm, x-y-z order.
        direction: (3, 3) direction cosines as in :func:`voxel_to_world`; need not be
            orthonormal, only invertible.

    Returns:
        (N, 3) or (3,) float continuous voxel indices in z, y, x order; round them to get
        the voxel that contains each point.
    """
    pts, single = _as_points(points, "points")
    origin_arr, spacing_arr, direction_arr = _geometry(origin, spacing, direction)
    if abs(np.linalg.det(direction_arr)) < 1e-12:
        raise ValueError(f"direction must be invertible, got {direction_arr.tolist()}")
    # Solve instead of transposing: a direction read from a file is rarely exactly orthonormal.
    scaled = np.linalg.solve(direction_arr, (pts - origin_arr).T).T
    idx = (scaled / spacing_arr)[:, ::-1]
    return idx[0] if single else idx


def scan_voxel_to_world(scan: Scan, indices: ArrayLike) -> np.ndarray:
    """Map continuous voxel indices of ``scan`` to world coordinates.

    Args:
        scan: the scan whose origin, spacing and direction define the mapping.
        indices: (N, 3) or (3,) continuous voxel indices, z-y-x.

    Returns:
        (N, 3) or (3,) world mm, x-y-z.
    """
    return voxel_to_world(
        indices, origin=scan.origin, spacing=scan.spacing, direction=scan.direction
    )


def scan_world_to_voxel(scan: Scan, points: ArrayLike) -> np.ndarray:
    """Map world coordinates to continuous voxel indices of ``scan``.

    Args:
        scan: the scan whose origin, spacing and direction define the mapping.
        points: (N, 3) or (3,) world mm, x-y-z.

    Returns:
        (N, 3) or (3,) float voxel indices, z-y-x.
    """
    return world_to_voxel(
        points, origin=scan.origin, spacing=scan.spacing, direction=scan.direction
    )
