"""Chest anatomy as implicit functions of body coordinates, evaluated slab by slab.

Body coordinates (u, v, w) are millimetres from the body centre at the level of the
carina, along the world axes of the DICOM patient frame (LPS): u towards the patient's
left, v towards the back, w towards the head. Defining the anatomy as functions of
position (not as a fixed array) lets every study of a patient be drawn on its own grid and
lets the vessel tree and the nodules ask "is this point in the lung?" anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from activecad.phantom.raster import Grid


class Tissue(IntEnum):
    """Label of every voxel before nodules, lesions and vessels are added."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3
    SPONGY_BONE = 4
    DISC = 5
    CSF = 6
    LUNG = 7
    SOFT = 8
    MEDIASTINAL_FAT = 9
    LIVER = 10
    ABDOMEN = 11
    AIRWAY = 12
    TABLE = 13


# Typical unenhanced CT values, HU: (mean, texture amplitude).
TISSUE_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 8.0),
    Tissue.MUSCLE: (45.0, 6.0),
    Tissue.BONE: (750.0, 60.0),
    Tissue.SPONGY_BONE: (230.0, 40.0),
    Tissue.DISC: (85.0, 5.0),
    Tissue.CSF: (15.0, 3.0),
    Tissue.LUNG: (-865.0, 22.0),
    Tissue.SOFT: (40.0, 5.0),
    Tissue.MEDIASTINAL_FAT: (-85.0, 12.0),
    Tissue.LIVER: (58.0, 6.0),
    Tissue.ABDOMEN: (38.0, 10.0),
    Tissue.AIRWAY: (-1000.0, 0.0),
    Tissue.TABLE: (-250.0, 0.0),
}


@dataclass(frozen=True)
class Tube:
    """A straight tube of the mediastinum (aorta, pulmonary trunk, trachea), body mm.

    ``wall`` is a soft-tissue wall around the lumen (airways); ``fat`` a sheath of
    mediastinal fat that keeps the lung away, so the lungs' medial border follows the
    great vessels as in real scans.
    """

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    tissue: Tissue
    wall: float = 0.0
    fat: float = 0.0


