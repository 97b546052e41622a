"""CT volumes on disk: DICOM series and files, MetaImage (.mhd/.raw) and NIfTI.

Every reader returns a :class:`~activecad.io.scan.Scan` in the DICOM patient frame (LPS,
world mm x-y-z) with the HU array indexed (z, y, x). NIfTI files store RAS; SimpleITK
converts them to LPS on read and back on write, so the geometry is the same whichever
format a volume came from.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from rich.console import Console
from rich.progress import track

from activecad.errors import InputError
from activecad.io._checks import check_mhd, check_nifti, first_itk_line, writing
from activecad.io.geometry import voxel_to_world
from activecad.io.scan import Scan

__all__ = [
    "CT_SUFFIXES",
    "is_valid_uid",
    "list_dicom_series",
    "make_uid",
    "no_dicom_error",
    "read_scan",
    "write_dicom_series",
    "write_scan",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: File name endings :func:`read_scan` understands (a folder is read as a DICOM series).
CT_SUFFIXES = (".dcm", ".mhd", ".mha", ".nii", ".nii.gz")

# MetaImage header keys that carry the Scan's identifiers (named after the DICOM attributes).
_MHD_ID_KEYS = {
    "seriesuid": "SeriesInstanceUID",
    "study_id": "StudyInstanceUID",
    "patient_id": "PatientID",
}
# Relative spread of slice gaps tolerated before spacing is reported as uneven; scanners
# write positions with ~0.01 mm rounding.
_SPACING_RTOL = 0.01
_UID_MAX_LEN = 64
_EMPTY_TYPE2 = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
    "PositionReferenceIndicator",
    "KVP",
    "AcquisitionNumber",
)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def is_valid_uid(text: str) -> bool:
    """Whether ``text`` is a valid DICOM UID (digits and dots, at most 64 characters)."""
    if not text or len(text) > _UID_MAX_LEN:
        return False
    parts = text.split(".")
    return all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)


def make_uid(text: str) -> str:
    """Derive a deterministic DICOM UID from any text (the same text gives the same UID).

    Use it to name generated series (``seriesuid=make_uid("phantom-0003")``) so that the
    identifier survives a round trip through DICOM, whose UID fields accept only digits
    and dots.

    Args:
        text: any identifier.

    Returns:
        A valid DICOM UID string of at most 64 characters.
    """
    return str(generate_uid(entropy_srcs=[text]))


def _uid_for(text: str, role: str) -> str:
    if is_valid_uid(text):
        return text
    return make_uid(f"{role}:{text}")


# --------------------------------------------------------------------------- reading


def read_scan(path: str | Path, *, series: str | None = None, progress: bool = False) -> Scan:
    """Read a CT volume from a DICOM folder, a DICOM file, a .mhd/.mha or a .nii/.nii.gz.

    Args:
        path: a folder of DICOM files (searched recursively; non-DICOM files such as
            LIDC XML are ignored), a single ``.dcm`` file, a MetaImage ``.mhd``/``.mha`` or
            a NIfTI ``.nii``/``.nii.gz`` file.
        series: SeriesInstanceUID to read when a folder holds several series; by default
            the series with the most slices is read and a warning says so.
        progress: show a rich progress bar on stderr while a DICOM folder is read.

    Returns:
        The scan: HU array (z, y, x) float32; spacing, origin (x-y-z mm, LPS) and direction.
        ``scan.meta`` holds ``"source"`` (the path), ``"format"`` and ``"warnings"`` (a
        list of messages about missing slices, uneven spacing or the series chosen).

    Raises:
        InputError: the path does not exist, is not a CT format, or the file is corrupt,
            truncated, incomplete or holds NaN voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            "no such file or folder", path=path, fix="Check the path (and the working folder)"
        )
    if path.is_dir():
        return _read_dicom_folder(path, series=series, progress=progress)
    suffix = _suffix(path)
    if suffix in (".mhd", ".mha"):
        return _read_sitk(path, fmt="mhd")
    if suffix in (".nii", ".nii.gz"):
        return _read_sitk(path, fmt="nifti")
    if suffix in (".dcm", ".dicom", ".ima", "") or _looks_like_dicom(path):
        return _read_dicom_file(path)
    raise InputError(
        f"unknown CT file type '{suffix}'",
        path=path,
        fix="Give a DICOM folder or a .dcm, .mhd, .mha, .nii or .nii.gz file",
    )


