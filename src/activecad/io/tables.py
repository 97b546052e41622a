"""Annotation tables (CSV), read and written with their columns validated.

Kinds and the frame of each column (``TABLE_SCHEMAS`` holds them):

- ``annotations`` / ``excluded``: LUNA16 ``annotations.csv`` / ``annotations_excluded.csv``;
  ``coordX, coordY, coordZ`` world mm (LPS, x-y-z), ``diameter_mm`` mm (LUNA16 writes -1
  for some excluded findings).
- ``candidates``: LUNA16 ``candidates.csv``; world mm plus ``class`` (1 nodule, 0 not).
- ``submission``: detections, LUNA16 submission columns; world mm and ``probability``,
  optional ``diameter_mm`` and ``label``.
- ``readers``: LIDC-style one row per reader per nodule; world mm, ``diameter_mm`` mm and
  the LIDC ratings (malignancy, subtlety, spiculation, lobulation, texture 1-5;
  calcification 1-6), empty where a reader gave none (nodules < 3 mm). From LIDC files
  without images (:mod:`activecad.io.lidc`) ``coordX, coordY`` are empty and the optional
  ``pixel_x, pixel_y`` give the pixel column/row; ``diameter_mm`` is -1 for point marks.
- ``lesions``: DeepLesion ``DL_info.csv``-style. ``File_name`` is
  ``<patient>_<study>_<series>_<slice>.png``; ``Key_slice_index`` the key slice's index
  in the series, as in the file name (activecad's phantom counts from 0 along the array's
  z axis; check where a real DL_info.csv starts before mixing the two);
  ``Measurement_coordinates`` (8 numbers) the RECIST long-axis then short-axis end points
  as x, y pixels of the key slice; ``Bounding_boxes`` (4) x1, y1, x2, y2 pixels of the key
  slice; ``Lesion_diameters_Pixel_`` (2) long and short RECIST diameters in pixels;
  ``Normalized_lesion_location`` (3) x, y, z in [0, 1] of the body; ``Slice_range`` (2)
  first and last slice index of the volume around the key slice; ``Spacing_mm_px_`` (3)
  x, y, z mm; ``Image_size`` (2) columns, rows; ``DICOM_windows`` (2) low, high HU.
  List-valued cells are written as comma-separated numbers, as in the real file, and read
  back as tuples of floats.
- ``lesion_predictions``: 2D detections on the slices of DeepLesion-style series, one row
  per box. ``File_name`` names the slice as ``lesions`` does,
  ``<patient>_<study>_<series>_<slice>.png`` (or the image path
  ``<patient>_<study>_<series>/<slice>.png``); ``x1, y1`` the top-left and ``x2, y2`` the
  bottom-right corner in pixels of that slice (x = column, y = row), ``score`` the
  detection score.
- ``cxr_boxes``: chest-radiograph boxes in pixels of the image, ``x1, y1`` the top-left
  and ``x2, y2`` the bottom-right corner (x = column, y = row), with a ``label``.
- ``cxr_labels``: image-level labels, ``image_id, label`` plus any extra label columns.

Identifier columns are read as text so long UIDs and leading zeros survive. Columns not in
a schema are kept.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.errors import InputError
from activecad.io._checks import writing

DEFAULT_DIAMETER_MM = 10.0
"""Diameter the LUNA16 evaluation script assumes for a finding whose diameter is negative
(unknown; LUNA16's ``annotations_excluded.csv`` writes -1). Evaluation and training read
such findings with this diameter alike."""

__all__ = [
    "TABLE_SCHEMAS",
    "TableSchema",
    "format_number_list",
    "guess_table_kind",
    "read_table",
    "write_table",
]


@dataclass(frozen=True)
class TableSchema:
    """The columns of one kind of table.

    Attributes:
        required: columns that must be present, in the order they are written.
        optional: columns that may be present (written after the required ones).
        text: identifier/label columns read as strings.
        numeric: columns that must hold numbers.
        nullable: columns that may hold empty cells (every other known column may not).
        lists: list-valued columns -> how many numbers each cell holds.
        ranges: numeric columns -> inclusive (low, high) allowed values.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()
    lists: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the schema knows, required first."""
        return self.required + self.optional


_WORLD = ("coordX", "coordY", "coordZ")
_LIDC_RATINGS = ("malignancy", "subtlety", "spiculation", "lobulation", "texture")

TABLE_SCHEMAS: dict[str, TableSchema] = {
    "annotations": TableSchema(
        required=("seriesuid", *_WORLD, "diameter_mm"),
        text=("seriesuid",),
        numeric=(*_WORLD, "diameter_mm"),
    ),
    "excluded": TableSchema(
        required=("seriesuid", *_WORLD, "diameter_mm"),
        text=("seriesuid",),
        numeric=(*_WORLD, "diameter_mm"),
    ),
    "candidates": TableSchema(
        required=("seriesuid", *_WORLD, "class"),
        text=("seriesuid",),
        numeric=(*_WORLD, "class"),
        ranges={"class": (0, 1)},
    ),
    "submission": TableSchema(
        required=("seriesuid", *_WORLD, "probability"),
        optional=("diameter_mm", "label"),
        text=("seriesuid", "label"),
        numeric=(*_WORLD, "probability", "diameter_mm"),
        nullable=("diameter_mm", "label"),
    ),
    "readers": TableSchema(
        required=(
            "seriesuid",
            "nodule_id",
            "reader",
            *_WORLD,
            "diameter_mm",
            *_LIDC_RATINGS,
            "calcification",
        ),
        # LIDC files without images give pixel centres, world z and no world x/y (empty).
        optional=(
            "sphericity",
            "margin",
            "internal_structure",
            "mark",
            "reader_mark_id",
            "pixel_x",
            "pixel_y",
        ),
        text=("seriesuid", "nodule_id", "reader", "mark", "reader_mark_id"),
        numeric=(
            *_WORLD,
            "diameter_mm",
            *_LIDC_RATINGS,
            "calcification",
            "sphericity",
            "margin",
            "internal_structure",
            "pixel_x",
            "pixel_y",
        ),
        nullable=(
            "coordX",
            "coordY",
            "diameter_mm",
            *_LIDC_RATINGS,
            "calcification",
            "sphericity",
            "margin",
            "internal_structure",
            "pixel_x",
            "pixel_y",
        ),
        ranges={
            **{r: (1, 5) for r in _LIDC_RATINGS},
            "calcification": (1, 6),
            "sphericity": (1, 5),
            "margin": (1, 5),
            "internal_structure": (1, 4),
        },
    ),
    "lesions": TableSchema(
        required=(
            "File_name",
            "Patient_index",
            "Study_index",
            "Series_ID",
            "Key_slice_index",
            "Measurement_coordinates",
            "Bounding_boxes",
            "Lesion_diameters_Pixel_",
            "Coarse_lesion_type",
            "Possibly_noisy",
            "Slice_range",
            "Spacing_mm_px_",
            "Image_size",
            "Train_Val_Test",
        ),
        optional=(
            "Normalized_lesion_location",
            "DICOM_windows",
            "Patient_gender",
            "Patient_age",
        ),
        text=("File_name", "Patient_gender"),
        numeric=(
            "Patient_index",
            "Study_index",
            "Series_ID",
            "Key_slice_index",
            "Coarse_lesion_type",
            "Possibly_noisy",
            "Train_Val_Test",
            "Patient_age",
        ),
        nullable=("Normalized_lesion_location", "DICOM_windows", "Patient_gender", "Patient_age"),
        lists={
            "Measurement_coordinates": 8,
            "Bounding_boxes": 4,
            "Lesion_diameters_Pixel_": 2,
            "Normalized_lesion_location": 3,
            "Slice_range": 2,
            "Spacing_mm_px_": 3,
            "Image_size": 2,
            "DICOM_windows": 2,
        },
        # DeepLesion: -1 = type unknown (test set only labelled), 1..8 = bone .. body.
        ranges={"Coarse_lesion_type": (-1, 8), "Possibly_noisy": (0, 1), "Train_Val_Test": (1, 3)},
    ),
    "lesion_predictions": TableSchema(
        required=("File_name", "x1", "y1", "x2", "y2", "score"),
        text=("File_name",),
        numeric=("x1", "y1", "x2", "y2", "score"),
    ),
    "cxr_boxes": TableSchema(
        required=("image_id", "x1", "y1", "x2", "y2", "label"),
        text=("image_id", "label"),
        numeric=("x1", "y1", "x2", "y2"),
    ),
    "cxr_labels": TableSchema(
        required=("image_id", "label"),
        text=("image_id",),
    ),
}


def _schema(kind: str) -> TableSchema:
    if kind not in TABLE_SCHEMAS:
        close = difflib.get_close_matches(kind, TABLE_SCHEMAS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown table kind '{kind}'; valid kinds: {', '.join(TABLE_SCHEMAS)}.{hint}"
        )
    return TABLE_SCHEMAS[kind]


def guess_table_kind(columns: Sequence[str], *, file_name: str = "") -> str | None:
    """The table kind whose columns best fit a CSV header, or ``None`` if none is close.

    A kind whose required columns are all present wins; among those, the one that knows
    the most of the columns (so a submission with ``probability`` and ``diameter_mm`` is
    not taken for annotations). Failing that, the kind sharing the largest fraction (at
    least half) of its required columns, which :func:`read_table` will then report as
    missing a column. LUNA16's annotations and annotations_excluded share their columns;
    a file name containing "excluded" picks the latter.

    Args:
        columns: the header's column names.
        file_name: the CSV's file name, used only to tell excluded from annotations.

    Returns:
        A key of ``TABLE_SCHEMAS``, or ``None`` when fewer than half the required columns
        of every kind are present.
    """
    present = set(columns)

    def fit(kind: str) -> tuple[bool, float, int]:
        schema = TABLE_SCHEMAS[kind]
        shared = sum(c in present for c in schema.required)
        known = sum(c in present for c in schema.columns)
        return shared == len(schema.required), shared / len(schema.required), known

    # max() keeps the first of equal kinds, so "annotations" wins over "excluded".
    best = max(TABLE_SCHEMAS, key=fit)
    if fit(best)[1] < 0.5:
        return None
    if best == "annotations" and "exclud" in file_name.lower():
        return "excluded"
    return best


def _line(position: int) -> int:
    """File line of data row ``position`` (0-based) in a CSV with one header line."""
    return position + 2


def _parse_number_list(cell: object, expected: int) -> tuple[float, ...] | None:
    if isinstance(cell, tuple | list | np.ndarray):
        values = tuple(float(v) for v in cell)
    else:
        text = str(cell).strip().strip("[]()")
        values = tuple(float(v) for v in text.split(","))
    if len(values) != expected:
        return None
    return values


def format_number_list(values: object) -> str:
    """Write a list of numbers as DeepLesion does: ``"0.66, 0.66, 5"``."""
    if isinstance(values, str):
        return values
    parts = []
    for v in np.asarray(values, dtype=np.float64).reshape(-1):
        parts.append(str(int(v)) if float(v).is_integer() else repr(float(v)))
    return ", ".join(parts)


def _validate(df: pd.DataFrame, schema: TableSchema, kind: str, path: Path) -> pd.DataFrame:
    expected = ", ".join(schema.required)
    missing = [c for c in schema.required if c not in df.columns]
    if missing:
        unknown = [str(c) for c in df.columns if c not in schema.columns]
        close = difflib.get_close_matches(missing[0], unknown, n=1)
        hint = f" (found '{close[0]}': rename it)" if close else ""
        raise InputError(
            f"{kind} table is missing column '{missing[0]}'{hint}",
            path=path,
            fix=f"Expected columns: {expected}",
        )
    df = df.copy()
    for column in schema.columns:
        if column not in df.columns:
            continue
        values = df[column]
        empty = values.isna() | values.astype(str).str.strip().eq("")
        if column not in schema.nullable and empty.any():
            first = int(np.flatnonzero(empty.to_numpy())[0])
            raise InputError(
                f"column '{column}' is empty at line {_line(first)}",
                path=path,
                fix=f"Fill in every '{column}' value",
            )
        if column in schema.numeric:
            df[column] = _to_numeric(values, empty, column, path)
            low_high = schema.ranges.get(column)
            if low_high is not None:
                numbers = df[column].to_numpy(dtype=np.float64)
                bad = ~empty.to_numpy() & ((numbers < low_high[0]) | (numbers > low_high[1]))
                if bad.any():
                    first = int(np.flatnonzero(bad)[0])
                    raise InputError(
                        f"column '{column}' holds {numbers[first]:g} at line "
                        f"{_line(first)}, outside {low_high[0]:g}..{low_high[1]:g}",
                        path=path,
                        fix=f"Use values from {low_high[0]:g} to {low_high[1]:g}",
                    )
        elif column in schema.lists:
            df[column] = _to_lists(values, empty, column, schema.lists[column], path)
        elif column in schema.text:
            df[column] = values.astype(str).where(~empty, None)
    return df


def _to_numeric(values: pd.Series, empty: pd.Series, column: str, path: Path) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() & ~empty.to_numpy()
    bad |= np.isinf(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"column '{column}' is not numeric: '{values.iloc[first]}' at line {_line(first)}",
            path=path,
            fix=f"Write '{column}' as plain numbers (decimal point '.', no units)",
        )
    return numbers


def _to_lists(
    values: pd.Series,
    empty: pd.Series,
    column: str,
    expected: int,
    path: Path,
) -> pd.Series:
    parsed: list[tuple[float, ...] | None] = []
    for position, (cell, is_empty) in enumerate(zip(values, empty, strict=True)):
        if is_empty:
            parsed.append(None)
            continue
        try:
            item = _parse_number_list(cell, expected)
        except (TypeError, ValueError):
            item = None
        if item is None or not np.all(np.isfinite(item)):
            raise InputError(
                f"column '{column}' needs {expected} comma-separated numbers, got "
                f"'{cell}' at line {_line(position)}",
                path=path,
                fix=f"Write '{column}' as e.g. \"{', '.join(['1'] * expected)}\"",
            )
        parsed.append(item)
    return pd.Series(parsed, index=values.index, dtype=object)


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read an annotation CSV and validate its columns.

    Args:
        path: the CSV file (header line + one row per item).
        kind: one of ``TABLE_SCHEMAS`` (``"annotations"``, ``"excluded"``,
            ``"candidates"``, ``"submission"``, ``"readers"``, ``"lesions"``,
            ``"lesion_predictions"``, ``"cxr_boxes"``, ``"cxr_labels"``); the module
            docstring gives each column's frame.

    Returns:
        One row per CSV row; identifier columns as text, numeric columns as numbers,
        list-valued columns (``lesions``) as tuples of floats; unknown columns kept as read.

    Raises:
        InputError: missing file, unreadable CSV, missing column, non-numeric value or an
            empty cell where one is not allowed; the message names the file, the column and
            the first bad line.
        ValueError: ``kind`` is not a known kind.
    """
    path = Path(path)
    schema = _schema(kind)
    if not path.exists():
        raise InputError("no such file", path=path, fix="Check the path")
    if path.is_dir():
        raise InputError(
            "expected a CSV file, got a folder",
            path=path,
            fix="Pass the .csv file inside it",
        )
    try:
        # Ids as text: LUNA16 UIDs would lose digits as floats, patient ids their zeros.
        # Only an empty cell is missing: a literal "nan" or "NA" is a value, and a wrong one
        # in a numeric column is reported as such (not as "empty").
        df = pd.read_csv(
            path,
            dtype={c: str for c in (*schema.text, *schema.lists)},
            skipinitialspace=True,
            keep_default_na=False,
            na_values=[""],
        )
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            "the file is empty",
            path=path,
            fix=f"Write a header line: {','.join(schema.required)}",
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"not a readable CSV ({message})", path=path, fix="Check quoting and delimiters"
        ) from exc
    return _validate(df, schema, kind, path)


def write_table(df: pd.DataFrame, path: str | Path, kind: str) -> None:
    """Validate a table and write it as CSV (schema columns first, extra columns after).

    Args:
        df: the table; list-valued ``lesions`` columns may hold sequences or strings.
        path: target CSV; parent folders are created.
        kind: one of ``TABLE_SCHEMAS``.

    Raises:
        InputError: the table lacks a required column or holds bad values (``path`` names
            the file that would have been written).
        ValueError: ``kind`` is not a known kind.
    """
    path = Path(path)
    schema = _schema(kind)
    checked = _validate(df.reset_index(drop=True), schema, kind, path)
    ordered = [c for c in schema.columns if c in checked.columns]
    ordered += [c for c in checked.columns if c not in ordered]
    out = checked[ordered].copy()
    for column in schema.lists:
        if column in out.columns:
            out[column] = [None if v is None else format_number_list(v) for v in out[column]]
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
