"""Oracles answer queries: simulated from ground truth, or humans through the store.

The simulated oracle reveals the ground truth of an annotations table (LUNA16 columns,
world mm), optionally with an annotation-time cost per item, so learning curves can be drawn
against minutes as well as against counts. Humans answer through the store (``activecad al
label`` today, the annotation service later); :class:`HumanOracle` tells the loop which
queried items are still waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from activecad.active.pool import LabelRecord, Pool
from activecad.errors import InputError

__all__ = ["AnnotationCost", "HumanOracle", "SimulatedOracle"]

_FINDING_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm"]


@dataclass(frozen=True)
class AnnotationCost:
    """Minutes to annotate one scan: ``base + per_nodule * n + per_10mm * sum(d) / 10``.

    The defaults are placeholders to be set from one's own reading times (no paper gives
    per-scan times for this task): a negative scan costs ``base_minutes``, each nodule
    ``per_nodule_minutes`` more, and larger nodules (outlining) ``per_10mm_minutes`` per
    10 mm of diameter.
    """

    base_minutes: float = 3.0
    per_nodule_minutes: float = 1.0
    per_10mm_minutes: float = 0.5

    def __post_init__(self) -> None:
        values = (self.base_minutes, self.per_nodule_minutes, self.per_10mm_minutes)
        if min(values) < 0:
            raise InputError(f"annotation costs must be >= 0, got {values}", fix="use >= 0")

    def minutes(self, diameters_mm: Sequence[float] | np.ndarray) -> float:
        """Minutes for a scan whose nodules have these diameters (mm)."""
        d = np.asarray(diameters_mm, dtype=float)
        return float(
            self.base_minutes
            + self.per_nodule_minutes * d.size
            + self.per_10mm_minutes * d.sum() / 10
        )


class SimulatedOracle:
    """Answers from ground truth: a scan's findings, or a candidate's hit on a nodule.

    Args:
        annotations: LUNA16 annotations table (``seriesuid, coordX, coordY, coordZ,
            diameter_mm``; world mm), e.g. from ``read_table(path, "annotations")``. A scan
            with no row is a negative.
        cost: annotation time per item; None records no minutes.
    """

    annotator = "simulated"
    source = "simulated"

    def __init__(self, annotations: pd.DataFrame, *, cost: AnnotationCost | None = None):
        missing = [c for c in ["seriesuid", *_FINDING_COLUMNS] if c not in annotations.columns]
        if missing:
            raise InputError(
                f"the ground truth lacks the columns {', '.join(missing)}",
                fix="pass a LUNA16 annotations table",
            )
        self.cost = cost
        self._by_scan = {
            str(uid): group[_FINDING_COLUMNS].to_numpy(float)
            for uid, group in annotations.groupby("seriesuid", sort=True)
        }

    def findings(self, seriesuid: str) -> np.ndarray:
        """(N, 4) the scan's nodules: world mm x, y, z and diameter mm (N = 0: negative)."""
        return self._by_scan.get(str(seriesuid), np.zeros((0, 4)))

    def answer(self, items: Sequence[str]) -> list[LabelRecord]:
        """Labels of scan items (keys are seriesuids), each with its simulated minutes."""
        records = []
        for key in items:
            found = self.findings(key)
            minutes = self.cost.minutes(found[:, 3]) if self.cost is not None else None
            records.append(LabelRecord(key, found, minutes))
        return records

    def is_nodule(self, seriesuid: str, center: np.ndarray) -> bool:
        """A candidate is positive when its centre (world mm, x-y-z) lies within a nodule's
        radius of the nodule's centre (LUNA16's hit rule)."""
        found = self.findings(seriesuid)
        if not len(found):
            return False
        dist = np.linalg.norm(found[:, :3] - np.asarray(center, dtype=float), axis=1)
        return bool(np.any(dist <= found[:, 3] / 2))


class HumanOracle:
    """Humans answer through the store; this says which queried items still wait."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def pending(self, items: Sequence[str]) -> list[str]:
        """The items of ``items`` nobody has labelled yet (sorted by key)."""
        waiting = set(self.pool.unlabelled())
        return sorted(k for k in items if k in waiting)
