"""ROC analysis: AUC, operating points, fast DeLong variance and test, paired bootstrap.

The DeLong (1988) variance uses the structural components of the Mann-Whitney statistic;
Sun & Xu (2014) compute them from three sets of midranks, O(n log n) instead of the
O(m n) comparison matrix. Ties count one half, as in the Mann-Whitney AUC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from activecad.metrics._validation import (
    check_1d,
    check_confidence,
    check_finite,
    check_same_length,
)


def _check_binary(y_true: ArrayLike, *scores: ArrayLike) -> tuple[NDArray[np.bool_], list]:
    """Validate binary labels (0/1 or bool) and finite scores of the same length."""
    y = check_1d(y_true, "y_true")
    check_finite(y, "y_true")
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"y_true must hold only 0 and 1, got values such as {list(bad)}.")
    positive = y.astype(bool)
    out = []
    for i, s in enumerate(scores):
        arr = check_1d(s, f"y_score[{i}]" if len(scores) > 1 else "y_score")
        check_finite(arr, "y_score")
        check_same_length(y_true=positive, y_score=arr)
        out.append(arr)
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == len(positive):
        raise ValueError(
            f"ROC analysis needs both classes; y_true has {n_pos} positive(s) "
            f"out of {len(positive)}."
        )
    return positive, out


def roc_auc_score(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney; tied scores count one half).

    Args:
        y_true: (n,) labels, 1 positive and 0 negative.
        y_score: (n,) scores, higher meaning more likely positive.
    """
    positive, (score,) = _check_binary(y_true, y_score)
    return float(_auc_from_ranks(positive, score))


