"""Tests of the DeepLesion, LiTS and NIH CT Lymph Nodes readers on tiny hand-made folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.errors import InputError
from activecad.io import Scan, write_png, write_scan, write_table
from activecad.io.lesion_sets import (
    DL_HU_OFFSET,
    find_lits_cases,
    read_deeplesion,
    read_lits_case,
    read_nih_ln,
)


def write_deeplesion(folder: Path, *, slices: range = range(0, 3), size: int = 32) -> None:
    """One series, slices 0-2 of -1000 HU with a 100 HU square on slice 1; one lesion row."""
    for k in slices:
        hu = np.full((size, size), -1000.0)
        if k == 1:
            hu[8:12, 16:20] = 100.0
        write_png(hu + DL_HU_OFFSET, folder / "Images_png" / "000001_01_01" / f"{k:03d}.png")
    row = {
        "File_name": "000001_01_01_001.png",
        "Patient_index": 1,
        "Study_index": 1,
        "Series_ID": 1,
        "Key_slice_index": 1,
        "Measurement_coordinates": (16, 10, 19, 10, 17.5, 8, 17.5, 11),
        "Bounding_boxes": (16, 8, 19, 11),
        "Lesion_diameters_Pixel_": (3, 3),
        "Coarse_lesion_type": 4,
        "Possibly_noisy": 0,
        "Slice_range": (0, 2),
        "Spacing_mm_px_": (1.0, 1.0, 2.0),
        "Image_size": (size, size),
        "Train_Val_Test": 1,
    }
    write_table(pd.DataFrame([row]), folder / "DL_info.csv", "lesions")


def test_deeplesion_reads_table_and_slices(tmp_path: Path) -> None:
    write_deeplesion(tmp_path)
    dl = read_deeplesion(tmp_path)
    assert list(dl.info["series"]) == ["000001_01_01"]
    assert sorted(dl.slices["000001_01_01"]) == [0, 1, 2]
    hu = dl.read_slices("000001_01_01", 0, 2)
    assert hu.shape == (3, 32, 32)
    assert hu[1, 9, 17] == 100.0 and hu[0, 9, 17] == -1000.0


def test_deeplesion_missing_key_slice_names_the_line(tmp_path: Path) -> None:
    write_deeplesion(tmp_path, slices=range(0, 1))
    with pytest.raises(InputError, match=r"DL_info\.csv: line 2: .*000001_01_01/001\.png"):
        read_deeplesion(tmp_path)


def test_deeplesion_image_size_must_match(tmp_path: Path) -> None:
    write_deeplesion(tmp_path, size=24)
    table = pd.read_csv(tmp_path / "DL_info.csv")
    table["Image_size"] = "32, 32"
    table.to_csv(tmp_path / "DL_info.csv", index=False)
    with pytest.raises(InputError, match=r"line 2: Image_size is 32 x 32 but .* is 24 x 24"):
        read_deeplesion(tmp_path)


def test_deeplesion_missing_neighbour_slice(tmp_path: Path) -> None:
    write_deeplesion(tmp_path, slices=range(1, 3))
    dl = read_deeplesion(tmp_path)
    with pytest.raises(InputError, match="slice 0 of series 000001_01_01 is missing"):
        dl.read_slices("000001_01_01", 0, 2)


def _lits_pair(
    folder: Path, labels: np.ndarray, *, shape: tuple[int, int, int] = (4, 6, 6)
) -> None:
    geometry = {"spacing": (0.8, 0.8, 2.0), "origin": (0.0, 0.0, 0.0)}
    write_scan(Scan(np.zeros(shape, np.float32), **geometry), folder / "volume-3.nii")
    write_scan(Scan(labels, **geometry), folder / "segmentation-3.nii")


def test_lits_case_reads_labels(tmp_path: Path) -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1:3, 1:5, 1:5] = 1
    labels[2, 2, 2] = 2
    _lits_pair(tmp_path, labels)
    ((volume, seg),) = find_lits_cases(tmp_path)
    case = read_lits_case(volume, seg)
    assert case.name == "3" and case.labels.dtype == np.uint8
    np.testing.assert_array_equal(case.labels, labels)


def test_lits_shape_mismatch_and_bad_labels(tmp_path: Path) -> None:
    _lits_pair(tmp_path, np.zeros((4, 6, 5), np.uint8))
    with pytest.raises(InputError, match=r"segmentation-3\.nii: label volume is \(4, 6, 5\)"):
        read_lits_case(tmp_path / "volume-3.nii", tmp_path / "segmentation-3.nii")
    _lits_pair(tmp_path, np.full((4, 6, 6), 7, np.uint8))
    with pytest.raises(InputError, match=r"found \[7\]"):
        read_lits_case(tmp_path / "volume-3.nii", tmp_path / "segmentation-3.nii")
    (tmp_path / "segmentation-3.nii").unlink()
    with pytest.raises(InputError, match=r"volume-3\.nii has no segmentation-3 file"):
        find_lits_cases(tmp_path)


def _nih(folder: Path, points: str, sizes: str, *, ct: bool = True) -> Path:
    if ct:
        write_scan(
            Scan(np.zeros((4, 6, 6), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)),
            folder / "ct" / "MED_LYMPH_001.mhd",
        )
    notes = folder / "MED_ABD_LYMPH_ANNOTATIONS" / "MED_LYMPH_001"
    notes.mkdir(parents=True)
    (notes / "MED_LYMPH_001_lymphnodes_physicalPoints.txt").write_text(points)
    (notes / "MED_LYMPH_001_lymphnodes_sizes.txt").write_text(sizes)
    return notes


def test_nih_ln_reads_centres_and_sizes(tmp_path: Path) -> None:
    # TCIA's mediastinal files give one size (short axis); the abdominal ones two.
    _nih(tmp_path, "1.5 2.5 4.0\n\n3 3\t2\n", "12.0\n14, 11\n")
    nih = read_nih_ln(tmp_path)
    assert list(nih.scans) == ["MED_LYMPH_001"]
    nodes = nih.nodes
    np.testing.assert_allclose(nodes[["coordX", "coordY", "coordZ"]], [[1.5, 2.5, 4.0], [3, 3, 2]])
    np.testing.assert_allclose(nodes["short_axis_mm"], [12.0, 11.0])
    np.testing.assert_allclose(nodes["long_axis_mm"], [12.0, 14.0])
    assert nodes["index_x"].isna().all()


def test_nih_ln_bad_files(tmp_path: Path) -> None:
    _nih(tmp_path / "a", "1 2\n", "12\n")
    with pytest.raises(InputError, match=r"physicalPoints\.txt: line 1 holds 2 numbers"):
        read_nih_ln(tmp_path / "a")
    _nih(tmp_path / "b", "1 2 3\n4 5 6\n", "12\n")
    with pytest.raises(InputError, match="different numbers of nodes"):
        read_nih_ln(tmp_path / "b")
    (tmp_path / "c" / "ct").mkdir(parents=True)
    _nih(tmp_path / "c", "1 2 3\n", "12\n", ct=False)
    with pytest.raises(InputError, match="annotations of MED_LYMPH_001 but no CT"):
        read_nih_ln(tmp_path / "c")
