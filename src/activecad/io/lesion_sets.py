"""Readers of the lesion datasets MELD trains on: DeepLesion, LiTS and NIH CT Lymph Nodes.

LUNA16 folders are read by :func:`activecad.data.folders.read_luna_folder`. Frames:
DeepLesion boxes and slice indices are pixels / slice numbers of its PNG slices as
``DL_info.csv`` gives them; LiTS and NIH-LN volumes are :class:`~activecad.io.scan.Scan`
(arrays z-y-x, world mm x-y-z).

Layouts read:

- DeepLesion: ``DL_info.csv`` (the ``lesions`` table kind of :mod:`activecad.io.tables`)
  beside ``Images_png/<patient>_<study>_<series>/<slice>.png``, 16-bit PNGs holding
  HU + 32768. Slice files are matched by number (``7.png`` and ``007.png`` alike).
- LiTS: ``volume-<i>.nii[.gz]`` with ``segmentation-<i>.nii[.gz]`` (0 background,
  1 liver, 2 tumour), in one folder or in sub-folders (LiTS ships two training batches).
- NIH CT Lymph Nodes (TCIA): ``ct/<patient>.mhd|.mha|.nii[.gz]`` or a DICOM folder
  ``ct/<patient>/``, and ``MED_ABD_LYMPH_ANNOTATIONS/<patient>/<patient>_lymphnodes_*.txt``
  as TCIA ships them: ``physicalPoints`` (world mm ``x y z`` per line), ``indices``
  (voxel ``x y z``, 0-based) and ``sizes`` (one or two axis lengths per line, mm; the
  mediastinal files give the short axis, the abdominal ones short and long). Numbers may
  be separated by spaces, tabs or commas.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from activecad.errors import InputError
from activecad.io.ct import read_scan
from activecad.io.scan import Scan
from activecad.io.tables import read_table

__all__ = [
    "DL_HU_OFFSET",
    "DeepLesionSet",
    "LitsCase",
    "NihLnSet",
    "find_lits_cases",
    "read_deeplesion",
    "read_lits_case",
    "read_nih_ln",
]

logger = logging.getLogger("activecad")

DL_HU_OFFSET = 32768
"""DeepLesion's PNGs store HU + 32768 as uint16."""

LITS_LABELS = (0, 1, 2)
_CT_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")
_NIH_NOTES = "MED_ABD_LYMPH_ANNOTATIONS"


def _series_of(file_name: str) -> str:
    """``000001_01_01_069.png`` -> ``000001_01_01`` (the image folder of the slice)."""
    return file_name.replace("\\", "/").rsplit("/", 1)[-1].rsplit("_", 1)[0]


@dataclass
class DeepLesionSet:
    """A DeepLesion folder: its table and where each slice's PNG is.

    Attributes:
        info: the table (one row per lesion, ``lesions`` kind) plus a ``series`` column
            (``<patient>_<study>_<series>``, the image folder of the row's key slice).
        slices: series -> {slice index -> PNG path}.
        path: the table read.
    """

    info: pd.DataFrame
    slices: dict[str, dict[int, Path]]
    path: Path

    def read_slices(self, series: str, first: int, last: int) -> np.ndarray:
        """HU of slices ``first..last`` (inclusive) of one series.

        Returns:
            (last - first + 1, rows, columns) float32 HU.

        Raises:
            InputError: a slice's PNG is missing, unreadable, or of another size.
        """
        files = self.slices.get(series, {})
        out: list[np.ndarray] = []
        for k in range(first, last + 1):
            if k not in files:
                raise InputError(
                    f"slice {k} of series {series} is missing",
                    path=self.path.parent / "Images_png" / series,
                    fix=f"add {k:03d}.png or narrow the Slice_range that includes it",
                )
            hu = _read_png_hu(files[k])
            if out and hu.shape != out[0].shape:
                raise InputError(
                    f"slice is {hu.shape[1]} x {hu.shape[0]} pixels, the series' first slice "
                    f"{out[0].shape[1]} x {out[0].shape[0]}",
                    path=files[k],
                    fix="re-export the series with one image size",
                )
            out.append(hu)
        return np.stack(out)


