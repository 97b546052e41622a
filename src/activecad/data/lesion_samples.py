"""2.5D slice samples of the four lesion datasets, preprocessed as MELD and MULAN do.

Preprocessing (Yan et al. 2020, appendix 7.2, after MULAN): axes turned to one orientation
(volumes with a direction; DeepLesion's PNGs are taken as stored), one HU window (MELD's
-1024..3071 unless ``hu_window`` says otherwise) mapped to [0, 1], every axial slice
resized to ``pixel_mm`` pixels (paper 0.8 mm), 9 slices per sample at ``slice_mm``
intervals (paper 2 mm; linear interpolation between stored slices, the volume's end slices
repeated), black borders clipped. Training augmentation (:func:`augment_sample`): random
resize by 0.8-1.2 and shift by -8..8 px.

What each dataset gives (``SliceSample.dataset`` in brackets):

- DeepLesion (``universal``): one sample per labelled key slice, its boxes the labelled
  lesions on that slice. Organ targets: ``organ_lung, organ_liver, organ_lymph_node``
  columns of the table when present (soft targets from LesaNet's tags or an organ
  segmentation, as the paper uses), else ``Coarse_lesion_type`` (5 lung, 4 liver,
  3 mediastinum, which in DeepLesion is mostly lymph nodes), else zeros.
- LUNA (``lung_nodules``), LiTS (``liver_tumours``), NIH-LN (``lymph_nodes``): every
  slice position (``slice_mm`` apart) that a lesion crosses, plus as many slices with no
  lesion drawn afresh each epoch (paper section 4.2) by an :class:`EpochSampler`. Boxes
  come from LUNA's centres and diameters (spheres), NIH-LN's centres and axis lengths
  (spheres of the mean axis), LiTS's tumour label (3D connected components, each cut by
  the slice). A slice that cuts a lesion's cap (less than half its largest width) gives
  an ignore box, not a positive; LUNA's excluded findings are ignore boxes too, and so
  are NIH-LN slices beyond a node's sphere but within one long axis of its centre (the
  lists give no craniocaudal extent).
- Evaluation (:class:`EvalVolume`): every slice position of the DeepLesion test
  sub-volumes with the boxes of the full truth (``DL_info_full.csv`` where a phantom wrote
  it; otherwise ``DL_info.csv``, which real DeepLesion only labels in part), for FROC per
  sub-volume with :func:`activecad.metrics.stack_slice_boxes`.

Frames: boxes are ``x1, y1, x2, y2`` continuous corners in pixels of the sample's image
(a pixel ``i`` spans ``[i, i + 1)``). DeepLesion's ``Bounding_boxes`` and voxel indices
are pixel-centre coordinates (pixel ``i`` centred at ``i``), so they move by half a pixel.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

from activecad.data.folders import XYZ, read_luna_folder, split_by_patient
from activecad.data.lesion_slices import DATASETS, ORGANS, SLICES_PER_SAMPLE, SliceSample
from activecad.data.preprocess import _resample
from activecad.errors import InputError
from activecad.io.ct import read_scan
from activecad.io.geometry import voxel_to_world
from activecad.io.lesion_sets import (
    DeepLesionSet,
    find_lits_cases,
    read_deeplesion,
    read_lits_case,
    read_nih_ln,
)
from activecad.io.scan import Scan
from activecad.io.tables import DEFAULT_DIAMETER_MM

__all__ = [
    "COARSE_TYPE_ORGANS",
    "HU_WINDOW",
    "DatasetSamples",
    "EpochSampler",
    "EvalVolume",
    "LesionSets",
    "PreparedVolume",
    "augment_sample",
    "deeplesion_samples",
    "iter_eval_volumes",
    "load_lesion_sets",
    "prepare_volume",
    "to_standard_orientation",
]

HU_WINDOW = (-1024.0, 3071.0)
"""The single window of MELD's appendix: lung, soft tissue and bone in one range."""

COARSE_TYPE_ORGANS: dict[int, str] = {5: "lung", 4: "liver", 3: "lymph_node"}
"""DeepLesion coarse lesion type -> organ head (types 1-2 and 6-8 have none)."""

SPLITS = ("official", "random")
_BODY_HU = -500.0  # voxels above this are body (or table), not the air around it
_BORDER_PX = 4  # kept around the body when black borders are clipped
_CAP = 0.5  # a cross-section narrower than this share of the lesion's width is ignored
# NIH-LN's lists measure nodes in the axial plane only, and nodes are longer along the body
# axis than across (the phantom's up to 1.8 times their short axis): slices up to this many
# long-axis lengths from a centre that its sphere misses are ignored, not negatives.
NODE_REACH = 1.0
_HALF = SLICES_PER_SAMPLE // 2


# --------------------------------------------------------------------------- volumes


