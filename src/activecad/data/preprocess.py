"""CT preprocessing for the detector: resample, HU window, lung crop, memory-mapped cache.

Frames: arrays are (z, y, x); spacing and origin are x-y-z mm. A :class:`PreparedScan`
carries its own origin/spacing/direction, so a voxel of the preprocessed array maps to
world mm with :func:`activecad.io.geometry.voxel_to_world` exactly like a raw scan's.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import model_validator
from scipy import ndimage
from torch import nn

from activecad.config import StrictConfig
from activecad.io.geometry import voxel_to_world, world_to_voxel
from activecad.io.scan import Scan

__all__ = [
    "PreparedScan",
    "PreprocessCache",
    "PreprocessConfig",
    "file_digest",
    "preprocess_scan",
]

# Part of every cache key: bump it when preprocess_scan changes what it computes, so old
# cache entries are not returned for new code.
PREPROCESS_VERSION = 4

# Air outside the body and the lungs are both below this; soft tissue is well above.
_LUNG_HU = -400.0


class PreprocessConfig(StrictConfig):
    """How a CT scan becomes the network's input array.

    Attributes:
        spacing: target voxel size in mm, x-y-z.
        hu_min: lower end of the HU window; values below are clipped.
        hu_max: upper end of the HU window; values above are clipped.
        lung_crop: crop the array to the bounding box of the lungs (plus ``crop_margin_mm``).
        crop_margin_mm: margin kept around the lung box, mm.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_min: float = -1000.0
    hu_max: float = 400.0
    lung_crop: bool = True
    crop_margin_mm: float = 10.0

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if self.hu_max <= self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        return self


@dataclass
class PreparedScan:
    """A preprocessed scan with the geometry of its own grid.

    Attributes:
        array: (Z, Y, X) float32 in [0, 1] (hu_min -> 0, hu_max -> 1), possibly a memmap.
        spacing: (3,) mm, x-y-z, of the preprocessed grid.
        origin: (3,) world mm, x-y-z, of the centre of voxel (0, 0, 0) of ``array``.
        direction: (3, 3) direction cosines, as :class:`~activecad.io.scan.Scan`'s.
        seriesuid: the scan's series identifier.
        patient_id: the patient's identifier ("" when unknown), so splits keep a
            patient's follow-up scans together.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    seriesuid: str
    patient_id: str = ""

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) z-y-x continuous indices of ``array`` -> (N, 3) world mm, x-y-z."""
        return voxel_to_world(
            indices, origin=self.origin, spacing=self.spacing, direction=self.direction
        )

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world mm, x-y-z -> (N, 3) z-y-x continuous indices of ``array``."""
        return world_to_voxel(
            points, origin=self.origin, spacing=self.spacing, direction=self.direction
        )


def _resample(array: np.ndarray, ratio_zyx: np.ndarray) -> np.ndarray:
    """Trilinear resampling where output voxel j samples input index (j + 0.5) * r - 0.5."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = nn.functional.interpolate(
        tensor,
        scale_factor=tuple(float(1.0 / r) for r in ratio_zyx),
        mode="trilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )
    return out[0, 0].numpy()