def _auc_from_ranks(positive: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    m = positive.sum()
    n = len(positive) - m
    ranks = rankdata(score)
    return float((ranks[positive].sum() - m * (m + 1) / 2.0) / (m * n))


def roc_curve(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """ROC curve over every distinct score, from (0, 0) at threshold ``inf``.

    Returns:
        fpr (K,), tpr (K,) and thresholds (K,) decreasing; point k calls positive every
        score >= thresholds[k].
    """
    positive, (score,) = _check_binary(y_true, y_score)
    order = np.argsort(score, kind="stable")[::-1]
    s, p = score[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(p)[ends]
    fps = ends + 1 - tps
    return (
        np.r_[0.0, fps / fps[-1]],
        np.r_[0.0, tps / tps[-1]],
        np.r_[np.inf, s[ends]],
    )


def sensitivity_specificity_score(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity when scores >= ``threshold`` are called positive."""
    positive, (score,) = _check_binary(y_true, y_score)
    called = score >= threshold
    return float(called[positive].mean()), float((~called[~positive]).mean())


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float, float]:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Ties in J go to the highest threshold (fewest positive calls).

    Returns:
        (threshold, sensitivity, specificity); scores >= threshold are positive.
    """
    fpr, tpr, thr = roc_curve(y_true, y_score)
    # The first point (threshold inf) calls nothing positive; it is never better than J=0.
    # Rates are ratios of counts, so equal J values can differ by a rounding: compare them
    # with a tolerance far below 1 / n.
    youden = tpr[1:] - fpr[1:]
    best = int(np.flatnonzero(youden >= youden.max() - 1e-12)[0]) + 1
    return float(thr[best]), float(tpr[best]), float(1.0 - fpr[best])


def _structural_components(
    positive: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """AUCs and DeLong's placement values for k score vectors.

    Sun & Xu (2014) obtain the placement values from midranks (rank among all cases minus
    rank within the case's class). The same numbers come from one sort per score vector:
    walking the tie groups in increasing order, a positive's value is the share of negatives
    below its group plus half of those tied with it, and a negative's is the share of
    positives above its group plus half of those tied.

    Args:
        positive: (n,) labels.
        scores: (k, n) scores.

    Returns:
        auc (k,), v10 (k, m) for the m positives and v01 (k, n0) for the n0 negatives, each
        in the original case order of its class.
    """
    m = int(positive.sum())
    n0 = len(positive) - m
    k = len(scores)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n0))
    pos_rank = np.cumsum(positive) - 1
    neg_rank = np.cumsum(~positive) - 1
    for row, score in enumerate(scores):
        # Tied scores form one group whatever their order, so a non-stable sort will do.
        order = np.argsort(score)
        s, p = score[order], positive[order]
        group = np.r_[0, np.cumsum(s[1:] != s[:-1])]
        pos_in = np.bincount(group, weights=p)
        neg_in = np.bincount(group, weights=~p)
        neg_below = np.cumsum(neg_in) - neg_in
        pos_above = m - np.cumsum(pos_in)
        placed_pos = (neg_below + 0.5 * neg_in) / n0
        placed_neg = (pos_above + 0.5 * pos_in) / m
        v10[row, pos_rank[order[p]]] = placed_pos[group[p]]
        v01[row, neg_rank[order[~p]]] = placed_neg[group[~p]]
    auc = v10.mean(axis=1)
    return auc, v10, v01


def _delong_covariance(
    positive: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    auc, v10, v01 = _structural_components(positive, scores)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / v10.shape[1] + s01 / v01.shape[1]


@dataclass(frozen=True)
class AucInterval:
    """An AUC with its DeLong variance and a normal-approximation interval.

    Attributes:
        auc: the area under the curve.
        variance: DeLong's variance of the AUC.
        lower, upper: the interval, clipped to [0, 1].
        confidence: the interval's level.
    """

    auc: float
    variance: float
    lower: float
    upper: float
    confidence: float


def delong_interval(y_true: ArrayLike, y_score: ArrayLike, confidence: float = 0.95) -> AucInterval:
    """AUC with DeLong's variance and its ``confidence`` interval (fast, O(n log n)).

    Args:
        y_true: (n,) labels 0/1.
        y_score: (n,) scores.
        confidence: interval level.
    """
    check_confidence(confidence)
    positive, (score,) = _check_binary(y_true, y_score)
    auc, cov = _delong_covariance(positive, score[None, :])
    var = float(cov[0, 0])
    half = float(ndtri(0.5 + confidence / 2.0)) * math.sqrt(max(var, 0.0))
    a = float(auc[0])
    return AucInterval(a, var, max(0.0, a - half), min(1.0, a + half), confidence)


@dataclass(frozen=True)
class AucComparison:
    """Two correlated AUCs on the same cases compared with DeLong's test.

    Attributes:
        auc_a, auc_b: the two AUCs.
        variance_a, variance_b, covariance: DeLong's (co)variances.
        z: (auc_a - auc_b) / sd of the difference.
        p_value: two-sided p-value (1 when the curves are identical).
    """

    auc_a: float
    auc_b: float
    variance_a: float
    variance_b: float
    covariance: float
    z: float
    p_value: float


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> AucComparison:
    """DeLong's test of two correlated ROC curves (same cases, two scores).

    Args:
        y_true: (n,) labels 0/1.
        score_a: (n,) scores of the first model.
        score_b: (n,) scores of the second model.
    """
    positive, (a, b) = _check_binary(y_true, score_a, score_b)
    auc, cov = _delong_covariance(positive, np.vstack((a, b)))
    diff = float(auc[0] - auc[1])
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    z, p = _two_sided(diff, var_diff)
    return AucComparison(
        float(auc[0]),
        float(auc[1]),
        float(cov[0, 0]),
        float(cov[1, 1]),
        float(cov[0, 1]),
        z,
        p,
    )


def _two_sided(diff: float, var_diff: float) -> tuple[float, float]:
    """z and two-sided normal p-value; a difference with no spread is exact."""
    # Identical (or rank-identical) curves give 0/0: no evidence of a difference.
    if var_diff <= 1e-300 or not math.isfinite(var_diff):
        return (0.0, 1.0) if abs(diff) < 1e-15 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var_diff)
    return z, float(2.0 * ndtr(-abs(z)))


@dataclass(frozen=True)
class BootstrapComparison:
    """Paired bootstrap of the AUC difference (stratified by class).

    Attributes:
        difference: auc_a - auc_b on the full data.
        lower, upper: percentile interval of the difference.
        p_value: two-sided, from z = difference / bootstrap sd (as pROC does).
        samples: (B,) bootstrap differences.
    """

    difference: float
    lower: float
    upper: float
    p_value: float
    samples: NDArray[np.float64]


def paired_bootstrap_auc_test(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_size: int = 64,
) -> BootstrapComparison:
    """Compare two correlated AUCs by resampling cases, positives and negatives apart.

    A cross-check of :func:`delong_test`: the same cases are drawn for both scores.

    Args:
        y_true: (n,) labels 0/1.
        score_a, score_b: (n,) scores of the two models.
        n_bootstrap: resamples.
        confidence: interval level.
        seed: seed of the resampling.
        chunk_size: resamples ranked together.
    """
    if n_bootstrap <= 1:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}.")
    check_confidence(confidence)
    positive, (a, b) = _check_binary(y_true, score_a, score_b)
    pos_idx, neg_idx = np.flatnonzero(positive), np.flatnonzero(~positive)
    m, n0 = len(pos_idx), len(neg_idx)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_bootstrap)
    for lo in range(0, n_bootstrap, chunk_size):
        hi = min(lo + chunk_size, n_bootstrap)
        idx = np.hstack(
            (
                pos_idx[rng.integers(0, m, size=(hi - lo, m))],
                neg_idx[rng.integers(0, n0, size=(hi - lo, n0))],
            )
        )
        aucs = []
        for s in (a, b):
            ranks = rankdata(s[idx], axis=1)
            aucs.append((ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n0))
        diffs[lo:hi] = aucs[0] - aucs[1]
    diff = _auc_from_ranks(positive, a) - _auc_from_ranks(positive, b)
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(diffs, [tail, 1.0 - tail])
    _, p = _two_sided(diff, float(np.var(diffs, ddof=1)))
    return BootstrapComparison(diff, float(lower), float(upper), p, diffs)
