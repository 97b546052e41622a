"""Four LIDC readers: each marks or misses each nodule and rates what it marks.

The chance of marking is a two-component mixture fitted to the LIDC shares of nodules
marked by 1, 2, 3 or 4 readers in each size bin (``lidc_stats.json``): a nodule is either
*conspicuous* (each reader marks it with p = 0.89) or *doubtful* (p = 0.19); the share of
doubtful nodules falls with size (0.96 at 3-5 mm to 0.04 at 20+ mm). Ground-glass and
low-contrast nodules look smaller to the model, so they are missed more, as in LIDC.
Whether a nodule is doubtful is drawn once per nodule (:func:`draw_doubtful`), before the
scans are drawn, because a doubtful nodule is also drawn faint: what the readers miss is
what is hard to see, as on a real CT.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from activecad.phantom.nodules import Nodule

N_READERS = 4
# LIDC readers outline nodules >= 3 mm and mark smaller ones with a point, unrated.
SMALL_NODULE_MM = 3.0
_RATING_KEYS = (
    "malignancy",
    "subtlety",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "internal_structure",
)
P_MARK_CONSPICUOUS = 0.89
P_MARK_DOUBTFUL = 0.19
# Fit to readers_marking_by_diameter, lidc_stats.json (bin centres in mm, log scale).
_DOUBTFUL_AT = (np.log([4.0, 6.3, 9.8, 15.5, 25.0]), [0.96, 0.68, 0.42, 0.09, 0.04])


def doubtful_share(diameter: np.ndarray | float, kind: str = "solid") -> np.ndarray:
    """Probability that a nodule is doubtful (often missed) given its size and kind."""
    effective = np.asarray(diameter, dtype=float)
    if kind == "ground-glass":
        effective = effective / 1.8
    elif kind == "part-solid":
        effective = effective / 1.3
    return np.interp(np.log(np.maximum(effective, 1.0)), *_DOUBTFUL_AT)


def draw_doubtful(nodules: list[Nodule], rng: np.random.Generator) -> list[Nodule]:
    """The nodules with ``doubtful`` drawn from :func:`doubtful_share` at their first size."""
    draws = rng.random(len(nodules))
    return [
        replace(nod, doubtful=bool(u < float(doubtful_share(nod.diameter, nod.kind))))
        for nod, u in zip(nodules, draws, strict=True)
    ]


def _rating(value: float, noise: float, rng: np.random.Generator, top: int = 5) -> int:
    return int(np.clip(np.rint(value + rng.normal(0.0, noise)), 1, top))


def read_nodules(
    nodules: list[Nodule], rng: np.random.Generator, *, study: int = 0
) -> pd.DataFrame:
    """Simulate the four readers on the nodules of one study.

    Args:
        nodules: the patient's true nodules.
        rng: random generator.
        study: which study (nodule sizes change between studies).

    Returns:
        One row per mark: ``nodule_id, reader, diameter_mm, malignancy, subtlety,
        calcification, sphericity, margin, lobulation, spiculation, texture,
        internal_structure`` (LIDC rating scales) and ``mark``. ``diameter_mm`` is the
        reader's measurement: the true size with ~12 % reader-to-reader noise. As in the
        LIDC protocol, a reader who measures under 3 mm marks a ``"small"`` nodule (a point,
        no ratings: NaN); the others mark a ``"nodule"`` (outlined and rated).
    """
    rows: list[dict[str, Any]] = []
    for nod in nodules:
        d = nod.diameter_at(study)
        p = P_MARK_DOUBTFUL if nod.doubtful else P_MARK_CONSPICUOUS
        texture = {"solid": 5.0, "calcified": 5.0, "part-solid": 3.2, "ground-glass": 1.4}[nod.kind]
        # Calibrated to LIDC's subtlety and spiculation rating shares (lidc_stats.json).
        subtle = 2.4 + 1.6 * np.log(d / 3.0) - (1.0 if nod.kind == "ground-glass" else 0.0)
        spic = {"smooth": 1.0, "lobulated": 1.8, "spiculated": 3.6}[nod.shape]
        lob = {"smooth": 1.3, "lobulated": 3.4, "spiculated": 2.4}[nod.shape]
        for reader in range(N_READERS):
            if rng.random() >= p:
                continue
            calc = 6
            if nod.kind == "calcified":
                calc = int(rng.choice([3, 5, 4, 1, 2], p=[0.8, 0.1, 0.05, 0.03, 0.02]))
            rows.append(
                {
                    "nodule_id": nod.nodule_id,
                    "reader": reader,
                    "diameter_mm": round(d * float(np.exp(rng.normal(0.0, 0.12))), 2),
                    "malignancy": _rating(nod.malignancy, 0.7, rng),
                    "subtlety": _rating(subtle - (1.0 if nod.doubtful else 0.0), 0.8, rng),
                    "calcification": calc,
                    "sphericity": _rating(4.0 - (nod.shape != "smooth"), 0.8, rng),
                    "margin": _rating(4.5 - 1.5 * (nod.shape == "spiculated"), 0.7, rng),
                    "lobulation": _rating(lob, 0.7, rng),
                    "spiculation": _rating(spic, 0.7, rng),
                    "texture": _rating(texture, 0.5, rng),
                    "internal_structure": 1,
                }
            )
    for row in rows:
        small = row["diameter_mm"] < SMALL_NODULE_MM
        row["mark"] = "small" if small else "nodule"
        if small:
            row.update({key: np.nan for key in _RATING_KEYS})
    columns = [
        "nodule_id",
        "reader",
        "diameter_mm",
        "malignancy",
        "subtlety",
        "calcification",
        "sphericity",
        "margin",
        "lobulation",
        "spiculation",
        "texture",
        "internal_structure",
        "mark",
    ]
    return pd.DataFrame(rows, columns=columns)
