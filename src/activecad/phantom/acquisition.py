"""The CT acquisition: field of view, spacing, orientation, blur, noise and scanner offset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from activecad.phantom.config import Preset
from activecad.phantom.raster import Grid

# LIDC pixel spacing quantiles at 5/25/50/75/95 % (lidc_stats.json), extended to the
# 0.5-0.9 mm range at 0 and 100 %.
_SPACING_Q = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_SPACING_MM = (0.5, 0.557, 0.625, 0.699, 0.742, 0.831, 0.9)

# Orientations stored on disk: identity (most scans), x-y flipped (scanners that write
# rows right-to-left), slices head-to-feet, and a quarter turn in-plane.
DIRECTIONS: tuple[tuple[np.ndarray, float], ...] = (
    (np.eye(3), 0.7),
    (np.diag([-1.0, -1.0, 1.0]), 0.1),
    (np.diag([1.0, 1.0, -1.0]), 0.1),
    (np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), 0.1),
)


@dataclass(frozen=True)
class Scanner:
    """A virtual scanner: its name and the HU offset of its calibration."""

    name: str
    hu_offset: float


def sample_scanners(rng: np.random.Generator, n: int = 4) -> list[Scanner]:
    """The cohort's scanners, each with its own HU calibration offset (sd 8 HU)."""
    names = ("Scanner-A", "Scanner-B", "Scanner-C", "Scanner-D", "Scanner-E")
    return [Scanner(names[i % len(names)], round(float(rng.normal(0.0, 8.0)), 1)) for i in range(n)]


@dataclass(frozen=True)
class Acquisition:
    """How one study was scanned.

    Attributes:
        grid: identity-direction grid the volume is drawn on (world mm).
        direction: (3, 3) direction of the stored array (a signed permutation).
        body_center: (3,) world mm of the body origin (carina level, body centre).
        noise_sd: standard deviation of the image noise, HU.
        dose: ``"standard"`` or ``"low"``.
        scanner: the scanner used.
        psf_mm: in-plane blur (sd of the point spread function), mm.
    """

    grid: Grid
    direction: np.ndarray
    body_center: np.ndarray
    noise_sd: float
    dose: str
    scanner: Scanner
    psf_mm: float


def sample_acquisition(
    rng: np.random.Generator,
    preset: Preset,
    apex_w: float,
    lowest_lung: float,
    scanners: list[Scanner],
) -> Acquisition:
    """Draw spacing, field of view, orientation, position and dose of one study.

    Args:
        rng: random generator.
        preset: image sizes and spacing ranges.
        apex_w: height of the lung apices above the carina (the scan starts above them), mm.
        lowest_lung: height of the deepest lung recess (negative), mm.
        scanners: scanners of the cohort; one is picked.
    """
    px = float(np.interp(rng.uniform(), _SPACING_Q, _SPACING_MM)) * preset.spacing_scale
    px = round(px, 4)
    sz = float(rng.choice(preset.slice_spacings_mm, p=preset.slice_spacing_weights))
    nx = ny = preset.inplane_size
    # From just above the apices to below the deepest costophrenic recess, as a chest CT.
    z_fov = apex_w + rng.uniform(5.0, 20.0) - lowest_lung + rng.uniform(15.0, 40.0)
    nz = int(np.ceil(z_fov / sz))
    body_center = np.array(
        [rng.uniform(-25.0, 25.0), rng.uniform(-20.0, 40.0), rng.uniform(-200.0, -60.0)]
    )
    top = body_center[2] + lowest_lung + (nz - 1) * sz
    fov_center = body_center[:2] + rng.uniform(-10.0, 10.0, 2) + np.array([0.0, 15.0])
    origin = np.array(
        [
            fov_center[0] - 0.5 * (nx - 1) * px,
            fov_center[1] - 0.5 * (ny - 1) * px,
            top - (nz - 1) * sz,
        ]
    )
    origin = np.round(origin, 3)
    grid = Grid((nz, ny, nx), np.array([px, px, sz]), origin)
    weights = np.array([w for _, w in DIRECTIONS])
    direction = DIRECTIONS[int(rng.choice(len(DIRECTIONS), p=weights))][0]
    low = rng.random() < 0.4
    noise = rng.uniform(35.0, 70.0) if low else rng.uniform(12.0, 30.0)
    scanner = scanners[int(rng.integers(len(scanners)))]
    return Acquisition(
        grid,
        direction,
        body_center,
        float(noise),
        "low" if low else "standard",
        scanner,
        float(rng.uniform(0.4, 0.7)),
    )