def to_standard_orientation(scan: Scan) -> Scan:
    """The scan re-laid so that its array axes run along world x, y, z (identity direction).

    Directions that are signed permutations (axial scans stored flipped or turned) are
    re-laid exactly; an oblique direction is taken as its nearest axes, with a warning in
    ``meta["warnings"]``. World positions of voxels are unchanged.
    """
    direction = scan.direction
    perm = np.argmax(np.abs(direction), axis=0)
    sign = np.sign(direction[perm, np.arange(3)])
    warnings = list(scan.meta.get("warnings", []))  # type: ignore[call-overload]
    exact = np.zeros((3, 3))
    exact[perm, np.arange(3)] = sign
    if sorted(perm.tolist()) != [0, 1, 2]:
        raise InputError(
            f"direction {direction.tolist()} has no clear axial orientation",
            path=str(scan.meta.get("source", "")) or None,
            fix="resample the scan to an axis-aligned grid first",
        )
    if not np.allclose(direction, exact, atol=1e-3):
        warnings.append("oblique direction taken as its nearest axes")
    xyz = scan.array.transpose(2, 1, 0).transpose(np.argsort(perm))
    n_xyz = np.asarray(scan.shape[::-1])
    start_xyz = np.where(sign < 0, n_xyz - 1, 0)  # old index (x, y, z) of the new first voxel
    flips = tuple(int(w) for w in range(3) if sign[np.argsort(perm)][w] < 0)
    if flips:
        xyz = np.flip(xyz, axis=flips)
    origin = voxel_to_world(
        start_xyz[::-1].astype(np.float64),
        origin=scan.origin,
        spacing=scan.spacing,
        direction=scan.direction,
    )
    return replace(
        scan,
        array=np.ascontiguousarray(xyz.transpose(2, 1, 0)),
        spacing=scan.spacing[np.argsort(perm)],
        origin=np.asarray(origin),
        direction=np.eye(3),
        meta={**scan.meta, "warnings": warnings},
    )


@dataclass
class PreparedVolume:
    """Slices windowed to [0, 1] and resized in-plane; z is left at the stored spacing.

    Attributes:
        array: (Z, H, W) float16 in [0, 1] (float16 halves the memory; samples are float32).
        spacing_z: mm between the array's slices.
        pixel_mm: pixel size of the array, mm.
        ratio: (row, column) new pixel size / stored pixel size.
        offset: (row, column) first kept pixel of the resized slice (clipped borders).
        name: the series or scan name; ``patient`` its patient.
    """

    array: NDArray[np.float16]
    spacing_z: float
    pixel_mm: float
    ratio: tuple[float, float]
    offset: tuple[int, int]
    name: str = ""
    patient: str = ""

    def boxes_from_stored(self, boxes: ArrayLike4) -> NDArray[np.float64]:
        """(N, 4) ``x1, y1, x2, y2`` continuous corners of stored pixels -> of ``array``."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array([self.ratio[1], self.ratio[0]] * 2)
        shift = np.array([self.offset[1], self.offset[0]] * 2)
        return b / scale - shift

    def boxes_to_stored(self, boxes: ArrayLike4) -> NDArray[np.float64]:
        """Inverse of :meth:`boxes_from_stored`."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array([self.ratio[1], self.ratio[0]] * 2)
        shift = np.array([self.offset[1], self.offset[0]] * 2)
        return (b + shift) * scale

    def stack(self, z: float, slice_mm: float) -> NDArray[np.float32]:
        """The 9 slices centred at stored slice position ``z``, ``slice_mm`` apart.

        Positions between stored slices are interpolated linearly; positions beyond the
        ends take the end slice.

        Returns:
            (9, H, W) float32.
        """
        step = slice_mm / self.spacing_z
        top = self.array.shape[0] - 1
        pos = np.clip(z + step * (np.arange(SLICES_PER_SAMPLE) - _HALF), 0.0, top)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, top)
        w = (pos - low).astype(np.float32)[:, None, None]
        lo_slices = self.array[low].astype(np.float32)
        return lo_slices + w * (self.array[high].astype(np.float32) - lo_slices)

    def positions(self, slice_mm: float) -> NDArray[np.float64]:
        """Stored slice positions ``0, s, 2s, ...`` (``s = slice_mm / spacing_z``) in the volume."""
        step = slice_mm / self.spacing_z
        count = int(np.floor((self.array.shape[0] - 1) / step + 1e-9)) + 1
        return (np.arange(count) * step).astype(np.float64)


ArrayLike4 = NDArray[np.float64] | Sequence[Sequence[float]]


def prepare_volume(
    hu: NDArray[np.floating],
    *,
    pixel_spacing: tuple[float, float],
    spacing_z: float,
    pixel_mm: float,
    crop_borders: bool = True,
    hu_window: tuple[float, float] = HU_WINDOW,
    name: str = "",
    patient: str = "",
) -> PreparedVolume:
    """Window and resize the slices of a volume for 2.5D samples.

    Args:
        hu: (Z, Y, X) HU, axes in standard orientation where known.
        pixel_spacing: (row, column) stored pixel size, mm.
        spacing_z: mm between stored slices.
        pixel_mm: the pixel size of every output slice, mm.
        crop_borders: clip rows and columns that are air on every slice (keeping 4 px).
        hu_window: (low, high) HU mapped to 0 and 1, values outside clipped.
        name, patient: carried along.
    """
    ratio = (pixel_mm / float(pixel_spacing[0]), pixel_mm / float(pixel_spacing[1]))
    # Voxel j of the output samples stored index (j + 0.5) * ratio - 0.5, so corners divide.
    body = np.asarray(hu, dtype=np.float32)
    resized = _resample(body, np.array([1.0, ratio[0], ratio[1]]))
    offset = (0, 0)
    if crop_borders:
        inside = resized > _BODY_HU
        rows = np.flatnonzero(inside.any(axis=(0, 2)))
        cols = np.flatnonzero(inside.any(axis=(0, 1)))
        if len(rows) and len(cols):
            r0, c0 = max(rows[0] - _BORDER_PX, 0), max(cols[0] - _BORDER_PX, 0)
            r1, c1 = rows[-1] + _BORDER_PX + 1, cols[-1] + _BORDER_PX + 1
            resized = resized[:, r0:r1, c0:c1]
            offset = (int(r0), int(c0))
    low, high = hu_window
    windowed = (np.clip(resized, low, high) - low) / (high - low)
    return PreparedVolume(
        windowed.astype(np.float16), float(spacing_z), float(pixel_mm), ratio, offset, name, patient
    )


