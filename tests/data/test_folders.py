"""Paired CPM comparisons over scan resamples (``activecad.data.folders``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.data import PreparedScan
from activecad.data.folders import false_positive_places, labelled, paired_cpm_bootstrap

XYZ = ["coordX", "coordY", "coordZ"]


def _table(rows: list[tuple[str, float, float]], last: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        [(uid, x, 0.0, 0.0, value) for uid, x, value in rows],
        columns=["seriesuid", *XYZ, last],
    )
    return frame


def test_paired_gain_of_a_rescoring_by_hand() -> None:
    # One 6 mm nodule at x = 0 in each of three scans.
    truth = _table([(u, 0.0, 6.0) for u in "abc"], "diameter_mm")
    # By hand: a's only marks lie 50 mm away (never a hit: CPM 0 in every resample); b
    # marks each nodule 0.5 mm off with no false positive (CPM 1 in every resample).
    far = _table([(u, 50.0, 0.9) for u in "abc"], "probability")
    near = _table([(u, 0.5, 0.9) for u in "abc"], "probability")
    gain = paired_cpm_bootstrap(far, near, truth, truth.iloc[:0], list("abc"), n=20)
    assert gain["mean"] == pytest.approx(1.0)
    assert (gain["lower"], gain["upper"], gain["share_positive"]) == (1.0, 1.0, 1.0)
    same = paired_cpm_bootstrap(near, near, truth, truth.iloc[:0], list("abc"), n=20)
    assert (same["mean"], same["lower"], same["upper"], same["share_positive"]) == (0, 0, 0, 0)
    assert same["resamples"] == 20


def test_false_positive_places_drop_marks_on_nodules_and_excluded_findings() -> None:
    # LUNA16's hit rule: inside the sphere (radius = diameter / 2) counts as on it.
    nodules = pd.DataFrame(
        {
            "seriesuid": ["a"],
            "coordX": [0.0],
            "coordY": [0.0],
            "coordZ": [0.0],
            "diameter_mm": [10.0],
        }
    )
    excluded = nodules.assign(coordX=[50.0], diameter_mm=[4.0])
    marks = pd.DataFrame(
        {
            "seriesuid": ["a", "a", "a", "a", "b"],
            "coordX": [4.9, 5.1, 51.9, 52.1, 0.0],  # in, out of the nodule; in, out of the finding
            "coordY": 0.0,
            "coordZ": 0.0,
            "probability": [0.9, 0.8, 0.7, 0.6, 0.5],
        }
    )
    kept = false_positive_places(marks, nodules, excluded)
    assert kept["coordX"].tolist() == [5.1, 52.1, 0.0]  # scan b has no nodule at 0
    candidates = marks.assign(**{"class": [0, 0, 0, 1, 0]}).drop(columns="probability")
    assert false_positive_places(candidates, nodules, excluded)["coordX"].tolist() == [5.1, 0.0]


def test_labelled_scan_takes_its_own_hard_negatives() -> None:
    prepared = PreparedScan(
        np.zeros((8, 8, 8), np.float32), np.ones(3), np.zeros(3), np.eye(3), "a"
    )
    none = pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    places = pd.DataFrame(
        {"seriesuid": ["a", "b"], "coordX": [1.0, 2.0], "coordY": 3.0, "coordZ": 5.0}
    )
    item = labelled(prepared, none, None, places)
    np.testing.assert_allclose(item.hard_negatives, [[5.0, 3.0, 1.0]])  # z-y-x indices
    assert labelled(prepared, none).hard_negatives.shape == (0, 3)