def _track(items: Sequence[_T], description: str, *, show: bool) -> Iterable[_T]:
    """``items``, with a transient rich progress bar on stderr when ``show``."""
    console = Console(stderr=True)
    # Off a terminal (logs, pipes, tests) a bar only adds blank lines.
    if not show or not console.is_terminal:
        return items
    return track(items, description=description, console=console, transient=True)


def _looks_like_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _check_finite(array: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{int(bad.sum())} voxels are NaN or infinite (first at z,y,x={first})",
            path=path,
            fix="Replace them (e.g. with -1024 HU for air) before reading",
        )


def _read_sitk(path: Path, *, fmt: str) -> Scan:
    if path.suffix.lower() == ".mhd":
        check_mhd(path)
    elif fmt == "nifti":
        check_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"cannot read the {fmt.upper()} file, it is corrupt or truncated "
            f"({first_itk_line(exc)})",
            path=path,
            fix="Re-export or re-download the file",
        ) from exc
    if image.GetDimension() != 3:
        raise InputError(
            f"expected a 3D volume, got {image.GetDimension()}D",
            path=path,
            fix="Give a CT volume (radiographs are read with read_radiograph)",
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}",
            path=path,
            fix="Give a grayscale CT volume (not an RGB or vector image)",
        )
    array = sitk.GetArrayFromImage(image)
    _check_finite(array, path)
    keys = set(image.GetMetaDataKeys())

    def meta_value(key: str) -> str:
        return image.GetMetaData(key).strip() if key in keys else ""

    seriesuid = meta_value(_MHD_ID_KEYS["seriesuid"]) or _stem(path)
    return Scan(
        array=array.astype(np.float32, copy=False),
        spacing=np.array(image.GetSpacing()),
        origin=np.array(image.GetOrigin()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
        seriesuid=seriesuid,
        patient_id=meta_value(_MHD_ID_KEYS["patient_id"]),
        study_id=meta_value(_MHD_ID_KEYS["study_id"]),
        modality="CT",
        meta={"source": str(path), "format": fmt, "warnings": []},
    )


@dataclass
class _SliceHeader:
    path: Path
    seriesuid: str
    rows: int
    columns: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int


def _xyz(header: _SliceHeader) -> np.ndarray:
    """ImagePositionPatient (x, y, z mm), or the origin for a lone slice that has none."""
    return header.position if header.position is not None else np.zeros(3)


def _read_header(path: Path) -> Dataset | None:
    """The DICOM header of ``path``, or ``None`` when the file is not DICOM at all."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except (OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"corrupt or truncated DICOM header ({type(exc).__name__}: {exc})",
            path=path,
            fix="Remove the file or copy it again from the source",
        ) from exc


def _float_list(ds: Dataset, keyword: str) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return np.array([float(v) for v in value], dtype=np.float64)


def _slice_header(path: Path, ds: Dataset) -> _SliceHeader:
    instance = ds.get("InstanceNumber")
    return _SliceHeader(
        path=path,
        seriesuid=str(ds.get("SeriesInstanceUID", "")),
        rows=int(ds.get("Rows", 0)),
        columns=int(ds.get("Columns", 0)),
        position=_float_list(ds, "ImagePositionPatient"),
        orientation=_float_list(ds, "ImageOrientationPatient"),
        instance=int(instance) if instance not in (None, "") else 0,
    )


def list_dicom_series(folder: str | Path) -> dict[str, list[Path]]:
    """Find the image series in a folder of DICOM files.

    Args:
        folder: searched recursively; files that are not DICOM or carry no image (SR,
            presentation states) are skipped.

    Returns:
        SeriesInstanceUID -> files of that series, largest series first.

    Raises:
        InputError: the folder does not exist or a DICOM header is corrupt.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder", path=folder, fix="Give a folder of DICOM files")
    headers = _collect_headers(folder, progress=False)
    return {uid: [h.path for h, _ in headers[uid]] for uid in _rank_series(headers)}


def _collect_headers(
    folder: Path, *, progress: bool
) -> dict[str, list[tuple[_SliceHeader, Dataset]]]:
    """SeriesInstanceUID -> (slice header, dataset without pixels) of each image file."""
    headers: dict[str, list[tuple[_SliceHeader, Dataset]]] = defaultdict(list)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for file in _track(files, "Reading DICOM headers", show=progress):
        ds = _read_header(file)
        if ds is None or "Rows" not in ds:
            logger.debug("skipping %s: not a DICOM image", file)
            continue
        header = _slice_header(file, ds)
        headers[header.seriesuid].append((header, ds))
    return headers


def _rank_series(headers: dict[str, list[tuple[_SliceHeader, Dataset]]]) -> list[str]:
    """Series UIDs, most files first (ties by UID, so the choice is reproducible)."""
    return sorted(headers, key=lambda uid: (-len(headers[uid]), uid))


def no_dicom_error(folder: str | Path) -> InputError:
    """The error for a folder that holds no DICOM image: suggests the scan files it holds.

    ``activecad detect data/ct/`` on LUNA16's folder of ``.mhd`` files is the usual case;
    the message then names the files to pass instead.

    Args:
        folder: the folder that was searched.

    Returns:
        the error to raise.
    """
    folder = Path(folder)
    volumes = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith((".mhd", ".mha", ".nii", ".nii.gz"))
    )
    if volumes:
        return InputError(
            f"this folder holds {len(volumes)} scan file(s) such as {volumes[0]}, "
            "not the DICOM slices of one series",
            path=folder,
            fix=f"Pass the files themselves, e.g. {folder / volumes[0]} "
            f"(or {folder}/*{_suffix(Path(volumes[0]))} for all)",
        )
    return InputError(
        "no DICOM image files found in this folder",
        path=folder,
        fix="Point at the folder that holds the .dcm slices of one series",
    )


