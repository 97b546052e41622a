"""What the heuristics see of one pool item: plain numbers, no model.

An item is a scan (scan-level active learning, Liu, Cao & Tian, MICCAI 2020) or a candidate
inside a scan (candidate-level: Zhou et al., "Active, Continual Fine Tuning of Convolutional
Neural Networks for Reducing Annotation Efforts", Medical Image Analysis 2021). Both are
described by the same record, so one pool, one loop and one set of heuristics serve both kinds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "ITEM_KINDS",
    "Detections",
    "ItemKind",
    "ItemScores",
    "candidate_key",
    "item_scores_from_pool",
]

ItemKind = Literal["scan", "candidate"]
ITEM_KINDS: tuple[ItemKind, ...] = ("scan", "candidate")


def candidate_key(seriesuid: str, index: int) -> str:
    """The item key of a scan's ``index``-th candidate: ``"<seriesuid>#<index>"``."""
    return f"{seriesuid}#{index}"


@dataclass(frozen=True)
class Detections:
    """Detections of one pass of the detector over one scan.

    Attributes:
        centers: (N, 3) float, world mm, x-y-z (flipped passes already mapped back to the
            original scan's frame).
        probabilities: (N,) float in [0, 1].
    """

    centers: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        centers = np.asarray(self.centers, dtype=float).reshape(-1, 3)
        probabilities = np.asarray(self.probabilities, dtype=float).reshape(-1)
        if len(centers) != len(probabilities):
            raise ValueError(
                f"centers (N, 3) and probabilities (N,) must have equal N, got {len(centers)} "
                f"and {len(probabilities)}"
            )
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "probabilities", probabilities)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 3)), np.zeros(0))


@dataclass(frozen=True)
class ItemScores:
    """The detector's outputs for one pool item, as the heuristics need them.

    Every field but ``item`` is optional; a heuristic that needs a missing one says so.

    Attributes:
        item: the item's key: a seriesuid, or :func:`candidate_key` for a candidate.
        kind: ``"scan"`` or ``"candidate"``.
        l_scan: predicted scan-level loss (Liu et al. Eq. 1); NaN when not scored.
        l_roi: L_RoI (Liu et al. Eq. 2) by reading, e.g. ``{"loss_of_confident": 0.7}``.
        probabilities: (N,) detection probabilities of the item (for a candidate: its
            predictions over its patches, as ACFT's entropy uses them).
        embedding: (D,) float feature vector (scan: P2..P5 pooled; candidate: FPR embedding).
        tta: detections of the plain pass first, then of each flipped pass (test-time
            augmentation), all in the plain scan's world frame.
        detections: the scan's detections as a LUNA16 submission table (``seriesuid,
            coordX, coordY, coordZ, probability, diameter_mm``, world mm), kept so the loop
            can write them beside the query for the readers' viewer; None when not scored.
    """

    item: str
    kind: ItemKind = "scan"
    l_scan: float = math.nan
    l_roi: Mapping[str, float] = field(default_factory=dict)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    embedding: np.ndarray | None = None
    tta: Sequence[Detections] = ()
    detections: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.kind not in ITEM_KINDS:
            raise ValueError(f"kind must be one of {ITEM_KINDS}, got {self.kind!r}")
        object.__setattr__(
            self, "probabilities", np.asarray(self.probabilities, dtype=float).reshape(-1)
        )
        if self.embedding is not None:
            object.__setattr__(
                self, "embedding", np.asarray(self.embedding, dtype=float).reshape(-1)
            )


def item_scores_from_pool(scored: object, *, tta: Sequence[Detections] = ()) -> ItemScores:
    """The :class:`ItemScores` of one scan scored by the detector's pool scoring.

    Args:
        scored: a ``PoolScore`` of :mod:`activecad.models.detector3d.scoring` (read by its
            attributes ``seriesuid``, ``l_scan``, ``l_roi_variants``, ``embedding``,
            ``detections``, a table with ``coordX, coordY, coordZ, probability`` in world mm,
            and ``passes``, tables alike), so this module needs no torch.
        tta: the plain and flipped passes; default the scan's mirrored passes when the
            detector ran them (``mirror_tta``), else none.
    """
    detections = scored.detections  # type: ignore[attr-defined]
    probabilities = detections["probability"].to_numpy(float) if len(detections) else np.zeros(0)
    if not tta:
        tta = [
            Detections(table[["coordX", "coordY", "coordZ"]].to_numpy(float), table["probability"])
            for table in getattr(scored, "passes", ())
        ]
    return ItemScores(
        item=str(scored.seriesuid),  # type: ignore[attr-defined]
        kind="scan",
        l_scan=float(scored.l_scan),  # type: ignore[attr-defined]
        l_roi={k: float(v) for k, v in scored.l_roi_variants.items()},  # type: ignore[attr-defined]
        probabilities=probabilities,
        embedding=np.asarray(scored.embedding, dtype=float),  # type: ignore[attr-defined]
        tta=tuple(tta),
        detections=detections,
    )
