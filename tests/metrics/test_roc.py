"""ROC/AUC, operating points and DeLong against scikit-learn and a slow DeLong 1988."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve

from activecad.metrics import (
    delong_interval,
    delong_test,
    paired_bootstrap_auc_test,
    roc_auc_score,
    roc_curve,
    sensitivity_specificity_score,
    youden_threshold,
)


def _slow_delong(y, scores):
    """DeLong, DeLong & Clarke-Pearson (1988) with the explicit m x n kernel matrix."""
    y = np.asarray(y, bool)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    k = len(scores)
    cov = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            s10 = np.sum((v10s[i] - aucs[i]) * (v10s[j] - aucs[j])) / (len(v10s[i]) - 1)
            s01 = np.sum((v01s[i] - aucs[i]) * (v01s[j] - aucs[j])) / (len(v01s[i]) - 1)
            cov[i, j] = s10 / len(v10s[i]) + s01 / len(v01s[i])
    return np.array(aucs), cov


def _data(seed=0, n=300, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    a = rng.normal(size=n) + 1.2 * y
    b = 0.6 * a + rng.normal(size=n) * 0.8 + 0.3 * y
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y.astype(int), a, b


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_curve_match_scikit_learn(ties):
    y, a, _ = _data(ties=ties)
    assert roc_auc_score(y, a) == pytest.approx(sk_auc(y, a), abs=1e-9)
    fpr, tpr, thr = roc_curve(y, a)
    ref = sk_roc_curve(y, a, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref[0], atol=1e-12)
    np.testing.assert_allclose(tpr, ref[1], atol=1e-12)
    np.testing.assert_array_equal(thr[1:], ref[2][1:])


@pytest.mark.parametrize("ties", [False, True])
def test_fast_delong_matches_the_slow_1988_formula(ties):
    y, a, b = _data(seed=1, ties=ties)
    aucs, cov = _slow_delong(y, [a, b])
    ci = delong_interval(y, a)
    assert ci.auc == pytest.approx(aucs[0], abs=1e-12)
    assert ci.variance == pytest.approx(cov[0, 0], rel=1e-9)
    cmp = delong_test(y, a, b)
    assert cmp.covariance == pytest.approx(cov[0, 1], rel=1e-9)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert cmp.z == pytest.approx(z, rel=1e-9)


def test_identical_curves_give_p_one():
    y, a, _ = _data(seed=2)
    assert delong_test(y, a, a).p_value == 1.0
    # A monotone transform ranks the cases identically: same curve.
    assert delong_test(y, a, np.exp(a)).p_value == 1.0
    assert paired_bootstrap_auc_test(y, a, a, n_bootstrap=50).p_value == 1.0


def test_bootstrap_agrees_with_delong_roughly():
    # Cross-check, not a reference: with 400 cases both tests reach the same verdict and
    # the bootstrap interval of the difference covers DeLong's point estimate.
    y, a, b = _data(seed=3, n=400)
    dl = delong_test(y, a, b)
    bs = paired_bootstrap_auc_test(y, a, b, n_bootstrap=400, seed=0)
    assert bs.difference == pytest.approx(dl.auc_a - dl.auc_b, abs=1e-12)
    assert bs.lower <= bs.difference <= bs.upper
    assert (dl.p_value < 0.05) == (bs.p_value < 0.05)


def test_interval_covers_the_auc_and_stays_in_unit_range():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    ci = delong_interval(y, s)
    # Perfect separation: every placement value is 1, so the variance is 0 (hand).
    assert (ci.auc, ci.variance, ci.lower, ci.upper) == (1.0, 0.0, 1.0, 1.0)


def test_operating_points_by_hand():
    y = [0, 0, 1, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]
    # >= 0.7 calls {0.8, 0.7, 0.9}: 2/3 positives found, 2/3 negatives rejected.
    assert sensitivity_specificity_score(y, s, 0.7) == pytest.approx((2 / 3, 2 / 3))
    # J per threshold: .9 -> 1/3, .8 -> 0, .7 -> 1/3, .4 -> 0, .35 -> 1/3, .1 -> 0;
    # ties go to the highest threshold.
    thr, sens, spec = youden_threshold(y, s)
    assert (thr, sens, spec) == pytest.approx((0.9, 1 / 3, 1.0))


def test_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc_score([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        roc_auc_score([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc_score([0, 1], [np.nan, 0.3])
    with pytest.raises(ValueError, match="same length"):
        roc_auc_score([0, 1, 1], [0.2, 0.3])
