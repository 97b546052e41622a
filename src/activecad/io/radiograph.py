"""Chest radiographs on disk: 8/16-bit grayscale PNG and DICOM (CR/DX).

Every reader returns a :class:`~activecad.io.scan.Radiograph` whose array is (y, x) with
larger values brighter (the MONOCHROME2 convention), whatever the file stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import ArrayLike
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from activecad.errors import InputError
from activecad.io._checks import writing
from activecad.io.scan import Radiograph

__all__ = ["RADIOGRAPH_SUFFIXES", "read_radiograph", "write_png", "write_radiograph_dicom"]

#: File name endings :func:`read_radiograph` understands.
RADIOGRAPH_SUFFIXES = (".png", ".dcm")

# Digital X-Ray Image Storage - For Presentation.
_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def read_radiograph(path: str | Path) -> Radiograph:
    """Read a chest radiograph from a grayscale PNG (8 or 16 bit) or a DICOM file.

    DICOM pixels go through the modality LUT (RescaleSlope/Intercept) and the VOI LUT or
    window (WindowCenter/WindowWidth) where the file has them; MONOCHROME1 images (white
    = low values) are inverted so that larger is always brighter.

    Args:
        path: ``.png`` or ``.dcm`` file.

    Returns:
        The radiograph: (y, x) float32 array, spacing (x, y) mm (1.0 when the file does not
        say), ``image_id`` = file name stem (as the CXR tables use it), bits = 8 or 16 (of
        the stored data).

    Raises:
        InputError: missing, unreadable, corrupt or non-grayscale file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path, fix="Check the path")
    if path.is_dir():
        raise InputError(
            "expected a radiograph file, got a folder",
            path=path,
            fix="Pass one .png or .dcm file of the folder",
        )
    if path.suffix.lower() == ".png":
        return _read_png(path)
    return _read_dicom(path)


