"""The in-memory types every reader returns: a CT ``Scan`` and a chest ``Radiograph``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scan:
    """A CT volume in Hounsfield units with the geometry needed to place it in the world.

    Attributes:
        array: (Z, Y, X) HU values, float32, indexed z, y, x.
        spacing: (3,) voxel size in mm in x, y, z order (as SimpleITK and LUNA16 give it).
        origin: (3,) world position in mm (x, y, z) of the centre of voxel (0, 0, 0).
        direction: (3, 3) direction cosines; column ``i`` is the world direction of the
            array's axis ``i`` in x, y, z order (i = 0 for x/columns, 2 for z/slices),
            the same layout as SimpleITK's ``GetDirection()`` reshaped to 3 x 3.
        seriesuid: identifier of the CT series.
        patient_id: identifier of the patient, if known.
        study_id: identifier of the study, if known.
        modality: DICOM modality, ``"CT"`` by default.
        meta: anything else a reader knows (source path, warnings about slices, ...).
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    seriesuid: str = ""
    patient_id: str = ""
    study_id: str = ""
    modality: str = "CT"
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"Scan.array must be 3D (z, y, x), got shape {self.array.shape}")
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if np.any(self.spacing <= 0):
            raise ValueError(f"Scan.spacing must be positive, got {self.spacing.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) number of voxels."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)


@dataclass
class Radiograph:
    """A 2D projection image (chest radiograph).

    Attributes:
        array: (Y, X) float32 intensities, larger = brighter (MONOCHROME2 convention).
        spacing: (2,) pixel size in mm in x, y order (1.0 when unknown).
        image_id: identifier of the image.
        patient_id: identifier of the patient, if known.
        bits: bit depth of the stored image (8 or 16).
        meta: anything else a reader knows.
    """

    array: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(2))
    image_id: str = ""
    patient_id: str = ""
    bits: int = 16
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 2:
            raise ValueError(f"Radiograph.array must be 2D (y, x), got shape {self.array.shape}")
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(2)
