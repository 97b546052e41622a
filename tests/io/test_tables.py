"""Annotation tables: columns validated, ids kept as text, lists parsed, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.errors import InputError
from activecad.io import TABLE_SCHEMAS, guess_table_kind, read_table, write_table

# A real LUNA16 seriesuid: 64 characters that a float column would mangle.
LUNA_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"


def _rows(kind: str) -> pd.DataFrame:
    """Two valid rows of each kind."""
    world = {"coordX": [-100.5, 20.0], "coordY": [30.25, -5.0], "coordZ": [-200.0, -150.5]}
    if kind in ("annotations", "excluded"):
        return pd.DataFrame({"seriesuid": [LUNA_UID, "1.2.3"], **world, "diameter_mm": [5.4, -1]})
    if kind == "candidates":
        return pd.DataFrame({"seriesuid": [LUNA_UID, "1.2.3"], **world, "class": [1, 0]})
    if kind == "submission":
        return pd.DataFrame(
            {
                "seriesuid": [LUNA_UID, "1.2.3"],
                **world,
                "probability": [0.9, 0.1],
                "diameter_mm": [6.0, np.nan],
                "label": ["nodule", "nodule"],
            }
        )
    if kind == "readers":
        return pd.DataFrame(
            {
                "seriesuid": [LUNA_UID, LUNA_UID],
                "nodule_id": ["0001", "0001"],
                "reader": ["1", "2"],
                **world,
                "diameter_mm": [8.0, 7.5],
                "malignancy": [4, np.nan],
                "subtlety": [5, np.nan],
                "spiculation": [1, np.nan],
                "lobulation": [2, np.nan],
                "texture": [5, np.nan],
                "calcification": [6, np.nan],
            }
        )
    if kind == "lesions":
        return pd.DataFrame(
            {
                "File_name": ["000001_01_01_109.png", "000002_02_01_014.png"],
                "Patient_index": [1, 2],
                "Study_index": [1, 2],
                "Series_ID": [1, 1],
                "Key_slice_index": [109, 14],
                "Measurement_coordinates": [
                    (233.5, 95.6, 234.7, 197.1, 223.5, 149.4, 248.0, 146.6),
                    (10, 20, 30, 40, 15, 35, 25, 25),
                ],
                "Bounding_boxes": [(218.5, 90.6, 252.9, 202.1), (5, 15, 35, 45)],
                "Lesion_diameters_Pixel_": [(101.5, 24.7), (28.3, 14.1)],
                "Coarse_lesion_type": [3, -1],
                "Possibly_noisy": [0, 1],
                "Slice_range": [(103, 115), (8, 20)],
                "Spacing_mm_px_": [(0.78, 0.78, 5), (0.7, 0.7, 1.25)],
                "Image_size": [(512, 512), (512, 512)],
                "Train_Val_Test": [1, 3],
            }
        )
    if kind == "lesion_predictions":
        return pd.DataFrame(
            {
                "File_name": ["000001_01_01_109.png", "000001_01_01/110.png"],
                "x1": [218.5, 220],
                "y1": [90.6, 92],
                "x2": [252.9, 250],
                "y2": [202.1, 200],
                "score": [0.93, 0.4],
            }
        )
    if kind == "cxr_boxes":
        return pd.DataFrame(
            {
                "image_id": ["00000001", "00000002"],
                "x1": [10, 200.5],
                "y1": [20, 300],
                "x2": [40, 260],
                "y2": [55, 350],
                "label": ["nodule", "mass"],
            }
        )
    return pd.DataFrame({"image_id": ["00000001", "00000002"], "label": [1, 0]})


@pytest.mark.parametrize("kind", list(TABLE_SCHEMAS))
def test_round_trip_every_kind(tmp_path: Path, kind: str) -> None:
    table = _rows(kind)
    write_table(table, tmp_path / "t.csv", kind)
    back = read_table(tmp_path / "t.csv", kind)
    assert list(back.columns) == list(table.columns)
    for column in table.columns:
        if column in TABLE_SCHEMAS[kind].lists:
            for got, want in zip(back[column], table[column], strict=True):
                np.testing.assert_allclose(got, want)
        elif column in TABLE_SCHEMAS[kind].numeric:
            np.testing.assert_allclose(back[column].to_numpy(float), table[column].to_numpy(float))
        else:
            assert back[column].astype(str).tolist() == table[column].astype(str).tolist()


def test_ids_stay_text(tmp_path: Path) -> None:
    write_table(_rows("readers"), tmp_path / "r.csv", "readers")
    back = read_table(tmp_path / "r.csv", "readers")
    assert back["seriesuid"].iloc[0] == LUNA_UID
    assert back["nodule_id"].iloc[0] == "0001"


def test_lesion_lists_are_written_as_in_deeplesion(tmp_path: Path) -> None:
    write_table(_rows("lesions"), tmp_path / "DL_info.csv", "lesions")
    text = (tmp_path / "DL_info.csv").read_text()
    # DL_info.csv writes list cells as quoted comma-separated numbers.
    assert '"0.78, 0.78, 5"' in text
    assert '"218.5, 90.6, 252.9, 202.1"' in text
    back = read_table(tmp_path / "DL_info.csv", "lesions")
    assert back["Spacing_mm_px_"].iloc[0] == (0.78, 0.78, 5.0)


def test_extra_columns_are_kept_after_the_schema_columns(tmp_path: Path) -> None:
    table = _rows("annotations").assign(reader_count=[4, 3])
    table = table[["reader_count", *TABLE_SCHEMAS["annotations"].required]]
    write_table(table, tmp_path / "a.csv", "annotations")
    back = read_table(tmp_path / "a.csv", "annotations")
    assert list(back.columns)[-1] == "reader_count"
    assert back["reader_count"].tolist() == [4, 3]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "table.csv"
    path.write_text(text)
    return path


def test_missing_column_names_file_column_and_expected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "seriesuid,coordX,coordY,diameter_mm\n1.2.3,1,2,4\n")
    with pytest.raises(InputError) as info:
        read_table(path, "annotations")
    message = str(info.value)
    assert str(path) in message
    assert "missing column 'coordZ'" in message
    assert "Expected columns: seriesuid, coordX, coordY, coordZ, diameter_mm" in message


def test_misspelled_column_is_suggested(tmp_path: Path) -> None:
    path = _csv(tmp_path, "seriesuid,coordx,coordY,coordZ,diameter_mm\n1.2.3,1,2,3,4\n")
    with pytest.raises(InputError, match="found 'coordx': rename it"):
        read_table(path, "annotations")


def test_non_numeric_coordinate_names_column_and_line(tmp_path: Path) -> None:
    text = "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,2,3,4\n1.2.3,1,12mm,3,4\n"
    with pytest.raises(InputError, match=r"column 'coordY' is not numeric: '12mm' at line 3"):
        read_table(_csv(tmp_path, text), "annotations")


def test_empty_cell_where_not_allowed(tmp_path: Path) -> None:
    text = "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,2,,4\n"
    with pytest.raises(InputError, match="column 'coordZ' is empty at line 2"):
        read_table(_csv(tmp_path, text), "annotations")


def test_rating_outside_lidc_scale(tmp_path: Path) -> None:
    table = _rows("readers")
    table.loc[1, "malignancy"] = 7
    with pytest.raises(InputError, match=r"'malignancy' holds 7 at line 3, outside 1\.\.5"):
        write_table(table, tmp_path / "r.csv", "readers")


def test_list_cell_with_wrong_count(tmp_path: Path) -> None:
    table = _rows("lesions")
    table.loc[0, "Bounding_boxes"] = "1, 2, 3"
    with pytest.raises(InputError, match="'Bounding_boxes' needs 4 comma-separated numbers"):
        write_table(table, tmp_path / "l.csv", "lesions")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the file is empty"):
        read_table(_csv(tmp_path, ""), "candidates")
    with pytest.raises(InputError, match="no such file"):
        read_table(tmp_path / "absent.csv", "candidates")


def test_unknown_kind_suggests_the_nearest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'annotations'"):
        read_table("x.csv", "anotations")


@pytest.mark.parametrize("kind", list(TABLE_SCHEMAS))
def test_kind_is_guessed_from_the_header(kind: str) -> None:
    columns = list(_rows(kind).columns)
    expected = "annotations" if kind == "excluded" else kind  # same columns: cannot tell
    assert guess_table_kind(columns) == expected


def test_guess_uses_the_file_name_for_luna16_excluded_and_gives_up_on_strangers() -> None:
    columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert guess_table_kind(columns, file_name="annotations_excluded.csv") == "excluded"
    # Three of five annotation columns: close enough to report the missing ones.
    assert guess_table_kind(["seriesuid", "coordX", "coordY"]) == "annotations"
    assert guess_table_kind(["patient", "study", "date"]) is None


@pytest.mark.parametrize("literal", ["nan", "NaN", "NA", "null"])
def test_a_literal_nan_is_a_wrong_value_not_an_empty_cell(tmp_path: Path, literal: str) -> None:
    # pandas reads these as missing; they used to be reported as "is empty", a wrong hint.
    path = tmp_path / "annotations.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,{literal},3,4\n")
    with pytest.raises(InputError, match=f"column 'coordY' is not numeric: '{literal}' at line 2"):
        read_table(path, "annotations")


def test_an_id_that_reads_like_nan_is_kept_as_text(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nNA,1,2,3,4\n")
    assert read_table(path, "annotations")["seriesuid"].tolist() == ["NA"]


def test_an_empty_cell_is_still_reported_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,,3,4\n")
    with pytest.raises(InputError, match="column 'coordY' is empty at line 2"):
        read_table(path, "annotations")
