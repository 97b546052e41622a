"""``activecad eval boxes``: stacking and both FROC protocols on a case worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from activecad.io import write_table


def _lesion(series: str, key: int, slice_range: tuple[int, int], box: tuple) -> dict:
    x1, y1, x2, y2 = box
    return {
        "File_name": f"{series}_{key:03d}.png",
        "Patient_index": int(series[:6]),
        "Study_index": 1,
        "Series_ID": 1,
        "Key_slice_index": key,
        "Measurement_coordinates": (x1, y1, x2, y2, x1, y2, x2, y1),
        "Bounding_boxes": box,
        "Lesion_diameters_Pixel_": (10, 5),
        "Coarse_lesion_type": 4,
        "Possibly_noisy": 0,
        "Slice_range": slice_range,
        "Spacing_mm_px_": (0.8, 0.8, 2),
        "Image_size": (512, 512),
        "Train_Val_Test": 3,
    }


# Four lesions. Series 1: L1 and L2, whose slice ranges overlap, so one sub-volume 5-18.
# Series 2: L3 (slices 15-25) and L4 (45-55), two sub-volumes. Three sub-volumes in all.
LESIONS = [
    _lesion("000001_01_01", 10, (5, 15), (10, 10, 29, 29)),  # L1
    _lesion("000001_01_01", 12, (8, 18), (60, 60, 69, 69)),  # L2
    _lesion("000002_01_01", 20, (15, 25), (30, 30, 49, 49)),  # L3
    _lesion("000002_01_01", 50, (45, 55), (10, 10, 29, 29)),  # L4
]
# A: one box on slices 9-11 (identical boxes, IoU 1: one 3D box at 0.9) over L1.
# B: an FP on slice 12. C: on L2's slice, [63,60,72,69] against L2's [60,60,69,69]:
#    continuous IoU 6*9 / (81 + 81 - 54) = 0.5, not > 0.5, a miss; pixel IoU
#    7*10 / (100 + 100 - 70) = 7/13, a hit. D: over L3. E: an FP at the top score.
# Not evaluated: slice 30 of series 2 lies between its sub-volumes; series 9 has no lesion.
PREDICTIONS = """File_name,x1,y1,x2,y2,score
000001_01_01_009.png,10,10,29,29,0.5
000001_01_01_010.png,10,10,29,29,0.9
000001_01_01_011.png,10,10,29,29,0.6
000001_01_01_012.png,100,100,119,119,0.8
000001_01_01_012.png,63,60,72,69,0.3
000002_01_01/020.png,30,30,49,49,0.7
000002_01_01/021.png,200,200,210,210,0.95
000002_01_01_030.png,30,30,49,49,0.99
000009_01_01_005.png,30,30,49,49,0.99
"""


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    annotations = tmp_path / "DL_info.csv"
    write_table(pd.DataFrame(LESIONS), annotations, "lesions")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(PREDICTIONS)
    return annotations, predictions


def _run(run_cli, tables, *extra: str | Path):
    annotations, predictions = tables
    return run_cli(
        "eval", "boxes", "--annotations", annotations, "--predictions", predictions, *extra
    )


@pytest.mark.parametrize(
    ("iou", "sensitivities"),
    [
        # 3D boxes by score: E .95 FP, A .9 TP (L1), B .8 FP, D .7 TP (L3), C .3 FP.
        # FPs per sub-volume (3) and sensitivity (4 lesions): (1/3, 0), (1/3, 1/4),
        # (2/3, 1/4), (2/3, 1/2), (1, 1/2). Read at 1/8, 1/4 -> 0; 1/2 -> 1/4; 1 .. 8 -> 1/2.
        ("continuous", [0, 0, 0.25, 0.5, 0.5, 0.5, 0.5]),
        # C hits L2: the curve ends at (2/3, 3/4); at 1 FP and beyond it reads 3/4.
        ("pixel", [0, 0, 0.25, 0.75, 0.75, 0.75, 0.75]),
    ],
)
def test_volume_mode_by_hand(run_cli, tables, iou, sensitivities) -> None:
    res = _run(run_cli, tables, "--iou", iou, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["mode"], out["iou"], out["fps_per"]) == ("volume", iou, "sub-volume")
    assert list(out["sensitivities"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert list(out["sensitivities"].values()) == pytest.approx(sensitivities)
    assert out["average_sensitivity"] == pytest.approx(sum(sensitivities) / 7)
    detected = 3 if iou == "pixel" else 2
    assert out["counts"] == {
        "lesions": 4,
        "detected": detected,
        "tp": detected,
        "fp": 5 - detected,
        "double_hits": 0,
        "images": 3,
        "predictions": 9,
        "evaluated": 7,
        "boxes_3d": 5,
    }
    assert res.stderr.splitlines() == [
        "warning: 1 of 3 identifiers of the predictions are not in the annotations "
        f"({tables[0]}) and are ignored (e.g. '000009_01_01')"
    ]


@pytest.mark.parametrize(("iou", "sensitivity"), [("continuous", 0.5), ("pixel", 0.75)])
def test_key_slice_mode_by_hand(run_cli, tables, iou, sensitivity) -> None:
    # Images: the 4 key slices (10 and 12 of series 1, 20 and 50 of series 2); the boxes
    # on slices 9, 11, 21, 30 and series 9 are left out. Left: A .9 TP (L1), B .8 FP,
    # D .7 TP (L3), C .3 (FP continuous, TP pixel). Continuous: (0, 1/4), (1/4, 1/4),
    # (1/4, 1/2), (1/2, 1/2): 1/2 at 0.5 FPs per key slice and beyond. Pixel: the curve
    # ends at (1/4, 3/4), so 3/4 from 0.5 on.
    res = _run(run_cli, tables, "--mode", "key-slice", "--iou", iou, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["fps_per"] == "key slice"
    assert out["sensitivities"] == {k: pytest.approx(sensitivity) for k in ("0.5", "1", "2", "4")}
    assert out["counts"]["images"] == 4 and out["counts"]["evaluated"] == 4


def test_out_writes_the_summary_the_curve_and_the_stacked_boxes(run_cli, tables, tmp_path):
    res = _run(run_cli, tables, "--iou", "pixel", "--out", tmp_path / "result")
    assert res.exit_code == 0, res.stderr
    assert "average sensitivity = 0.4643" in " ".join(res.stdout.split())
    files = sorted(p.name for p in (tmp_path / "result").iterdir())
    assert files == ["boxes.json", "froc.csv", "stacked.csv"]
    summary = json.loads((tmp_path / "result" / "boxes.json").read_text())
    assert summary["average_sensitivity"] == pytest.approx(3.25 / 7)
    stacked = pd.read_csv(tmp_path / "result" / "stacked.csv")
    # A spans slices 9-11 of the merged sub-volume 5-18 of series 1.
    first = stacked.sort_values("score", ascending=False).iloc[1]
    assert (first["volume"], first["first_slice"], first["last_slice"]) == (
        "000001_01_01:5-18",
        9,
        11,
    )
    assert sorted(stacked["volume"].unique()) == ["000001_01_01:5-18", "000002_01_01:15-25"]
    curve = pd.read_csv(tmp_path / "result" / "froc.csv")
    assert list(curve.columns) == ["fps_per_sub_volume", "sensitivity", "threshold"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("slice9.png,1,1,5,5,0.5", "column 'File_name' holds 'slice9.png' at line 2"),
        ("000001_01_01_010.png,9,1,5,5,0.5", "the box at line 2 has x2 < x1 or y2 < y1"),
        ("000001_01_01_010.png,1,1,5,5,abc", "column 'score' is not numeric"),
    ],
)
def test_bad_predictions_are_one_error_line(run_cli, tables, row, message) -> None:
    tables[1].write_text(f"File_name,x1,y1,x2,y2,score\n{row}\n")
    res = _run(run_cli, tables, "--json")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1
    assert message in res.stderr and str(tables[1]) in res.stderr


def test_predictions_of_other_series_only_are_an_error(run_cli, tables) -> None:
    tables[1].write_text("File_name,x1,y1,x2,y2,score\n000777_01_01_010.png,1,1,5,5,0.5\n")
    res = _run(run_cli, tables)
    assert res.exit_code == 1
    assert "no identifier of the predictions matches" in res.stderr
    assert "'000777_01_01' vs '000001_01_01'" in res.stderr


def test_a_key_slice_outside_its_range_is_an_error(run_cli, tables) -> None:
    bad = [dict(LESIONS[0], Slice_range=(11, 15))]
    write_table(pd.DataFrame(bad), tables[0], "lesions")
    res = _run(run_cli, tables)
    assert res.exit_code == 1
    assert "Key_slice_index 10 lies outside Slice_range [11, 15]" in res.stderr


@pytest.mark.parametrize(("option", "value"), [("--mode", "3d"), ("--iou", "pixels")])
def test_unknown_choices_are_usage_errors(run_cli, tables, option, value) -> None:
    res = _run(run_cli, tables, option, value)
    assert res.exit_code == 2
    assert f"'{option}'" in res.stderr and "activecad eval boxes --help" in res.stderr
