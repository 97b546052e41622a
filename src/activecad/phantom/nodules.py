"""Lung nodules: how many, how big, what kind and shape, where, and how they are drawn.

Calibrated against LIDC-IDRI (``lidc_stats.json``): the true size distribution below is
the LIDC distribution of reader-marked nodules divided by the chance that at least one
reader marks a nodule of that size (see :mod:`activecad.phantom.readers`), so that after
simulated reading the >= 3-reader nodules match LIDC's sizes (median about 9 mm, max
in-plane extent) and their count per scan (1.33, with 32 % of scans having none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from activecad.phantom.anatomy import Anatomy, Tissue
from activecad.phantom.raster import Grid, blob_occupancy, tube_occupancy
from activecad.phantom.vessels import VesselTree

KINDS = ("solid", "part-solid", "ground-glass", "calcified")
# LIDC texture ratings (5 solid 73 %, 3-4 part-solid ~17 %, 1-2 non-solid ~9 %) and
# calcification (~12 % of marks rated calcified), lidc_stats.json.
KIND_WEIGHTS = (0.66, 0.12, 0.10, 0.12)
SHAPES = ("smooth", "lobulated", "spiculated")
PLACES = ("parenchymal", "juxta-pleural", "juxta-vascular")
PLACE_WEIGHTS = (0.55, 0.25, 0.20)

# Size bins of lidc_stats.json (mm) and the LIDC count of marked nodules in each, divided
# by P(>= 1 of 4 readers marks it) of the fitted reader model: the true size distribution.
_SIZE_EDGES = np.array([3.0, 5.0, 8.0, 12.0, 20.0, 30.0])
_SIZE_WEIGHTS = np.array([318.0, 1452.0, 735.0, 296.0, 197.0])
# Negative binomial over nodules per scan: shape 3.6 gives P(0 qualifying) = 0.323 at the
# LIDC mean of 1.33 qualifying nodules per scan (thinning keeps the shape). 0.398 of true
# nodules qualify (>= 3 readers, >= 3 mm) on average: a Monte Carlo of the reader model
# over the size and kind distributions below (ground glass is missed more).
_COUNT_SHAPE = 3.6
# A doubtful nodule (the kind LIDC readers miss) is blended into the tissue at this share
# of its density: a solid one in lung shows at about -500 HU, a faint partial-volume blob.
# Drawn at full density, the nodules that no reader marks were as plain as the annotated
# ones, and a detector's best marks on them counted as false positives.
DOUBTFUL_CONTRAST = 0.4
_TRUE_NODULES_PER_SCAN = 1.328 / 0.398


@dataclass
class Nodule:
    """One true nodule, body mm.

    Attributes:
        nodule_id: index within the patient.
        center: (3,) body mm u-v-w (world = body + body centre of the study).
        diameter: volume-equivalent diameter at the first study, mm.
        kind: one of :data:`KINDS`; ``hu`` its main density, ``core_hu`` the solid part.
        shape: one of :data:`SHAPES`; ``place`` one of :data:`PLACES`.
        malignancy: latent malignancy 1..5 (float), what readers try to rate.
        growth: diameter factor per study (1 at the first).
        lobes: (K, 4) lobule directions (x-y-z unit) and relative sizes.
        spicules: (S, 4) spicule directions and relative lengths.
        axes: (3,) relative half-axes of the ellipsoidal body.
        doubtful: a subtle nodule, drawn faint (:data:`DOUBTFUL_CONTRAST`) and often missed
            by the readers (:func:`activecad.phantom.readers.draw_doubtful`).
    """

    nodule_id: int
    center: np.ndarray
    diameter: float
    kind: str
    shape: str
    place: str
    hu: float
    core_hu: float
    malignancy: float
    lobes: np.ndarray
    spicules: np.ndarray
    axes: np.ndarray
    growth: list[float] = field(default_factory=lambda: [1.0])
    doubtful: bool = False

    @property
    def contrast(self) -> float:
        """Share of its density above the tissue it replaces that the nodule is drawn with."""
        return DOUBTFUL_CONTRAST if self.doubtful else 1.0

    def diameter_at(self, study: int) -> float:
        """Diameter at study ``study`` (0-based), mm."""
        return self.diameter * self.growth[study]

    def extent(self, study: int) -> float:
        """Largest distance from the centre that the nodule reaches, spicules included, mm."""
        r = 0.5 * self.diameter_at(study)
        spike = 1.0 + (self.spicules[:, 3].max() if len(self.spicules) else 0.0)
        return r * max(1.35, spike) + 1.0


def sample_diameters(rng: np.random.Generator, n: int) -> np.ndarray:
    """True diameters (mm): LIDC bin weights, log-uniform inside each bin."""
    p = _SIZE_WEIGHTS / _SIZE_WEIGHTS.sum()
    b = rng.choice(len(p), size=n, p=p)
    lo, hi = np.log(_SIZE_EDGES[b]), np.log(_SIZE_EDGES[b + 1])
    return np.exp(rng.uniform(lo, hi))


def sample_nodule_count(rng: np.random.Generator) -> int:
    """Number of true nodules of a patient (negative binomial, overdispersed like LIDC)."""
    k = _COUNT_SHAPE
    p = k / (k + _TRUE_NODULES_PER_SCAN)
    return int(rng.negative_binomial(k, p))


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _place(
    anatomy: Anatomy,
    tree: VesselTree,
    rng: np.random.Generator,
    place: str,
    radius: float,
    taken: list[tuple[np.ndarray, float]],
) -> np.ndarray | None:
    """A centre (body mm) for a nodule of ``radius`` at ``place``, or None after many tries."""
    cells = anatomy.lung_points()
    shell = _unit(rng, 26)
    for _ in range(60):
        c = cells[rng.integers(len(cells))] + rng.uniform(-1, 1, 3)
        if place == "juxta-pleural":
            d = _unit(rng, 1)[0]
            steps = c + np.arange(0, 120, 1.0)[:, None] * d
            inside = anatomy.in_lung(steps)
            if inside.all():
                continue
            edge = steps[int(np.argmin(inside))]
            # Attached to the wall, centre kept at least 2.5 mm inside the lung.
            c = edge - d * max(radius * rng.uniform(0.4, 0.8), 2.5)
            ok = bool(anatomy.in_lung(c[None])[0])
        elif place == "juxta-vascular":
            big = np.flatnonzero((tree.r0 > 0.8) & (tree.r0 < 4.0))
            if len(big) == 0:
                return None
            i = big[rng.integers(len(big))]
            t = rng.uniform(0.2, 0.8)
            axis_pt = tree.p0[i] + t * (tree.p1[i] - tree.p0[i])
            d = tree.p1[i] - tree.p0[i]
            side = np.cross(d, _unit(rng, 1)[0])
            side /= np.linalg.norm(side) + 1e-12
            c = axis_pt + side * (radius + tree.r0[i] * rng.uniform(0.2, 0.9))
            ok = bool(anatomy.in_lung(c + shell * (radius + 1.0)).all())
        else:
            ok = bool(anatomy.in_lung(c + shell * (radius + 2.0)).all())
        # The 2 mm map can be off by a cell at the pleura; the centre is checked exactly.
        ok = ok and bool(anatomy.labels(c[:1], c[1:2], c[2:])[0] == Tissue.LUNG)
        if ok and all(np.linalg.norm(c - p) > radius + r + 4.0 for p, r in taken):
            return c
    return None


def sample_nodules(
    anatomy: Anatomy, tree: VesselTree, rng: np.random.Generator, n_studies: int
) -> list[Nodule]:
    """Draw a patient's nodules with their kind, shape, place and growth over studies."""
    n = sample_nodule_count(rng)
    nodules: list[Nodule] = []
    taken: list[tuple[np.ndarray, float]] = []
    for d in sample_diameters(rng, n):
        d = float(min(d, 30.0))
        kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
        if kind == "ground-glass" or kind == "part-solid":
            d = float(max(d, 5.0))
        if kind == "calcified" and d > 12.0:
            # Calcified nodules are mostly small granulomas; a large one is drawn solid.
            kind = "solid"
        # Spiculation and lobulation grow with size; LIDC readers rate 84 % of nodules 1-2
        # for spiculation (lidc_stats.json), so spiculated ones stay a minority.
        p_spic = min(0.25, 0.01 * d) if kind != "calcified" else 0.0
        p_lob = min(0.3, 0.02 * d)
        shape = str(rng.choice(SHAPES, p=(1 - p_spic - p_lob, p_lob, p_spic)))
        place = str(rng.choice(PLACES, p=PLACE_WEIGHTS))
        center = _place(anatomy, tree, rng, place, 0.5 * d, taken)
        if center is None:
            center = _place(anatomy, tree, rng, "parenchymal", 0.5 * d, taken)
            place = "parenchymal"
        if center is None:
            continue
        taken.append((center, 0.5 * d * 1.5))
        hu = {
            "solid": rng.uniform(-10.0, 60.0),
            "part-solid": rng.uniform(-650.0, -400.0),
            "ground-glass": rng.uniform(-750.0, -300.0),
            "calcified": rng.uniform(250.0, 900.0),
        }[kind]
        core = rng.uniform(0.0, 60.0) if kind == "part-solid" else hu
        # Malignancy follows size, spiculation and sub-solid kind (Brock-model directions);
        # calcified nodules are benign.
        score = 1.6 + 1.4 * np.log(d / 4.0) + (0.8 if shape == "spiculated" else 0.0)
        score += 0.5 if kind == "part-solid" else 0.0
        score = 1.0 if kind == "calcified" else score
        malignancy = float(np.clip(score + rng.normal(0, 0.5), 1.0, 5.0))
        n_lobes = int(rng.integers(3, 6)) if shape == "lobulated" else 0
        lobes = np.hstack([_unit(rng, n_lobes), rng.uniform(0.35, 0.6, (n_lobes, 1))])
        n_spic = int(rng.integers(6, 14)) if shape == "spiculated" else 0
        spicules = np.hstack([_unit(rng, n_spic), rng.uniform(0.6, 1.6, (n_spic, 1))])
        rate = 1.0 + (0.15 * (malignancy - 2.5) if kind != "calcified" else 0.0)
        growth = [1.0]
        for _ in range(n_studies - 1):
            growth.append(float(growth[-1] * max(0.7, rate + rng.normal(0, 0.04))))
        nodules.append(
            Nodule(
                nodule_id=len(nodules),
                center=center,
                diameter=d,
                kind=kind,
                shape=shape,
                place=place,
                hu=float(hu),
                core_hu=float(core),
                malignancy=malignancy,
                lobes=lobes,
                spicules=spicules,
                axes=rng.uniform(0.85, 1.15, 3),
                growth=growth,
            )
        )
    return nodules


