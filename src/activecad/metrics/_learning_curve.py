"""Learning-curve summaries for active learning: ALC and annotation saved.

After Zhou et al., "Active, continual fine tuning of convolutional neural networks for
reducing annotation efforts", Medical Image Analysis 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import t as student_t

from activecad.metrics._validation import check_1d, check_confidence, check_finite


def _check_curve(n_labels: ArrayLike, performance: ArrayLike, name: str) -> tuple[NDArray, NDArray]:
    x = check_1d(n_labels, f"{name} n_labels")
    check_finite(x, f"{name} n_labels")
    y = np.asarray(performance, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[-1] != len(x):
        raise ValueError(
            f"{name} performance must be (P,) or (seeds, P) with P = {len(x)} points, "
            f"got {y.shape}."
        )
    check_finite(y, f"{name} performance")
    if len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"{name} n_labels must be at least 2 strictly increasing counts.")
    return x, y


def area_under_learning_curve(
    n_labels: ArrayLike, performance: ArrayLike, *, normalize: bool = True
) -> float | NDArray[np.float64]:
    """Area under the learning curve (trapezoids), by default divided by the x-range.

    Normalised, a curve that is constant at c gives c, so ALCs of runs with different
    label budgets compare on the performance scale (Zhou et al., Medical Image Analysis
    2021, Table 4).

    Args:
        n_labels: (P,) strictly increasing numbers of labels queried.
        performance: (P,) or (seeds, P) performance at each point (AUC, sensitivity, ...).
        normalize: divide by ``n_labels[-1] - n_labels[0]``.

    Returns:
        A float, or (seeds,) values for a 2-D ``performance``.
    """
    x, y = _check_curve(n_labels, performance, "learning curve")
    area = np.sum((y[..., 1:] + y[..., :-1]) / 2.0 * np.diff(x), axis=-1)
    if normalize:
        area = area / (x[-1] - x[0])
    return float(area) if np.ndim(area) == 0 else area


def _first_reaching(x: NDArray, y: NDArray, target: NDArray) -> NDArray[np.float64]:
    """Fewest labels at which each row of ``y`` reaches its ``target`` (NaN: never)."""
    reached = y >= target[:, None]
    return np.where(reached.any(axis=1), x[np.argmax(reached, axis=1)], np.nan)


def labels_to_reach(
    n_labels: ArrayLike, performance: ArrayLike, target: float
) -> float | NDArray[np.float64]:
    """Fewest labels at which a learning curve first reaches ``target`` (NaN: never).

    Returns:
        A float, or (seeds,) values for a 2-D ``performance``.
    """
    x, y = _check_curve(n_labels, performance, "learning curve")
    found = _first_reaching(x, np.atleast_2d(y), np.full(len(np.atleast_2d(y)), float(target)))
    return float(found[0]) if np.ndim(y) == 1 else found


@dataclass(frozen=True)
class AnnotationSaved:
    """Labels method A needs to match method B, per seed.

    Attributes:
        target: (seeds,) the performance to reach (default B's final one).
        labels_a: (seeds,) fewest labels at which A reaches it (NaN: never).
        labels_b: (seeds,) fewest labels at which B reaches it.
        saved: (seeds,) labels_b - labels_a.
        saved_percent: (seeds,) 100 * saved / labels_b.
    """

    target: NDArray[np.float64]
    labels_a: NDArray[np.float64]
    labels_b: NDArray[np.float64]
    saved: NDArray[np.float64]
    saved_percent: NDArray[np.float64]


def annotation_saved(
    n_labels_a: ArrayLike,
    performance_a: ArrayLike,
    n_labels_b: ArrayLike,
    performance_b: ArrayLike,
    *,
    target: float | None = None,
) -> AnnotationSaved:
    """Annotation saved by method A against method B (Zhou et al. 2021, section 4).

    Example from the paper: ACFT reaches RFT's AUC with 2,906 labels where RFT needs
    4,452, so 1,546 labels (34.7%) are saved.

    Args:
        n_labels_a: (P,) label counts at which A was evaluated.
        performance_a: (P,) or (seeds, P) A's performance.
        n_labels_b: (Q,) label counts of B.
        performance_b: (Q,) or (seeds, Q) B's performance; seeds pair with A's row by row
            (a 1-D curve is shared by every seed).
        target: performance to reach; default B's final value (per seed).

    Returns:
        Per-seed counts and percentages; summarise them with :func:`summarize_over_seeds`.
    """
    xa, ya = _check_curve(n_labels_a, performance_a, "method A")
    xb, yb = _check_curve(n_labels_b, performance_b, "method B")
    ya2, yb2 = np.atleast_2d(ya), np.atleast_2d(yb)
    n_seeds = max(len(ya2), len(yb2))
    if len(ya2) not in (1, n_seeds) or len(yb2) not in (1, n_seeds):
        raise ValueError(f"seed counts differ: A has {len(ya2)}, B has {len(yb2)}.")
    ya2 = np.broadcast_to(ya2, (n_seeds, len(xa)))
    yb2 = np.broadcast_to(yb2, (n_seeds, len(xb)))
    goal = yb2[:, -1] if target is None else np.full(n_seeds, float(target))
    labels_a = _first_reaching(xa, ya2, goal)
    labels_b = _first_reaching(xb, yb2, goal)
    saved = labels_b - labels_a
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = 100.0 * saved / labels_b
    return AnnotationSaved(goal, labels_a, labels_b, saved, percent)


@dataclass(frozen=True)
class SeedSummary:
    """Mean of a quantity over seeds with a Student-t interval.

    Attributes:
        mean, std: mean and sample standard deviation (ddof=1) over the valid seeds.
        lower, upper: the t interval of the mean (NaN with fewer than two seeds).
        n: number of finite values used.
    """

    mean: float
    std: float
    lower: float
    upper: float
    n: int


def summarize_over_seeds(
    values: ArrayLike,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> SeedSummary:
    """Mean, sd and t-interval over seeds; NaN values (e.g. never reached) are left out.

    ``bounds``: the range the quantity cannot leave (``(0, 1)`` for an AUC, a CPM or a
    learning-curve area); the interval is clipped to it, since a t-interval over two or three
    seeds easily reaches past 1, which says nothing more.
    """
    check_confidence(confidence)
    v = check_1d(values, "values")
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return SeedSummary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1)
    std = float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    lower, upper = mean - half, mean + half
    if bounds is not None:
        lower, upper = max(lower, bounds[0]), min(upper, bounds[1])
    return SeedSummary(mean, std, lower, upper, n)
