"""CT preprocessing for the detector: resample, HU window, lung crop, memory-mapped cache.

The cache lives in the user's cache folder (:func:`default_cache_dir`, moved by
``$ACTIVECAD_CACHE`` or a command's ``--cache``) and is keyed cheaply (see
:class:`PreprocessCache`).

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
from typing import Literal

import numpy as np
import torch
from pydantic import model_validator
from scipy import ndimage
from torch import nn

from activecad.config import StrictConfig
from activecad.errors import InputError
from activecad.io.geometry import voxel_to_world, world_to_voxel
from activecad.io.scan import Scan

__all__ = [
    "CACHE_ENV",
    "CacheInfo",
    "PreparedScan",
    "PreprocessCache",
    "PreprocessConfig",
    "default_cache_dir",
    "file_digest",
    "preprocess_scan",
    "scan_files",
]

# Part of every cache key: bump it when preprocess_scan changes what it computes, so old
# cache entries are not returned for new code.
PREPROCESS_VERSION = 4

# The environment variable that moves the default preprocessing cache.
CACHE_ENV = "ACTIVECAD_CACHE"
# Marks files being written; they become entries only when renamed.
_TMP = ".tmp"

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
    lungs = lung_components(array, hu_threshold, ap_axis=ap_axis)
    if not lungs.any():
        return np.zeros(3, dtype=int), np.array(array.shape)
    where = np.argwhere(lungs)
    return where.min(axis=0), where.max(axis=0) + 1


def lung_components(array: np.ndarray, threshold: float, *, ap_axis: int = 1) -> np.ndarray:
    """(Z, Y, X) bool: the dark voxels of the lungs, i.e. the one or two largest dark
    components not connected to the outside air (all False when there are none).

    Args:
        array: (Z, Y, X) image, HU or any monotone rescaling of it.
        threshold: voxels below it (in ``array``'s units) count as air or lung.
        ap_axis: the array axis that runs anterior-posterior (see :func:`lung_box`).
    """
    dark = array < threshold
    labels, count = ndimage.label(dark)
    if count == 0:
        return dark
    # Components touching the anterior or posterior edge are the air around the patient
    # and the table. The lateral edges are not used: a tight field of view can cut the
    # chest wall there, and the lungs would then touch them.
    edges = (np.take(labels, 0, axis=ap_axis), np.take(labels, -1, axis=ap_axis))
    border = np.unique(np.concatenate([edge.ravel() for edge in edges]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    sizes[border[border > 0] - 1] = 0
    if sizes.max() <= 0:
        return np.zeros_like(dark)
    # The two lungs, or one if they touch; tiny dark pockets (bowel gas) are ignored.
    keep = np.argsort(sizes)[::-1][:2]
    keep = keep[sizes[keep] > 0.1 * sizes.max()] + 1
    return np.isin(labels, keep)


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


def scan_files(path: str | Path) -> list[Path]:
    """The files a scan is read from: the file itself (+ a MetaImage's data file) or a folder's."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    files = [path]
    if path.suffix.lower() == ".mhd":
        files += [path.with_suffix(s) for s in (".raw", ".zraw") if path.with_suffix(s).is_file()]
    return files


def _sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a scan's files: the file itself, a MetaImage's data file, or a folder's files."""
    digest = hashlib.sha256()
    for file in scan_files(path):
        digest.update(file.name.encode())
        digest.update(_sha256_file(file).encode())
    return digest.hexdigest()


HashMode = Literal["stat", "full"]


def default_cache_dir() -> Path:
    """Where preprocessed scans are cached unless a command is given ``--cache``.

    ``$ACTIVECAD_CACHE`` when set, else the user's cache folder from platformdirs
    (``~/.cache/activecad/preprocess`` on Linux, ``~/Library/Caches/activecad/preprocess``
    on macOS, ``%LOCALAPPDATA%\\activecad\\Cache\\preprocess`` on Windows).
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("activecad", appauthor=False)) / "preprocess"


@dataclass
class CacheInfo:
    """What a cache folder holds.

    Attributes:
        root: the folder.
        entries: complete entries (array + geometry).
        bytes: size of every file in the folder, bytes.
        partial: leftovers of interrupted writes (temporary files, an array without its
            geometry); never read, removed by :meth:`PreprocessCache.clear`.
    """

    root: Path
    entries: int
    bytes: int
    partial: int


class PreprocessCache:
    """Preprocessed scans stored as ``.npy`` files and read back memory-mapped.

    The key combines a fingerprint of the scan's files with the preprocessing parameters,
    so a changed file or a changed parameter never returns a stale array, and several
    training workers share one copy through the page cache. The fingerprint is cheap by
    default, so a cached scan is found without reading it:

    * where a phantom cohort's ``manifest.json`` (in the scan's folder or up to two levels
      above) lists the file with its SHA-256 and the file is not newer than the manifest,
      that SHA-256 (copies of one cohort share entries);
    * otherwise the resolved path, size and modification time (``hash="stat"``);
    * ``hash="full"`` reads and hashes every file instead (content-addressed; slow for
      large scans, for folders whose files may change without a new modification time).

    An entry is an array ``KEY.npy`` and its geometry ``KEY.json``; both are written under
    temporary names and renamed, the geometry last, so an interrupted run leaves no entry
    that could be read (only leftovers that :meth:`info` counts and :meth:`clear` removes).

    Args:
        root: folder of the cache (created when needed); default :func:`default_cache_dir`.
        hash: ``stat`` (cheap, default) or ``full`` (hash every file's content).
    """

    def __init__(self, root: str | Path | None = None, *, hash: HashMode = "stat"):
        if hash not in ("stat", "full"):
            raise ValueError(f"hash must be 'stat' or 'full', got {hash!r}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hash = hash
        self._manifests: dict[Path, tuple[int, dict[str, str]]] = {}

    def _manifest_sha(self, file: Path) -> str | None:
        """The SHA-256 a cohort manifest lists for ``file``, if the file is not newer."""
        for folder in list(file.parents)[:3]:
            manifest = folder / "manifest.json"
            try:
                stat = manifest.stat()
            except OSError:
                continue
            cached = self._manifests.get(manifest)
            if cached is None or cached[0] != stat.st_mtime_ns:
                try:
                    files = json.loads(manifest.read_text()).get("files", {})
                except (OSError, ValueError, AttributeError):
                    files = {}
                cached = (stat.st_mtime_ns, files if isinstance(files, dict) else {})
                self._manifests[manifest] = cached
            sha = cached[1].get(file.relative_to(folder).as_posix())
            if sha is not None and file.stat().st_mtime_ns <= stat.st_mtime_ns:
                return str(sha)
            return None
        return None

    def fingerprint(self, path: str | Path) -> str:
        """Identity of the scan's files: manifest SHA-256, path/size/mtime, or content hash."""
        parts = []
        for file in scan_files(path):
            if self.hash == "full":
                parts.append(f"sha256:{file.name}:{_sha256_file(file)}")
                continue
            sha = self._manifest_sha(file.resolve())
            if sha is not None:
                parts.append(f"sha256:{file.name}:{sha}")
            else:
                stat = file.stat()
                parts.append(f"stat:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        return "\n".join(parts)

    def key(
        self,
        path: str | Path,
        config: PreprocessConfig,
        min_shape_zyx: tuple[int, int, int] | None,
    ) -> str:
        """The cache key of ``path`` preprocessed with ``config`` (fingerprint + parameters)."""
        params = json.dumps(
            {
                "config": config.model_dump(mode="json"),
                "min_shape": list(min_shape_zyx or ()),
                "version": PREPROCESS_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256((self.fingerprint(path) + params).encode()).hexdigest()[:32]

    def load(
        self,
        path: str | Path,
        config: PreprocessConfig,
        *,
        min_shape_zyx: tuple[int, int, int] | None = None,
    ) -> PreparedScan:
        """The preprocessed scan at ``path``, computed once and then read from the cache.

        A lung crop grown to ``min_shape_zyx`` gets an entry of its own only where it
        differs from the plain crop: a scan whose lung box already holds that shape gives
        the same array, so models asking for different patch sizes (the detector, the
        FP-reduction classifier) share one entry a scan instead of storing it twice.

        Raises:
            InputError: the scan cannot be read (from :func:`activecad.io.ct.read_scan`),
                or the cache folder cannot be written.
        """
        prepared = self._entry(path, config, None)
        if (
            min_shape_zyx is None
            or not config.lung_crop
            or all(s >= m for s, m in zip(prepared.array.shape, min_shape_zyx, strict=True))
        ):
            return prepared
        return self._entry(path, config, min_shape_zyx)

    def _entry(
        self,
        path: str | Path,
        config: PreprocessConfig,
        min_shape_zyx: tuple[int, int, int] | None,
    ) -> PreparedScan:
        """The entry of ``path`` preprocessed with ``config`` and ``min_shape_zyx``,
        preprocessed and written first when the cache lacks it."""
        from activecad.io.ct import read_scan

        key = self.key(path, config, min_shape_zyx)
        data, meta = self.root / f"{key}.npy", self.root / f"{key}.json"
        if not (data.is_file() and meta.is_file()):
            prepared = preprocess_scan(read_scan(path), config, min_shape_zyx=min_shape_zyx)
            self._write(key, prepared)
        info = json.loads(meta.read_text())
        return PreparedScan(
            array=np.load(data, mmap_mode="r"),
            spacing=np.asarray(info["spacing"]),
            origin=np.asarray(info["origin"]),
            direction=np.asarray(info["direction"]),
            seriesuid=info["seriesuid"],
            patient_id=info.get("patient_id", ""),
        )

    def _write(self, key: str, prepared: PreparedScan) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the preprocessing cache folder ({exc.strerror or exc})",
                path=self.root,
                fix=f"pass a writable --cache folder or set {CACHE_ENV}",
            ) from exc
        # Written under names unique to this process and renamed, the geometry last: neither
        # a crash nor two workers preprocessing the same scan at once leaves a readable torn
        # entry, and an exception removes what was written.
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_data = self.root / f"{key}.{unique}{_TMP}.npy"
        tmp_meta = self.root / f"{key}.{unique}{_TMP}.json"
        info = {
            "spacing": prepared.spacing.tolist(),
            "origin": prepared.origin.tolist(),
            "direction": prepared.direction.tolist(),
            "seriesuid": prepared.seriesuid,
            "patient_id": prepared.patient_id,
            "shape_zyx": list(prepared.array.shape),
        }
        data, meta = self.root / f"{key}.npy", self.root / f"{key}.json"
        try:
            np.save(tmp_data, prepared.array)
            tmp_meta.write_text(json.dumps(info))
            tmp_data.replace(data)
            tmp_meta.replace(meta)
        except BaseException:
            tmp_data.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
            if not meta.exists():  # an array without its geometry is no entry
                data.unlink(missing_ok=True)
            raise

    def info(self) -> CacheInfo:
        """Entries, size and leftovers of interrupted writes in :attr:`root`."""
        if not self.root.is_dir():
            return CacheInfo(self.root, 0, 0, 0)
        files = [p for p in self.root.iterdir() if p.is_file()]
        names = {p.name for p in files}
        entries = sum(
            1
            for p in files
            if p.suffix == ".json" and _TMP not in p.name and f"{p.stem}.npy" in names
        )
        complete = 2 * entries
        owned = [p for p in files if p.suffix in (".npy", ".json")]
        return CacheInfo(
            self.root,
            entries,
            sum(p.stat().st_size for p in files),
            len(owned) - complete,
        )

    def clear(self) -> CacheInfo:
        """Remove every cached entry and leftover (``.npy``/``.json``) from :attr:`root`.

        Returns:
            what was there before.
        """
        before = self.info()
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_file() and p.suffix in (".npy", ".json"):
                    p.unlink(missing_ok=True)
        return before