def draw_nodule(
    hu: np.ndarray,
    nodule: Nodule,
    grid: Grid,
    body_center: np.ndarray,
    study: int,
    rng: np.random.Generator,
) -> None:
    """Blend one nodule into ``hu`` (Z, Y, X HU on ``grid``), in place, inside its box."""
    r = 0.5 * nodule.diameter_at(study)
    center = nodule.center + body_center
    axes, lobes = nodule.axes, nodule.lobes

    def radius_fn(dirs: np.ndarray) -> np.ndarray:
        # Ellipsoid radius along each direction, plus lobules bulging around their axes.
        base = 1.0 / np.sqrt(((dirs / axes) ** 2).sum(-1))
        for lx, ly, lz, size in lobes:
            cos = dirs[..., 0] * lx + dirs[..., 1] * ly + dirs[..., 2] * lz
            base = base + size * np.clip(cos, 0.0, 1.0) ** 6
        return r * base

    drawn = blob_occupancy(grid, center, radius_fn, r * 1.6)
    if drawn is None:
        return
    sl, occ, rho = drawn
    box = hu[sl]
    value = np.full(occ.shape, nodule.hu, dtype=np.float32)
    if nodule.kind in ("ground-glass", "part-solid"):
        # Ground glass is hazy and uneven; a part-solid nodule has a solid core.
        value += rng.normal(0.0, 60.0, occ.shape).astype(np.float32)
    if nodule.kind == "part-solid":
        core = np.clip((0.45 * r - rho) / grid.voxel_mm + 0.5, 0.0, 1.0)
        value += core * (nodule.core_hu - value)
    contrast = np.float32(nodule.contrast)
    box += contrast * occ * (value - box)
    for dx, dy, dz, length in nodule.spicules:
        d = np.array([dx, dy, dz])
        tip = center + d * r * (1.0 + length)
        spike = tube_occupancy(grid, center + d * 0.7 * r, tip, 0.12 * r + 0.3, 0.2)
        if spike is not None:
            ssl, so = spike
            hu[ssl] += contrast * so * (nodule.hu - hu[ssl])


