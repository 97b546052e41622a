"""Pulmonary vessel trees and bronchi grown from the hila into the lungs.

Vessels are the main source of false positives for nodule detectors: a vessel seen end-on
in an axial slice is a bright round spot, and a branch point is a bright blob. The trees
branch asymmetrically (Murray's law, r1^3 + r2^3 = r^3) and taper from lobar arteries of
several millimetres to sub-millimetre twigs near the pleura.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from activecad.phantom.anatomy import Anatomy
from activecad.phantom.raster import Grid, tube_occupancy


@dataclass
class VesselTree:
    """Segments of all vessel trees of a patient, body mm (u, v, w).

    Attributes:
        p0, p1: (N, 3) segment ends, body mm.
        r0, r1: (N,) radii at each end, mm.
        branch_points: (M, 3) bifurcations, body mm; ``branch_radius`` (M,) their radius.
        bronchus: (N,) bool, segment carries a bronchus beside it.
    """

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    branch_points: np.ndarray
    branch_radius: np.ndarray
    bronchus: np.ndarray

    def __len__(self) -> int:
        return len(self.r0)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross is ~10x slower on single 3-vectors, and trees ask for tens of thousands.
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _rotate(d: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    # Rodrigues' formula; axis is a unit vector perpendicular to d.
    return d * np.cos(angle) + _cross(axis, d) * np.sin(angle)


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(size=3)
    e -= (e @ d) * d
    return e / (np.linalg.norm(e) + 1e-12)


def grow_vessels(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    min_radius: float,
    max_segments_per_tree: int,
) -> VesselTree:
    """Grow the arterial and venous trees of both lungs.

    Each branch heads for a point of its own lung territory, tries a few directions near
    that heading and keeps one whose end and middle lie in the lung, so the trees fill the
    lungs and stop at the pleura.

    Args:
        anatomy: the patient's body (its :meth:`Anatomy.in_lung` guides growth).
        rng: random generator (the trees are a pure function of its state).
        min_radius: branches thinner than this end the tree, mm.
        max_segments_per_tree: safety bound on the number of segments of one tree.
    """
    p0s, p1s, r0s, r1s, bron, bps, bpr = [], [], [], [], [], [], []
    cells = anatomy.lung_points()
    for name, (root, directions) in anatomy.hila().items():
        is_artery = name.startswith("artery")
        pool = cells[cells[:, 0] < 0] if name.endswith("right") else cells[cells[:, 0] > 0]

        def target_along(start: np.ndarray, d: np.ndarray, pool: np.ndarray = pool) -> np.ndarray:
            # A point of this lung roughly ahead: each branch heads for its own territory,
            # so the tree reaches the apex, the bases and the periphery, not only the hilum.
            picks = pool[rng.integers(len(pool), size=8)]
            ahead = picks - start
            cos = ahead @ d / (np.linalg.norm(ahead, axis=1) + 1e-9)
            return picks[int(np.argmax(cos))]

        # Segmental trunks leave the hilum around each lobar direction.
        trunks = [d + rng.normal(0.0, 0.35, 3) for d in directions for _ in range(3)]
        queue: deque[tuple[np.ndarray, np.ndarray, float, int, np.ndarray]] = deque()
        for d in trunks:
            d = d / np.linalg.norm(d)
            queue.append((root, d, rng.uniform(2.5, 4.0), 0, target_along(root, d)))
        count = 0
        # Breadth first, so a size bound trims the finest twigs everywhere alike.
        while queue and count < max_segments_per_tree:
            start, d, r, gen, target = queue.popleft()
            if r < min_radius:
                continue
            to_target = target - start
            dist = float(np.linalg.norm(to_target))
            if dist < 6.0:
                target = target_along(start, d)
                to_target = target - start
                dist = float(np.linalg.norm(to_target)) + 1e-9
            d = d + 0.8 * to_target / dist
            d /= np.linalg.norm(d)
            length = float(np.clip(r * rng.uniform(6.0, 10.0), 3.0, 40.0))
            end = None
            for _ in range(6):
                axis = _perpendicular(d, rng)
                trial = _rotate(d, axis, rng.uniform(0.0, 0.25))
                cand = start + length * trial
                probe = np.stack([cand, start + 0.5 * length * trial, cand + r * trial])
                ok = anatomy.in_lung(probe if gen > 0 else probe[[0, 2]])
                if ok.all():
                    end, d = cand, trial
                    break
                length *= 0.6
            if end is None:
                continue
            r_end = r * 0.95
            p0s.append(start)
            p1s.append(end)
            r0s.append(r)
            r1s.append(r_end)
            bron.append(is_artery and r >= 1.5)
            count += 1
            major = rng.uniform(0.85, 0.98)
            minor = (1.0 - major**3) ** (1.0 / 3.0)
            axis = _perpendicular(d, rng)
            major_dir = _rotate(d, axis, rng.uniform(0.08, 0.4))
            minor_dir = _rotate(d, -axis, rng.uniform(0.6, 1.2))
            queue.append((end, major_dir, r_end * major, gen + 1, target))
            queue.append((end, minor_dir, r_end * minor, gen + 1, target_along(end, minor_dir)))
            bps.append(end)
            bpr.append(r_end)
    return VesselTree(
        p0=np.asarray(p0s),
        p1=np.asarray(p1s),
        r0=np.asarray(r0s),
        r1=np.asarray(r1s),
        branch_points=np.asarray(bps).reshape(-1, 3),
        branch_radius=np.asarray(bpr),
        bronchus=np.asarray(bron, dtype=bool),
    )


def draw_vessels(
    hu: np.ndarray, tree: VesselTree, grid: Grid, body_center: np.ndarray, blood_hu: float
) -> None:
    """Blend the vessels into ``hu`` (Z, Y, X on ``grid``), in place, segment by segment.

    Args:
        hu: (Z, Y, X) float32 HU on ``grid``.
        tree: segments in body mm.
        grid: identity-direction grid, world mm.
        body_center: (3,) world mm of the body origin.
        blood_hu: density of unenhanced blood, HU.
    """
    blood = np.float32(blood_hu)
    for i in range(len(tree)):
        drawn = tube_occupancy(
            grid, tree.p0[i] + body_center, tree.p1[i] + body_center, tree.r0[i], tree.r1[i]
        )
        if drawn is not None:
            sl, o = drawn
            box = hu[sl]
            box += o * (blood - box)


def draw_bronchi(
    hu: np.ndarray, tree: VesselTree, grid: Grid, body_center: np.ndarray, wall_hu: float
) -> None:
    """Draw bronchi (air lumen, soft-tissue wall) beside the larger arteries, in place.

    A bronchus runs next to its artery (the bronchovascular bundle) with about the same
    calibre; its wall is a thin ring that partial volume makes faint in small bronchi.
    """
    for i in np.flatnonzero(tree.bronchus):
        p0, p1 = tree.p0[i] + body_center, tree.p1[i] + body_center
        d = p1 - p0
        side = _cross(
            d, np.array([0.0, 0.0, 1.0] if abs(d[2]) < 0.9 * np.linalg.norm(d) else [1.0, 0, 0])
        )
        side /= np.linalg.norm(side) + 1e-12
        rl0, rl1 = 0.8 * tree.r0[i], 0.8 * tree.r1[i]
        offset = side * (tree.r0[i] + rl0 + 0.8)
        wall = 0.15 * rl0 + 0.3
        outer = tube_occupancy(grid, p0 + offset, p1 + offset, rl0 + wall, rl1 + wall)
        if outer is None:
            continue
        sl, o = outer
        lumen = tube_occupancy(grid, p0 + offset, p1 + offset, rl0, rl1, margin=0.0)
        box = hu[sl]
        box += o * (wall_hu - box)
        if lumen is not None:
            lsl, lo_ = lumen
            if lsl == sl:
                box += lo_ * (-1000.0 - box)