def _read_png_hu(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"corrupt or truncated PNG ({exc})", path=path, fix="re-export it"
        ) from exc
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32):
        raise InputError(
            f"expected a 16-bit grayscale PNG, got {array.dtype} of shape {array.shape}",
            path=path,
            fix="store DeepLesion slices as 16-bit PNGs holding HU + 32768",
        )
    return array.astype(np.float32) - DL_HU_OFFSET


def _png_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"corrupt or truncated PNG ({exc})", path=path, fix="re-export it"
        ) from exc


def read_deeplesion(folder: str | Path, *, table: str = "DL_info.csv") -> DeepLesionSet:
    """Read a DeepLesion folder and check that every row's key slice is there.

    Args:
        folder: the folder holding the table and ``Images_png/``.
        table: the table's file name inside ``folder``; ``DL_info_full.csv`` for a
            phantom's evaluation-only full truth.

    Returns:
        The table and the slice files (see :class:`DeepLesionSet`).

    Raises:
        InputError: missing folder, table or ``Images_png/``; a bad table (see
            :func:`~activecad.io.tables.read_table`); a row whose ``File_name`` and
            ``Key_slice_index`` disagree, whose key-slice PNG is missing, or whose
            ``Image_size`` is not the PNG's size; each names the table's line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", path=folder, fix="give the DeepLesion folder")
    path = folder / table
    info = read_table(path, "lesions")
    images = folder / "Images_png"
    if not images.is_dir():
        raise InputError(
            "Images_png/ is missing",
            path=folder,
            fix="put the slices in Images_png/<patient>_<study>_<series>/<slice>.png",
        )
    slices: dict[str, dict[int, Path]] = {}
    for series_dir in sorted(p for p in images.iterdir() if p.is_dir()):
        numbered = {int(p.stem): p for p in series_dir.glob("*.png") if p.stem.isdigit()}
        slices[series_dir.name] = dict(sorted(numbered.items()))
    series = info["File_name"].map(_series_of)
    for position, (name, row) in enumerate(zip(series, info.itertuples(index=False), strict=True)):
        line = position + 2
        key = int(row.Key_slice_index)
        stem = str(row.File_name).rsplit("_", 1)[-1].split(".")[0]
        if not stem.isdigit() or int(stem) != key:
            raise InputError(
                f"line {line}: File_name {row.File_name!r} does not end in Key_slice_index {key}",
                path=path,
                fix="name the key slice <patient>_<study>_<series>_<slice>.png",
            )
        png = slices.get(name, {}).get(key)
        if png is None:
            raise InputError(
                f"line {line}: the key slice Images_png/{name}/{key:03d}.png is missing",
                path=path,
                fix="add the slice, or remove the row",
            )
        size = _png_size(png)
        expected = tuple(int(v) for v in row.Image_size)
        if size != expected:
            raise InputError(
                f"line {line}: Image_size is {expected[0]} x {expected[1]} but "
                f"{png.relative_to(folder)} is {size[0]} x {size[1]} pixels",
                path=path,
                fix="correct Image_size (columns, rows) or the image",
            )
    info = info.assign(series=series.to_numpy())
    return DeepLesionSet(info=info, slices=slices, path=path)


@dataclass
class LitsCase:
    """One LiTS case: the CT and its label volume on the same grid.

    Attributes:
        scan: the CT (HU).
        labels: (Z, Y, X) uint8, 0 background, 1 liver, 2 tumour.
        name: the case's number as text (``"7"`` for ``volume-7.nii``).
    """

    scan: Scan
    labels: np.ndarray
    name: str = ""
    warnings: list[str] = field(default_factory=list)


_LITS_NAME = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def find_lits_cases(folder: str | Path) -> list[tuple[Path, Path]]:
    """Pair every ``volume-<i>`` with its ``segmentation-<i>`` under ``folder``.

    Returns:
        (volume, segmentation) paths, by case number.

    Raises:
        InputError: no volume at all, or a volume without segmentation (or the reverse).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", path=folder, fix="give the LiTS folder")
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for p in sorted(folder.rglob("*.nii*")):
        match = _LITS_NAME.match(p.name)
        if match:
            found[match.group(1)][int(match.group(2))] = p
    if not found["volume"]:
        raise InputError(
            "no volume-<i>.nii[.gz] file", path=folder, fix="give the folder of the LiTS cases"
        )
    for kind, other in (("volume", "segmentation"), ("segmentation", "volume")):
        lonely = sorted(set(found[kind]) - set(found[other]))
        if lonely:
            raise InputError(
                f"{found[kind][lonely[0]].name} has no {other}-{lonely[0]} file",
                path=folder,
                fix=f"add {other}-{lonely[0]}.nii beside it, or remove the case",
            )
    return [(found["volume"][i], found["segmentation"][i]) for i in sorted(found["volume"])]


