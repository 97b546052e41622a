"""LUNA16-style data folders: reading them, labelled subsets, patient-level splits, FROC.

A data folder holds ``ct/`` (one ``.mhd``/``.mha``/``.nii[.gz]`` file or DICOM folder per
series) and ``annotations.csv`` (world mm, x-y-z, ``diameter_mm``), optionally
``annotations_excluded.csv`` (findings that count neither as nodule nor as background).

These helpers are shared by every model trained on such a folder (the 3D detector, and
later the false-positive reduction and lesion detectors), so they live here rather than in
one model's package. :func:`froc_summary` is the one adapter from these *tables* to
:mod:`activecad.metrics`, which itself takes arrays only: it lives beside the table
readers because it is about the LUNA16 table layout, not about any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.data.patches import LabelledScan
from activecad.data.preprocess import PreparedScan
from activecad.errors import InputError

__all__ = [
    "CT_SUFFIXES",
    "LunaFolder",
    "Split",
    "false_positive_places",
    "froc_summary",
    "labelled",
    "read_luna_folder",
    "split_by_patient",
    "split_series",
]

CT_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")
XYZ = ["coordX", "coordY", "coordZ"]


@dataclass
class LunaFolder:
    """The scans and tables of a LUNA16-style data folder.

    Attributes:
        scans: paths of the scans, sorted.
        annotations: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (world mm).
        excluded: findings that count neither as hits nor as false positives.
        annotations_path: the ``annotations.csv`` the nodules came from.
    """

    scans: list[Path]
    annotations: pd.DataFrame
    excluded: pd.DataFrame | None = None
    annotations_path: Path | None = None


def read_luna_folder(data_dir: str | Path) -> LunaFolder:
    """List the scans of ``data_dir/ct`` and read its annotation tables.

    Raises:
        InputError: the folder does not exist, or ``ct/`` or ``annotations.csv`` is missing,
            or ``ct/`` holds no scan.
    """
    from activecad.io.tables import read_table

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise InputError(
            "data folder does not exist",
            path=data_dir,
            fix="check the path; 'activecad phantom --out DIR' makes a small example folder",
        )
    ct = data_dir / "ct"
    if not ct.is_dir():
        raise InputError(
            "not a LUNA16-style data folder (no ct/ subfolder)",
            path=data_dir,
            fix="give a folder with ct/ and annotations.csv, e.g. one from 'activecad phantom'",
        )
    scans = sorted(p for p in ct.iterdir() if p.is_dir() or p.name.lower().endswith(CT_SUFFIXES))
    if not scans:
        raise InputError(
            "ct/ holds no scan (.mhd, .mha, .nii, .nii.gz or DICOM folder)",
            path=ct,
            fix="put one file or DICOM folder per series in ct/",
        )
    annotations_path = data_dir / "annotations.csv"
    if not annotations_path.is_file():
        raise InputError(
            "annotations.csv is missing",
            path=data_dir,
            fix="add annotations.csv (seriesuid, coordX, coordY, coordZ, diameter_mm; world mm)"
            " beside ct/, or convert LIDC-IDRI with 'activecad import lidc'",
        )
    excluded_path = data_dir / "annotations_excluded.csv"
    excluded = read_table(excluded_path, "excluded") if excluded_path.is_file() else None
    return LunaFolder(
        scans, read_table(annotations_path, "annotations"), excluded, annotations_path
    )


@dataclass(frozen=True)
class Split:
    """Series ids split by patient (each list sorted; no patient in two of them)."""

    train: list[str]
    val: list[str]
    test: list[str]


def split_by_patient(
    uids: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
    groups: dict[str, str] | None = None,
) -> Split:
    """A seeded train/validation/test split of series ids, whole patients at a time.

    The patients are permuted once with ``seed``; the first ``round(n * test_fraction)``
    become the test split, the next ``round(n * val_fraction)`` the validation split. No
    patient is held out below 5 patients (there would be nothing left to train on).

    Args:
        uids: series ids.
        val_fraction: share of the patients in the validation split.
        test_fraction: share of the patients in the test split.
        seed: seed of the permutation.
        groups: series id -> patient id; a series without one is its own patient.

    Returns:
        the three lists of series ids.

    Raises:
        ValueError: the fractions are negative or add up to 1 or more.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0 "
            "and add up to less than 1"
        )
    groups = groups or {}
    keys = sorted({groups.get(u) or u for u in uids})
    enough = len(keys) >= 5
    n_test = round(len(keys) * test_fraction) if enough else 0
    n_val = round(len(keys) * val_fraction) if enough else 0
    order = np.random.default_rng(seed).permutation(len(keys))
    test_keys = {keys[i] for i in order[:n_test]}
    val_keys = {keys[i] for i in order[n_test : n_test + n_val]}

    def patient(uid: str) -> str:
        return groups.get(uid) or uid

    held = test_keys | val_keys
    train = sorted(u for u in uids if patient(u) not in held)
    val = sorted(u for u in uids if patient(u) in val_keys)
    test = sorted(u for u in uids if patient(u) in test_keys)
    return Split(train=train, val=val, test=test)


