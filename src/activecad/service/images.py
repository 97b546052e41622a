"""Scans of the data folder served to the viewer: geometry, NIfTI-gzip volumes, PNG slices,
and the run's detections.

Only the scans listed in ``DATA_DIR/ct`` when the service starts can be served, looked up by
seriesuid in that listing: a request never names a path, so ``..`` or an absolute path in a
URL matches nothing (404), and a listed entry whose real path leaves the data folder (a
symbolic link) is not listed at all.
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from PIL import Image

from activecad.errors import InputError
from activecad.io import read_scan, read_table, world_to_voxel
from activecad.io.scan import Scan
from activecad.service.auth import Principal, require

__all__ = ["WINDOWS", "ScanLibrary", "router"]

#: (low, high) HU of the display windows: lung (level -600, width 1500) and mediastinum
#: (level 40, width 400).
WINDOWS = {"lung": (-1350.0, 150.0), "mediastinum": (-160.0, 240.0)}
_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")
Axis = Literal["axial", "coronal", "sagittal"]


def _uid_of(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Geometry:
    """A scan's grid: (Z, Y, X) voxels, spacing mm (x, y, z), origin mm (x, y, z), direction."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]

    def voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel index (z, y, x) of a world point (x, y, z) mm."""
        return world_to_voxel(
            xyz,
            origin=self.origin_xyz,
            spacing=self.spacing_xyz,
            direction=np.asarray(self.direction).reshape(3, 3),
        )

    def outside_axis(self, xyz: np.ndarray) -> int | None:
        """None when the point lies in the scan (within half a voxel of the outer centres);
        else the world axis (0 = x, 1 = y, 2 = z) that leaves it most."""
        index = self.voxel(np.asarray(xyz, dtype=float))
        shape = np.asarray(self.shape_zyx, dtype=float)
        excess = np.maximum(-0.5 - index, index - (shape - 0.5))
        if (excess <= 0).all():
            return None
        array_axis = 2 - int(np.argmax(excess))  # 0 = x (columns), 2 = z (slices)
        column = np.abs(np.asarray(self.direction).reshape(3, 3)[:, array_axis])
        return int(np.argmax(column))


class ScanLibrary:
    """The scans of a data folder, read through :func:`activecad.io.read_scan` and kept in a
    small in-memory cache (the last ``keep`` volumes)."""

    def __init__(self, data_dir: Path, *, keep: int = 4):
        data_dir = Path(data_dir)
        ct = data_dir / "ct"
        if not data_dir.exists():
            raise InputError(
                "the data folder does not exist",
                path=data_dir,
                fix="pass a LUNA16-style folder with ct/ (e.g. from 'activecad phantom')",
            )
        if not ct.is_dir():
            raise InputError(
                "not a LUNA16-style data folder (no ct/ subfolder)",
                path=data_dir,
                fix="pass a folder with ct/, e.g. one from 'activecad phantom'",
            )
        root = ct.resolve()
        self.paths: dict[str, Path] = {}
        for entry in sorted(ct.iterdir()):
            if not (entry.is_dir() or entry.name.lower().endswith(_SUFFIXES)):
                continue
            real = entry.resolve()
            if not real.is_relative_to(root):
                continue  # a link out of the data folder is never served
            self.paths[_uid_of(entry)] = real
        self._keep = keep
        self._scans: OrderedDict[str, Scan] = OrderedDict()
        self._volumes: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, seriesuid: str) -> Path:
        """The file of a scan; 404 when the data folder has no such series."""
        found = self.paths.get(seriesuid)
        if found is None:
            raise HTTPException(404, f"no scan {seriesuid!r} in the data folder")
        return found

    def scan(self, seriesuid: str) -> Scan:
        """The scan (HU, (Z, Y, X)), read once and cached."""
        path = self.path(seriesuid)
        with self._lock:
            if seriesuid in self._scans:
                self._scans.move_to_end(seriesuid)
                return self._scans[seriesuid]
        scan = read_scan(path)
        with self._lock:
            self._scans[seriesuid] = scan
            while len(self._scans) > self._keep:
                self._scans.popitem(last=False)
        return scan

    def geometry(self, seriesuid: str) -> Geometry:
        scan = self.scan(seriesuid)
        return Geometry(
            scan.shape,
            tuple(float(v) for v in scan.spacing),  # type: ignore[arg-type]
            tuple(float(v) for v in scan.origin),  # type: ignore[arg-type]
            tuple(float(v) for v in scan.direction.reshape(9)),
        )

    def volume_nifti(self, seriesuid: str) -> bytes:
        """The scan as NIfTI-gzip bytes, HU as int16, written by SimpleITK (sform RAS)."""
        with self._lock:
            if seriesuid in self._volumes:
                return self._volumes[seriesuid]
        scan = self.scan(seriesuid)
        hu = np.clip(np.rint(scan.array), -32768, 32767).astype(np.int16)
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing([float(v) for v in scan.spacing])
        image.SetOrigin([float(v) for v in scan.origin])
        image.SetDirection([float(v) for v in scan.direction.reshape(9)])
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "volume.nii.gz"
            sitk.WriteImage(image, str(target), useCompression=True)
            data = target.read_bytes()
        with self._lock:
            self._volumes[seriesuid] = data
            while len(self._volumes) > 2:
                self._volumes.popitem(last=False)
        return data

    def slice_png(self, seriesuid: str, axis: Axis, index: int, window: str) -> bytes:
        """One slice, windowed to 8 bits, as PNG bytes.

        Axial slices are (y, x) with the patient's anterior up and left on the image's
        right (the radiological view, for an identity direction); coronal (z, x) and
        sagittal (z, y) slices are flipped so that the head is up.
        """
        array = self.scan(seriesuid).array
        axis_index = {"axial": 0, "coronal": 1, "sagittal": 2}[axis]
        size = array.shape[axis_index]
        if not 0 <= index < size:
            raise HTTPException(404, f"{axis} slice {index} is outside 0..{size - 1}")
        plane = np.take(array, index, axis=axis_index)
        if axis != "axial":
            plane = plane[::-1]
        low, high = WINDOWS[window]
        grey = np.clip((plane - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(grey), mode="L").save(buffer, format="PNG")
        return buffer.getvalue()


def read_detections(run_dir: Path | None, seriesuid: str) -> list[dict[str, Any]]:
    """The run's model detections of one scan, world mm.

    Read from ``RUN_DIR/cycles/<latest r>/detections.csv``, else ``RUN_DIR/detections.csv``
    (LUNA16 submission columns, optional ``diameter_mm``); empty when there is none.
    """
    if run_dir is None:
        return []
    candidates = sorted(
        (int(p.parent.name), p)
        for p in run_dir.glob("cycles/*/detections.csv")
        if p.parent.name.isdigit()
    )
    path = candidates[-1][1] if candidates else run_dir / "detections.csv"
    if not path.is_file():
        return []
    table = read_table(path, "submission")
    rows = table[table["seriesuid"] == seriesuid]
    has_diameter = "diameter_mm" in rows.columns
    return [
        {
            "x": float(r.coordX),
            "y": float(r.coordY),
            "z": float(r.coordZ),
            "probability": float(r.probability),
            "diameter_mm": float(r.diameter_mm) if has_diameter else None,
        }
        for r in rows.itertuples()
    ]


router = APIRouter(prefix="/api/scans", tags=["scans"])
_reader = require("annotator")


def _library(request: Request) -> ScanLibrary:
    return request.app.state.service.scans


@router.get("/{seriesuid}")
def scan_info(
    seriesuid: str, request: Request, user: Principal = Depends(_reader)
) -> dict[str, Any]:
    geometry = _library(request).geometry(seriesuid)
    return {
        "seriesuid": seriesuid,
        "shape_zyx": list(geometry.shape_zyx),
        "spacing_xyz": list(geometry.spacing_xyz),
        "origin_xyz": list(geometry.origin_xyz),
        "direction": list(geometry.direction),
    }


@router.get("/{seriesuid}/volume.nii.gz")
def scan_volume(seriesuid: str, request: Request, user: Principal = Depends(_reader)) -> Response:
    data = _library(request).volume_nifti(seriesuid)
    return Response(
        data,
        media_type="application/gzip",
        headers={"Cache-Control": "private, no-store"},
    )


@router.get("/{seriesuid}/slices/{axis}/{index}.png")
def scan_slice(
    seriesuid: str,
    axis: Axis,
    index: int,
    request: Request,
    window: Literal["lung", "mediastinum"] = Query("lung"),
    user: Principal = Depends(_reader),
) -> Response:
    data = _library(request).slice_png(seriesuid, axis, index, window)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.get("/{seriesuid}/detections")
def scan_detections(
    seriesuid: str, request: Request, user: Principal = Depends(_reader)
) -> list[dict[str, Any]]:
    _library(request).path(seriesuid)
    return read_detections(request.app.state.service.settings.run_dir, seriesuid)