def _sample(
    volume: PreparedVolume,
    z: float,
    slice_mm: float,
    boxes: NDArray[np.float64],
    organs: NDArray[np.float32],
    dataset: str,
    image_id: str,
    ignore: NDArray[np.float64] | None = None,
) -> SliceSample:
    return SliceSample(
        image=volume.stack(z, slice_mm),
        boxes=boxes.reshape(-1, 4),
        organs=organs.reshape(-1, len(ORGANS)).astype(np.float32),
        dataset=dataset,
        image_id=image_id,
        patient=volume.patient,
        ignore_boxes=np.zeros((0, 4)) if ignore is None else ignore.reshape(-1, 4),
        spacing=(volume.pixel_mm, volume.pixel_mm),
    )


def _one_hot(organ: str, n: int) -> NDArray[np.float32]:
    out = np.zeros((n, len(ORGANS)), dtype=np.float32)
    out[:, ORGANS.index(organ)] = 1.0
    return out


# --------------------------------------------------------------------------- DeepLesion

_ORGAN_COLUMNS = tuple(f"organ_{o}" for o in ORGANS)


def _organ_targets(rows: pd.DataFrame) -> NDArray[np.float32]:
    """(N, 3) soft organ targets of DeepLesion rows (module docstring says from what)."""
    if all(c in rows.columns for c in _ORGAN_COLUMNS):
        values = rows[list(_ORGAN_COLUMNS)].to_numpy(np.float32)
        return np.clip(np.nan_to_num(values), 0.0, 1.0)
    out = np.zeros((len(rows), len(ORGANS)), dtype=np.float32)
    for i, kind in enumerate(rows["Coarse_lesion_type"].to_numpy()):
        organ = COARSE_TYPE_ORGANS.get(int(kind))
        if organ is not None:
            out[i, ORGANS.index(organ)] = 1.0
    return out


def _sub_volumes(rows: pd.DataFrame) -> list[tuple[str, int, int, pd.DataFrame]]:
    """Merged ``Slice_range`` of each series: (series, first, last, rows in it)."""
    out = []
    for series, group in rows.groupby("series", sort=True):
        ranges = np.array([tuple(r) for r in group["Slice_range"]], dtype=np.int64).reshape(-1, 2)
        order = np.argsort(ranges[:, 0], kind="stable")
        first, last = int(ranges[order[0], 0]), int(ranges[order[0], 1])
        members = [order[0]]
        for i in order[1:]:
            a, b = int(ranges[i, 0]), int(ranges[i, 1])
            if a <= last + 1:
                last = max(last, b)
                members.append(i)
                continue
            out.append((str(series), first, last, group.iloc[members]))
            first, last, members = a, b, [i]
        out.append((str(series), first, last, group.iloc[members]))
    return out


def _prepare_sub_volume(
    deeplesion: DeepLesionSet,
    series: str,
    first: int,
    last: int,
    rows: pd.DataFrame,
    pixel_mm: float,
    crop_borders: bool,
    hu_window: tuple[float, float],
) -> PreparedVolume:
    spacing = rows["Spacing_mm_px_"].iloc[0]
    hu = deeplesion.read_slices(series, first, last)
    return prepare_volume(
        hu,
        pixel_spacing=(float(spacing[1]), float(spacing[0])),
        spacing_z=float(spacing[2]),
        pixel_mm=pixel_mm,
        crop_borders=crop_borders,
        hu_window=hu_window,
        name=series,
        patient=series.split("_")[0],
    )


def _dl_boxes(volume: PreparedVolume, rows: pd.DataFrame) -> NDArray[np.float64]:
    centres = np.array([tuple(b) for b in rows["Bounding_boxes"]], dtype=np.float64)
    return volume.boxes_from_stored(centres.reshape(-1, 4) + 0.5)


def deeplesion_samples(
    deeplesion: DeepLesionSet,
    *,
    pixel_mm: float,
    slice_mm: float,
    patients: Sequence[str] | None = None,
    crop_borders: bool = True,
    hu_window: tuple[float, float] = HU_WINDOW,
) -> list[SliceSample]:
    """One ``universal`` sample per key slice of the table, boxes its lesions on that slice.

    Args:
        deeplesion: the folder read by :func:`~activecad.io.lesion_sets.read_deeplesion`.
        pixel_mm, slice_mm: output pixel size and slice interval, mm.
        patients: keep only these patients (``<patient>`` of ``<patient>_<study>_<series>``).
        crop_borders: clip black borders.
        hu_window: (low, high) HU mapped to [0, 1]; MELD's -1024..3071 by default.

    Returns:
        The samples, by series and key slice; ``image_id`` is ``<series>_<slice:03d>``.
    """
    rows = deeplesion.info
    if patients is not None:
        rows = rows[rows["series"].str.split("_").str[0].isin(set(patients))]
    samples = []
    for series, first, last, group in _sub_volumes(rows):
        volume = _prepare_sub_volume(
            deeplesion, series, first, last, group, pixel_mm, crop_borders, hu_window
        )
        for key, on_slice in group.groupby("Key_slice_index", sort=True):
            samples.append(
                _sample(
                    volume,
                    float(int(key) - first),
                    slice_mm,
                    _dl_boxes(volume, on_slice),
                    _organ_targets(on_slice),
                    "universal",
                    f"{series}_{int(key):03d}",
                )
            )
    return samples


