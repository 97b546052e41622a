"""``activecad info PATH``: what a CT, a chest radiograph or an annotation table holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import typer
from pydicom.errors import InvalidDicomError

from activecad.cli._common import usage_error
from activecad.errors import InputError
from activecad.io import TABLE_SCHEMAS, guess_table_kind, read_radiograph, read_scan, read_table
from activecad.io.scan import Radiograph, Scan

# Modalities of projection images; any other DICOM file is read as a CT slice.
_PROJECTION_MODALITIES = {"CR", "DX", "DR", "MG", "RG", "PX", "IO"}


def _is_radiograph(path: Path) -> bool:
    if path.is_dir():
        return False
    suffix = path.suffix.lower()
    if suffix == ".png":
        return True
    if suffix in (".mhd", ".mha", ".nii", ".gz"):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
        # Let read_scan report what is wrong with the file.
        return False
    return str(ds.get("Modality", "")).upper() in _PROJECTION_MODALITIES


def _warnings(scan: Scan) -> list[str]:
    """The reader's warnings about the scan (missing slices, series chosen, ...)."""
    warnings = scan.meta.get("warnings", [])
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


def _stats(array: np.ndarray) -> dict[str, float]:
    return {
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean(dtype=np.float64)),
    }


def scan_info(scan: Scan) -> dict[str, object]:
    """Summarise a CT scan as JSON-ready values.

    Args:
        scan: the scan to describe.

    Returns:
        ``kind`` ("ct"), ``format``, ``size_xyz`` (voxels), ``spacing_xyz_mm``,
        ``origin_xyz_mm`` (world mm, LPS), ``direction`` (3 x 3, column i = array axis i in
        x-y-z), ``modality``, ``hu`` (min/max/mean), ``seriesuid``, ``patient_id``,
        ``study_id`` and ``warnings``.
    """
    z, y, x = scan.shape
    return {
        "kind": "ct",
        "path": scan.meta.get("source", ""),
        "format": scan.meta.get("format", ""),
        "size_xyz": [x, y, z],
        "spacing_xyz_mm": scan.spacing.tolist(),
        "origin_xyz_mm": scan.origin.tolist(),
        "direction": scan.direction.tolist(),
        "modality": scan.modality,
        "hu": _stats(scan.array),
        "seriesuid": scan.seriesuid,
        "patient_id": scan.patient_id,
        "study_id": scan.study_id,
        "warnings": _warnings(scan),
    }


def radiograph_info(radiograph: Radiograph) -> dict[str, object]:
    """Summarise a radiograph as JSON-ready values.

    Args:
        radiograph: the image to describe.

    Returns:
        ``kind`` ("radiograph"), ``format``, ``size_xy`` (pixels), ``bits``,
        ``spacing_xy_mm``, ``intensity`` (min/max/mean after rescale, window and
        MONOCHROME1 inversion), ``image_id``, ``patient_id``.
    """
    y, x = radiograph.array.shape
    return {
        "kind": "radiograph",
        "path": radiograph.meta.get("source", ""),
        "format": radiograph.meta.get("format", ""),
        "size_xy": [int(x), int(y)],
        "bits": radiograph.bits,
        "spacing_xy_mm": radiograph.spacing.tolist(),
        "intensity": _stats(radiograph.array),
        "image_id": radiograph.image_id,
        "patient_id": radiograph.patient_id,
    }


def read_image(path: Path, *, series: str | None = None) -> Scan | Radiograph:
    """Read ``path`` as a radiograph (PNG, projection DICOM) or else as a CT."""
    if not path.exists():
        raise InputError("no such file or folder", path=path, fix="Check the path")
    if _is_radiograph(path):
        if series is not None:
            raise InputError(
                "--series applies to DICOM folders, not radiographs",
                path=path,
                fix="Leave --series out",
            )
        return read_radiograph(path)
    return read_scan(path, series=series, progress=True)


def table_info(path: Path, *, kind: str | None = None) -> dict[str, object]:
    """Validate an annotation CSV and summarise it as JSON-ready values.

    Args:
        path: the CSV file.
        kind: a key of ``TABLE_SCHEMAS``; guessed from the header (and, for LUNA16's
            excluded annotations, the file name) when ``None``.

    Returns:
        ``kind`` ("table"), ``table_kind`` (``None`` for a CSV of no known kind, which is
        then only counted, not validated), ``rows``, ``columns`` and, where the table has
        them, the number of distinct ``seriesuid`` / ``image_id`` values.

    Raises:
        InputError: unknown kind, unreadable CSV or invalid columns (see ``read_table``).
    """
    if kind is None:
        kind = guess_table_kind(_csv_header(path), file_name=path.name)
    elif kind not in TABLE_SCHEMAS:
        raise InputError(
            f"unknown table kind '{kind}'", fix=f"Use one of: {', '.join(TABLE_SCHEMAS)}"
        )
    table = read_table(path, kind) if kind is not None else _read_any_csv(path)
    summary: dict[str, object] = {
        "kind": "table",
        "path": str(path),
        "table_kind": kind,
        "rows": len(table),
        "columns": [str(c) for c in table.columns],
    }
    for column in ("seriesuid", "image_id"):
        if column in table.columns:
            summary[f"distinct_{column}"] = int(table[column].nunique())
    return summary


