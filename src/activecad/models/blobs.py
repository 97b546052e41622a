"""Blob candidates: a training-free nodule candidate generator beside the detector.

Why: a detector trained on a few hundred nodules marks the large ones but misses many
3-6 mm ones, and an FP-reduction classifier can only re-score what it is handed. Classical
CAD systems found nodules as bright, roughly spherical spots, and their pooled candidates
were what the LUNA16 challenge handed to its FP-reduction track (Setio et al.,
"Validation, comparison, and combination of algorithms for automatic detection of
pulmonary nodules in computed tomography images: the LUNA16 challenge", Medical Image
Analysis 2017). This module is one such system: the multi-scale Hessian "dot" filter of
Li, Sone & Doi, "Selective enhancement filters for nodules, vessels, and airway walls in
two- and three-dimensional CT scans", Medical Physics 2003.

At each scale sigma the Hessian H of the Gaussian-smoothed image (scale-normalised by
sigma^2) has eigenvalues l1 <= l2 <= l3. A bright blob curves down along all three axes
(l3 < 0) and a vessel along two only, so the dot strength is ``l3^2 / |l1|`` where
l3 < 0 and 0 elsewhere; it is high at a sphere's centre and near 0 along a tube. Its
local maxima inside the lungs, strongest first, are the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import ndimage

from activecad.config import StrictConfig
from activecad.data.preprocess import (
    PreparedScan,
    PreprocessCache,
    PreprocessConfig,
    anterior_posterior_axis,
    lung_components,
)

__all__ = [
    "BlobConfig",
    "blob_candidates",
    "blob_candidates_for_files",
    "blob_grid",
    "dot_strength",
    "lung_mask",
    "merge_candidates",
]


class BlobConfig(StrictConfig):
    """Settings of the blob candidate generator.

    Attributes:
        spacing_mm: the isotropic grid the filter runs on (:func:`blob_candidates_for_files`
            prepares every scan so, whatever grid a detector beside it uses, so training and
            use see the same candidates).
        radii_mm: nodule radii the filter is tuned to (sigma = radius / sqrt(3), where the
            scale-normalised response of a solid sphere peaks).
        min_hu: a candidate's own voxel must be at least this dense (ground glass included).
        lung_hu: voxels below it count as lung or air when the lungs are found.
        close_mm: the lung mask is closed by this much, so juxta-pleural nodules that dent
            it are inside.
        peak_radius_mm: a candidate is the strongest voxel within this distance.
        min_strength: weaker responses are no candidates (the axis of a perfectly uniform
            tube responds at about 1e-6, a flat plateau of equal maxima).
        per_scan: at most this many candidates a scan, strongest first.
    """

    spacing_mm: float = Field(default=1.4, gt=0)
    radii_mm: tuple[float, ...] = (1.5, 2.5, 4.0, 6.0)
    min_hu: float = -800.0
    lung_hu: float = -400.0
    close_mm: float = 6.0
    peak_radius_mm: float = 2.8
    min_strength: float = Field(default=1e-3, ge=0)
    per_scan: int = Field(default=100, ge=1)


def _normalised(hu: float, preprocess: PreprocessConfig) -> float:
    return (hu - preprocess.hu_min) / (preprocess.hu_max - preprocess.hu_min)


def lung_mask(
    scan: PreparedScan, preprocess: PreprocessConfig, config: BlobConfig | None = None
) -> np.ndarray:
    """(Z, Y, X) bool: the lungs with what lies in them (vessels, nodules) and, after a
    closing, what dents their wall (juxta-pleural nodules)."""
    config = config or BlobConfig()
    array = np.asarray(scan.array)
    ap_axis = anterior_posterior_axis(scan.direction)
    dark = lung_components(array, _normalised(config.lung_hu, preprocess), ap_axis=ap_axis)
    steps = max(round(config.close_mm / float(np.min(scan.spacing))), 1)
    closed = ndimage.binary_closing(dark, structure=np.ones((3, 3, 3)), iterations=steps)
    return np.stack([ndimage.binary_fill_holes(axial) for axial in closed | dark])


def dot_strength(
    array: np.ndarray, where: np.ndarray, spacing_zyx: np.ndarray, radii_mm: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The strongest dot response over the scales, and the radius (mm) that gave it.

    Args:
        array: (Z, Y, X) image.
        where: (Z, Y, X) bool; the response is computed there only (elsewhere 0).
        spacing_zyx: (3,) voxel size, mm.
        radii_mm: the scales, as nodule radii.

    Returns:
        (strength, radius_mm), both (Z, Y, X) float32.
    """
    image = np.asarray(array, dtype=np.float32)
    index = np.nonzero(where)
    best = np.zeros(len(index[0]), dtype=np.float32)
    best_radius = np.zeros_like(best)
    for radius in radii_mm:
        sigma = radius / np.sqrt(3.0) / np.asarray(spacing_zyx, dtype=float)
        hessian = np.empty((len(best), 3, 3), dtype=np.float32)
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                # Scale-normalised in mm: d^2/dx_i dx_j of the voxel grid, times sigma^2.
                second = ndimage.gaussian_filter(image, sigma, order=order)[index]
                second *= sigma[i] * sigma[j]
                hessian[:, i, j] = hessian[:, j, i] = second
        low, _, high = np.moveaxis(np.linalg.eigvalsh(hessian), -1, 0)
        strength = np.where(high < 0, high * high / np.maximum(-low, 1e-6), 0.0)
        better = strength > best
        best[better] = strength[better]
        best_radius[better] = radius
    out = np.zeros(image.shape, dtype=np.float32)
    radius_map = np.zeros(image.shape, dtype=np.float32)
    out[index], radius_map[index] = best, best_radius
    return out, radius_map


