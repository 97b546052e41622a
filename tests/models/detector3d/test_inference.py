"""Boxes -> world millimetres, and whole-scan detection on small volumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
from activecad.models.detector3d.inference import (
    SUBMISSION_COLUMNS,
    fuse_models,
    fuse_passes,
    network_input,
    unmirror,
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


def _found(boxes: list[list[float]], scores: list[float], roi: list[float], l_scan: float):
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6),
        scores=torch.tensor(scores),
        roi_losses=torch.tensor(roi),
        l_scan=l_scan,
        l_roi=0.0,
    )


def test_unmirror_maps_a_box_back_along_the_mirrored_axes_only() -> None:
    found = _found([[2, 3, 4, 6, 7, 8]], [0.9], [0.1], 0.0)
    # valid (x, y, z) = (10, 20, 30); along x index i is 9 - i, along z 29 - i (by hand).
    back = unmirror(found, (0, 2), (10, 20, 30))
    assert back.boxes.tolist() == [[3.0, 3.0, 21.0, 7.0, 7.0, 25.0]]
    assert unmirror(back, (0, 2), (10, 20, 30)).boxes.tolist() == found.boxes.tolist()


def test_the_mirrored_input_is_the_scan_mirrored_and_padded_at_the_far_end() -> None:
    array = np.arange(40 * 36 * 33, dtype=np.float32).reshape(40, 36, 33)  # (z, y, x)
    prepared = PreparedScan(array, np.ones(3), np.zeros(3), np.eye(3), "1.2")
    plain = network_input(prepared, (32, 32, 32))[0, 0].numpy()
    mirrored = network_input(prepared, (32, 32, 32), (0, 2))[0, 0].numpy()
    assert mirrored.shape == plain.shape == (64, 64, 64)
    np.testing.assert_array_equal(
        mirrored[:33, :36, :40], np.flip(plain[:33, :36, :40], axis=(0, 2))
    )
    assert not mirrored[33:].any() and not mirrored[:, :, 40:].any()


def test_fuse_passes_on_hand_worked_boxes(tiny_config: DetectorConfig) -> None:
    config = tiny_config.model_copy(update={"nms_thresh": 0.1, "roi_tau": 0.5})
    # Pass A: a box at the origin (0.8) and a second, weaker box on it (0.5: A's own
    # duplicate, not counted), and a far box (0.3). Pass B: the origin box moved one voxel
    # in x (IoU 3/5 with A's), scored 0.4.
    a = _found(
        [[0, 0, 0, 4, 4, 4], [0, 0, 1, 4, 4, 5], [20, 20, 20, 24, 24, 24]],
        [0.8, 0.5, 0.3],
        [1.0, 9.0, 0.5],
        1.0,
    )
    b = _found([[1, 0, 0, 5, 4, 4]], [0.4], [2.0], 3.0)
    fused = fuse_passes([a, b], config)
    # Cluster 1: (0.8 + 0.4) / 2 passes; box and loss weighted 0.8 : 0.4.
    # Cluster 2: the far box alone, 0.3 / 2.
    np.testing.assert_allclose(fused.scores.numpy(), [0.6, 0.15], rtol=1e-6)
    np.testing.assert_allclose(
        fused.boxes.numpy(),
        [[1 / 3, 0, 0, 4 + 1 / 3, 4, 4], [20, 20, 20, 24, 24, 24]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(fused.roi_losses.numpy(), [(0.8 * 1 + 0.4 * 2) / 1.2, 0.5])
    assert fused.l_scan == 2.0
    # Eq. 2 (sum of predicted losses over detections above tau = 0.5): only cluster 1.
    assert fused.l_roi == pytest.approx(4 / 3)


def test_fuse_models_on_hand_worked_marks() -> None:
    def marks(rows: list[tuple[str, float, float, float, float]]) -> pd.DataFrame:
        # (seriesuid, x, probability, diameter) with y = z = 0
        return pd.DataFrame(
            [(uid, x, 0.0, 0.0, p, d) for uid, x, p, d in rows], columns=SUBMISSION_COLUMNS
        )

    # Model A: a 4 mm mark at x = 0 (0.9) and a far one (0.2) in scan "1"; one in scan "2".
    # Model B: the x = 0 mark moved 1 mm (cubes of 4 mm: IoU 3/5), 0.3; nothing in "2".
    a = marks([("1", 0.0, 0.9, 4.0), ("1", 30.0, 0.2, 6.0), ("2", 5.0, 0.5, 8.0)])
    b = marks([("1", 1.0, 0.3, 4.0)])
    fused = fuse_models([a, b], iou_thresh=0.1)
    # Scan 1: (0.9 + 0.3) / 2 at x = (0.9 * 0 + 0.3 * 1) / 1.2; the far mark 0.2 / 2.
    # Scan 2: model A's mark alone, 0.5 / 2.
    assert fused.seriesuid.tolist() == ["1", "1", "2"]
    np.testing.assert_allclose(fused.probability, [0.6, 0.1, 0.25])
    np.testing.assert_allclose(fused.coordX, [0.25, 30.0, 5.0])
    np.testing.assert_allclose(fused.diameter_mm, [4.0, 6.0, 8.0])
    # At IoU > 0.7 the two x = 0 marks are two objects.
    assert len(fuse_models([a, b], iou_thresh=0.7)) == 4
    assert len(fuse_models([a, b], iou_thresh=0.1, most=1)) == 2  # one a scan


def test_fusing_boxes_scored_zero_gives_their_mean_not_nan(tiny_config: DetectorConfig) -> None:
    # With a score threshold of 0 a pass may keep boxes whose probability underflowed to 0:
    # a cluster of them is weighted equally, (0 + 2) / 2 = 1 in x.
    a = _found([[0, 0, 0, 4, 4, 4]], [0.0], [1.0], 1.0)
    b = _found([[2, 0, 0, 6, 4, 4]], [0.0], [3.0], 1.0)
    fused = fuse_passes([a, b], tiny_config.model_copy(update={"nms_thresh": 0.1}))
    np.testing.assert_allclose(fused.boxes.numpy(), [[1, 0, 0, 5, 4, 4]])
    np.testing.assert_allclose(fused.roi_losses.numpy(), [2.0])
    marks = [
        pd.DataFrame([("1", x, 0.0, 0.0, 0.0, 4.0)], columns=SUBMISSION_COLUMNS) for x in (0.0, 2.0)
    ]
    fused_marks = fuse_models(marks, iou_thresh=0.1)
    np.testing.assert_allclose(fused_marks[["coordX", "probability"]], [[1.0, 0.0]])


def test_mirrored_detection_reports_world_rows_within_the_scan(
    tiny_config: DetectorConfig,
) -> None:
    torch.manual_seed(0)
    array = np.random.default_rng(0).normal(-800.0, 50.0, (40, 36, 33)).astype(np.float32)
    scan = Scan(array=array, spacing=(1.0, 1.0, 1.0), origin=(-5.0, 3.0, 7.0), seriesuid="9.9")
    detector = NoduleDetector(tiny_config.model_copy(update={"mirror_tta": True}))
    table = detect_scan(detector, scan).detections
    assert 0 < len(table) <= tiny_config.detections_per_scan
    assert table.probability.is_monotonic_decreasing
    assert table.coordX.between(-5.0 - 1, -5.0 + 33).all()
    assert table.coordZ.between(7.0 - 1, 7.0 + 40).all()
