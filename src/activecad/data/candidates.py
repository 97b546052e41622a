"""Nodule candidates: where they come from, how they are labelled, their augmented patches.

A *candidate* is a point in a scan (world mm, x-y-z) that a candidate generator flagged as a
possible nodule: the detector's output (the realistic source; ``activecad detect`` writes
it) or a LUNA16 ``candidates.csv``. It is labelled by the LUNA16 hit rule: a candidate
inside the sphere of an annotated nodule (radius = diameter / 2) is a nodule (1), one
inside an excluded finding's sphere is ignored (-1: neither nodule nor non-nodule, as the
LUNA16 evaluation ignores such marks), every other one is a non-nodule (0).

For classification each candidate becomes ``m`` augmented patches cut from the cached
preprocessed scan; the patches share the candidate's label (Zhou et al., "Active,
continual fine tuning of convolutional neural networks for reducing annotation efforts",
Medical Image Analysis 2021, §4.1.2: several scales, translations of 10 % of the patch,
and the eight rotations/mirrorings of the axial square).

Columns of a candidates table (world mm, LPS):
``seriesuid, coordX, coordY, coordZ`` plus ``det_probability`` (the generator's score; 1
when it gave none), ``label`` (1, 0, -1; after :func:`label_candidates`) and
``nodule_index`` (the position, 0-based, of the ``annotations`` row hit; -1 for none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional

from activecad.data.preprocess import PreparedScan
from activecad.errors import InputError
from activecad.io.tables import DEFAULT_DIAMETER_MM, read_table
from activecad.metrics._froc import same_scan_pairs

__all__ = [
    "XYZ",
    "PatchPlan",
    "candidates_from_annotations",
    "candidates_from_detections",
    "cut_patch",
    "cut_patches",
    "label_candidates",
    "read_candidates",
    "spheres_hit",
    "training_candidates",
]

XYZ = ["coordX", "coordY", "coordZ"]


def read_candidates(path: str | Path) -> pd.DataFrame:
    """Candidates from a LUNA16 ``candidates.csv`` or from ``activecad detect``'s output.

    A table with a ``probability`` column is read as detections (its probability becomes
    ``det_probability``); otherwise as LUNA16 candidates (``class`` is kept as read, but
    labels come from :func:`label_candidates`, so both sources are labelled alike).

    Raises:
        InputError: a missing or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "candidates file does not exist",
            path=path,
            fix="give a LUNA16 candidates.csv or the CSV written by 'activecad detect'",
        )
    header = pd.read_csv(path, nrows=0).columns
    if "probability" in header:
        return candidates_from_detections(read_table(path, "submission"))
    table = read_table(path, "candidates")
    out = table[["seriesuid", *XYZ]].copy()
    out["det_probability"] = 1.0
    return out.reset_index(drop=True)


def candidates_from_detections(detections: pd.DataFrame) -> pd.DataFrame:
    """The detector's marks (``seriesuid, coordX..Z, probability``) as candidates."""
    out = detections[["seriesuid", *XYZ]].copy()
    out["det_probability"] = detections["probability"].to_numpy(dtype=np.float64)
    return out.reset_index(drop=True)


def candidates_from_annotations(annotations: pd.DataFrame) -> pd.DataFrame:
    """Every annotated nodule centre as a candidate (training sets add them, so no nodule
    the generator missed is lost to the classifier)."""
    out = annotations[["seriesuid", *XYZ]].copy()
    out["det_probability"] = 1.0
    return out.reset_index(drop=True)