def _read_dicom_folder(folder: Path, *, series: str | None, progress: bool) -> Scan:
    headers = _collect_headers(folder, progress=progress)
    if not headers:
        raise no_dicom_error(folder)
    warnings: list[str] = []
    ranked = _rank_series(headers)
    if series is not None:
        if series not in headers:
            listing = ", ".join(f"{uid} ({len(headers[uid])} files)" for uid in ranked)
            raise InputError(
                f"series '{series}' is not in this folder",
                path=folder,
                fix=f"Choose one of: {listing}",
            )
        chosen = series
    else:
        chosen = ranked[0]
        if len(ranked) > 1:
            others = ", ".join(f"{uid} ({len(headers[uid])} files)" for uid in ranked[1:])
            message = (
                f"folder holds {len(ranked)} series; read the largest, {chosen} "
                f"({len(headers[chosen])} files); others: {others}; pick one with --series"
            )
            warnings.append(message)
            logger.warning("%s: %s", folder, message)
    return _stack_slices(headers[chosen], source=folder, warnings=warnings, progress=progress)


def _read_dicom_file(path: Path) -> Scan:
    ds = _read_header(path)
    if ds is None:
        raise InputError(
            "not a DICOM file (no DICOM preamble)",
            path=path,
            fix="Give a DICOM file, a DICOM folder, .mhd or .nii(.gz)",
        )
    if "Rows" not in ds:
        raise InputError(
            "this DICOM file holds no image (no Rows attribute); it may be truncated",
            path=path,
            fix="Give a CT image file, or copy the file again",
        )
    return _stack_slices([(_slice_header(path, ds), ds)], source=path, warnings=[], progress=False)


def _slice_hu(header: _SliceHeader) -> np.ndarray:
    """Decode one slice and rescale it to HU: (rows, columns) float32."""
    path = header.path
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (AttributeError, KeyError) as exc:
        raise InputError(
            "DICOM file has no pixel data", path=path, fix="Remove it from the series folder"
        ) from exc
    except (NotImplementedError, RuntimeError) as exc:
        # pydicom lacks a decoder for this compressed transfer syntax; GDCM (in SimpleITK)
        # decodes JPEG, JPEG-LS and JPEG 2000 and applies the rescale itself.
        return _slice_hu_sitk(path, exc)
    except (ValueError, EOFError, OSError) as exc:
        # pydicom explains at length after " - "; the first clause says what happened.
        reason = str(exc).split(" - ")[0].replace("\n", " ")
        raise InputError(
            f"corrupt or truncated pixel data ({reason})",
            path=path,
            fix="Copy the file again from the source or remove it from the folder",
        ) from exc
    if pixels.ndim != 2:
        raise InputError(
            f"expected one 2D frame per file, got pixel data of shape {pixels.shape}",
            path=path,
            fix="Multi-frame DICOM is not supported; convert it to one file per slice",
        )
    hu = apply_rescale(pixels, ds)
    return np.asarray(hu, dtype=np.float32)


