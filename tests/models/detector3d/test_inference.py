"""Boxes -> world millimetres, and whole-scan detection on small volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activecad.data import PreparedScan
from activecad.errors import InputError
from activecad.io.scan import Scan
from activecad.models.detector3d import (
    Detections,
    DetectorConfig,
    NoduleDetector,
    detect_scan,
    detections_to_world,
)

# Array axis x points to world +y, axis y to world -x, axis z to world +z (columns).
ROTATED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_a_box_maps_to_the_world_point_of_its_voxel() -> None:
    prepared = PreparedScan(
        array=np.zeros((20, 20, 20), dtype=np.float32),
        spacing=np.array([0.5, 2.0, 3.0]),
        origin=np.array([10.0, -20.0, 30.0]),
        direction=ROTATED,
        seriesuid="1.2.3",
    )
    # Box centred on voxel x=4, y=5, z=6, 2 voxels wide on each axis.
    found = Detections(
        boxes=torch.tensor([[3.0, 4.0, 5.0, 5.0, 6.0, 7.0]]),
        scores=torch.tensor([0.8]),
        roi_losses=torch.tensor([0.1]),
        l_scan=0.0,
        l_roi=0.0,
    )
    table = detections_to_world(found, prepared)
    # By hand: origin + 4*0.5*(0,1,0) + 5*2*(-1,0,0) + 6*3*(0,0,1) = (0, -18, 48).
    row = table.iloc[0]
    assert (row.coordX, row.coordY, row.coordZ) == pytest.approx((0.0, -18.0, 48.0))
    # Edges of 2 voxels are 1, 4 and 6 mm; their mean is 11/3 mm.
    assert row.diameter_mm == pytest.approx(11 / 3)
    assert row.probability == pytest.approx(0.8)
    assert row.seriesuid == "1.2.3"


def test_a_scan_smaller_than_the_patch_is_a_clear_error(tiny_config: DetectorConfig) -> None:
    scan = Scan(array=np.zeros((16, 40, 40), np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    with pytest.raises(InputError, match="smaller than the model's patch"):
        detect_scan(NoduleDetector(tiny_config), scan)


def test_detect_scan_reports_uncertainties_and_world_rows(tiny_config: DetectorConfig) -> None:
    torch.manual_seed(0)
    array = np.full((40, 36, 33), -800.0, dtype=np.float32)
    scan = Scan(array=array, spacing=(1.0, 1.0, 1.0), origin=(-5.0, 3.0, 7.0), seriesuid="9.9")
    result = detect_scan(NoduleDetector(tiny_config), scan)
    table = result.detections
    assert list(table.columns) == [
        "seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"
    ]  # fmt: skip
    assert (table.seriesuid == "9.9").all()
    # The input is padded from 33 to 64 voxels in x; no detection may come from the padding
    # (boxes are clipped to the scan, whose last voxel edge lies one voxel past its centre).
    assert table.coordX.between(-5.0, -5.0 + 33).all()
    assert table.coordY.between(3.0, 3.0 + 36).all()
    assert np.isfinite(result.l_scan)
    assert result.l_roi >= 0
