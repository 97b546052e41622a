"""Tiny test volumes with geometry that catches axis-order and direction mistakes."""

from __future__ import annotations

import numpy as np

from activecad.io.scan import Scan

# A proper rotation (det +1) about all three axes: every off-diagonal term is non-zero, so
# a transposed direction or a swapped axis shows up as a wrong position.
ROTATION = np.array(
    [
        [0.8137976813493738, -0.4409696105298823, 0.37852230636979256],
        [0.4698463103929542, 0.8825641192593856, 0.01802831123629725],
        [-0.3420201433256687, 0.16317591116653482, 0.9254165783983234],
    ]
)


def make_scan(
    *,
    shape: tuple[int, int, int] = (6, 8, 10),
    direction: np.ndarray = ROTATION,
    seriesuid: str = "1.2.826.0.1.3680043.8.498.1001",
    seed: int = 0,
) -> Scan:
    """A (z, y, x) volume of whole HU values, each voxel distinct, with an offset origin.

    Args:
        shape: (Z, Y, X) voxels.
        direction: (3, 3) direction cosines (columns = array axes x, y, z).
        seriesuid: written as the SeriesInstanceUID.
        seed: seeds the HU values.

    Returns:
        The scan; spacing (0.7, 0.8, 2.5) mm x-y-z differs per axis so swapped axes fail.
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    # Distinct values make any reordering of slices, rows or columns visible.
    values = rng.permutation(size).astype(np.float32) - 1024.0
    return Scan(
        array=values.reshape(shape),
        spacing=np.array([0.7, 0.8, 2.5]),
        origin=np.array([-120.25, 35.5, -310.75]),
        direction=direction,
        seriesuid=seriesuid,
        patient_id="PATIENT-007",
        study_id="1.2.826.0.1.3680043.8.498.2002",
    )
