"""``activecad detect`` with a MELD model: DeepLesion folders and CT volumes in, slice boxes out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.cli.detect_meld import _ct_volume
from activecad.data.lesion_slices import DATASETS
from activecad.io import write_scan
from activecad.io.scan import Scan
from activecad.io.tables import read_table
from activecad.models.meld import MeldPreprocessing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detected(tmp_path_factory, lesion_cohort, meld_model) -> tuple[Path, Path, dict]:
    from tests.cli.conftest import run_main, single_thread

    folder = tmp_path_factory.mktemp("detect")
    out, stacked = folder / "lesions.csv", folder / "stacked.csv"
    with single_thread():
        code, stdout, stderr = run_main(
            "detect", lesion_cohort / "deeplesion", "--model", meld_model[0], "--out", out,
            "--stacked", stacked, "--json",
        )  # fmt: skip
    assert code == 0, stderr
    return out, stacked, json.loads(stdout)


def test_deeplesion_folder_gives_a_table_eval_boxes_reads(
    run_cli, tmp_path, lesion_cohort, detected
) -> None:
    out, stacked, summary = detected
    table = read_table(out, "lesion_predictions")
    assert {f"score_{d}" for d in DATASETS} <= set(table.columns)
    assert len(table) == summary["detections"] > 0
    # Every stored slice of the folder was a sample's centre slice.
    images = lesion_cohort / "deeplesion" / "Images_png"
    assert summary["slices"] == len(list(images.glob("*/*.png")))
    # Boxes in pixel-centre coordinates of the 128 x 128 stored slices.
    boxes = table[["x1", "y1", "x2", "y2"]].to_numpy()
    assert boxes.min() >= -0.5 and boxes.max() <= 127.5
    full = lesion_cohort / "deeplesion" / "DL_info_full.csv"
    res = run_cli(
        "eval", "boxes", "--annotations", full, "--predictions", out, "--out", tmp_path / "ev",
        "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    counts = json.loads(res.stdout)["counts"]
    assert counts["lesions"] == len(pd.read_csv(full))
    assert counts["evaluated"] == len(table)  # no detection outside the sub-volumes
    # --stacked gives the 3D boxes eval boxes stacks from the same table.
    key = ["volume", "first_slice", "x1", "y1", "score"]
    ours = pd.read_csv(stacked).sort_values(key).reset_index(drop=True)
    theirs = pd.read_csv(tmp_path / "ev" / "stacked.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)


def test_ct_volume_gives_boxes_of_its_stored_slices(run_cli, tmp_path, lesion_cohort, meld_model):
    scan = next((lesion_cohort / "luna" / "ct").glob("*.mhd"))
    out = tmp_path / "ct.csv"
    res = run_cli("detect", scan, "--model", meld_model[0], "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    table = read_table(out, "lesion_predictions")
    names = table["File_name"].str.rsplit("_", n=1)
    assert set(names.str[0]) == {scan.name.removesuffix(".mhd")}
    assert json.loads(res.stdout)["volumes"] == 1


def test_flipped_volume_boxes_land_on_the_stored_voxels(tmp_path) -> None:
    # Soft tissue (0 HU) under 8 rows of air, which cropping clips to a 4-px border, and a
    # bright cube on stored voxels z 3..5, y 10..13, x 6..9. The direction flips x and z, so
    # the network sees the slices turned; the mapping back must find the stored voxels.
    array = np.zeros((10, 24, 20), np.float32)
    array[:, :8] = -1000.0
    array[3:6, 10:14, 6:10] = 1000.0
    scan = Scan(
        array=array,
        spacing=np.array([1.0, 1.0, 2.0]),
        origin=np.zeros(3),
        direction=np.diag([-1.0, 1.0, -1.0]),
        seriesuid="flipped",
    )
    path = write_scan(scan, tmp_path / "flipped.mhd")
    volume = _ct_volume(path, MeldPreprocessing(pixel_mm=1.0, slice_mm=2.0))
    prepared, to_stored = volume.prepare()
    assert prepared.offset == (4, 0)  # rows 0..3 clipped
    bright = np.argwhere(prepared.array > 0.4)  # (z, row, column); 1000 HU -> 0.49, 0 -> 0.25
    (z0, r0, c0), (z1, r1, c1) = bright.min(axis=0), bright.max(axis=0)
    box = np.array([[c0, r0, c1 + 1, r1 + 1]], dtype=np.float64)  # continuous corners
    stored_box, stored_z = to_stored(box, np.array([z0, z1]))
    # Stored columns 6..9 and rows 10..13: in pixel-centre coordinates (pixel i centred at
    # i) their outer edges lie at 5.5 and 9.5, and 9.5 and 13.5. Prepared slices 4 and 6 are
    # stored slices 10 - 1 - 4 = 5 and 3.
    np.testing.assert_allclose(stored_box, [[5.5, 9.5, 9.5, 13.5]])
    assert stored_z.tolist() == [5, 3]


def test_bad_inputs_are_one_line(run_cli, tmp_path, lesion_cohort, meld_model) -> None:
    model = meld_model[0]
    out = tmp_path / "p.csv"
    cases = [
        (["--uncertainty", tmp_path / "u.csv"], 2, "does not apply to a MELD model"),
        (["--stacked", out], 1, "--stacked and --out name the same file"),
    ]
    for extra, code, expected in cases:
        res = run_cli(
            "detect", lesion_cohort / "deeplesion", "--model", model, "--out", out, *extra
        )
        assert res.exit_code == code and expected in res.stderr, res.stderr
        assert res.stderr.count("error:") == 1 and not out.exists()
    # A folder of slices without their table.
    bare = tmp_path / "bare"
    (bare / "Images_png").mkdir(parents=True)
    res = run_cli("detect", bare, "--model", model, "--out", out)
    assert res.exit_code == 1 and "without DL_info.csv" in res.stderr
    # --stacked is for MELD models.
    res = run_cli("detect", bare, "--model", tmp_path / "none", "--out", out, "--stacked", "s.csv")
    assert res.exit_code == 2 and "applies to MELD models" in res.stderr
    # A MELD model folder that records no preprocessing.
    old = tmp_path / "old_model"
    shutil.copytree(model, old, ignore=shutil.ignore_patterns("epochs", "checkpoint.pt"))
    (old / "preprocess.json").unlink()
    res = run_cli("detect", lesion_cohort / "deeplesion", "--model", old, "--out", out)
    assert res.exit_code == 1 and "preprocess.json is missing" in res.stderr
    assert not out.exists()