def spheres_hit(
    point_ids: np.ndarray,
    points: np.ndarray,
    sphere_ids: np.ndarray,
    centres: np.ndarray,
    diameters: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (point, sphere) pair of one scan with the point strictly inside the sphere.

    Args:
        point_ids: (P,) series id of each point.
        points: (P, 3) world mm.
        sphere_ids: (S,) series id of each sphere.
        centres: (S, 3) world mm.
        diameters: (S,) mm; negative means unknown, read as 10 mm (the LUNA16 script's rule).

    Returns:
        (H,) point indices and (H,) sphere indices.
    """
    ids = np.unique(np.concatenate([np.asarray(point_ids, str), np.asarray(sphere_ids, str)]))
    scan_p = np.searchsorted(ids, np.asarray(point_ids, str))
    scan_s = np.searchsorted(ids, np.asarray(sphere_ids, str))
    ip, js = same_scan_pairs(scan_p, scan_s, len(ids))
    d2 = np.sum((np.asarray(points, float)[ip] - np.asarray(centres, float)[js]) ** 2, axis=1)
    diam = np.asarray(diameters, float)
    radii2 = (np.where(diam < 0, DEFAULT_DIAMETER_MM, diam) / 2.0) ** 2
    inside = d2 < radii2[js]
    return ip[inside], js[inside]


def label_candidates(
    candidates: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Add ``label`` (1 nodule, 0 non-nodule, -1 ignored) and ``nodule_index`` by LUNA16's rule.

    A candidate inside an annotated nodule's sphere is a nodule (the closest such nodule
    is its ``nodule_index``) even when it also lies in an excluded finding; one inside
    only an excluded finding's sphere is ignored.
    """
    out = candidates.reset_index(drop=True).copy()
    label = np.zeros(len(out), dtype=np.int64)
    nodule_index = np.full(len(out), -1, dtype=np.int64)
    points = out[XYZ].to_numpy(np.float64)
    uids = out["seriesuid"].astype(str).to_numpy()
    if excluded is not None and len(excluded):
        ip, _ = spheres_hit(
            uids,
            points,
            excluded["seriesuid"].astype(str).to_numpy(),
            excluded[XYZ].to_numpy(np.float64),
            excluded["diameter_mm"].to_numpy(np.float64),
        )
        label[ip] = -1
    if len(annotations):
        centres = annotations[XYZ].to_numpy(np.float64)
        ip, js = spheres_hit(
            uids,
            points,
            annotations["seriesuid"].astype(str).to_numpy(),
            centres,
            annotations["diameter_mm"].to_numpy(np.float64),
        )
        distance = np.linalg.norm(points[ip] - centres[js], axis=1)
        # Farthest first, so the closest nodule's index is written last and kept.
        for k in np.argsort(-distance, kind="stable"):
            label[ip[k]] = 1
            nodule_index[ip[k]] = int(js[k])
    out["label"] = label
    out["nodule_index"] = nodule_index
    return out


def training_candidates(
    candidates: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Labelled candidates for training: the given ones plus every annotated nodule centre,
    ignored ones dropped, with ``diameter_mm`` of the nodule hit (NaN for non-nodules)."""
    table = pd.concat(
        [
            candidates[["seriesuid", *XYZ, "det_probability"]],
            candidates_from_annotations(annotations),
        ],
        ignore_index=True,
    )
    table = label_candidates(table, annotations, excluded)
    table = table[table["label"] >= 0].reset_index(drop=True)
    hit = table["nodule_index"].to_numpy()
    diameters = annotations["diameter_mm"].to_numpy(float)
    table["diameter_mm"] = np.where(
        hit >= 0, diameters[np.maximum(hit, 0)] if len(diameters) else np.nan, np.nan
    )
    return table


@dataclass(frozen=True)
class PatchPlan:
    """How a candidate becomes ``m`` augmented patches.

    Patch ``j`` of a candidate uses scale ``scales[j % len(scales)]``, the ``j % 8``-th of
    the eight rotations/mirrorings of the axial plane, and a translation drawn uniformly
    within ``translate`` of the patch side per axis (from a generator seeded by the
    candidate's seed, so the same candidate always gives the same patches).

    Attributes:
        size: patch side in voxels of the preprocessed grid (cubic).
        m: patches per candidate.
        scales: field-of-view factors; a scale s cuts a cube of side ``s * size`` and
            resamples it to ``size``.
        translate: largest shift of the centre as a share of the patch side.
    """

    size: int = 32
    m: int = 8
    scales: tuple[float, ...] = (1.0, 1.2, 1.5)
    translate: float = 0.1

    def __post_init__(self) -> None:
        if self.size < 4 or self.m < 1 or not self.scales or min(self.scales) <= 0:
            raise ValueError(f"invalid patch plan {self}")


def _dihedral(patch: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) rotation/mirroring of the axial (y, x) plane of (..., Z, Y, X)."""
    out = torch.rot90(patch, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def _cube(array: np.ndarray, centre_zyx: np.ndarray, side: int) -> np.ndarray:
    """A (side, side, side) cube of ``array`` centred at ``centre_zyx``, zero outside."""
    start = np.round(centre_zyx - (side - 1) / 2).astype(int)
    cube = np.zeros((side, side, side), dtype=np.float32)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + side, array.shape)
    if np.any(hi <= lo):
        return cube
    src = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    dst = lo - start
    cube[
        dst[0] : dst[0] + src.shape[0],
        dst[1] : dst[1] + src.shape[1],
        dst[2] : dst[2] + src.shape[2],
    ] = src
    return cube


def cut_patch(
    array: np.ndarray,
    centre_zyx: np.ndarray,
    plan: PatchPlan,
    view: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Augmented view ``view`` (0-based) of one candidate: an (S, S, S) float32 patch.

    Args:
        array: (Z, Y, X) preprocessed scan.
        centre_zyx: (3,) the candidate's continuous index in ``array``.
        plan: patch size and augmentation.
        view: which of the plan's scales and axial rotations/mirrorings.
        rng: source of the translation; None: the plain centred patch (scale 1, no shift,
            no rotation).
    """
    scale = plan.scales[view % len(plan.scales)] if rng is not None else 1.0
    shift = rng.uniform(-plan.translate, plan.translate, 3) * plan.size if rng is not None else 0
    side = max(round(plan.size * scale), 1)
    cube = torch.from_numpy(_cube(array, np.asarray(centre_zyx) + shift, side))
    if side != plan.size:
        cube = functional.interpolate(
            cube[None, None], size=(plan.size,) * 3, mode="trilinear", align_corners=False
        )[0, 0]
    if rng is not None:
        cube = _dihedral(cube, view % 8)
    return cube.numpy()


def cut_patches(
    scan: PreparedScan,
    centres_world: np.ndarray,
    plan: PatchPlan,
    seeds: np.ndarray | None = None,
    *,
    augment: bool = True,
) -> np.ndarray:
    """The ``plan.m`` augmented patches of each candidate of one scan.

    Args:
        scan: the preprocessed scan (from :class:`activecad.data.preprocess.PreprocessCache`).
        centres_world: (N, 3) candidate centres, world mm x-y-z.
        plan: patch size, count and augmentation.
        seeds: (N,) one seed per candidate (default: its row number), so a candidate's
            patches are the same on every call.
        augment: False gives ``m`` copies of the plain centred patch.

    Returns:
        (N, m, 1, S, S, S) float32 patches, array order (z, y, x).
    """
    centres = scan.world_to_index(np.asarray(centres_world, np.float64).reshape(-1, 3))
    seeds = np.arange(len(centres)) if seeds is None else np.asarray(seeds)
    out = np.zeros((len(centres), plan.m, 1, plan.size, plan.size, plan.size), np.float32)
    for i, centre in enumerate(centres):
        rng = np.random.default_rng(int(seeds[i])) if augment else None
        for j in range(plan.m):
            out[i, j, 0] = cut_patch(scan.array, centre, plan, j, rng)
    return out