@dataclass
class TrainingSlices:
    """DeepLesion training slices for mining: key slices and unlabelled slices between them.

    Attributes:
        samples: ``universal`` samples; key slices carry their labelled boxes, the others
            none. ``image_id`` is ``<series>_<slice:03d>`` (the stored slice) for both.
        volume_of: ``image_id`` -> the prepared sub-volume it was cut from (to map boxes back
            to stored pixels with :meth:`PreparedVolume.boxes_to_stored`).
        stored_slice: ``image_id`` -> the stored slice index.
    """

    samples: list[SliceSample]
    volume_of: dict[str, PreparedVolume]
    stored_slice: dict[str, int]

    @property
    def key_slices(self) -> list[SliceSample]:
        """The samples with at least one labelled box."""
        return [s for s in self.samples if len(s.boxes)]


def deeplesion_training_slices(
    deeplesion: DeepLesionSet,
    *,
    pixel_mm: float,
    slice_mm: float,
    every_mm: float = 5.0,
    patients: Sequence[str] | None = None,
    crop_borders: bool = True,
    hu_window: tuple[float, float] = HU_WINDOW,
) -> TrainingSlices:
    """Every key slice of the table and, in each sub-volume, a stored slice every ``every_mm``.

    MELD applies the trained detector to "all slices in the training set ... sampling a
    slice every 5mm" (Yan et al. 2020, section 3.2) to mine missing annotations and
    negative regions; the unlabelled slices then join the fine-tuning set. Key-slice samples
    are the same as :func:`deeplesion_samples` gives (same sub-volumes, crop and boxes).

    Args:
        deeplesion: the partially labelled training folder.
        pixel_mm, slice_mm: output pixel size and slice interval of the samples, mm.
        every_mm: distance between the unlabelled slices taken, mm.
        patients: keep only these patients.
        crop_borders: clip black borders.
        hu_window: (low, high) HU mapped to [0, 1]; MELD's -1024..3071 by default.
    """
    every_mm = _check_positive(every_mm, "every_mm")
    rows = deeplesion.info
    if patients is not None:
        rows = rows[rows["series"].str.split("_").str[0].isin(set(patients))]
    samples: list[SliceSample] = []
    volume_of: dict[str, PreparedVolume] = {}
    stored: dict[str, int] = {}
    for series, first, last, group in _sub_volumes(rows):
        volume = _prepare_sub_volume(
            deeplesion, series, first, last, group, pixel_mm, crop_borders, hu_window
        )
        keys = group["Key_slice_index"].astype(int).to_numpy()
        boxes, organs = _dl_boxes(volume, group), _organ_targets(group)
        step = max(1, round(every_mm / volume.spacing_z))
        chosen = sorted(set(keys.tolist()) | set(range(first, last + 1, step)))
        for index in chosen:
            here = keys == index
            image_id = f"{series}_{index:03d}"
            samples.append(
                _sample(
                    volume, float(index - first), slice_mm, boxes[here], organs[here],
                    "universal", image_id,
                )
            )  # fmt: skip
            volume_of[image_id] = volume
            stored[image_id] = index
    return TrainingSlices(samples, volume_of, stored)