@dataclass
class Anatomy:
    """One patient's body, in body coordinates (mm from the body centre at the carina).

    Attributes:
        half_width, half_depth: outer body half-axes, mm (left-right, front-back).
        fat, muscle: subcutaneous fat and chest-wall muscle thickness, mm.
        apex_w: height of the lung apices above the carina, mm.
        dome_right, dome_left: height of the top of each diaphragm dome, mm (negative).
        rib_phase: cranio-caudal phase of the ribs, mm.
        heart: centre (3,) and half-axes (3,) of the heart ellipsoid, body mm.
        tubes: aorta, pulmonary arteries, trachea and main bronchi.
        lung_gradient: extra HU at the back of the lungs (gravity-dependent density).
        hu_shift: per-tissue shift of the mean HU for this patient.
    """

    half_width: float
    half_depth: float
    fat: float
    muscle: float
    apex_w: float
    dome_right: float
    dome_left: float
    rib_phase: float
    heart: tuple[np.ndarray, np.ndarray]
    tubes: list[Tube]
    lung_gradient: float
    hu_shift: dict[Tissue, float] = field(default_factory=dict)
    _lung_map: tuple[np.ndarray, float, np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )
    _lung_cells: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def cavity_half_axes(self) -> tuple[float, float]:
        """Half-axes of the thoracic cavity inside the ribs, mm."""
        inset = self.fat + self.muscle + 10.0
        return self.half_width - inset, self.half_depth - inset

    @property
    def spine_center_v(self) -> float:
        """v of the centre of the vertebral bodies, mm."""
        return 0.62 * self.cavity_half_axes[1]

    def dome(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Height w of the diaphragm under each (u, v), mm: a dome per side, lower at the rim."""
        height = 45.0
        side = np.where(u < 0, -1.0, 1.0)
        top = np.where(u < 0, self.dome_right, self.dome_left)
        shape = 1.0 - ((u - side * 70.0) ** 2 / 95.0**2 + (v + 5.0) ** 2 / 85.0**2)
        return top - height + height * np.clip(shape, 0.0, 1.0)

    def hila(self) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
        """Roots of the pulmonary vessel trees: name -> (start point, first directions)."""
        lateral = 1.0
        return {
            "artery_right": (
                np.array([-42.0, 0.0, -18.0]),
                _dirs([(-lateral, 0.1, 0.9), (-lateral, -0.4, -0.1), (-0.7, 0.5, -0.9)]),
            ),
            "artery_left": (
                np.array([40.0, 6.0, -8.0]),
                _dirs([(lateral, 0.0, 0.9), (lateral, 0.5, -0.8), (0.8, -0.5, -0.3)]),
            ),
            "vein_right": (
                np.array([-32.0, 14.0, -52.0]),
                _dirs([(-lateral, -0.2, 0.5), (-lateral, 0.4, -0.6)]),
            ),
            "vein_left": (
                np.array([32.0, 14.0, -50.0]),
                _dirs([(lateral, -0.2, 0.5), (lateral, 0.4, -0.6)]),
            ),
        }

    def labels(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Tissue label at body coordinates (broadcastable arrays, mm) -> uint8 array.

        On a grid pass u (1, 1, X), v (1, Y, 1), w (Z, 1, 1): most terms then stay 1D or
        2D and only the final masks are 3D, which keeps a 512 x 512 x 300 volume fast.
        """
        shape = np.broadcast_shapes(np.shape(u), np.shape(v), np.shape(w))
        lab = np.full(shape, Tissue.AIR, dtype=np.uint8)

        def put(mask: np.ndarray, tissue: Tissue) -> None:
            lab[np.broadcast_to(mask, shape)] = tissue

        a, b = self.half_width, self.half_depth
        au, av = np.abs(u), np.abs(v)
        pu, pv = au**2.4, av**2.4

        def inside(da: float, db: float) -> np.ndarray:
            return pu / (a - da) ** 2.4 + pv / (b - db) ** 2.4 < 1.0

        put((v > b + 4.0) & (v < b + 12.0) & (au < 230.0), Tissue.TABLE)
        put(inside(0.0, 0.0), Tissue.FAT)
        put(inside(self.fat, self.fat), Tissue.MUSCLE)
        ca, cb = self.cavity_half_axes
        wall_in = self.fat + self.muscle
        band = inside(wall_in, wall_in)
        # The thorax narrows towards the apices, so the lungs taper like a bell.
        taper = 1.0 - 0.3 * np.clip((w - self.apex_w + 100.0) / 100.0, 0.0, 1.0) ** 1.5
        cavity = pu / (ca * taper) ** 2.4 + pv / cb**2.4 < 1.0
        # Ribs slope down towards the front; a rib is ~11 mm tall every ~34 mm.
        w_rib = w - 30.0 * v / cb - self.rib_phase
        rib = band & ~cavity & (np.mod(w_rib, 34.0) < 11.0) & (w > -230.0)
        rib &= ~((v < 0) & (au < 30.0))
        put(rib, Tissue.BONE)
        sternum = (v < 0) & (au < 16.0) & band
        put(sternum & ~cavity & (w > -140.0) & (w < 60.0), Tissue.BONE)

        # Thoracic contents default to mediastinal fat, then lungs and organs are cut in.
        put(cavity, Tissue.MEDIASTINAL_FAT)
        apex = self.apex_w - ((au - 55.0) ** 2 + (v - 5.0) ** 2) / 90.0
        dome = self.dome(u, v)
        mediastinum = np.abs(u - 4.0) < 9.0 + 18.0 * np.clip(-v / cb, 0.0, 1.0) ** 1.5
        hc, ha = self.heart
        heart_r = ((u - hc[0]) / ha[0]) ** 2 + ((v - hc[1]) / ha[1]) ** 2
        heart_r = heart_r + ((w - hc[2]) / ha[2]) ** 2
        vs = self.spine_center_v
        paraspinal = (au < 42.0) & (v > vs - 22.0)
        lung = cavity & (w > dome + 2.0) & (w < apex) & (heart_r > 1.17)
        lung &= ~(mediastinum | paraspinal)
        put(lung, Tissue.LUNG)
        put(cavity & (w >= apex), Tissue.MUSCLE)
        put(heart_r <= 1.0, Tissue.SOFT)
        below = cavity & (w <= dome)
        put(below, Tissue.ABDOMEN)
        liver = (u < 35.0 - 0.25 * (v + cb)) & (v < vs - 20.0)
        put(below & liver & (w > self.dome_right - 190.0), Tissue.LIVER)
        bubble = ((u - 65.0) ** 2 + (v + 20.0) ** 2) / 30.0**2
        bubble = bubble + ((w - self.dome_left + 40.0) / 18.0) ** 2
        put(below & (bubble < 1.0) & (w > self.dome_left - 42.0), Tissue.AIR)

        self._draw_tubes(lab, u, v, w)
        self._draw_spine(lab, u, v, w, np.broadcast_to(cavity | band, shape))
        return lab

    def _draw_tubes(self, lab: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        grid_axes = np.ndim(u) == 3 and np.ndim(v) == 3 and np.ndim(w) == 3
        for tube in self.tubes:
            p0, p1 = np.asarray(tube.p0, np.float32), np.asarray(tube.p1, np.float32)
            reach = tube.radius + tube.wall
            lo = np.minimum(p0, p1) - reach - tube.fat
            hi = np.maximum(p0, p1) + reach + tube.fat
            box: tuple[slice, ...] = (slice(None),) * lab.ndim
            uu, vv, ww = u, v, w
            if grid_axes:
                # Only the tube's bounding box can change; skip the rest of the slab.
                ranges = []
                for coord, axis, k in ((w, 0, 2), (v, 1, 1), (u, 2, 0)):
                    line = np.asarray(coord).reshape(-1)
                    hit = np.flatnonzero((line >= lo[k]) & (line <= hi[k]))
                    if hit.size == 0:
                        break
                    ranges.append((axis, slice(int(hit[0]), int(hit[-1]) + 1)))
                else:
                    box = tuple(s for _, s in sorted(ranges))
                    ww, vv, uu = w[box[0], :, :], v[:, box[1], :], u[:, :, box[2]]
                if len(ranges) < 3:
                    continue
            d = p1 - p0
            dd = float(d @ d)
            t = np.clip(
                ((uu - p0[0]) * d[0] + (vv - p0[1]) * d[1] + (ww - p0[2]) * d[2]) / dd, 0, 1
            )
            dist2 = (uu - p0[0] - t * d[0]) ** 2 + (vv - p0[1] - t * d[1]) ** 2
            dist2 += (ww - p0[2] - t * d[2]) ** 2
            sub = lab[box]
            if tube.fat > 0:
                sub[(dist2 < (reach + tube.fat) ** 2) & (sub == Tissue.LUNG)] = (
                    Tissue.MEDIASTINAL_FAT
                )
            if tube.wall > 0:
                sub[dist2 < reach**2] = Tissue.SOFT
            sub[dist2 < tube.radius**2] = tube.tissue

    def _draw_spine(
        self, lab: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, trunk: np.ndarray
    ) -> None:
        shape = lab.shape
        vs = self.spine_center_v
        body = np.broadcast_to(u**2 + (v - vs) ** 2 < 19.0**2, shape) & trunk
        disc = np.broadcast_to(np.mod(w - self.rib_phase, 30.0) < 6.0, shape)
        lab[body & disc] = Tissue.DISC
        lab[body & ~disc] = Tissue.SPONGY_BONE
        r2 = u**2 + (v - vs - 29.0) ** 2
        lab[np.broadcast_to((r2 < 17.0**2) & (r2 >= 8.0**2), shape) & ~disc] = Tissue.BONE
        lab[np.broadcast_to(r2 < 8.0**2, shape)] = Tissue.CSF
        muscle = np.broadcast_to((np.abs(u) < 45.0) & (v > vs + 20.0) & (r2 >= 17.0**2), shape)
        lab[muscle & trunk & (lab != Tissue.BONE)] = Tissue.MUSCLE

    def in_lung(self, points: np.ndarray) -> np.ndarray:
        """Whether body-mm points (N, 3) u-v-w lie in a lung -> (N,) bool.

        Looks the answer up in a 2 mm lung map built on first use: growing a vessel tree
        asks this thousands of times, far too often to evaluate the anatomy each time.
        """
        if self._lung_map is None:
            self._lung_map = self._build_lung_map()
        lo, step, lung = self._lung_map
        idx = np.rint((np.atleast_2d(points) - lo) / step).astype(int)
        valid = np.all((idx >= 0) & (idx < np.asarray(lung.shape)), axis=1)
        out = np.zeros(len(idx), dtype=bool)
        i = idx[valid]
        out[valid] = lung[i[:, 0], i[:, 1], i[:, 2]]
        return out

    def lung_points(self) -> np.ndarray:
        """Centres of the 2 mm lung-map cells inside the lungs -> (M, 3) body mm."""
        if self._lung_cells is None:
            if self._lung_map is None:
                self._lung_map = self._build_lung_map()
            lo, step, lung = self._lung_map
            self._lung_cells = lo + step * np.argwhere(lung)
        return self._lung_cells

    def _build_lung_map(self, step: float = 2.0) -> tuple[np.ndarray, float, np.ndarray]:
        ca, cb = self.cavity_half_axes
        lo = np.array([-ca, -cb, min(self.dome_right, self.dome_left) - 60.0])
        hi = np.array([ca, cb, self.apex_w])
        u, v, w = (
            np.arange(a, b + step, step, dtype=np.float32) for a, b in zip(lo, hi, strict=True)
        )
        lab = self.labels(u[None, None, :], v[None, :, None], w[:, None, None])
        lung = np.ascontiguousarray((lab == Tissue.LUNG).transpose(2, 1, 0))
        return lo, step, lung

    def hu_table(self) -> np.ndarray:
        """Mean HU of each tissue label for this patient -> (len(Tissue),) float32."""
        table = np.zeros(len(Tissue), dtype=np.float32)
        for tissue, (mean, _) in TISSUE_HU.items():
            table[tissue] = mean + self.hu_shift.get(tissue, 0.0)
        return table


def _dirs(vectors: list[tuple[float, float, float]]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in vectors]


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's body proportions and organ positions."""
    half_width = rng.uniform(150.0, 185.0)
    half_depth = rng.uniform(100.0, 128.0)
    fat = rng.uniform(6.0, 28.0)
    muscle = rng.uniform(8.0, 15.0)
    dome_right = rng.uniform(-140.0, -110.0)
    heart_c = np.array([18.0 + rng.normal(0, 4), -18.0 + rng.normal(0, 4), dome_right + 45.0])
    heart_a = np.array([62.0, 50.0, 50.0]) * rng.uniform(0.9, 1.1)
    apex_w = rng.uniform(95.0, 120.0)
    cb = half_depth - fat - muscle - 10.0
    aorta_v = 0.62 * cb - 24.0
    r_ao = rng.uniform(11.0, 15.0)
    hz = heart_c[2]
    tubes = [
        Tube((12.0, -22.0, hz + 30.0), (8.0, -26.0, 22.0), r_ao, Tissue.SOFT, fat=5.0),
        Tube((8.0, -26.0, 22.0), (18.0, 5.0, 38.0), r_ao, Tissue.SOFT, fat=5.0),
        Tube((18.0, 5.0, 38.0), (24.0, aorta_v, 22.0), r_ao, Tissue.SOFT, fat=5.0),
        Tube((24.0, aorta_v, 22.0), (26.0, aorta_v, -260.0), r_ao * 0.9, Tissue.SOFT, fat=3.0),
        Tube((-22.0, -22.0, hz + 45.0), (-20.0, -16.0, 70.0), 9.0, Tissue.SOFT, fat=4.0),
        Tube((4.0, 14.0, apex_w + 80.0), (14.0, aorta_v - 18.0, -200.0), 7.0, Tissue.SOFT, fat=3.0),
        Tube((14.0, -24.0, hz + 25.0), (2.0, -6.0, -18.0), 12.0, Tissue.SOFT, fat=5.0),
        Tube((2.0, -6.0, -18.0), (-40.0, 0.0, -18.0), 9.0, Tissue.SOFT, fat=3.0),
        Tube((2.0, -6.0, -18.0), (38.0, 6.0, -8.0), 9.0, Tissue.SOFT, fat=3.0),
        Tube((0.0, -12.0, apex_w + 80.0), (0.0, -2.0, 0.0), 8.0, Tissue.AIRWAY, wall=2.0, fat=4.0),
        Tube((0.0, -2.0, 0.0), (-38.0, 6.0, -20.0), 6.5, Tissue.AIRWAY, wall=1.6, fat=2.0),
        Tube((0.0, -2.0, 0.0), (38.0, 8.0, -35.0), 5.8, Tissue.AIRWAY, wall=1.5, fat=2.0),
    ]
    hu_shift = {
        Tissue.LUNG: rng.normal(0.0, 15.0),
        Tissue.FAT: rng.normal(0.0, 6.0),
        Tissue.LIVER: rng.normal(0.0, 6.0),
        Tissue.SOFT: rng.normal(0.0, 4.0),
    }
    return Anatomy(
        half_width=half_width,
        half_depth=half_depth,
        fat=fat,
        muscle=muscle,
        apex_w=apex_w,
        dome_right=dome_right,
        dome_left=dome_right - rng.uniform(8.0, 25.0),
        rib_phase=rng.uniform(0.0, 34.0),
        heart=(heart_c, heart_a),
        tubes=tubes,
        lung_gradient=rng.uniform(40.0, 90.0),
        hu_shift=hu_shift,
    )


def iter_slabs(grid: Grid, depth: int = 16) -> Iterator[tuple[slice, slice, slice]]:
    """Slabs of ``depth`` slices covering the grid (bounds memory of slab-wise work)."""
    nz, ny, nx = grid.shape
    for z0 in range(0, nz, depth):
        yield slice(z0, min(z0 + depth, nz)), slice(0, ny), slice(0, nx)


def draw_anatomy_box(
    anatomy: Anatomy, grid: Grid, body_center: np.ndarray, sl: tuple[slice, slice, slice]
) -> np.ndarray:
    """Tissue labels of the sub-box ``sl`` of ``grid`` -> uint8 array of the box's shape."""
    z, y, x = grid.axes(sl)
    return anatomy.labels(
        x - np.float32(body_center[0]),
        y - np.float32(body_center[1]),
        z - np.float32(body_center[2]),
    )


def draw_anatomy(anatomy: Anatomy, grid: Grid, body_center: np.ndarray) -> np.ndarray:
    """Tissue labels of the anatomy on ``grid``.

    Args:
        anatomy: the patient's body.
        grid: identity-direction grid, world mm.
        body_center: (3,) world mm x-y-z of the body origin (u = v = w = 0).

    Returns:
        (Z, Y, X) uint8 :class:`Tissue` labels.
    """
    labels = np.empty(grid.shape, dtype=np.uint8)
    for sl in iter_slabs(grid):
        labels[sl] = draw_anatomy_box(anatomy, grid, body_center, sl)
    return labels