def _slice_hu_sitk(path: Path, cause: Exception) -> np.ndarray:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"cannot decode the pixel data ({cause})".replace("\n", " "),
            path=path,
            fix="Install pylibjpeg or decompress the file (e.g. gdcmconv --raw)",
        ) from exc
    array = sitk.GetArrayFromImage(image)
    return np.asarray(array.reshape(array.shape[-2:]), dtype=np.float32)


def _stack_slices(
    slices: Sequence[tuple[_SliceHeader, Dataset]],
    *,
    source: Path,
    warnings: list[str],
    progress: bool,
) -> Scan:
    slices = _majority_geometry(slices, source=source, warnings=warnings)
    first_header, first_ds = slices[0]
    orientation = first_header.orientation
    if orientation is None or orientation.size != 6:
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        if len(slices) > 1:
            raise InputError(
                "slices have no ImageOrientationPatient, their order cannot be known",
                path=source,
                fix="Export the series again with its geometry tags, or convert it to .mhd",
            )
    else:
        row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)

    ordered = list(slices)
    positions_along = np.zeros(1)
    if len(slices) > 1:
        if any(h.position is None for h, _ in slices):
            raise InputError(
                "some slices have no ImagePositionPatient, their order cannot be known",
                path=source,
                fix="Export the series again with its geometry tags, or convert it to .mhd",
            )
        # Order along the slice normal: file names and InstanceNumber are unreliable.
        ordered.sort(key=lambda item: (float(np.dot(_xyz(item[0]), normal)), item[0].instance))
        positions_along = np.array([float(np.dot(_xyz(h), normal)) for h, _ in ordered])
        ordered, positions_along = _drop_duplicates(ordered, positions_along, warnings, source)

    spacing_z, gap_warnings = _slice_spacing(positions_along, first_ds)
    for message in gap_warnings:
        logger.warning("%s: %s", source, message)
    warnings.extend(gap_warnings)

    origin = _xyz(ordered[0][0])
    if len(ordered) > 1:
        span = _xyz(ordered[-1][0]) - origin
        z_dir = span / np.linalg.norm(span)
        # Gaps were measured along the normal; on a tilted gantry the stack runs obliquely.
        spacing_z /= abs(float(np.dot(z_dir, normal)))
    else:
        z_dir = normal
    direction = np.column_stack([row_dir, col_dir, z_dir])

    pixel_spacing = _float_list(first_ds, "PixelSpacing")
    if pixel_spacing is None or pixel_spacing.size != 2:
        pixel_spacing = np.ones(2)
        warnings.append("no PixelSpacing; assumed 1 mm")
        logger.warning("%s: no PixelSpacing; assumed 1 mm", source)
    # PixelSpacing is (row spacing, column spacing) = (y, x).
    spacing = np.array([pixel_spacing[1], pixel_spacing[0], spacing_z])

    volume = np.empty((len(ordered), first_header.rows, first_header.columns), np.float32)
    for k, (header, _) in enumerate(_track(ordered, "Decoding slices", show=progress)):
        volume[k] = _slice_hu(header)
    _check_finite(volume, source)
    return Scan(
        array=volume,
        spacing=spacing,
        origin=origin,
        direction=direction,
        seriesuid=first_header.seriesuid,
        patient_id=str(first_ds.get("PatientID", "")),
        study_id=str(first_ds.get("StudyInstanceUID", "")),
        modality=str(first_ds.get("Modality", "CT")) or "CT",
        meta={
            "source": str(source),
            "format": "dicom",
            "warnings": warnings,
            "slice_positions_mm": positions_along.tolist(),
            "files": [str(h.path) for h, _ in ordered],
        },
    )


def _geometry_key(header: _SliceHeader) -> tuple[int, int, tuple[float, ...]]:
    orientation = () if header.orientation is None else tuple(np.round(header.orientation, 3))
    return header.rows, header.columns, orientation