def split_series(
    uids: Sequence[str],
    val_fraction: float,
    seed: int,
    *,
    groups: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """A seeded train/validation split by patient: :func:`split_by_patient` without test.

    Returns:
        (train, validation) series ids, each sorted.
    """
    split = split_by_patient(uids, val_fraction=val_fraction, seed=seed, groups=groups)
    return split.train, split.val


def labelled(
    prepared: PreparedScan,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    hard_negatives: pd.DataFrame | None = None,
) -> LabelledScan:
    """Attach the nodules of ``prepared``'s series, its excluded findings as ignored and its
    rows of ``hard_negatives`` (world mm; see :func:`false_positive_places`) as hard
    negatives."""
    rows = annotations[annotations["seriesuid"] == prepared.seriesuid]
    if excluded is None:
        excluded = pd.DataFrame(columns=["seriesuid", *XYZ, "diameter_mm"])
    ignored = excluded[excluded["seriesuid"] == prepared.seriesuid]
    hard = hard_negatives if hard_negatives is not None else excluded.iloc[:0]
    hard = hard[hard["seriesuid"].astype(str) == prepared.seriesuid]
    return LabelledScan.from_world(
        prepared,
        rows[XYZ].to_numpy(dtype=np.float64),
        rows["diameter_mm"].to_numpy(dtype=np.float64),
        ignored_world=ignored[XYZ].to_numpy(dtype=np.float64),
        ignored_diameters_mm=ignored["diameter_mm"].to_numpy(dtype=np.float64),
        hard_negatives_world=hard[XYZ].to_numpy(dtype=np.float64),
    )


def false_positive_places(
    marks: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The rows of ``marks`` (world mm) that are false positives by LUNA16's rule.

    A mark inside an annotated nodule's sphere, or inside an excluded finding's, is
    dropped; so a detector's own marks on its training scans (``activecad detect``) can be
    handed to training as hard negatives as they are. A LUNA16 ``candidates.csv`` keeps
    its ``class`` 0 rows only.
    """
    from activecad.data.candidates import label_candidates

    if "class" in marks.columns:
        marks = marks[marks["class"] == 0]
    labels = label_candidates(marks, annotations, excluded)
    return marks.reset_index(drop=True)[labels["label"].to_numpy() == 0].reset_index(drop=True)


def froc_summary(
    detections: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    *,
    n_bootstrap: int = 0,
) -> tuple[dict[str, object], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """LUNA16 FROC of world-mm detections on ``seriesuids`` through :mod:`activecad.metrics`.

    Args:
        detections: LUNA16 submission rows (world mm).
        annotations: the nodules.
        excluded: findings that count neither as hits nor as false positives.
        seriesuids: the scans evaluated (scans without detections count too).
        n_bootstrap: scan-bootstrap resamples for 95% intervals (0: none).

    Returns:
        the summary (``cpm``, ``sensitivities`` at 1/8..8 FPs per scan, ``counts`` and,
        with ``n_bootstrap``, the intervals) and the curve (fps_per_scan, sensitivity,
        thresholds).
    """
    from activecad.metrics import luna16_summary, match_luna16

    extra: dict[str, object] = {}
    if excluded is not None:
        extra = {
            "excluded_ids": excluded["seriesuid"].to_numpy(str),
            "excluded_centers": excluded[XYZ].to_numpy(np.float64).reshape(-1, 3),
            "excluded_diameters": excluded["diameter_mm"].to_numpy(np.float64),
        }
    match = match_luna16(
        detections["seriesuid"].to_numpy(str),
        detections[XYZ].to_numpy(np.float64).reshape(-1, 3),
        detections["probability"].to_numpy(np.float64),
        annotations["seriesuid"].to_numpy(str),
        annotations[XYZ].to_numpy(np.float64).reshape(-1, 3),
        annotations["diameter_mm"].to_numpy(np.float64),
        scans=np.asarray(list(seriesuids), dtype=str),
        **extra,  # type: ignore[arg-type]
    )
    summary, curve, _ = luna16_summary(match, n_bootstrap=n_bootstrap)
    return summary, curve


def paired_cpm_bootstrap(
    a: pd.DataFrame,
    b: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame,
    uids: list[str],
    n: int,
    seed: int = 0,
) -> dict[str, float]:
    """CPM(b) - CPM(a) over scan resamples, the same scans drawn for both: the paired
    95 % interval of a change that rescores or replaces ``a``'s detections.

    Returns:
        the mean difference, its 2.5 / 97.5 % quantiles, the share of resamples in which
        ``b`` is ahead, and the number of resamples.
    """
    rng = np.random.default_rng(seed)
    groups = {
        name: {u: t[t.seriesuid == u] for u in uids}
        for name, t in (("a", a), ("b", b), ("ann", annotations), ("exc", excluded))
    }

    def resample(name: str, draw: np.ndarray) -> pd.DataFrame:
        parts = []
        for k, u in enumerate(draw):
            part = groups[name][u].copy()
            part["seriesuid"] = f"{u}#{k}"
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    diffs = []
    for _ in range(n):
        draw = rng.choice(uids, len(uids))
        ids = [f"{u}#{k}" for k, u in enumerate(draw)]
        ann, exc = resample("ann", draw), resample("exc", draw)
        cpm_a = froc_summary(resample("a", draw), ann, exc, ids)[0]["cpm"]
        cpm_b = froc_summary(resample("b", draw), ann, exc, ids)[0]["cpm"]
        diffs.append(float(cpm_b) - float(cpm_a))
    d = np.sort(np.asarray(diffs))
    return {
        "mean": float(d.mean()),
        "lower": float(np.quantile(d, 0.025)),
        "upper": float(np.quantile(d, 0.975)),
        "share_positive": float((d > 0).mean()),
        "resamples": n,
    }