def acquire(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Turn the drawn volume into what the scanner reconstructs, in place.

    Blurs by the point spread function and the slice profile (partial volume), adds
    spatially correlated noise and the scanner's HU offset, rounds to whole HU and clips
    to the 12-bit CT range.

    Args:
        hu: (Z, Y, X) float32 HU on ``acq.grid``; overwritten.
        acq: the acquisition.
        rng: random generator for the noise.

    Returns:
        (Z, Y, X) float32 whole-HU values in [-1024, 3071].
    """
    sx, sy, _ = acq.grid.spacing
    # The slice profile spreads each slice over its neighbours (partial volume along z).
    ndimage.gaussian_filter1d(hu, 0.4, axis=0, output=hu, truncate=3.0)
    psf = (0.0, acq.psf_mm / sy, acq.psf_mm / sx)
    # Filtered back projection correlates noise within a slice; the gain makes the sd
    # after filtering the requested one (1 / norm of the kernel).
    noise_sigma = (0.0, 0.7, 0.7)
    delta = np.zeros((1, 15, 15), dtype=np.float32)
    delta[0, 7, 7] = 1.0
    kernel = ndimage.gaussian_filter(delta, noise_sigma, truncate=2.0)
    gain = np.float32(acq.noise_sd / np.sqrt(float((kernel**2).sum())))
    offset = np.float32(acq.scanner.hu_offset)
    for z0 in range(0, hu.shape[0], 16):
        slab = hu[z0 : z0 + 16]
        ndimage.gaussian_filter(slab, psf, output=slab, truncate=3.0)
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        ndimage.gaussian_filter(noise, noise_sigma, output=noise, truncate=2.0)
        noise *= gain
        slab += noise
        slab += offset
        np.rint(slab, out=slab)
        np.clip(slab, -1024.0, 3071.0, out=slab)
    return hu


def reorient(
    array: np.ndarray, grid: Grid, direction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-lay an identity-direction volume so that it is stored with ``direction``.

    The world position of every voxel is unchanged; only the array order changes.

    Args:
        array: (Z, Y, X) volume on ``grid``.
        grid: its identity-direction grid.
        direction: (3, 3) signed permutation, column i = world direction of stored axis i
            (x-y-z order).

    Returns:
        (stored array (z, y, x), origin (3,) world mm, spacing (3,) mm x-y-z).
    """
    perm = np.argmax(np.abs(direction), axis=0)
    sign = np.sign(direction[perm, np.arange(3)])
    if sorted(perm.tolist()) != [0, 1, 2] or np.any(sign == 0):
        raise ValueError(f"direction must be a signed permutation, got {direction.tolist()}")
    xyz = array.transpose(2, 1, 0).transpose(perm)
    flips = tuple(int(i) for i in np.flatnonzero(sign < 0))
    if flips:
        xyz = np.flip(xyz, axis=flips)
    n_xyz = np.asarray(grid.shape[::-1])
    start = np.zeros(3)
    for i in range(3):
        if sign[i] < 0:
            start[perm[i]] = n_xyz[perm[i]] - 1
    origin = grid.origin + grid.spacing * start
    spacing = grid.spacing[perm]
    return np.ascontiguousarray(xyz.transpose(2, 1, 0)), origin, spacing