@dataclass
class EvalVolume:
    """One fully annotated sub-volume, every slice position as a sample.

    Attributes:
        volume_id: ``<series>:<first>-<last>``, as ``activecad eval boxes`` names it.
        series, patient: where it comes from.
        samples: sample ``j`` is slice position ``j`` (``slice_mm`` apart from stored slice
            ``first``); its boxes are the lesions whose key slice is nearest to it.
        source_slices: (S,) the stored slice nearest to each position.
        volume: the prepared slices (for :meth:`PreparedVolume.boxes_to_stored`).
    """

    volume_id: str
    series: str
    patient: str
    samples: list[SliceSample]
    source_slices: NDArray[np.int64]
    volume: PreparedVolume

    def ground_truth(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(G,) slice positions and (G, 4) boxes of the truth, in the samples' frame."""
        z = [np.full(len(s.boxes), j) for j, s in enumerate(self.samples)]
        boxes = [s.boxes for s in self.samples]
        return np.concatenate(z).astype(np.int64), np.concatenate(boxes).reshape(-1, 4)

    def to_stored_boxes(self, boxes: ArrayLike4) -> NDArray[np.float64]:
        """Boxes of a sample's frame -> pixel-centre coordinates of the stored PNG slice,
        as ``DL_info.csv`` and ``activecad eval boxes`` predictions use them."""
        return self.volume.boxes_to_stored(boxes) - 0.5


def iter_eval_volumes(
    truth: DeepLesionSet,
    *,
    pixel_mm: float,
    slice_mm: float,
    patients: Sequence[str] | None = None,
    crop_borders: bool = True,
    hu_window: tuple[float, float] = HU_WINDOW,
) -> Iterator[EvalVolume]:
    """The sub-volumes of ``truth`` (merged ``Slice_range`` per series), one at a time.

    Args:
        truth: a fully annotated table and its slices (a phantom's ``DL_info_full.csv``).
        pixel_mm, slice_mm: output pixel size and slice interval, mm.
        patients: keep only these patients.
        crop_borders: clip black borders.
        hu_window: (low, high) HU mapped to [0, 1]; MELD's -1024..3071 by default.
    """
    rows = truth.info
    if patients is not None:
        rows = rows[rows["series"].str.split("_").str[0].isin(set(patients))]
    for series, first, last, group in _sub_volumes(rows):
        volume = _prepare_sub_volume(
            truth, series, first, last, group, pixel_mm, crop_borders, hu_window
        )
        positions = volume.positions(slice_mm)
        step = slice_mm / volume.spacing_z
        at = np.clip(np.rint((group["Key_slice_index"].to_numpy(float) - first) / step), 0, None)
        boxes, organs = _dl_boxes(volume, group), _organ_targets(group)
        samples = []
        for j, z in enumerate(positions):
            here = at == j
            samples.append(
                _sample(
                    volume,
                    float(z),
                    slice_mm,
                    boxes[here],
                    organs[here],
                    "universal",
                    f"{series}:{first}-{last}_{j:03d}",
                )
            )
        yield EvalVolume(
            volume_id=f"{series}:{first}-{last}",
            series=series,
            patient=volume.patient,
            samples=samples,
            source_slices=(first + np.rint(positions)).astype(np.int64),
            volume=volume,
        )


# --------------------------------------------------------------------------- single-type


@dataclass
class _LesionSlices:
    """A single-type volume: the boxes of every slice position."""

    volume: PreparedVolume
    positions: NDArray[np.float64]
    boxes: list[NDArray[np.float64]]
    ignore: list[NDArray[np.float64]]


def _spheres_on_slices(
    volume: PreparedVolume,
    scan: Scan,
    positions: NDArray[np.float64],
    centres_world: NDArray[np.float64],
    radii_mm: NDArray[np.float64],
    *,
    all_ignored: bool = False,
    reach_mm: NDArray[np.float64] | None = None,
) -> tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]:
    """Per slice position, boxes of the spheres it cuts: (boxes, ignore boxes).

    ``reach_mm`` (per lesion, default the radius) is how far from its centre along z a
    lesion may still show: slices beyond the sphere but within it get an ignore box of the
    sphere's width, neither lesion nor background.
    """
    # Standard orientation: index (x, y, z) = (world - origin) / spacing.
    idx = (centres_world.reshape(-1, 3) - scan.origin) / scan.spacing
    reach = radii_mm if reach_mm is None else np.maximum(reach_mm, radii_mm)
    boxes: list[list[NDArray[np.float64]]] = [[] for _ in positions]
    ignore: list[list[NDArray[np.float64]]] = [[] for _ in positions]
    for (cx, cy, cz), radius, far in zip(idx, radii_mm, reach, strict=True):
        dz = (positions - cz) * scan.spacing[2]
        for j in np.flatnonzero(np.abs(dz) < far):
            inside = abs(dz[j]) < radius
            rho = float(np.sqrt(radius**2 - dz[j] ** 2)) if inside else float(radius)
            hx, hy = rho / scan.spacing[0], rho / scan.spacing[1]
            stored = np.array([cx + 0.5 - hx, cy + 0.5 - hy, cx + 0.5 + hx, cy + 0.5 + hy])
            positive = inside and not all_ignored and rho >= _CAP * radius
            (boxes if positive else ignore)[j].append(volume.boxes_from_stored(stored)[0])
    return [np.array(b).reshape(-1, 4) for b in boxes], [np.array(b).reshape(-1, 4) for b in ignore]


def _components_on_slices(
    volume: PreparedVolume, positions: NDArray[np.float64], tumour: NDArray[np.bool_]
) -> tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]:
    """Per slice position, boxes of the 3D tumour components on the nearest stored slice."""
    labels, count = ndimage.label(tumour)
    widths = np.zeros(count + 1)
    per_slice: list[list[tuple[int, NDArray[np.float64]]]] = []
    for z in range(labels.shape[0]):
        found = []
        for k, sl in enumerate(ndimage.find_objects(labels[z]), start=1):
            if sl is None:
                continue
            box = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], dtype=np.float64)
            widths[k] = max(widths[k], box[2] - box[0], box[3] - box[1])
            found.append((k, box))
        per_slice.append(found)
    boxes, ignore = [], []
    for z in positions:
        keep: list[NDArray[np.float64]] = []
        skip: list[NDArray[np.float64]] = []
        for k, box in per_slice[min(int(np.rint(z)), labels.shape[0] - 1)]:
            wide = max(box[2] - box[0], box[3] - box[1]) >= _CAP * widths[k]
            (keep if wide else skip).append(volume.boxes_from_stored(box)[0])
        boxes.append(np.array(keep).reshape(-1, 4))
        ignore.append(np.array(skip).reshape(-1, 4))
    return boxes, ignore


def _prepare_scan(
    scan: Scan, pixel_mm: float, crop_borders: bool, hu_window: tuple[float, float], patient: str
) -> PreparedVolume:
    return prepare_volume(
        scan.array,
        pixel_spacing=(float(scan.spacing[1]), float(scan.spacing[0])),
        spacing_z=float(scan.spacing[2]),
        pixel_mm=pixel_mm,
        crop_borders=crop_borders,
        hu_window=hu_window,
        name=scan.seriesuid,
        patient=patient,
    )