def blob_candidates(
    scan: PreparedScan, preprocess: PreprocessConfig, config: BlobConfig | None = None
) -> pd.DataFrame:
    """The strongest blobs in the lungs of a preprocessed scan.

    Args:
        scan: the scan on the grid it was prepared on (the detector's grid will do).
        preprocess: how ``scan`` was prepared (its HU window turns the thresholds into
            array values).
        config: generator settings.

    Returns:
        ``seriesuid, coordX, coordY, coordZ`` (world mm), ``blob_strength`` and
        ``diameter_mm`` (twice the radius of the strongest scale), strongest first.
    """
    config = config or BlobConfig()
    array = np.asarray(scan.array, dtype=np.float32)
    spacing_zyx = np.asarray(scan.spacing, dtype=float)[::-1]
    lungs = lung_mask(scan, preprocess, config)
    dense = lungs & (array >= _normalised(config.min_hu, preprocess))
    strength, radius = dot_strength(array, dense, spacing_zyx, config.radii_mm)
    half = np.maximum(np.round(config.peak_radius_mm / spacing_zyx).astype(int), 1)
    peaks = (strength > config.min_strength) & (
        strength == ndimage.maximum_filter(strength, size=2 * half + 1)
    )
    at = np.argwhere(peaks)
    order = np.argsort(-strength[peaks], kind="stable")[: config.per_scan]
    at = at[order]
    world = scan.index_to_world(at.astype(float)) if len(at) else np.zeros((0, 3))
    return pd.DataFrame(
        {
            "seriesuid": scan.seriesuid,
            "coordX": world[:, 0],
            "coordY": world[:, 1],
            "coordZ": world[:, 2],
            "blob_strength": strength[tuple(at.T)].astype(float),
            "diameter_mm": 2.0 * radius[tuple(at.T)].astype(float),
        }
    )


def merge_candidates(
    detections: pd.DataFrame,
    blobs: pd.DataFrame,
    *,
    blob_score: float,
    within_mm: float = 5.0,
) -> pd.DataFrame:
    """The detector's marks plus the blobs no mark already covers.

    A blob within ``within_mm`` of a mark of the same scan is dropped: it would be a second
    candidate for the same spot (a false positive of its own where the spot is no nodule).

    Args:
        blob_score: the detector probability a kept blob is given. Pass the detector's score
            threshold: it scored the spot below that, or not among its top marks, so the
            threshold is the most it can have said there (and the classifier's probability
            then combines with it as with any mark's).

    Returns:
        ``detections``' rows first, with ``source`` "detector", then the kept blobs, with
        ``source`` "blob" and ``probability`` ``blob_score``.
    """
    xyz = ["coordX", "coordY", "coordZ"]
    blobs = blobs.reset_index(drop=True)
    keep = np.ones(len(blobs), dtype=bool)
    marks = dict(tuple(detections.groupby("seriesuid")[xyz]))
    for uid, group in blobs.groupby("seriesuid")[xyz]:
        if uid in marks and len(marks[uid]):
            points, marked = group.to_numpy(float), marks[uid].to_numpy(float)
            nearest = np.linalg.norm(points[:, None] - marked[None], axis=2).min(axis=1)
            keep[blobs.index.get_indexer(group.index)] = nearest > within_mm
    kept = blobs[keep].drop(columns=["blob_strength"], errors="ignore")
    return pd.concat(
        [detections.assign(source="detector"), kept.assign(probability=blob_score, source="blob")],
        ignore_index=True,
    )


def blob_grid(config: BlobConfig | None = None) -> PreprocessConfig:
    """How :func:`blob_candidates_for_files` prepares a scan: ``config.spacing_mm``
    isotropic, the default HU window and lung crop (a cache entry of its own: a detector's
    entry also records the patch size it must not shrink below)."""
    spacing = (config or BlobConfig()).spacing_mm
    return PreprocessConfig(spacing=(spacing, spacing, spacing))


def blob_candidates_for_files(
    paths: Sequence[str | Path],
    cache: PreprocessCache,
    config: BlobConfig | None = None,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`blob_candidates` of each scan file, prepared on :func:`blob_grid` through
    ``cache``."""
    from tqdm import tqdm

    grid = blob_grid(config)
    tables = [
        blob_candidates(cache.load(path, grid), grid, config)
        for path in tqdm(paths, desc="blob candidates", unit="scan", disable=not progress)
    ]
    return pd.concat(tables, ignore_index=True) if tables else blob_candidates_empty()


def blob_candidates_empty() -> pd.DataFrame:
    """An empty table with :func:`blob_candidates`' columns."""
    return pd.DataFrame(
        columns=["seriesuid", "coordX", "coordY", "coordZ", "blob_strength", "diameter_mm"]
    )
