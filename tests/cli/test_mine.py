"""``activecad mine``: MAM and NRM with a trained MELD model, rows in DL_info.csv's frame."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.cli.conftest import run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mine_writes_findings_with_their_reasons(tmp_path: Path, lesion_cohort, meld_model) -> None:
    out = tmp_path / "mined.csv"
    # theta 2 takes every proposal of the patient (unit vectors are at most 2 apart) and
    # sigma 0 every expert proposal: both kinds of row appear even for a two-step model
    code, stdout, stderr = run_main(
        "mine", lesion_cohort, "--model", meld_model[0], "--out", out, "--theta", "2",
        "--sigma", "0", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == [
        "File_name", "x1", "y1", "x2", "y2", "score", "reason", "expert", "distance",
        "matched_annotation",
    ]  # fmt: skip
    assert summary["missing_annotations"] == (table.reason == "missing_annotation").sum() > 0
    assert summary["suspicious"] == (table.reason == "suspicious").sum() > 0
    mined = table[table.reason == "missing_annotation"]
    assert (mined.expert == "").all() and (mined.matched_annotation != "").all()
    suspicious = table[table.reason == "suspicious"]
    assert set(suspicious.expert) <= {"lung_nodules", "liver_tumours", "lymph_nodes"}
    # only training patients (Train_Val_Test = 1) are mined, on slices that exist
    info = pd.read_csv(lesion_cohort / "deeplesion" / "DL_info.csv", dtype={"File_name": str})
    train = {
        n.split("_")[0] for n, s in zip(info.File_name, info.Train_Val_Test, strict=True) if s == 1
    }
    assert {n.split("_")[0] for n in table.File_name} <= train
    for name in table.File_name.unique()[:5]:
        series, index = name.rsplit("_", 1)
        assert (lesion_cohort / "deeplesion" / "Images_png" / series / index).is_file()


def test_mine_needs_a_deeplesion_folder(tmp_path: Path, meld_model) -> None:
    out = tmp_path / "m.csv"
    code, _, stderr = run_main("mine", tmp_path, "--model", meld_model[0], "--out", out)
    assert code != 0 and "DL_info.csv" in stderr
    assert not out.exists()
