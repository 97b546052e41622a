"""2.5D training and test samples for universal lesion detection (MELD, Yan et al. 2020).

One sample is one CT slice with its neighbours: 9 slices at a fixed slice interval, HU
windowed, and the boxes of that slice as the sample's dataset labels them. The data side
(cohort readers, preprocessing) produces these; the model side (``activecad.models.meld``)
consumes them. Nothing here reads files.

Datasets and organs follow the paper: one universal, partially labelled set (DeepLesion
style: key-slice boxes, many lesions unmarked) and three fully labelled single-type sets,
each of which marks only its own lesion type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

DATASETS: tuple[str, ...] = ("universal", "lung_nodules", "liver_tumours", "lymph_nodes")
"""Dataset of a sample; index 0 is the universal set, whose head is the whole-body head."""

ORGANS: tuple[str, ...] = ("lung", "liver", "lymph_node")
"""Organ of each single-type expert, in ``DATASETS[1:]`` order; the gating head's outputs."""

SLICES_PER_SAMPLE = 9
"""Neighbouring slices per sample (MULAN / MELD): three groups of three, centre slice 4."""


@dataclass
class SliceSample:
    """One slice and its neighbours, with the boxes its dataset labels.

    Attributes:
        image: (9, H, W) float32, the HU window mapped to [0, 1]; slice 4 is the labelled
            slice, 0..3 and 5..8 its neighbours at the fixed slice interval (edge slices
            repeated at the volume's ends).
        boxes: (N, 4) float64 ``x1, y1, x2, y2`` in pixels of ``image`` (continuous corners:
            a box is ``x2 - x1`` wide); the lesions this sample's dataset marks on slice 4.
        organs: (N, 3) float32 soft organ targets of each box in ``ORGANS`` order, in [0, 1]
            (from the lesion's organ where known; see the data module for real data).
        dataset: one of ``DATASETS``.
        image_id: the slice's name, DeepLesion-style ``<patient>_<study>_<series>_<slice>``.
        patient: patient id (MAM compares only within a patient).
        ignore_boxes: (K, 4) regions neither positive nor negative in training (NRM's
            suspicious lesions, excluded findings).
        spacing: (row, column) pixel size of ``image``, mm.
        detected: (N,) bool, True for a box a detector found rather than a reader drew (a
            mined missing annotation, a suspicious region taken as positive): it trains the
            classification heads but not box regression, "since they are detected proposals
            and the box may be inaccurate" (Yan et al. 2020, section 3.2). ``None``: none.
    """

    image: NDArray[np.float32]
    boxes: NDArray[np.float64]
    organs: NDArray[np.float32]
    dataset: str
    image_id: str
    patient: str
    ignore_boxes: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 4)))
    spacing: tuple[float, float] = (1.0, 1.0)
    detected: NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}.")
        if self.image.ndim != 3 or self.image.shape[0] != SLICES_PER_SAMPLE:
            raise ValueError(
                f"image must be ({SLICES_PER_SAMPLE}, H, W), got shape {self.image.shape}."
            )
        if self.boxes.shape != (len(self.boxes), 4) or self.organs.shape != (len(self.boxes), 3):
            raise ValueError(
                f"boxes must be (N, 4) and organs (N, 3) for the same N, got "
                f"{self.boxes.shape} and {self.organs.shape}."
            )
        if self.detected is not None and self.detected.shape != (len(self.boxes),):
            raise ValueError(
                f"detected must be (N,) for the N = {len(self.boxes)} boxes, got "
                f"{self.detected.shape}."
            )

    @property
    def regressed(self) -> NDArray[np.bool_]:
        """(N,) True for the boxes that train box regression (the drawn ones)."""
        if self.detected is None:
            return np.ones(len(self.boxes), dtype=bool)
        return ~self.detected