@dataclass
class EpochSampler:
    """One epoch's samples of a single-type dataset: all lesion slices, as many negatives.

    Calling it with a generator (or an integer seed) gives every slice position that
    shows a lesion and the same number of positions without any lesion (nor ignore box),
    drawn afresh (without replacement while there are enough). It satisfies the model
    side's ``SampleSource`` sampler type.

    Attributes:
        dataset: one of ``DATASETS[1:]``; ``organ`` its organ in ``ORGANS``.
        slices: the prepared volumes and their boxes per slice position.
        slice_mm: slice interval of the samples, mm.
    """

    dataset: str
    organ: str
    slices: list[_LesionSlices]
    slice_mm: float
    patients: list[str] = field(default_factory=list)

    def _where(self, positive: bool) -> list[tuple[int, int]]:
        out = []
        for v, item in enumerate(self.slices):
            for j in range(len(item.positions)):
                has = len(item.boxes[j]) > 0
                empty = not has and len(item.ignore[j]) == 0
                if (positive and has) or (not positive and empty):
                    out.append((v, j))
        return out

    @property
    def n_positive(self) -> int:
        """Number of slice positions that show a lesion."""
        return len(self._where(True))

    def __call__(self, rng: np.random.Generator | int) -> list[SliceSample]:
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        positives = self._where(True)
        negatives = self._where(False)
        picked: list[tuple[int, int]] = []
        if negatives and positives:
            replace_ = len(negatives) < len(positives)
            chosen = rng.choice(len(negatives), len(positives), replace=replace_)
            picked = [negatives[i] for i in np.sort(chosen)]
        return [self._make(v, j) for v, j in positives + picked]

    def _make(self, v: int, j: int) -> SliceSample:
        item = self.slices[v]
        boxes = item.boxes[j]
        return _sample(
            item.volume,
            float(item.positions[j]),
            self.slice_mm,
            boxes,
            _one_hot(self.organ, len(boxes)),
            self.dataset,
            f"{item.volume.name}_{j:03d}",
            item.ignore[j],
        )


def _luna_slices(
    data_dir: Path, pixel_mm: float, slice_mm: float, crop: bool, window: tuple[float, float]
) -> tuple[list[_LesionSlices], dict[str, str]]:
    folder = read_luna_folder(data_dir)
    out, patients = [], {}
    excluded = folder.excluded if folder.excluded is not None else folder.annotations.iloc[:0]
    for path in folder.scans:
        scan = to_standard_orientation(read_scan(path))
        patient = scan.patient_id or scan.seriesuid
        patients[scan.seriesuid] = patient
        volume = _prepare_scan(scan, pixel_mm, crop, window, patient)
        positions = volume.positions(slice_mm)
        rows = folder.annotations[folder.annotations["seriesuid"] == scan.seriesuid]
        boxes, ignore = _spheres_on_slices(
            volume,
            scan,
            positions,
            rows[XYZ].to_numpy(np.float64),
            rows["diameter_mm"].to_numpy(np.float64) / 2.0,
        )
        other = excluded[excluded["seriesuid"] == scan.seriesuid]
        diameters = other["diameter_mm"].to_numpy(np.float64)
        _, ignored = _spheres_on_slices(
            volume,
            scan,
            positions,
            other[XYZ].to_numpy(np.float64),
            np.where(diameters > 0, diameters, DEFAULT_DIAMETER_MM) / 2.0,
            all_ignored=True,
        )
        ignore = [np.concatenate([a, b]) for a, b in zip(ignore, ignored, strict=True)]
        out.append(_LesionSlices(volume, positions, boxes, ignore))
    return out, patients


def _lits_slices(
    data_dir: Path, pixel_mm: float, slice_mm: float, crop: bool, window: tuple[float, float]
) -> tuple[list[_LesionSlices], dict[str, str]]:
    out, patients = [], {}
    for volume_path, seg_path in find_lits_cases(data_dir):
        case = read_lits_case(volume_path, seg_path)
        name = f"volume-{case.name}"
        patients[name] = name
        scan = to_standard_orientation(case.scan)
        labels = to_standard_orientation(replace(case.scan, array=case.labels)).array
        volume = _prepare_scan(scan, pixel_mm, crop, window, name)
        volume.name = name
        positions = volume.positions(slice_mm)
        boxes, ignore = _components_on_slices(volume, positions, labels == 2)
        out.append(_LesionSlices(volume, positions, boxes, ignore))
    return out, patients


