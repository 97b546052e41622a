"""The exported names, and invariances every metric of a kind must keep."""

from __future__ import annotations

import numpy as np
import pytest

import activecad.metrics as metrics


def test_exports_exist_and_are_sorted_once():
    assert len(set(metrics.__all__)) == len(metrics.__all__)
    for name in metrics.__all__:
        assert hasattr(metrics, name), name


def test_froc_is_invariant_to_the_order_of_marks():
    rng = np.random.default_rng(0)
    ids = rng.choice(["a", "b", "c"], 60)
    xyz = rng.uniform(0, 20, (60, 3))
    p = np.round(rng.random(60), 1)
    nod_ids, nod_xyz, nod_d = ["a", "b", "c"], rng.uniform(0, 20, (3, 3)), [8.0, 6.0, -1.0]
    perm = rng.permutation(60)

    def cpm(i):
        m = metrics.match_luna16(ids[i], xyz[i], p[i], nod_ids, nod_xyz, nod_d, max_marks=15)
        return metrics.luna16_summary(m)[0]

    assert cpm(np.arange(60)) == cpm(perm)


@pytest.mark.parametrize(
    "score",
    [metrics.roc_auc_score, lambda y, s: metrics.delong_interval(y, s).auc],
)
def test_auc_is_invariant_to_order_and_monotone_transforms(score):
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(20), np.ones(20)]
    s = np.round(rng.normal(size=40) + y, 1)
    perm = rng.permutation(40)
    assert score(y, s) == pytest.approx(score(y[perm], s[perm]), abs=1e-12)
    assert score(y, s) == pytest.approx(score(y, 3 * s + 1), abs=1e-12)