def read_lits_case(volume: str | Path, segmentation: str | Path) -> LitsCase:
    """Read a LiTS CT and its label volume.

    A label volume whose origin or spacing differs slightly from the CT's (LiTS has a few)
    is taken on the CT's grid, with a warning in ``warnings``.

    Raises:
        InputError: either file unreadable, shapes that differ, or labels other than 0/1/2.
    """
    volume, segmentation = Path(volume), Path(segmentation)
    scan = read_scan(volume)
    seg = read_scan(segmentation)
    if seg.shape != scan.shape:
        raise InputError(
            f"label volume is {seg.shape} (z, y, x) but {volume.name} is {scan.shape}",
            path=segmentation,
            fix="give the segmentation made for this volume",
        )
    values = np.unique(seg.array)
    bad = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in LITS_LABELS]
    if bad:
        raise InputError(
            f"labels must be 0 (background), 1 (liver) or 2 (tumour), found {bad[:5]}",
            path=segmentation,
            fix="give a LiTS label volume",
        )
    warnings = []
    if not (
        np.allclose(seg.spacing, scan.spacing, rtol=1e-3)
        and np.allclose(seg.origin, scan.origin, atol=0.5 * float(scan.spacing.min()))
        and np.allclose(seg.direction, scan.direction, atol=1e-3)
    ):
        warnings.append(
            f"{segmentation.name}: geometry differs from {volume.name}; labels taken on the "
            "CT's voxels"
        )
        logger.warning(warnings[-1])
    name = _LITS_NAME.match(volume.name)
    return LitsCase(
        scan=scan,
        labels=seg.array.astype(np.uint8),
        name=name.group(2) if name else volume.stem,
        warnings=warnings,
    )


@dataclass
class NihLnSet:
    """An NIH CT Lymph Nodes folder.

    Attributes:
        scans: patient -> CT path (file or DICOM folder).
        nodes: one row per node: ``patient``, ``coordX, coordY, coordZ`` (world mm, empty
            without a physicalPoints file), ``index_x, index_y, index_z`` (0-based voxel,
            empty without an indices file), ``short_axis_mm`` and ``long_axis_mm`` (empty
            without a sizes file; equal when one size is given).
    """

    scans: dict[str, Path]
    nodes: pd.DataFrame


