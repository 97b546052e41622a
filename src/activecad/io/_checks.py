"""Checks of MetaImage and NIfTI files that ITK does not make, or makes with poor messages.

ITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as 0),
turns NaN voxels of a NIfTI file into 0, and reports a short ``.raw`` file as "No such file
or directory". These checks read the headers themselves so the user hears what is wrong.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from activecad.errors import InputError

# Bytes per element of MetaImage element types (MetaIO's MET_ValueTypeSize).
_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
# NIfTI-1 datatype codes of floating-point voxels -> numpy dtype (byte order added later).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}
_NIFTI1_HEADER = 348
_CHUNK = 1 << 22


def first_itk_line(exc: Exception) -> str:
    """ITK errors span many lines with C++ file names; keep the part a user can act on."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        for marker in ("ITK ERROR:", "sitk::ERROR:"):
            if marker in line:
                message = line.split(marker, 1)[1].strip()
                # Drop the "MetaImageIO(0x55...): " object address ITK puts first.
                head, sep, tail = message.partition("): ")
                return tail if sep and "(0x" in head else message
    return lines[-1] if lines else type(exc).__name__


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn OS and ITK failures while writing ``path`` into one-line :class:`InputError`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        os_reason = exc.strerror if isinstance(exc, OSError) else None
        reason = os_reason or first_itk_line(exc)
        raise InputError(
            f"cannot write ({reason})",
            path=path,
            fix="Check that the folder is writable and the disk is not full",
        ) from exc


def read_mhd_header(path: Path) -> dict[str, str]:
    """The ``key = value`` lines of a MetaImage header (up to ``ElementDataFile``)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(1 << 16)
    except OSError as exc:
        raise InputError(
            f"cannot read the header ({exc.strerror})",
            path=path,
            fix="Check that the file is readable (permissions, a complete copy)",
        ) from exc
    fields: dict[str, str] = {}
    for line in raw.decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields


def check_mhd(path: Path) -> None:
    """Raise :class:`InputError` when a .mhd header is incomplete or its data file missing or short.

    Args:
        path: the ``.mhd`` header (``.mha`` files hold their data and are left to ITK).
    """
    header = read_mhd_header(path)
    data_name = header.get("ElementDataFile")
    if data_name is None:
        raise InputError(
            "header has no 'ElementDataFile' line",
            path=path,
            fix="The .mhd header is incomplete; re-export the volume",
        )
    if data_name.upper() in ("LOCAL", "LIST") or "%" in data_name:
        return
    data_file = path.parent / data_name
    if not data_file.exists():
        raise InputError(
            f"its data file '{data_name}' is missing",
            path=path,
            fix=f"Put {data_name} next to the .mhd header (MetaImage is a pair of files)",
        )
    try:
        n_dims = int(header.get("NDims", "0"))
        dims = [int(v) for v in header.get("DimSize", "").split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
        header_size = int(header.get("HeaderSize", "0"))
    except ValueError as exc:
        raise InputError(
            f"header has a non-integer NDims/DimSize ({exc})", path=path, fix="Fix the header"
        ) from exc
    if len(dims) != n_dims or any(d <= 0 for d in dims):
        raise InputError(
            f"header says NDims = {n_dims} but DimSize = {header.get('DimSize', '')!r}",
            path=path,
            fix="Fix the header so DimSize has NDims positive sizes",
        )
    compressed = header.get("CompressedData", "False").lower() == "true"
    size = _MET_SIZES.get(header.get("ElementType", ""))
    if compressed or size is None or header_size < 0:
        return
    expected = int(np.prod(dims)) * channels * size + header_size
    actual = data_file.stat().st_size
    if actual < expected:
        raise InputError(
            f"data file '{data_name}' holds {actual} bytes but DimSize "
            f"{header.get('DimSize')} of {header.get('ElementType')} needs {expected}; "
            "it is truncated",
            path=path,
            fix="Copy or download the .raw file again",
        )


def check_nifti(path: Path) -> None:
    """Raise :class:`InputError` when a NIfTI-1 file is truncated or holds NaN/inf voxels.

    NIfTI-2 files are left to ITK.

    Args:
        path: ``.nii`` or ``.nii.gz``.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            _scan_nifti(fh, path)  # type: ignore[arg-type]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(
            f"the file is truncated or corrupt ({exc})",
            path=path,
            fix="Copy or download it again",
        ) from exc


def _scan_nifti(fh: BinaryIO, path: Path) -> None:
    header = fh.read(_NIFTI1_HEADER)
    truncated = InputError(
        "the file is truncated (shorter than its header says)",
        path=path,
        fix="Copy or download it again",
    )
    if len(header) < _NIFTI1_HEADER:
        raise truncated
    for order in "<>":
        if struct.unpack(f"{order}i", header[:4])[0] == _NIFTI1_HEADER:
            break
    else:
        return
    dims = struct.unpack(f"{order}8h", header[40:56])
    datatype, bitpix = struct.unpack(f"{order}2h", header[70:74])
    vox_offset = int(struct.unpack(f"{order}f", header[108:112])[0])
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or bitpix <= 0:
        raise InputError(
            f"NIfTI header has dim[0] = {n_dims} and bitpix = {bitpix}",
            path=path,
            fix="The header is corrupt; re-export the volume",
        )
    shape = [max(int(d), 1) for d in dims[1 : n_dims + 1]]
    n_bytes = int(np.prod(shape)) * bitpix // 8
    skip = max(vox_offset - _NIFTI1_HEADER, 0)
    if len(fh.read(skip)) < skip:
        raise truncated
    dtype = _NIFTI_FLOATS.get(datatype)
    item = np.dtype(f"{order}{dtype}") if dtype else None
    chunk = _CHUNK if item is None else _CHUNK - _CHUNK % item.itemsize
    seen = 0
    bad = 0
    first_bad = -1
    while seen < n_bytes:
        block = fh.read(min(chunk, n_bytes - seen))
        if not block or (item is not None and len(block) % item.itemsize):
            raise truncated
        if item is not None:
            values = np.frombuffer(block, dtype=item)
            not_finite = ~np.isfinite(values)
            if not_finite.any():
                if first_bad < 0:
                    first_bad = seen // item.itemsize + int(np.argmax(not_finite))
                bad += int(not_finite.sum())
        seen += len(block)
    if bad:
        # NIfTI stores x fastest, so the flat index unravels over (..., z, y, x).
        where = np.unravel_index(first_bad, shape[::-1])
        raise InputError(
            f"{bad} voxels are NaN or infinite (first at z,y,x={tuple(int(i) for i in where)})",
            path=path,
            fix="Replace them (e.g. with -1024 HU for air) before reading",
        )