def sample_pleural_bumps(
    anatomy: Anatomy, rng: np.random.Generator, nodules: list[Nodule]
) -> np.ndarray:
    """Small soft-tissue bumps on the pleura (plaques, fissure nodes, rib ends seen en face).

    They are not nodules but look like small juxta-pleural ones, a classic source of false
    positives; each sits astride the lung border, well away from every true nodule.

    Returns:
        (M, 4) body mm centre (u, v, w) and radius, mm.
    """
    cells = anatomy.lung_points()
    bumps = []
    for _ in range(int(rng.poisson(1.5))):
        radius = rng.uniform(1.5, 4.0)
        start = cells[rng.integers(len(cells))]
        d = _unit(rng, 1)[0]
        steps = start + np.arange(0, 150, 1.0)[:, None] * d
        inside = anatomy.in_lung(steps)
        if inside.all():
            continue
        c = steps[int(np.argmin(inside))] - d * 0.3 * radius
        if all(np.linalg.norm(c - n.center) > n.extent(0) * 1.5 + radius + 3.0 for n in nodules):
            bumps.append([*c, radius])
    return np.asarray(bumps, dtype=float).reshape(-1, 4)


def draw_pleural_bump(
    hu: np.ndarray, bump: np.ndarray, grid: Grid, body_center: np.ndarray, density: float
) -> None:
    """Blend one pleural bump (a small sphere of soft tissue) into ``hu``, in place."""
    radius = float(bump[3])
    drawn = blob_occupancy(
        grid, bump[:3] + body_center, lambda dirs: np.full(dirs.shape[:-1], radius), radius
    )
    if drawn is not None:
        sl, occ, _ = drawn
        hu[sl] += occ * (np.float32(density) - hu[sl])