def _csv_header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError):
        # read_table or _read_any_csv will say what is wrong with the file.
        return []


def _read_any_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            "the file is empty", path=path, fix="Write a header line and one row per item"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            "not a readable CSV", path=path, fix="Check quoting and delimiters"
        ) from exc


def _fmt(values: np.ndarray, digits: int) -> str:
    return ", ".join(f"{float(v):.{digits}g}" for v in np.asarray(values).reshape(-1))


def _fmt_stats(array: np.ndarray) -> str:
    stats = _stats(array)
    return f"{stats['min']:.6g} / {stats['max']:.6g} / {stats['mean']:.6g}"


def _print_rows(rows: list[tuple[str, str]]) -> None:
    # Plain aligned lines: a rich table would cut 64-character UIDs to the terminal width.
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")


def _print_table_summary(summary: dict[str, object]) -> None:
    kind = summary["table_kind"]
    columns = summary["columns"]
    rows = [
        ("path", str(summary["path"])),
        ("table kind", str(kind) if kind else "unknown (not validated; pass --kind)"),
        ("rows", str(summary["rows"])),
        ("columns", ", ".join(columns) if isinstance(columns, list) else str(columns)),
    ]
    rows += [
        (name.replace("_", " "), str(value))
        for name, value in summary.items()
        if name.startswith("distinct_")
    ]
    _print_rows(rows)


def _print_human(image: Scan | Radiograph) -> None:
    if isinstance(image, Scan):
        z, y, x = image.shape
        rows = [
            ("path", str(image.meta.get("source", ""))),
            ("format", str(image.meta.get("format", ""))),
            ("modality", image.modality),
            ("size (x, y, z)", f"{x} x {y} x {z}"),
            ("spacing (x, y, z mm)", _fmt(image.spacing, 6)),
            ("origin (x, y, z mm)", _fmt(image.origin, 7)),
            ("direction (rows)", " | ".join(_fmt(r, 4) for r in image.direction)),
            ("HU min / max / mean", _fmt_stats(image.array)),
            ("seriesuid", image.seriesuid or "-"),
            ("patient_id", image.patient_id or "-"),
            ("study_id", image.study_id or "-"),
        ]
        rows += [("warning", w) for w in _warnings(image)]
    else:
        y, x = image.array.shape
        rows = [
            ("path", str(image.meta.get("source", ""))),
            ("format", str(image.meta.get("format", ""))),
            ("size (x, y)", f"{x} x {y}"),
            ("bits", str(image.bits)),
            ("spacing (x, y mm)", _fmt(image.spacing, 6)),
            ("intensity min / max / mean", _fmt_stats(image.array)),
            ("image_id", image.image_id or "-"),
            ("patient_id", image.patient_id or "-"),
        ]
    _print_rows(rows)


def _check_kind(value: str | None) -> str | None:
    if value is not None and value not in TABLE_SCHEMAS:
        raise usage_error(
            f"unknown table kind {value!r}; choose one of {', '.join(TABLE_SCHEMAS)}",
            option="--kind",
        )
    return value


def register(app: typer.Typer) -> None:
    """Add ``activecad info`` to ``app``."""

    @app.command("info")
    def info(
        path: Path = typer.Argument(
            ...,
            help="CT (DICOM folder or file, .mhd, .nii/.nii.gz), radiograph (.png, .dcm) "
            "or annotation table (.csv).",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
        series: str | None = typer.Option(
            None, "--series", help="SeriesInstanceUID to read when a folder holds several."
        ),
        kind: str | None = typer.Option(
            None,
            "--kind",
            callback=_check_kind,
            help=f"Table kind of a .csv ({', '.join(TABLE_SCHEMAS)}); guessed when left out.",
        ),
    ) -> None:
        """Show size, spacing, origin, direction, modality, HU range and ids of an image.

        A .csv is validated as an annotation table and its kind, rows and columns shown.
        """
        if path.suffix.lower() == ".csv":
            if not path.exists():
                raise InputError("no such file", path=path, fix="Check the path")
            summary = table_info(path, kind=kind)
            if json_out:
                typer.echo(json.dumps(summary))
            else:
                _print_table_summary(summary)
            return
        image = read_image(path, series=series)
        if json_out:
            summary = scan_info(image) if isinstance(image, Scan) else radiograph_info(image)
            typer.echo(json.dumps(summary))
        else:
            _print_human(image)
