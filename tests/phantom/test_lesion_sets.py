"""Tests of the phantom's four lesion datasets: layouts, what each set labels, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from activecad.data.folders import read_luna_folder
from activecad.errors import InputError
from activecad.io import read_scan, world_to_voxel
from activecad.io.lesion_sets import find_lits_cases, read_deeplesion, read_lits_case, read_nih_ln
from activecad.phantom.cohort import generate_patient
from activecad.phantom.lesion_sets import LESION_SETS, write_lesion_sets

# The smallest cohort that still has a DeepLesion test patient (two patients: one train,
# one test) and one patient in each single-type set.
PATIENTS = {"deeplesion": 2, "luna": 1, "lits": 1, "nih_ln": 1}


@pytest.fixture(scope="module")
def lesion_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lesion_sets")
    manifest = write_lesion_sets(out, patients_per_set=PATIENTS, seed=0)
    return out, manifest


def test_four_sets_on_different_patients(lesion_sets: tuple[Path, dict]) -> None:
    out, manifest = lesion_sets
    assert json.loads((out / "manifest.json").read_text()) == manifest
    ids = [p for name in LESION_SETS for p in manifest["patients"][name]]
    assert len(ids) == len(set(ids)) == sum(PATIENTS.values())
    for name in LESION_SETS:
        assert manifest["counts"][name]["patients"] == PATIENTS[name]
        assert manifest["counts"][name].get("lesions", 1) >= 1


def test_deeplesion_is_partially_labelled_with_several_studies(
    lesion_sets: tuple[Path, dict],
) -> None:
    out, manifest = lesion_sets
    partial = read_deeplesion(out / "deeplesion")
    full = read_deeplesion(out / "deeplesion", table="DL_info_full.csv")
    counts = manifest["counts"]["deeplesion"]
    assert len(partial.info) == counts["lesions_labelled"] == int(full.info["labelled"].sum())
    assert 0 < len(partial.info) < len(full.info)
    # The training table leaks nothing of the truth: DeepLesion's own columns and the organ
    # targets MELD's gate takes from LesaNet's tags.
    assert not {"labelled", "lesion_id", "organ", "coordX"} & set(partial.info.columns)
    # Those targets are one-hot by organ; an abdominal node (coarse type 2, "abdomen") is a
    # lymph node to the gate as NIH-LN's nodes are.
    organs = full.info[["organ_lung", "organ_liver", "organ_lymph_node"]].to_numpy()
    assert (organs.sum(axis=1) == 1).all()
    nodes = full.info["organ"].str.startswith("lymph_node").to_numpy()
    assert (organs[:, 2] == nodes).all()
    assert {"organ_lung", "organ_liver", "organ_lymph_node"} <= set(partial.info.columns)
    # Every patient has two or more studies, and a lesion is marked in one study but not
    # in another (what missing-annotation matching recovers).
    studies = full.info.groupby("Patient_index")["Study_index"].nunique()
    assert (studies >= 2).all()
    marks = full.info.groupby(["Patient_index", "lesion_id"])["labelled"].agg(["min", "max"])
    assert ((marks["min"] == 0) & (marks["max"] == 1)).any()
    # Slices are shipped for every lesion's Slice_range, labelled or not, as HU + 32768.
    for row in full.info.itertuples():
        first, last = (int(v) for v in row.Slice_range)
        assert set(range(first, last + 1)) <= set(full.slices[row.series])
    row = full.info.iloc[0]
    hu = full.read_slices(row["series"], int(row["Key_slice_index"]), int(row["Key_slice_index"]))
    assert hu.shape == (1, 128, 128)
    assert hu.min() >= -1024 and hu.max() <= 3071
    # Two patients: one trains, one is held out for testing.
    assert sorted(full.info.groupby("Patient_index")["Train_Val_Test"].first()) == [1, 3]
    # Only RECIST-measurable lesions (long axis >= 10 mm) are in either table.
    assert manifest["measurable_mm"] == 10.0
    assert (full.info["long_axis_mm"] >= 10.0).all()


def test_sub_centimetre_lesions_are_in_no_deeplesion_table_unless_asked(tmp_path: Path) -> None:
    write_lesion_sets(
        tmp_path / "all", patients_per_set={"deeplesion": 2}, seed=0, measurable_mm=0.0
    )
    full = read_deeplesion(tmp_path / "all" / "deeplesion", table="DL_info_full.csv").info
    assert (full["long_axis_mm"] < 10.0).any()
    write_lesion_sets(tmp_path / "default", patients_per_set={"deeplesion": 2}, seed=0)
    kept = read_deeplesion(tmp_path / "default" / "deeplesion", table="DL_info_full.csv").info
    # A patient drawn in both (a patient without a measurable lesion is passed over by the
    # default) keeps exactly its lesions of 10 mm and more.
    both = sorted(set(full["Patient_index"]) & set(kept["Patient_index"]))
    assert both
    expected = full[full["Patient_index"].isin(both) & (full["long_axis_mm"] >= 10.0)]
    assert len(kept[kept["Patient_index"].isin(both)]) == len(expected)


def test_single_type_sets_label_only_their_type(lesion_sets: tuple[Path, dict]) -> None:
    out, manifest = lesion_sets
    counts = manifest["counts"]
    # Each single-type set has lesions of other types in its images, unlabelled.
    assert counts["lits"]["other_lesions_unlabelled"] > 0
    assert counts["nih_ln"]["other_lesions_unlabelled"] > 0

    luna = read_luna_folder(out / "luna")
    assert len(luna.scans) == 1 and len(luna.annotations) == counts["luna"]["lesions"]
    uid = luna.scans[0].name.removesuffix(".mhd")
    index = int(manifest["patients"]["luna"][0].split("-")[1]) - 1
    truth = generate_patient(index, seed=0, n_studies=1).studies[0].nodules
    # Every LUNA annotation is one of the patient's lung nodules (within 2 mm).
    xyz = ["coordX", "coordY", "coordZ"]
    gaps = np.linalg.norm(
        luna.annotations[xyz].to_numpy()[:, None] - truth[xyz].to_numpy()[None], axis=2
    )
    assert (luna.annotations["seriesuid"] == uid).all() and (gaps.min(axis=1) < 2.0).all()

    (volume, seg), *_ = find_lits_cases(out / "lits")
    case = read_lits_case(volume, seg)
    assert set(np.unique(case.labels)) == {0, 1, 2}
    # Tumours lie in the liver: label 2 is surrounded by label 1, not by background.
    tumour = case.labels == 2
    grown = np.zeros_like(tumour)
    grown[:, 1:-1, 1:-1] = tumour[:, :-2, 1:-1] | tumour[:, 2:, 1:-1]
    assert (case.labels[grown & ~tumour] == 1).mean() > 0.6

    nih = read_nih_ln(out / "nih_ln")
    assert list(nih.scans) == ["MED_LYMPH_001"]
    assert len(nih.nodes) == counts["nih_ln"]["lesions"]
    assert (nih.nodes["short_axis_mm"] >= 10.0).all()
    scan = read_scan(nih.scans["MED_LYMPH_001"])
    zyx = world_to_voxel(
        nih.nodes[xyz].to_numpy(),
        origin=scan.origin,
        spacing=scan.spacing,
        direction=scan.direction,
    ).reshape(-1, 3)
    np.testing.assert_allclose(
        np.rint(zyx[:, ::-1]), nih.nodes[["index_x", "index_y", "index_z"]].to_numpy()
    )
    # An enlarged node is soft tissue at its centre (30-50 HU drawn, plus noise).
    centre = np.rint(zyx[0]).astype(int)
    assert -60.0 < scan.array[tuple(centre)] < 140.0


def test_same_seed_same_bytes(lesion_sets: tuple[Path, dict], tmp_path: Path) -> None:
    _, manifest = lesion_sets
    again = write_lesion_sets(tmp_path / "again", patients_per_set=PATIENTS, seed=0)
    assert again["files"] == manifest["files"]


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown lesion set"):
        write_lesion_sets(tmp_path / "a", patients_per_set={"lidc": 1})
    with pytest.raises(InputError, match="non-negative integer"):
        write_lesion_sets(tmp_path / "b", patients_per_set=-1)
    with pytest.raises(InputError, match="measurable_mm must be >= 0"):
        write_lesion_sets(tmp_path / "b2", patients_per_set=1, measurable_mm=-1.0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_lesion_sets(tmp_path / "c", patients_per_set=1)
