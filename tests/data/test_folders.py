"""Paired CPM comparisons over scan resamples (``activecad.data.folders``)."""

from __future__ import annotations

import pandas as pd
import pytest

from activecad.data.folders import paired_cpm_bootstrap

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