def _read_png(path: Path) -> Radiograph:
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
            dpi = image.info.get("dpi")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"corrupt or truncated PNG ({exc})", path=path, fix="Re-export the image"
        ) from exc
    if array.ndim == 3:
        channels = array[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise InputError(
                f"expected a grayscale image, got colour mode '{mode}'",
                path=path,
                fix="Save the radiograph as 8- or 16-bit grayscale PNG",
            )
        array = channels[..., 0]
    bits = 8 if array.dtype == np.uint8 else 16
    spacing = np.ones(2)
    if dpi:
        # PNG stores pixels per metre, which PIL reports as dots per inch.
        spacing = np.array([25.4 / float(dpi[0]), 25.4 / float(dpi[1])])
    return Radiograph(
        array=array.astype(np.float32),
        spacing=spacing,
        image_id=path.stem,
        bits=bits,
        meta={"source": str(path), "format": "png", "mode": mode},
    )


def _read_dicom(path: Path) -> Radiograph:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise InputError(
            "not a PNG or DICOM file", path=path, fix="Give a .png or a DICOM radiograph"
        ) from exc
    except (OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"corrupt or truncated DICOM ({type(exc).__name__}: {exc})",
            path=path,
            fix="Copy the file again from the source",
        ) from exc
    try:
        stored = ds.pixel_array
    except (AttributeError, KeyError) as exc:
        raise InputError(
            "DICOM file holds no image",
            path=path,
            fix="Pass the DICOM file of the radiograph itself (not a report or a structured set)",
        ) from exc
    except (ValueError, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise InputError(
            f"cannot decode the pixel data ({exc})".replace("\n", " "),
            path=path,
            fix="Copy the file again, or install pylibjpeg for compressed files",
        ) from exc
    if stored.ndim != 2:
        raise InputError(
            f"expected one grayscale frame, got pixel data of shape {stored.shape}",
            path=path,
            fix="Radiographs must be single-frame MONOCHROME1/2",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"expected grayscale, got {photometric}",
            path=path,
            fix="Export the radiograph as MONOCHROME1/2 (grayscale)",
        )
    bits_stored = int(ds.get("BitsStored", 16))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    low, high = _output_range(ds, bits_stored)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        if "VOILUTSequence" in ds:
            # A VOI LUT maps into 0 .. 2**(its third descriptor value) - 1 (PS3.3 C.11.2.1.1).
            lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            low, high = 0.0, float(2**lut_bits - 1)
        # A window keeps the modality output range, as pydicom's apply_windowing does.
    if photometric == "MONOCHROME1":
        values = low + high - values
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value:
            # DICOM gives (row spacing, column spacing) = (y, x).
            spacing = np.array([float(value[1]), float(value[0])])
            break
    return Radiograph(
        array=values.astype(np.float32),
        spacing=spacing if spacing is not None else np.ones(2),
        image_id=path.stem,
        patient_id=str(ds.get("PatientID", "")),
        bits=8 if bits_stored <= 8 else 16,
        meta={
            "source": str(path),
            "format": "dicom",
            "photometric": photometric,
            "voi_applied": has_voi,
            "modality": str(ds.get("Modality", "")),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        },
    )


def _output_range(ds: Dataset, bits_stored: int) -> tuple[float, float]:
    """The range of values after the modality LUT: what MONOCHROME1 inverts within."""
    if ds.get("ModalityLUTSequence"):
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**lut_bits - 1)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1) - 1
    else:
        low, high = 0.0, 2.0**bits_stored - 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def write_png(array: ArrayLike, path: str | Path, *, bits: int = 16) -> Path:
    """Write a 2D array as a grayscale PNG.

    Args:
        array: (y, x) values; rounded to integers, which must lie in 0..2**bits - 1.
        path: target ``.png``; parent folders are created.
        bits: 16 for radiographs (uint16), 8 for masks and 8-bit images (uint8).

    Returns:
        ``path``.

    Raises:
        ValueError: not 2D, ``bits`` not 8 or 16, or values out of range.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    values = np.asarray(array)
    if values.ndim != 2:
        raise ValueError(f"array must be 2D (y, x), got shape {values.shape}")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    rounded = np.rint(values.astype(np.float64))
    high = 2**bits - 1
    if rounded.size and (
        not np.isfinite(rounded).all() or rounded.min() < 0 or rounded.max() > high
    ):
        raise ValueError(
            f"values must be finite and in 0..{high} for a {bits}-bit PNG, got range "
            f"[{np.nanmin(rounded)}, {np.nanmax(rounded)}]; rescale or clip first"
        )
    dtype = np.uint8 if bits == 8 else np.uint16
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rounded.astype(dtype)).save(path, format="PNG")
    return path


def write_radiograph_dicom(
    radiograph: Radiograph,
    path: str | Path,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a radiograph as an uncompressed DX DICOM file (for tests and the phantom).

    The array is rounded to unsigned integers of ``radiograph.bits`` bits. MONOCHROME1
    stores the inverted values, so :func:`read_radiograph` gives back the same array.

    Args:
        radiograph: (y, x) values in 0..2**bits - 1; spacing (x, y) mm.
        path: target file; parent folders are created.
        photometric: ``"MONOCHROME2"`` (larger = brighter) or ``"MONOCHROME1"``.
        window: optional (center, width) written as WindowCenter/WindowWidth.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown photometric interpretation or values out of range.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric}")
    bits = 8 if radiograph.bits <= 8 else 16
    high = 2**bits - 1
    values = np.rint(radiograph.array.astype(np.float64))
    if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > high):
        raise ValueError(f"radiograph values must be in 0..{high} for {bits} bits")
    if photometric == "MONOCHROME1":
        values = high - values
    pixels = values.astype(np.uint8 if bits == 8 else np.uint16)
    path = Path(path)
    key = radiograph.image_id or path.stem
    digest = hashlib.sha256(key.encode()).hexdigest()
    sop_uid = generate_uid(entropy_srcs=["sop", digest])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_DX_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["activecad-implementation"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = str(generate_uid(entropy_srcs=["study", digest]))
    ds.SeriesInstanceUID = str(generate_uid(entropy_srcs=["series", digest]))
    ds.Modality = "DX"
    ds.PatientID = radiograph.patient_id
    ds.PatientName = radiograph.patient_id
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{radiograph.spacing[1]:.10g}", f"{radiograph.spacing[0]:.10g}"]
    if window is not None:
        ds.WindowCenter = f"{window[0]:.10g}"
        ds.WindowWidth = f"{window[1]:.10g}"
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return path
