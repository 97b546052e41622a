"""Whole-scan detection: preprocess, sliding-window network, NMS, boxes -> world mm.

Frames: detections come out as world mm x-y-z centres (LUNA16 ``coordX, coordY, coordZ``),
``diameter_mm`` from the mean edge of the box in mm, and ``probability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from activecad.data.preprocess import PreparedScan, preprocess_scan
from activecad.errors import InputError
from activecad.io.scan import Scan
from activecad.models.detector3d.network import Detections, NoduleDetector

SUBMISSION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
UNCERTAINTY_COLUMNS = ["seriesuid", "l_scan", "L_roi"]


@dataclass
class ScanResult:
    """Detections of one scan in world coordinates, and its uncertainties.

    Attributes:
        detections: rows with :data:`SUBMISSION_COLUMNS` (world mm, x-y-z).
        l_scan: predicted scan-level loss (Eq. 1).
        l_roi: L_RoI (Eq. 2).
    """

    detections: pd.DataFrame
    l_scan: float
    l_roi: float


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
    return ScanResult(detections_to_world(found, prepared), found.l_scan, found.l_roi)


def detect_scan(detector: NoduleDetector, scan: Scan) -> ScanResult:
    """Detect nodules in a CT scan (HU, any spacing and direction).

    Raises:
        InputError: the scan is smaller than the model's patch.
    """
    px, py, pz = detector.config.patch_size
    prepared = preprocess_scan(scan, detector.config.preprocess, min_shape_zyx=(pz, py, px))
    return detect_prepared(detector, prepared)


def detect_files(
    detector: NoduleDetector, paths: Sequence[str | Path], *, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect nodules in scan files; returns (detections, uncertainties) tables.

    Raises:
        InputError: a file cannot be read or is smaller than the model's patch.
    """
    from rich.progress import Progress

    from activecad.io.ct import read_scan

    tables, rows = [], []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("detecting", total=len(paths))
        for path in paths:
            scan = read_scan(path)
            result = detect_scan(detector, scan)
            tables.append(result.detections)
            rows.append((scan.seriesuid, result.l_scan, result.l_roi))
            bar.advance(task)
    detections = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SUBMISSION_COLUMNS)
    )
    return detections, pd.DataFrame(rows, columns=UNCERTAINTY_COLUMNS)
