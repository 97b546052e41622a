"""Drawing primitives: soft-edged tubes and blobs written into small sub-boxes of a volume.

Every object is drawn only inside its own bounding box, so the cost follows the object's
size, not the volume's. Occupancies are soft (0..1 over one voxel) to imitate the partial
volume effect before the acquisition blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid (identity direction) in which the phantom is drawn.

    Attributes:
        shape: (Z, Y, X) number of voxels.
        spacing: (3,) voxel size, mm, x-y-z.
        origin: (3,) world mm, x-y-z, of the centre of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray

    @property
    def voxel_mm(self) -> float:
        """Geometric mean voxel size, mm: the width of a soft edge."""
        return float(np.prod(self.spacing) ** (1.0 / 3.0))

    def axes(self, sl: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, ...]:
        """World mm coordinates of voxel centres, broadcastable over a (sub-)box.

        Returns:
            (z (k,1,1), y (1,j,1), x (1,1,i)) float32 world mm of the rows of ``sl``.
        """
        sl = sl or (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        out = []
        for axis, s in enumerate(sl):
            xyz = 2 - axis
            idx = np.arange(s.start, s.stop, dtype=np.float32)
            coord = (self.origin[xyz] + self.spacing[xyz] * idx).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = coord.size
            out.append(coord.reshape(shape))
        return tuple(out)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices (z, y, x) covering world box ``lo``..``hi`` (x-y-z mm); None if outside."""
        ilo = np.floor((np.asarray(lo) - self.origin) / self.spacing).astype(int)
        ihi = np.ceil((np.asarray(hi) - self.origin) / self.spacing).astype(int) + 1
        slices = []
        for axis in range(3):
            xyz = 2 - axis
            a, b = max(ilo[xyz], 0), min(ihi[xyz], self.shape[axis])
            if a >= b:
                return None
            slices.append(slice(int(a), int(b)))
        return slices[0], slices[1], slices[2]

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Nearest voxel (z, y, x) of world points (N, 3) x-y-z mm, clipped to the grid."""
        idx = np.rint((np.atleast_2d(points) - self.origin) / self.spacing).astype(int)[:, ::-1]
        return np.clip(idx, 0, np.asarray(self.shape) - 1)


def soft_edge(inside_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Occupancy 0..1 from a signed distance (positive inside) with a ``width_mm`` ramp."""
    return np.clip(inside_mm / width_mm + 0.5, 0.0, 1.0)


def segment_distance(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, p0: np.ndarray, p1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of grid points to segment p0-p1 and position ``t`` (0..1) of the foot point.

    Args:
        z, y, x: broadcastable world mm coordinates (see :meth:`Grid.axes`).
        p0, p1: (3,) world mm, x-y-z.
    """
    d = (p1 - p0).astype(np.float32)
    dd = float(d @ d) or 1e-6
    rx, ry, rz = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / dd, 0.0, 1.0)
    qx, qy, qz = rx - t * d[0], ry - t * d[1], rz - t * d[2]
    return np.sqrt(qx * qx + qy * qy + qz * qz), t


def tube_occupancy(
    grid: Grid, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, margin: float = 0.0
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Soft occupancy of a tapered tube in its bounding box.

    A tube thinner than half a voxel is drawn half a voxel wide with its cross-section area
    kept (fainter, as partial volume makes a sub-millimetre vessel in a real scan).

    Returns:
        (box slices, occupancy (k, j, i) float32) or None when the tube is outside the grid.
    """
    h = grid.voxel_mm
    rmax = max(r0, r1) + h + margin
    lo = np.minimum(p0, p1) - rmax
    hi = np.maximum(p0, p1) + rmax
    sl = grid.box(lo, hi)
    if sl is None:
        return None
    z, y, x = grid.axes(sl)
    dist, t = segment_distance(z, y, x, p0, p1)
    r = r0 + (r1 - r0) * t + margin
    r_draw = np.maximum(r, 0.5 * h)
    occ = soft_edge(r_draw - dist, h) * np.minimum(1.0, (r / r_draw) ** 2)
    return sl, occ.astype(np.float32)


def blob_occupancy(
    grid: Grid,
    center: np.ndarray,
    radius_fn: object,
    extent: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Soft occupancy of a star-shaped blob whose radius depends on direction.

    Args:
        center: (3,) world mm, x-y-z.
        radius_fn: callable taking unit directions (..., 3) x-y-z and returning radii, mm.
        extent: largest radius the blob can reach, mm (sizes the box).

    Returns:
        (box slices, occupancy float32, distance from the centre mm) or None if outside.
    """
    h = grid.voxel_mm
    sl = grid.box(center - extent - h, center + extent + h)
    if sl is None:
        return None
    z, y, x = grid.axes(sl)
    dx, dy, dz = x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2])
    dx, dy, dz = np.broadcast_arrays(dx, dy, dz)
    rho = np.sqrt(dx * dx + dy * dy + dz * dz)
    safe = np.maximum(rho, 1e-6)
    dirs = np.stack([dx / safe, dy / safe, dz / safe], axis=-1)
    radius = radius_fn(dirs)  # type: ignore[operator]
    occ = soft_edge(radius - rho, h).astype(np.float32)
    return sl, occ, rho
