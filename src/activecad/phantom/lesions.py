"""Lesions beyond the lung: liver tumours and enlarged lymph nodes (DeepLesion's kinds)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from activecad.phantom.anatomy import TISSUE_HU, Anatomy, Tissue
from activecad.phantom.raster import Grid, blob_occupancy

# DeepLesion coarse lesion types (Yan et al.): 2 abdomen, 3 mediastinum, 4 liver, 5 lung.
LESION_TYPE = {"liver": 4, "lymph_node_mediastinal": 3, "lymph_node_abdominal": 2, "lung": 5}
DATASET = {
    "liver": "liver_tumours",
    "lymph_node_mediastinal": "lymph_nodes",
    "lymph_node_abdominal": "lymph_nodes",
    "lung": "lung_nodules",
}

# Contrast phases a study can be acquired in. Chest screening CT (LIDC/LUNA16) is mostly
# unenhanced; the diagnostic CTs of DeepLesion, LiTS and NIH-LN are mostly portal venous.
PHASES = ("unenhanced", "portal_venous")
# Portal venous phase: the liver enhances from about 58 to 105 HU; tumours enhance less
# (hypodense ones by 25 HU, hypervascular ones by 50 HU), so they stand out by 35-75 HU.
LIVER_ENHANCEMENT_HU = 47.0
TUMOUR_ENHANCEMENT_HU = {"hypodense": 25.0, "hyperdense": 50.0}
# Abdominal nodes lie in retroperitoneal and mesenteric fat; the phantom's abdomen is one
# soft-tissue compartment (38 HU, as dense as a node), so a node is drawn in a fat sheath
# this much wider than itself, mm, or it would be invisible.
NODE_FAT_SHEATH_MM = 4.0
FAT_HU = -100.0


@dataclass
class Lesion:
    """A liver tumour or lymph node, body mm.

    Attributes:
        lesion_id: index within the patient.
        organ: ``"liver"``, ``"lymph_node_mediastinal"`` or ``"lymph_node_abdominal"``.
        center: (3,) body mm.
        axes: (3,) half-axes at the first study, mm (x-y-z).
        hu: density, HU (hypo- or hyper-dense against liver; soft tissue for nodes).
        enlarged: for lymph nodes, short axis >= 10 mm (a lesion); normal nodes are drawn
            but are not lesions.
        growth: size factor per study.
    """

    lesion_id: int
    organ: str
    center: np.ndarray
    axes: np.ndarray
    hu: float
    enlarged: bool = True
    growth: list[float] = field(default_factory=lambda: [1.0])

    def axes_at(self, study: int) -> np.ndarray:
        """Half-axes at study ``study``, mm."""
        return self.axes * self.growth[study]


def _find(
    anatomy: Anatomy,
    rng: np.random.Generator,
    tissue: Tissue,
    lo: np.ndarray,
    hi: np.ndarray,
    radius: float,
) -> np.ndarray | None:
    shell = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    for _ in range(80):
        c = rng.uniform(lo, hi)
        pts = np.vstack([c, c + 0.7 * radius * shell])
        if np.all(anatomy.labels(pts[:, 0], pts[:, 1], pts[:, 2]) == tissue):
            return c
    return None


def sample_lesions(anatomy: Anatomy, rng: np.random.Generator, n_studies: int) -> list[Lesion]:
    """Liver tumours (30 % of patients) and lymph nodes, normal and enlarged."""
    lesions: list[Lesion] = []
    ca, cb = anatomy.cavity_half_axes
    liver_lo = np.array([-ca, -cb, anatomy.dome_right - 120.0])
    liver_hi = np.array([20.0, cb * 0.3, anatomy.dome_right - 15.0])
    n_liver = int(rng.integers(1, 5)) if rng.random() < 0.3 else 0
    specs: list[tuple[str, bool]] = [("liver", True)] * n_liver
    n_med = int(rng.integers(1, 4)) if rng.random() < 0.35 else 0
    specs += [("lymph_node_mediastinal", True)] * n_med
    specs += [("lymph_node_mediastinal", False)] * int(rng.integers(2, 6))
    n_abd = int(rng.integers(1, 3)) if rng.random() < 0.2 else 0
    specs += [("lymph_node_abdominal", True)] * n_abd
    for organ, enlarged in specs:
        if organ == "liver":
            r = rng.uniform(5.0, 20.0)
            c = _find(anatomy, rng, Tissue.LIVER, liver_lo, liver_hi, r)
            hu = rng.uniform(5.0, 35.0) if rng.random() < 0.75 else rng.uniform(90.0, 130.0)
            axes = r * rng.uniform(0.85, 1.15, 3)
        else:
            short = rng.uniform(5.0, 12.0) if enlarged else rng.uniform(2.0, 4.5)
            axes = np.array([short, short * rng.uniform(1.0, 1.3), short * rng.uniform(1.2, 1.8)])
            if organ == "lymph_node_mediastinal":
                c = _find(
                    anatomy,
                    rng,
                    Tissue.MEDIASTINAL_FAT,
                    np.array([-35.0, -60.0, -60.0]),
                    np.array([35.0, 40.0, 30.0]),
                    short,
                )
            else:
                c = _find(
                    anatomy,
                    rng,
                    Tissue.ABDOMEN,
                    np.array([-60.0, -40.0, -230.0]),
                    np.array([60.0, cb * 0.5, anatomy.dome_left - 30.0]),
                    short,
                )
            hu = rng.uniform(30.0, 50.0)
        if c is None:
            continue
        growth = [1.0]
        trend = rng.uniform(0.75, 1.3)
        for _ in range(n_studies - 1):
            growth.append(float(growth[-1] * trend))
        lesions.append(Lesion(len(lesions), organ, c, axes, float(hu), enlarged, growth))
    return lesions


def draw_lesion(
    hu: np.ndarray,
    lesion: Lesion,
    grid: Grid,
    body_center: np.ndarray,
    study: int,
    phase: str = "unenhanced",
) -> None:
    """Blend one lesion (an ellipsoid) into ``hu`` on ``grid``, in place.

    In the ``portal_venous`` phase a liver tumour enhances less than the liver (see
    ``TUMOUR_ENHANCEMENT_HU``; the caller enhances the liver itself) and an abdominal
    lymph node is drawn inside a fat sheath.
    """
    if phase == "portal_venous":
        if lesion.organ == "liver":
            kind = "hypodense" if lesion.hu < TISSUE_HU[Tissue.LIVER][0] else "hyperdense"
            lesion = replace(lesion, hu=lesion.hu + TUMOUR_ENHANCEMENT_HU[kind])
        elif lesion.organ == "lymph_node_abdominal":
            sheath = replace(
                lesion, hu=FAT_HU, axes=lesion.axes + NODE_FAT_SHEATH_MM / lesion.growth[study]
            )
            _blend(hu, sheath, grid, body_center, study)
    _blend(hu, lesion, grid, body_center, study)


def _blend(hu: np.ndarray, lesion: Lesion, grid: Grid, body_center: np.ndarray, study: int) -> None:
    axes = lesion.axes_at(study)

    def radius_fn(dirs: np.ndarray) -> np.ndarray:
        return 1.0 / np.sqrt(((dirs / axes) ** 2).sum(-1))

    drawn = blob_occupancy(grid, lesion.center + body_center, radius_fn, float(axes.max()))
    if drawn is not None:
        sl, occ, _ = drawn
        hu[sl] += occ * (np.float32(lesion.hu) - hu[sl])
