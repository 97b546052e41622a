"""ALC, annotation saved (papers/002's worked numbers) and the seed summary."""

from __future__ import annotations

import numpy as np
import pytest

from activecad.metrics import (
    annotation_saved,
    area_under_learning_curve,
    labels_to_reach,
    summarize_over_seeds,
)


def test_alc_by_hand():
    # Trapezoids: 10 * 0.6 + 10 * 0.8 = 14, over an x-range of 20 -> 0.7.
    assert area_under_learning_curve([0, 10, 20], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert area_under_learning_curve([0, 10, 20], [0.5, 0.7, 0.9], normalize=False) == 14
    per_seed = area_under_learning_curve([5, 50], [[0.8, 0.8], [0.6, 1.0]])
    np.testing.assert_allclose(per_seed, [0.8, 0.8])


def test_annotation_saved_reproduces_the_paper():
    # papers/002 §4: ACFT reaches RFT's level with 2,906 queries where RFT needs 4,452,
    # "34.7% of the RFT labeling costs" saved: (4452 - 2906) / 4452 = 34.72%.
    res = annotation_saved([1176, 2906, 4452], [0.80, 0.90, 0.95], [2906, 4452], [0.85, 0.90])
    assert (res.labels_a[0], res.labels_b[0], res.saved[0]) == (2906, 4452, 1546)
    assert res.saved_percent[0] == pytest.approx(34.72, abs=0.01)


def test_annotation_saved_when_never_reached():
    res = annotation_saved([10, 20], [[0.5, 0.6], [0.5, 0.95]], [10, 20], [0.7, 0.9])
    assert np.isnan(res.labels_a[0]) and res.labels_a[1] == 20
    summary = summarize_over_seeds(res.saved)
    assert summary.n == 1


def test_labels_to_reach_by_hand():
    # 0.85 is first reached at 30 labels; 0.99 never; one row per seed.
    assert labels_to_reach([10, 20, 30, 40], [0.7, 0.8, 0.9, 0.85], 0.85) == 30
    assert np.isnan(labels_to_reach([10, 20], [0.7, 0.8], 0.99))
    per_seed = labels_to_reach([10, 20], [[0.9, 0.9], [0.5, 0.9]], 0.9)
    np.testing.assert_array_equal(per_seed, [10, 20])


def test_seed_summary_by_hand():
    # Mean 2, sd 1, t(0.975, 2) = 4.302653 from tables: half width 4.302653 / sqrt(3).
    s = summarize_over_seeds([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.upper - s.mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    # An AUC's interval stays in [0, 1]: 0.9 and 0.96 give 0.93 +- 0.38 unclipped.
    auc = summarize_over_seeds([0.9, 0.96], bounds=(0.0, 1.0))
    assert auc.mean == pytest.approx(0.93) and auc.upper == 1.0
    assert auc.lower == pytest.approx(0.93 - 12.706205 * np.std([0.9, 0.96], ddof=1) / np.sqrt(2))


def test_bad_curves():
    with pytest.raises(ValueError, match="strictly increasing"):
        area_under_learning_curve([10, 10], [0.1, 0.2])
    with pytest.raises(ValueError, match="points"):
        area_under_learning_curve([1, 2, 3], [0.1, 0.2])