def lung_box(
    array: np.ndarray,
    hu_threshold: float = _LUNG_HU,
    *,
    step: int = 1,
    ap_axis: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the lungs: dark voxels not connected to the outside air.

    Args:
        array: (Z, Y, X) HU values.
        hu_threshold: voxels below it count as air or lung.
        step: look at every ``step``-th voxel along each axis (faster, box within
            ``step`` voxels).
        ap_axis: the array axis that runs anterior-posterior (1, the rows, for an axial
            scan in the usual orientation; see :func:`anterior_posterior_axis`).

    Returns:
        (start, stop) z-y-x index arrays of the box (stop exclusive); the whole array when
        no lung is found.
    """
    if step > 1:
        # Labelling is the slow part; the lungs are large, so a coarser grid finds the same box.
        lo, hi = lung_box(array[::step, ::step, ::step], hu_threshold, ap_axis=ap_axis)
        return lo * step, np.minimum(hi * step, np.array(array.shape))
    dark = array < hu_threshold
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.zeros(3, dtype=int), np.array(array.shape)
    # Components touching the anterior or posterior edge are the air around the patient
    # and the table. The lateral edges are not used: a tight field of view can cut the
    # chest wall there, and the lungs would then touch them.
    edges = (np.take(labels, 0, axis=ap_axis), np.take(labels, -1, axis=ap_axis))
    border = np.unique(np.concatenate([edge.ravel() for edge in edges]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    sizes[border[border > 0] - 1] = 0
    if sizes.max() <= 0:
        return np.zeros(3, dtype=int), np.array(array.shape)
    # The two lungs, or one if they touch; tiny dark pockets (bowel gas) are ignored.
    keep = np.argsort(sizes)[::-1][:2]
    keep = keep[sizes[keep] > 0.1 * sizes.max()] + 1
    where = np.argwhere(np.isin(labels, keep))
    return where.min(axis=0), where.max(axis=0) + 1


def anterior_posterior_axis(direction: np.ndarray) -> int:
    """The (Z, Y, X) array axis closest to the patient's anterior-posterior (LPS y) axis.

    Args:
        direction: (3, 3) direction cosines; column i is the world direction of index
            axis i (x, y, z), as in :class:`~activecad.io.scan.Scan`.
    """
    index_axis = int(np.argmax(np.abs(np.asarray(direction)[1, :])))
    return 2 - index_axis


def preprocess_scan(
    scan: Scan, config: PreprocessConfig, *, min_shape_zyx: tuple[int, int, int] | None = None
) -> PreparedScan:
    """Resample ``scan`` to ``config.spacing``, window and normalise it, and crop the lungs.

    Args:
        scan: the CT scan (HU, z-y-x array).
        config: preprocessing parameters.
        min_shape_zyx: the crop never shrinks the array below this shape (z, y, x), so a
            network patch still fits; the full resampled array is kept where it is smaller.

    Returns:
        the preprocessed array with the geometry of its grid.
    """
    old_spacing_zyx = scan.spacing[::-1]
    new_spacing_zyx = np.asarray(config.spacing, dtype=np.float64)[::-1]
    ratio = new_spacing_zyx / old_spacing_zyx
    array = _resample(scan.array, ratio)
    start = np.zeros(3, dtype=int)
    if config.lung_crop:
        lo, hi = lung_box(array, step=2, ap_axis=anterior_posterior_axis(scan.direction))
        margin = np.ceil(config.crop_margin_mm / new_spacing_zyx).astype(int)
        lo, hi = lo - margin, hi + margin
        if min_shape_zyx is not None:
            short = np.maximum(np.asarray(min_shape_zyx) - (hi - lo), 0)
            lo, hi = lo - short // 2, hi + short - short // 2
        shape = np.array(array.shape)
        # Slide a box that sticks out of the array back inside before clipping it.
        shift = np.where(lo < 0, -lo, np.where(hi > shape, shape - hi, 0))
        lo, hi = lo + shift, hi + shift
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        array = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        start = lo
    array = np.clip(array, config.hu_min, config.hu_max)
    array = ((array - config.hu_min) / (config.hu_max - config.hu_min)).astype(np.float32)
    # Voxel j of the new grid samples old index (j + start + 0.5) * ratio - 0.5.
    origin_index_zyx = (start + 0.5) * ratio - 0.5
    origin = voxel_to_world(
        origin_index_zyx, origin=scan.origin, spacing=scan.spacing, direction=scan.direction
    )
    return PreparedScan(
        array=np.ascontiguousarray(array),
        spacing=new_spacing_zyx[::-1].copy(),
        origin=np.asarray(origin),
        direction=scan.direction.copy(),
        seriesuid=scan.seriesuid,
        patient_id=scan.patient_id,
    )


def file_digest(path: str | Path) -> str:
    """SHA-256 of a scan's files: the file itself, a MetaImage's data file, or a folder's files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path]
        for suffix in (".raw", ".zraw"):
            sibling = path.with_suffix(suffix)
            if path.suffix.lower() == ".mhd" and sibling.is_file():
                files.append(sibling)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


class PreprocessCache:
    """Preprocessed scans stored as ``.npy`` files and read back memory-mapped.

    The key is the hash of the scan's files plus the preprocessing parameters, so a
    changed file or a changed parameter never returns a stale array, and several training
    workers share one copy through the page cache.

    Args:
        root: folder of the cache (created when needed).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(
        self,
        path: str | Path,
        config: PreprocessConfig,
        min_shape_zyx: tuple[int, int, int] | None,
    ) -> str:
        """The cache key of ``path`` preprocessed with ``config`` (file hash + parameters)."""
        params = json.dumps(
            {
                "config": config.model_dump(mode="json"),
                "min_shape": list(min_shape_zyx or ()),
                "version": PREPROCESS_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256((file_digest(path) + params).encode()).hexdigest()[:32]

    def load(
        self,
        path: str | Path,
        config: PreprocessConfig,
        *,
        min_shape_zyx: tuple[int, int, int] | None = None,
    ) -> PreparedScan:
        """The preprocessed scan at ``path``, computed once and then read from the cache.

        Raises:
            InputError: the scan cannot be read (from :func:`activecad.io.ct.read_scan`).
        """
        from activecad.io.ct import read_scan

        key = self.key(path, config, min_shape_zyx)
        data, meta = self.root / f"{key}.npy", self.root / f"{key}.json"
        if not (data.is_file() and meta.is_file()):
            prepared = preprocess_scan(read_scan(path), config, min_shape_zyx=min_shape_zyx)
            self.root.mkdir(parents=True, exist_ok=True)
            # Write under names unique to this process and rename, so neither a crash nor
            # two workers preprocessing the same scan at once leaves a torn entry.
            unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = self.root / f"{key}.{unique}.tmp.npy"
            np.save(tmp, prepared.array)
            tmp.replace(data)
            info = {
                "spacing": prepared.spacing.tolist(),
                "origin": prepared.origin.tolist(),
                "direction": prepared.direction.tolist(),
                "seriesuid": prepared.seriesuid,
                "patient_id": prepared.patient_id,
            }
            tmp_meta = self.root / f"{key}.{unique}.tmp.json"
            tmp_meta.write_text(json.dumps(info))
            tmp_meta.replace(meta)
        info = json.loads(meta.read_text())
        return PreparedScan(
            array=np.load(data, mmap_mode="r"),
            spacing=np.asarray(info["spacing"]),
            origin=np.asarray(info["origin"]),
            direction=np.asarray(info["direction"]),
            seriesuid=info["seriesuid"],
            patient_id=info.get("patient_id", ""),
        )