def _read_points(path: Path, width: tuple[int, ...]) -> np.ndarray:
    """Rows of numbers, one per non-empty line; each line must hold one of ``width`` counts."""
    rows: list[list[float]] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        parts = [p for p in re.split(r"[\s,;]+", text) if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise InputError(
                f"line {line_no} is not numbers: {text!r}",
                path=path,
                fix="write numbers separated by spaces",
            ) from None
        if len(numbers) not in width or not np.all(np.isfinite(numbers)):
            raise InputError(
                f"line {line_no} holds {len(numbers)} numbers, expected "
                f"{' or '.join(map(str, width))}: {text!r}",
                path=path,
                fix="write one node per line",
            )
        rows.append(numbers + [numbers[-1]] * (max(width) - len(numbers)))
    return np.array(rows, dtype=np.float64).reshape(-1, max(width))


def _nih_scan_paths(ct: Path) -> dict[str, Path]:
    scans: dict[str, Path] = {}
    for p in sorted(ct.iterdir()):
        for suffix in _CT_SUFFIXES:
            if p.name.lower().endswith(suffix):
                scans[p.name[: -len(suffix)]] = p
                break
        else:
            if p.is_dir():
                scans[p.name] = p
    return scans


def read_nih_ln(folder: str | Path) -> NihLnSet:
    """Read an NIH CT Lymph Nodes folder (module docstring): CT paths and node lists.

    A patient without an annotation folder is kept with no nodes (a warning says so); a
    patient with physicalPoints, indices and sizes files must list as many nodes in each.

    Raises:
        InputError: no ``ct/`` or annotation folder, an annotation folder without CT or
            without any node file, a line that is not 3 (points) or 1-2 (sizes) numbers,
            or files of one patient that list different numbers of nodes.
    """
    folder = Path(folder)
    ct = folder / "ct"
    notes = folder / _NIH_NOTES
    for needed, what in ((ct, "the CTs, one per patient"), (notes, "the node lists")):
        if not needed.is_dir():
            raise InputError(
                f"{needed.name}/ is missing", path=folder, fix=f"put {what} in {needed.name}/"
            )
    scans = _nih_scan_paths(ct)
    frames = []
    for patient_dir in sorted(p for p in notes.iterdir() if p.is_dir()):
        patient = patient_dir.name
        if patient not in scans:
            raise InputError(
                f"annotations of {patient} but no CT",
                path=patient_dir,
                fix=f"add ct/{patient}.mhd (or .nii.gz, or a DICOM folder ct/{patient}/)",
            )
        files = {
            kind: patient_dir / f"{patient}_lymphnodes_{kind}.txt"
            for kind in ("physicalPoints", "indices", "sizes")
        }
        tables = {
            kind: _read_points(path, (1, 2) if kind == "sizes" else (3,))
            for kind, path in files.items()
            if path.is_file()
        }
        if "physicalPoints" not in tables and "indices" not in tables:
            raise InputError(
                "no node centres (neither _lymphnodes_physicalPoints.txt nor _indices.txt)",
                path=patient_dir,
                fix=f"add {patient}_lymphnodes_physicalPoints.txt (world mm x y z per line)",
            )
        counts = {kind: len(values) for kind, values in tables.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{files[k].name}: {n}" for k, n in counts.items())
            raise InputError(
                f"the node files list different numbers of nodes ({listed})",
                path=patient_dir,
                fix="give one line per node in each file, in the same order",
            )
        n = next(iter(counts.values()))
        frame = pd.DataFrame({"patient": [patient] * n})
        for kind, columns in (
            ("physicalPoints", ["coordX", "coordY", "coordZ"]),
            ("indices", ["index_x", "index_y", "index_z"]),
        ):
            values = tables.get(kind, np.full((n, 3), np.nan))
            for j, column in enumerate(columns):
                frame[column] = values[:, j]
        sizes = tables.get("sizes", np.full((n, 2), np.nan))
        frame["short_axis_mm"] = sizes.min(axis=1)
        frame["long_axis_mm"] = sizes.max(axis=1)
        frames.append(frame)
    annotated = {p.name for p in notes.iterdir() if p.is_dir()}
    for patient in sorted(set(scans) - annotated):
        logger.warning("%s: no annotation folder; read with no lymph node", scans[patient])
    columns = [
        "patient",
        "coordX",
        "coordY",
        "coordZ",
        "index_x",
        "index_y",
        "index_z",
        "short_axis_mm",
        "long_axis_mm",
    ]
    nodes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return NihLnSet(scans=scans, nodes=nodes[columns])