def _majority_geometry(
    slices: Sequence[tuple[_SliceHeader, Dataset]], *, source: Path, warnings: list[str]
) -> list[tuple[_SliceHeader, Dataset]]:
    """The slices sharing the most common size and orientation; others are reported.

    Scouts and localizers are often filed under the CT's own SeriesInstanceUID; they
    differ in size or orientation and would scramble the stack.
    """
    groups = Counter(_geometry_key(h) for h, _ in slices)
    if len(groups) == 1:
        return list(slices)
    ranked = groups.most_common()
    listing = ", ".join(
        f"{rows}x{cols} {'oriented ' + str(list(o)) if o else 'without orientation'} ({n} files)"
        for (rows, cols, o), n in ranked
    )
    if ranked[0][1] == ranked[1][1]:
        raise InputError(
            f"slices of series {slices[0][0].seriesuid} differ in size or orientation "
            f"and no kind is the majority: {listing}",
            path=source,
            fix="Remove the odd files (scouts, localizers) from the folder",
        )
    keep = [item for item in slices if _geometry_key(item[0]) == ranked[0][0]]
    dropped = len(slices) - len(keep)
    message = (
        f"skipped {dropped} files whose size or orientation differs from the other "
        f"{len(keep)} slices (scouts or localizers?): {listing}"
    )
    logger.warning("%s: %s", source, message)
    warnings.append(message)
    return keep


def _drop_duplicates(
    ordered: list[tuple[_SliceHeader, Dataset]],
    positions: np.ndarray,
    warnings: list[str],
    source: Path,
) -> tuple[list[tuple[_SliceHeader, Dataset]], np.ndarray]:
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = np.diff(positions) > 1e-3
    if keep.all():
        return ordered, positions
    dropped = [str(ordered[i][0].path.name) for i in np.flatnonzero(~keep)]
    message = (
        f"{len(dropped)} slices share a position with another slice and were skipped "
        f"({', '.join(dropped[:5])}{'...' if len(dropped) > 5 else ''})"
    )
    logger.warning("%s: %s", source, message)
    warnings.append(message)
    return [item for item, k in zip(ordered, keep, strict=True) if k], positions[keep]


def _slice_spacing(positions: np.ndarray, first_ds: Dataset) -> tuple[float, list[str]]:
    """Slice spacing in mm from positions along the normal, plus warnings about gaps."""
    if positions.size < 2:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = first_ds.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value), []
        return 1.0, ["single slice without SliceThickness; assumed 1 mm"]
    gaps = np.diff(positions)
    spacing = float(np.median(gaps))
    messages = []
    missing = np.flatnonzero(gaps > 1.5 * spacing)
    if missing.size:
        count = int(sum(round(gaps[i] / spacing) - 1 for i in missing))
        where = ", ".join(f"after {positions[i]:.2f} mm" for i in missing[:5])
        messages.append(
            f"about {count} missing slices (gaps {where}); spacing {spacing:.4g} mm assumed, "
            "positions beyond a gap are off"
        )
    elif gaps.max() - gaps.min() > _SPACING_RTOL * spacing:
        messages.append(
            f"uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); "
            f"median {spacing:.4g} mm used, resample before measuring"
        )
    return spacing, messages


# --------------------------------------------------------------------------- writing


def _to_sitk(scan: Scan) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(scan.array))
    image.SetSpacing([float(v) for v in scan.spacing])
    image.SetOrigin([float(v) for v in scan.origin])
    image.SetDirection([float(v) for v in scan.direction.reshape(9)])
    return image


