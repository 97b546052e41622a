"""Whole-scan detection: preprocess, sliding-window network, NMS, boxes -> world mm.

Frames: detections come out as world mm x-y-z centres (LUNA16 ``coordX, coordY, coordZ``),
``diameter_mm`` from the mean edge of the box in mm, and ``probability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from activecad.data.preprocess import PreparedScan, PreprocessCache, preprocess_scan
from activecad.errors import InputError
from activecad.io.scan import Scan
from activecad.models.detector3d.loss_prediction import ROI_VARIANTS
from activecad.models.detector3d.network import Detections, NoduleDetector

SUBMISSION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
# L_roi is the configured reading of Eq. 2; the other columns give every reading.
UNCERTAINTY_COLUMNS = ["seriesuid", "l_scan", "L_roi", *(f"L_roi_{v}" for v in ROI_VARIANTS)]


@dataclass
class ScanResult:
    """Detections of one scan in world coordinates, its uncertainties and embedding.

    Attributes:
        detections: rows with :data:`SUBMISSION_COLUMNS` (world mm, x-y-z).
        l_scan: predicted scan-level loss (Eq. 1), pooled over the scan, not the padding.
        l_roi: L_RoI (Eq. 2) in the detector's configured reading.
        l_roi_variants: L_RoI in every reading (:data:`.loss_prediction.ROI_VARIANTS`).
        embedding: (4C,) float32, P2..P5 averaged over the scan's valid region.
    """

    detections: pd.DataFrame
    l_scan: float
    l_roi: float
    l_roi_variants: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def uncertainty_row(self, seriesuid: str) -> tuple[object, ...]:
        """The scan's row of :data:`UNCERTAINTY_COLUMNS`."""
        variants = tuple(self.l_roi_variants.get(v, float("nan")) for v in ROI_VARIANTS)
        return (seriesuid, self.l_scan, self.l_roi, *variants)


def network_input(prepared: PreparedScan, patch_size: Sequence[int]) -> torch.Tensor:
    """The (1, 1, X, Y, Z) network input of a preprocessed scan, zero-padded to multiples of 32.

    Raises:
        InputError: the scan is smaller than the patch along some axis.
    """
    shape_xyz = np.array(prepared.array.shape[::-1])
    if np.any(shape_xyz < np.asarray(patch_size)):
        raise InputError(
            f"scan {prepared.seriesuid or '(no id)'} is {tuple(int(s) for s in shape_xyz)} "
            f"voxels (x, y, z) after resampling, smaller than the model's patch "
            f"{tuple(patch_size)}",
            fix="give a whole chest CT, or train a model with a smaller patch_size",
        )
    padded = -(-shape_xyz // 32) * 32
    volume = np.zeros(tuple(int(p) for p in padded), dtype=np.float32)
    volume[: shape_xyz[0], : shape_xyz[1], : shape_xyz[2]] = np.asarray(prepared.array).transpose(
        2, 1, 0
    )
    return torch.from_numpy(volume)[None, None]


def detections_to_world(detections: Detections, prepared: PreparedScan) -> pd.DataFrame:
    """Map boxes in voxels of the network input (x-y-z) to world centres and diameters.

    Args:
        detections: boxes (N, 6) xmin, ymin, zmin, xmax, ymax, zmax voxels of the input,
            whose voxel (x, y, z) is ``prepared.array[z, y, x]``.
        prepared: the scan the input came from (its grid's geometry).

    Returns:
        rows with :data:`SUBMISSION_COLUMNS`, sorted by probability descending.
    """
    boxes = detections.boxes.detach().cpu().double().numpy().reshape(-1, 6)
    centres_xyz = (boxes[:, :3] + boxes[:, 3:]) / 2
    world = prepared.index_to_world(centres_xyz[:, ::-1]) if len(boxes) else np.zeros((0, 3))
    extent_mm = (boxes[:, 3:] - boxes[:, :3]) * prepared.spacing[None, :]
    return pd.DataFrame(
        {
            "seriesuid": [prepared.seriesuid] * len(boxes),
            "coordX": world[:, 0],
            "coordY": world[:, 1],
            "coordZ": world[:, 2],
            "probability": detections.scores.detach().cpu().double().numpy(),
            "diameter_mm": extent_mm.mean(axis=1),
        },
        columns=SUBMISSION_COLUMNS,
    )


def detect_prepared(detector: NoduleDetector, prepared: PreparedScan) -> ScanResult:
    """Detect nodules in an already preprocessed scan."""
    device = next(detector.network.parameters()).device
    image = network_input(prepared, detector.config.patch_size).to(device)
    detector.eval()
    z, y, x = prepared.array.shape
    found = detector.detect(image, valid_shape=(x, y, z))
    embedding = (
        found.embedding.detach().cpu().numpy().astype(np.float32)
        if found.embedding is not None
        else np.zeros(0, np.float32)
    )
    return ScanResult(
        detections_to_world(found, prepared),
        found.l_scan,
        found.l_roi,
        dict(found.l_roi_variants),
        embedding,
    )


def min_shape_zyx(detector: NoduleDetector) -> tuple[int, int, int]:
    """The smallest preprocessed array (z, y, x) the detector takes: its patch."""
    px, py, pz = detector.config.patch_size
    return pz, py, px


def detect_scan(detector: NoduleDetector, scan: Scan) -> ScanResult:
    """Detect nodules in a CT scan (HU, any spacing and direction).

    Raises:
        InputError: the scan is smaller than the model's patch.
    """
    prepared = preprocess_scan(
        scan, detector.config.preprocess, min_shape_zyx=min_shape_zyx(detector)
    )
    return detect_prepared(detector, prepared)


def detect_files(
    detector: NoduleDetector,
    paths: Sequence[str | Path],
    *,
    progress: bool = True,
    cache: PreprocessCache | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect nodules in scan files; returns (detections, uncertainties) tables.

    Args:
        detector: a trained detector.
        paths: CT scans (.mhd, .nii.gz, DICOM folders).
        progress: show a progress bar on stderr.
        cache: read preprocessed scans from (and add them to) this cache; None to
            preprocess every scan in memory.

    Returns:
        detections (:data:`SUBMISSION_COLUMNS`, world mm) and one row per scan of
        :data:`UNCERTAINTY_COLUMNS`.

    Raises:
        InputError: a file cannot be read or is smaller than the model's patch.
    """
    from activecad.models.detector3d.scoring import score_pool

    tables, rows = [], []
    for result in score_pool(
        detector, list(paths), cache=cache, use_cache=cache is not None, progress=progress
    ):
        tables.append(result.detections)
        rows.append(result.uncertainty_row(result.seriesuid))
    detections = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SUBMISSION_COLUMNS)
    )
    return detections, pd.DataFrame(rows, columns=UNCERTAINTY_COLUMNS)