def _nih_slices(
    data_dir: Path, pixel_mm: float, slice_mm: float, crop: bool, window: tuple[float, float]
) -> tuple[list[_LesionSlices], dict[str, str]]:
    nih = read_nih_ln(data_dir)
    out, patients = [], {}
    for patient, path in nih.scans.items():
        patients[patient] = patient
        raw = read_scan(path)
        rows = nih.nodes[nih.nodes["patient"] == patient]
        world = rows[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
        voxel = rows[["index_z", "index_y", "index_x"]].to_numpy(np.float64)
        missing = np.isnan(world).any(axis=1)
        if missing.any():
            world[missing] = voxel_to_world(
                voxel[missing], origin=raw.origin, spacing=raw.spacing, direction=raw.direction
            ).reshape(-1, 3)
        axes = rows[["short_axis_mm", "long_axis_mm"]].to_numpy(np.float64)
        radii = np.where(np.isnan(axes[:, 0]), DEFAULT_DIAMETER_MM, axes.mean(axis=1)) / 2.0
        # The lists give in-plane axes only; nodes run longer along z than across, so a
        # node may show up to one long axis from its centre (see NODE_REACH).
        longest = np.fmax(axes[:, 1], axes[:, 0])
        reach = NODE_REACH * np.where(np.isnan(longest), DEFAULT_DIAMETER_MM, longest)
        scan = to_standard_orientation(raw)
        volume = _prepare_scan(scan, pixel_mm, crop, window, patient)
        volume.name = patient
        positions = volume.positions(slice_mm)
        boxes, ignore = _spheres_on_slices(volume, scan, positions, world, radii, reach_mm=reach)
        out.append(_LesionSlices(volume, positions, boxes, ignore))
    return out, patients


# --------------------------------------------------------------------------- augmentation


def _move_boxes(
    boxes: NDArray[np.float64],
    scale: NDArray[np.float64],
    shift: NDArray[np.float64],
    size: tuple[int, int],
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    moved = boxes.reshape(-1, 4) * np.tile(scale, 2) + np.tile(shift, 2)
    height, width = size
    clipped = np.clip(moved, 0.0, [width, height, width, height])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep


def augment_sample(
    sample: SliceSample,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.8, 1.2),
    max_shift_px: int = 8,
) -> SliceSample:
    """MELD's training augmentation (appendix 7.2): random resize, then random shift.

    The image is resized by a factor from ``scale_range`` (bilinear) and moved by whole
    pixels from ``-max_shift_px..max_shift_px`` in x and y, keeping its resized size
    (uncovered pixels are 0, i.e. -1024 HU); boxes and ignore boxes move with it, are
    clipped to the image, and those left with no area are dropped (with their organs).

    Returns:
        A new sample; ``spacing`` follows the resize.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    factor = float(rng.uniform(low, high))
    shift = rng.integers(-max_shift_px, max_shift_px + 1, size=2)  # x, y
    _, height, width = sample.image.shape
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    image = torch.from_numpy(np.ascontiguousarray(sample.image, dtype=np.float32))[None]
    resized = nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)[0]
    src = resized.numpy()
    out = np.zeros_like(src)
    dx, dy = int(shift[0]), int(shift[1])
    ys, yd = (
        (slice(0, size[0] - dy), slice(dy, size[0]))
        if dy >= 0
        else (
            slice(-dy, size[0]),
            slice(0, size[0] + dy),
        )
    )
    xs, xd = (
        (slice(0, size[1] - dx), slice(dx, size[1]))
        if dx >= 0
        else (
            slice(-dx, size[1]),
            slice(0, size[1] + dx),
        )
    )
    out[:, yd, xd] = src[:, ys, xs]
    scale = np.array([size[1] / width, size[0] / height])
    offset = np.array([dx, dy], dtype=np.float64)
    boxes, keep = _move_boxes(sample.boxes, scale, offset, size)
    ignore, keep_ignore = _move_boxes(sample.ignore_boxes, scale, offset, size)
    return replace(
        sample,
        image=out,
        boxes=boxes[keep],
        organs=sample.organs[keep],
        detected=None if sample.detected is None else sample.detected[keep],
        ignore_boxes=ignore[keep_ignore],
        spacing=(sample.spacing[0] / scale[1], sample.spacing[1] / scale[0]),
    )


# --------------------------------------------------------------------------- entry point


@dataclass
class DatasetSamples:
    """Training and validation samples of one dataset.

    Attributes:
        dataset: one of ``DATASETS``.
        train: a list (DeepLesion's key slices) or an :class:`EpochSampler`.
        val: fixed validation samples (single-type sets: lesion slices and as many
            negatives drawn once with the split seed).
        train_patients, val_patients: the patients of each split.
    """

    dataset: str
    train: list[SliceSample] | EpochSampler
    val: list[SliceSample]
    train_patients: list[str]
    val_patients: list[str]


class EvalVolumes:
    """The held-out DeepLesion sub-volumes, prepared one at a time when iterated."""

    def __init__(self, truth: DeepLesionSet | None, patients: list[str], **options: object):
        self.truth, self.patients, self.options = truth, patients, options

    def __iter__(self) -> Iterator[EvalVolume]:
        if self.truth is None or not self.patients:
            return iter(())
        return iter_eval_volumes(self.truth, patients=self.patients, **self.options)  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self.truth is None or not self.patients:
            return 0
        rows = self.truth.info
        return len(_sub_volumes(rows[rows["series"].str.split("_").str[0].isin(self.patients)]))


@dataclass
class LesionSets:
    """Everything the MELD model side trains and evaluates on.

    Attributes:
        datasets: ``DATASETS`` name -> its samples (only the datasets found on disk).
        evaluation: DeepLesion's held-out fully annotated sub-volumes (iterate it).
        test_patients: DeepLesion patients held out for evaluation.
        pixel_mm, slice_mm: the preprocessing used.
    """

    datasets: dict[str, DatasetSamples]
    evaluation: EvalVolumes
    test_patients: list[str]
    pixel_mm: float
    slice_mm: float

    def train_source(
        self,
        rng: np.random.Generator | int,
        *,
        single_type_share: float | None = None,
        universal: Sequence[SliceSample] | None = None,
    ) -> list[SliceSample]:
        """One epoch of every dataset's training samples (samplers drawn with ``rng``).

        Args:
            rng: generator (or seed) of the epoch's draws.
            universal: samples to use in place of the universal set's (MELD's fine-tuning
                set: key slices with mined lesions, and unlabelled slices).
            single_type_share: at most this share of the epoch comes from the single-type
                sets; when they hold more, each keeps a random subset in proportion to its
                size. In the paper DeepLesion's key slices are about half of all samples;
                on a small universal set the single-type sets would otherwise swamp it.
                ``None``: every sample of every set.

        Raises:
            ValueError: ``single_type_share`` outside (0, 1).
        """
        if single_type_share is not None and not 0 < single_type_share < 1:
            raise ValueError(f"single_type_share must lie in (0, 1), got {single_type_share}")
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        drawn = {
            name: list(item.train(rng) if callable(item.train) else item.train)
            for name, item in self.datasets.items()
        }
        if universal is not None:
            drawn["universal"] = list(universal)
        single = sum(len(v) for k, v in drawn.items() if k != "universal")
        universal = len(drawn.get("universal", []))
        if single_type_share is not None and single and universal:
            cap = universal * single_type_share / (1 - single_type_share)
            if single > cap:
                for name, samples in drawn.items():
                    if name != "universal":
                        keep = round(len(samples) * cap / single)
                        picked = np.sort(rng.choice(len(samples), keep, replace=False))
                        drawn[name] = [samples[i] for i in picked]
        return [s for samples in drawn.values() for s in samples]

    def val_samples(self) -> list[SliceSample]:
        """Every dataset's validation samples."""
        return [s for item in self.datasets.values() for s in item.val]


_FOLDERS = {
    "universal": "deeplesion",
    "lung_nodules": "luna",
    "liver_tumours": "lits",
    "lymph_nodes": "nih_ln",
}


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(f"{name} must be a positive number of mm, got {value!r}", fix="e.g. 2.0")
    return float(value)


def load_lesion_sets(
    data_dir: str | Path,
    *,
    pixel_mm: float,
    slice_mm: float,
    split: str = "official",
    val_fraction: float = 0.2,
    test_fraction: float = 0.15,
    seed: int = 0,
    crop_borders: bool = True,
    hu_window: tuple[float, float] = HU_WINDOW,
) -> LesionSets:
    """Read whichever of ``deeplesion/ luna/ lits/ nih_ln/`` ``data_dir`` holds, as samples.

    Splits are by patient. DeepLesion: ``split="official"`` uses ``Train_Val_Test``
    (1 train, 2 validation, 3 test), ``"random"`` a seeded split with ``val_fraction`` and
    ``test_fraction``. Single-type sets: a seeded ``1 - val_fraction`` / ``val_fraction``
    split (the paper's 80/20), none held out below 5 patients.

    Args:
        data_dir: folder with the dataset folders (``activecad.phantom.lesion_sets``
            writes one).
        pixel_mm: in-plane pixel size of the samples, mm (paper 0.8).
        slice_mm: slice interval of the 9 slices, mm (paper 2).
        split: ``"official"`` or ``"random"``.
        val_fraction, test_fraction: shares of patients held out (see above).
        seed: seed of the random splits and of the validation negatives.
        crop_borders: clip black borders.
        hu_window: (low, high) HU mapped to [0, 1]; MELD's -1024..3071 by default.

    Returns:
        The samples of each dataset found and the evaluation sub-volumes.

    Raises:
        InputError: no dataset folder, a bad value, or bad files (from the readers).
    """
    data_dir = Path(data_dir)
    pixel_mm = _check_positive(pixel_mm, "pixel_mm")
    slice_mm = _check_positive(slice_mm, "slice_mm")
    low, high = (float(v) for v in hu_window)
    if not low < high:
        raise InputError(f"hu_window must be (low, high) with low < high, got {hu_window}")
    window = (low, high)
    if split not in SPLITS:
        close = difflib.get_close_matches(split, SPLITS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"unknown split {split!r}", fix=f"use one of {', '.join(SPLITS)}{hint}")
    present = {d: data_dir / f for d, f in _FOLDERS.items() if (data_dir / f).is_dir()}
    if not present:
        raise InputError(
            "no lesion dataset folder (deeplesion/, luna/, lits/ or nih_ln/)",
            path=data_dir,
            fix="write one with activecad.phantom.lesion_sets.write_lesion_sets",
        )
    options = {
        "pixel_mm": pixel_mm,
        "slice_mm": slice_mm,
        "crop_borders": crop_borders,
        "hu_window": window,
    }
    datasets: dict[str, DatasetSamples] = {}
    evaluation = EvalVolumes(None, [], **options)
    test: list[str] = []
    if "universal" in present:
        folder = present["universal"]
        dl = read_deeplesion(folder)
        patient = dl.info["series"].str.split("_").str[0]
        everyone = sorted(set(patient))
        if split == "official":
            code = dl.info["Train_Val_Test"].to_numpy()
            by = {c: sorted(set(patient[code == c])) for c in (1, 2, 3)}
            train, val, test = by[1], by[2], by[3]
        else:
            parts = split_by_patient(
                everyone, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
            )
            train, val, test = parts.train, parts.val, parts.test
        datasets["universal"] = DatasetSamples(
            "universal",
            deeplesion_samples(dl, patients=train, **options),  # type: ignore[arg-type]
            deeplesion_samples(dl, patients=val, **options),  # type: ignore[arg-type]
            train,
            val,
        )
        full = folder / "DL_info_full.csv"
        truth = read_deeplesion(folder, table=full.name) if full.is_file() else dl
        evaluation = EvalVolumes(truth, test, **options)
    readers = {
        "lung_nodules": _luna_slices,
        "liver_tumours": _lits_slices,
        "lymph_nodes": _nih_slices,
    }
    for k, dataset in enumerate(DATASETS[1:]):
        if dataset not in present:
            continue
        slices, patients = readers[dataset](
            present[dataset], pixel_mm, slice_mm, crop_borders, window
        )
        parts = split_by_patient(
            sorted(patients), val_fraction=val_fraction, seed=seed, groups=patients
        )
        val_names = set(parts.val)
        organ = ORGANS[k]
        train_items = [s for s in slices if s.volume.name not in val_names]
        val_items = [s for s in slices if s.volume.name in val_names]
        sampler = EpochSampler(dataset, organ, train_items, slice_mm)
        validation = EpochSampler(dataset, organ, val_items, slice_mm)
        datasets[dataset] = DatasetSamples(
            dataset,
            sampler,
            validation(np.random.default_rng([seed, 1])) if val_items else [],
            sorted({patients[v] for v in parts.train}),
            sorted({patients[v] for v in parts.val}),
        )
    return LesionSets(datasets, evaluation, list(test), pixel_mm, slice_mm)
