"""Presets of the phantom generator: image sizes, spacing and how much detail to draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from activecad.errors import InputError

PresetName = Literal["small", "medium", "full"]


@dataclass(frozen=True)
class Preset:
    """What one preset of the phantom draws.

    Attributes:
        name: ``"small"``, ``"medium"`` or ``"full"``.
        inplane_size: number of columns and rows of every CT slice.
        spacing_scale: factor on the LIDC-like in-plane pixel spacing (0.5-0.9 mm).
        slice_spacings_mm: slice thicknesses to draw from, mm.
        slice_spacing_weights: their probabilities (LIDC thin scans, ``lidc_stats.json``).
        min_vessel_radius_mm: where vessel branches stop; the full preset goes sub-millimetre.
        max_segments_per_tree: safety bound on the size of one vessel tree.
        cxr_size: side of the square chest radiograph, pixels.
        border_blur: soften organ borders in-plane by one voxel ([1, 2, 1] / 4), standing
            in for the partial volume that coarse voxels on a border would have.
    """

    name: str
    inplane_size: int
    spacing_scale: float
    slice_spacings_mm: tuple[float, ...]
    slice_spacing_weights: tuple[float, ...]
    min_vessel_radius_mm: float
    max_segments_per_tree: int
    cxr_size: int
    border_blur: bool


# Thin-scan (<= 2.5 mm) LIDC slice thicknesses: quantiles 1.0/1.25/2.0/2.5 at 5/25/50/75 %
# (lidc_stats.json), conditioned on <= 2.5 mm, put on the values scanners actually use.
_LIDC_THICKNESS = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5)
_LIDC_THICKNESS_W = (0.03, 0.05, 0.22, 0.05, 0.23, 0.42)

PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        inplane_size=128,
        spacing_scale=4.0,
        slice_spacings_mm=(2.5, 3.0, 3.5),
        slice_spacing_weights=(0.3, 0.4, 0.3),
        min_vessel_radius_mm=0.6,
        max_segments_per_tree=1200,
        cxr_size=256,
        border_blur=True,
    ),
    # Between the two: 1.0-1.8 mm pixels and 1.25-2 mm slices, so a 5 mm nodule spans 2.5-5
    # voxels on every axis (on the small preset's 2-3.6 mm voxels, 1.4-2.5), the same field
    # of view in 256 x 256 pixels; a scan is about 220 slices, 57 MB as float32 MetaImage.
    "medium": Preset(
        name="medium",
        inplane_size=256,
        spacing_scale=2.0,
        slice_spacings_mm=(1.25, 1.5, 2.0),
        slice_spacing_weights=(0.3, 0.4, 0.3),
        min_vessel_radius_mm=0.45,
        max_segments_per_tree=2500,
        cxr_size=256,
        border_blur=True,
    ),
    "full": Preset(
        name="full",
        inplane_size=512,
        spacing_scale=1.0,
        slice_spacings_mm=_LIDC_THICKNESS,
        slice_spacing_weights=_LIDC_THICKNESS_W,
        min_vessel_radius_mm=0.35,
        max_segments_per_tree=4000,
        cxr_size=512,
        border_blur=False,
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name.

    Raises:
        InputError: ``name`` is not a known preset.
    """
    if name not in PRESETS:
        raise InputError(
            f"unknown phantom preset {name!r}", fix=f"use one of: {', '.join(PRESETS)}"
        )
    return PRESETS[name]