def write_scan(scan: Scan, path: str | Path) -> Path:
    """Write a scan as MetaImage (.mhd + uncompressed .raw) or NIfTI (.nii / .nii.gz).

    MetaImage keeps seriesuid, study_id and patient_id as extra header keys
    (``SeriesInstanceUID``, ``StudyInstanceUID``, ``PatientID``); NIfTI has no place for
    them, so name the file ``<seriesuid>.nii.gz`` (the reader takes the seriesuid from the
    file name, as LUNA16 does for .mhd).

    Args:
        scan: the volume; its array is written with its own dtype (float32 for HU).
        path: target file; the suffix picks the format. Parent folders are created.

    Returns:
        The path of the header/image file written.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in (".mhd", ".mha", ".nii", ".nii.gz"):
        raise InputError(
            f"cannot write CT as '{suffix}'",
            path=path,
            fix="Use .mhd, .mha, .nii or .nii.gz (or write_dicom_series for DICOM)",
        )
    image = _to_sitk(scan)
    if suffix in (".mhd", ".mha"):
        for attr, key in _MHD_ID_KEYS.items():
            value = getattr(scan, attr)
            if value:
                image.SetMetaData(key, value)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path), useCompression=False)
    return path


def _uid_from(*parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return str(generate_uid(entropy_srcs=[digest]))


def _ds_number(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as close to ``value`` as fits."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DICOM decimal string")


def write_dicom_series(scan: Scan, folder: str | Path) -> list[Path]:
    """Write a scan as a DICOM CT series, one file per z slice.

    Voxels are rounded to whole HU and stored as signed 16-bit with RescaleSlope 1 and
    RescaleIntercept 0, as scanners do. UIDs are derived from the scan's ids, so writing
    the same scan twice gives byte-identical files. ``seriesuid`` and ``study_id`` are
    kept as given when they are valid DICOM UIDs (see :func:`make_uid`); otherwise a UID
    derived from them is written and read back instead.

    Args:
        scan: the volume, (z, y, x) HU, with geometry in LPS world mm.
        folder: created if needed; files are named ``slice_0000.dcm`` ... in z order.
            ``slice_*.dcm`` files left by an earlier, longer write are removed so the
            folder holds exactly this series; other files are left alone.

    Returns:
        The written files, in array z order.

    Raises:
        ValueError: HU values outside the signed 16-bit range.
    """
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    hu = np.rint(scan.array)
    if hu.size and (hu.min() < -32768 or hu.max() > 32767 or not np.isfinite(hu).all()):
        raise ValueError(
            f"HU values must be finite and fit in int16 to be written as DICOM, "
            f"got range [{hu.min()}, {hu.max()}]"
        )
    pixels = hu.astype(np.int16)
    series_uid = _uid_for(scan.seriesuid or "activecad-series", "series")
    study_uid = _uid_for(scan.study_id or f"study-of:{series_uid}", "study")
    frame_uid = _uid_from("frame", series_uid)
    row_dir, col_dir = scan.direction[:, 0], scan.direction[:, 1]
    orientation = [_ds_number(float(v)) for v in (*row_dir, *col_dir)]
    n_slices = scan.shape[0]
    positions = voxel_to_world(
        np.column_stack([np.arange(n_slices), np.zeros(n_slices), np.zeros(n_slices)]),
        origin=scan.origin,
        spacing=scan.spacing,
        direction=scan.direction,
    )
    written = []
    for k in range(n_slices):
        sop_uid = _uid_from("sop", series_uid, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(_uid_from("activecad-implementation"))
        ds = pydicom.FileDataset(
            str(folder / f"slice_{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128
        )
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = scan.modality or "CT"
        ds.Manufacturer = "activecad"
        ds.PatientID = scan.patient_id
        ds.PatientName = scan.patient_id
        # Type 2 attributes of the CT IOD: present, empty when unknown.
        for keyword in _EMPTY_TYPE2:
            setattr(ds, keyword, "")
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_number(float(v)) for v in positions[k]]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = [_ds_number(float(scan.spacing[1])), _ds_number(float(scan.spacing[0]))]
        ds.SliceThickness = _ds_number(float(scan.spacing[2]))
        ds.SpacingBetweenSlices = _ds_number(float(scan.spacing[2]))
        ds.SliceLocation = _ds_number(float(positions[k][2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = scan.shape[1], scan.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "0"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(pixels[k]).astype("<i2").tobytes()
        out = folder / f"slice_{k:04d}.dcm"
        with writing(out):
            ds.save_as(out, enforce_file_format=True)
        written.append(out)
    stale = sorted(set(folder.glob("slice_*.dcm")) - set(written))
    for path in stale:
        # A leftover slice of a longer earlier write would join this series when read.
        path.unlink()
    if stale:
        logger.info("%s: removed %d slice files of an earlier write", folder, len(stale))
    return written
