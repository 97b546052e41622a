"""FROC analysis counted exactly as the LUNA16 evaluation script counts it.

The rules follow ``noduleCADEvaluationLUNA16.py`` (Setio et al., 2017):

* a mark hits a nodule when its squared world distance to the centre is below the squared
  radius (diameter / 2; a negative diameter means 10 mm);
* at most ``max_marks`` marks per scan: when a scan has more, only marks whose probability
  is strictly above the ``(max_marks + 1)``-th highest are kept (ties can leave fewer);
* a mark that hits no included nodule but lies inside an excluded finding is ignored;
* a nodule hit by several marks counts once, at the highest probability, and the extra
  marks are ignored; a mark inside two nodules detects both;
* false positives per scan divide by every scan of the evaluated list; missed nodules stay
  in the denominator of the sensitivity;
* the curve is scikit-learn's ROC curve over the TP/FP marks, rescaled to FPs per scan and
  sensitivity, and operating points are read with ``np.interp``;
* the bootstrap draws scans with replacement, keeping each scan's marks together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rich.progress import Progress

from activecad.io.tables import DEFAULT_DIAMETER_MM
from activecad.metrics._validation import (
    as_ids,
    check_1d,
    check_confidence,
    check_finite,
    check_fp_rates,
    check_points,
    check_same_length,
)

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which LUNA16 reads the sensitivity; their mean is the CPM."""

LUNA16_MAX_MARKS = 100
"""Marks per scan the LUNA16 script keeps (the most probable ones)."""


@dataclass(frozen=True)
class FrocMatch:
    """Marks and nodules after matching: everything a FROC curve and its bootstrap need.

    Attributes:
        scans: (S,) identifiers of the evaluated scans; ``*_scans`` arrays index into it.
        tp_probs: (D,) probability of each detected nodule (the highest of its hitting marks).
        tp_scans: (D,) scan index of each detected nodule.
        fp_probs: (F,) probability of each false-positive mark.
        fp_scans: (F,) scan index of each false-positive mark.
        nodule_scans: (N,) scan index of every included nodule of the evaluated scans.
        nodule_probs: (N,) probability at which each nodule is detected, NaN when missed.
        n_tp_marks: marks that hit at least one nodule.
        n_ignored: marks ignored because they hit only excluded findings.
        n_double_hits: extra marks on already-hit nodules, summed over nodules.
        n_capped: marks dropped by the per-scan cap.
        n_outside: marks whose scan is not in the evaluated list; dropped.
    """

    scans: NDArray[np.str_]
    tp_probs: NDArray[np.float64]
    tp_scans: NDArray[np.intp]
    fp_probs: NDArray[np.float64]
    fp_scans: NDArray[np.intp]
    nodule_scans: NDArray[np.intp]
    nodule_probs: NDArray[np.float64]
    n_tp_marks: int
    n_ignored: int
    n_double_hits: int
    n_capped: int
    n_outside: int

    @property
    def n_scans(self) -> int:
        """Number of evaluated scans (the divisor of FPs per scan)."""
        return len(self.scans)

    @property
    def n_nodules(self) -> int:
        """Number of included nodules (the divisor of the sensitivity)."""
        return len(self.nodule_scans)

    @property
    def n_detected(self) -> int:
        """Number of nodules hit by at least one mark."""
        return len(self.tp_probs)

    @property
    def n_fp(self) -> int:
        """Number of false-positive marks."""
        return len(self.fp_probs)

    def counts(self) -> dict[str, int]:
        """The tallies reported by ``activecad eval froc``."""
        return {
            "nodules": self.n_nodules,
            "detected": self.n_detected,
            "tp": self.n_tp_marks,
            "fp": self.n_fp,
            "ignored": self.n_ignored,
            "double_hits": self.n_double_hits,
            "scans": self.n_scans,
        }


def index_ids(ids: NDArray[np.str_], scans: NDArray[np.str_]) -> NDArray[np.intp]:
    """Position of each id in ``scans``, -1 where it is absent (vectorised lookup)."""
    if len(scans) == 0:
        return np.full(len(ids), -1, dtype=np.intp)
    order = np.argsort(scans, kind="stable")
    pos = np.minimum(np.searchsorted(scans[order], ids), len(scans) - 1)
    found = scans[order][pos] == ids
    return np.where(found, order[pos], -1).astype(np.intp)


def resolve_scans(scans: ArrayLike | None, *id_arrays: NDArray[np.str_]) -> NDArray[np.str_]:
    """The evaluated scan list: ``scans`` if given (unique), else every id seen, sorted."""
    if scans is None:
        non_empty = [a for a in id_arrays if a.size]
        return np.unique(np.concatenate(non_empty)) if non_empty else np.empty(0, dtype=str)
    listed = as_ids(scans, "scans")
    uniq, counts = np.unique(listed, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"scans lists {int(np.sum(counts > 1))} identifier(s) more than once "
            f"(e.g. {uniq[counts > 1][0]!r}); each scan must appear once."
        )
    return listed


def same_scan_pairs(
    scan_a: NDArray[np.intp], scan_b: NDArray[np.intp], n_scans: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Every (i, j) with ``scan_a[i] == scan_b[j]``, built without a loop over items.

    Args:
        scan_a: (A,) scan index of each item of the first set, in [0, n_scans).
        scan_b: (B,) scan index of each item of the second set.
        n_scans: number of scans.

    Returns:
        (P,) indices into the first set and (P,) indices into the second set.
    """
    order_b = np.argsort(scan_b, kind="stable")
    count_b = np.bincount(scan_b, minlength=n_scans)
    start_b = np.concatenate(([0], np.cumsum(count_b)[:-1])) if n_scans else count_b
    per_a = count_b[scan_a]
    total = int(per_a.sum())
    idx_a = np.repeat(np.arange(len(scan_a)), per_a)
    first_pair_of_a = np.cumsum(per_a) - per_a
    within = np.arange(total) - np.repeat(first_pair_of_a, per_a)
    idx_b = order_b[np.repeat(start_b[scan_a], per_a) + within]
    return idx_a.astype(np.intp), idx_b.astype(np.intp)


def cap_marks_per_scan(
    mark_scans: NDArray[np.intp], probs: NDArray[np.float64], max_marks: int | None, n_scans: int
) -> NDArray[np.bool_]:
    """Mask of marks kept by the LUNA16 cap.

    A scan with more than ``max_marks`` marks keeps only those strictly above its
    ``(max_marks + 1)``-th highest probability, so tied marks at the cut all go.

    Args:
        mark_scans: (M,) scan index of each mark.
        probs: (M,) probability of each mark.
        max_marks: the cap; ``None`` or a value <= 0 keeps every mark.
        n_scans: number of scans.
    """
    keep = np.ones(len(probs), dtype=bool)
    if max_marks is None or max_marks <= 0 or len(probs) == 0:
        return keep
    order = np.lexsort((-probs, mark_scans))
    count = np.bincount(mark_scans, minlength=n_scans)
    start = np.cumsum(count) - count
    over = np.flatnonzero(count > max_marks)
    if over.size == 0:
        return keep
    cut = np.full(n_scans, -np.inf)
    cut[over] = probs[order[start[over] + max_marks]]
    crowded = count[mark_scans] > max_marks
    keep[crowded] = probs[crowded] > cut[mark_scans[crowded]]
    return keep


def resolve_hits(
    *,
    scans: NDArray[np.str_],
    mark_scans: NDArray[np.intp],
    mark_probs: NDArray[np.float64],
    nodule_scans: NDArray[np.intp],
    hit_marks: NDArray[np.intp],
    hit_nodules: NDArray[np.intp],
    ignored_marks: NDArray[np.bool_],
    n_capped: int,
    n_outside: int,
) -> FrocMatch:
    """Turn mark-to-nodule hits into TP/FP lists by the LUNA16 rules.

    Args:
        scans: (S,) evaluated scan ids.
        mark_scans: (M,) scan index of each kept mark.
        mark_probs: (M,) probability of each kept mark.
        nodule_scans: (N,) scan index of each included nodule.
        hit_marks: (H,) mark index of each hit; a mark may hit several nodules.
        hit_nodules: (H,) nodule index of each hit.
        ignored_marks: (M,) marks inside an excluded finding; ignored unless they also hit a
            nodule (the script tests included nodules first).
        n_capped: marks the cap dropped, carried into the result.
        n_outside: marks outside the scan list, carried into the result.
    """
    n_marks, n_nodules = len(mark_probs), len(nodule_scans)
    hits_per_nodule = np.bincount(hit_nodules, minlength=n_nodules)
    best = np.full(n_nodules, -np.inf)
    np.maximum.at(best, hit_nodules, mark_probs[hit_marks])
    detected = hits_per_nodule > 0
    is_tp_mark = np.zeros(n_marks, dtype=bool)
    is_tp_mark[hit_marks] = True
    is_ignored = ignored_marks & ~is_tp_mark
    is_fp = ~is_tp_mark & ~is_ignored
    return FrocMatch(
        scans=scans,
        tp_probs=best[detected],
        tp_scans=nodule_scans[detected],
        fp_probs=mark_probs[is_fp],
        fp_scans=mark_scans[is_fp],
        nodule_scans=nodule_scans,
        nodule_probs=np.where(detected, best, np.nan),
        n_tp_marks=int(is_tp_mark.sum()),
        n_ignored=int(is_ignored.sum()),
        n_double_hits=int(np.maximum(hits_per_nodule - 1, 0).sum()),
        n_capped=n_capped,
        n_outside=n_outside,
    )


def _radii_squared(diameters: NDArray[np.float64]) -> NDArray[np.float64]:
    diam = np.where(diameters < 0, DEFAULT_DIAMETER_MM, diameters)
    return (diam / 2.0) ** 2


def _hits_within_radius(
    mark_scans: NDArray[np.intp],
    mark_centers: NDArray[np.float64],
    find_scans: NDArray[np.intp],
    find_centers: NDArray[np.float64],
    find_diameters: NDArray[np.float64],
    n_scans: int,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    im, jf = same_scan_pairs(mark_scans, find_scans, n_scans)
    d2 = np.sum((mark_centers[im] - find_centers[jf]) ** 2, axis=1)
    inside = d2 < _radii_squared(find_diameters)[jf]
    return im[inside], jf[inside]


def match_luna16(
    mark_ids: ArrayLike,
    mark_centers: ArrayLike,
    mark_probs: ArrayLike,
    nodule_ids: ArrayLike,
    nodule_centers: ArrayLike,
    nodule_diameters: ArrayLike,
    *,
    excluded_ids: ArrayLike | None = None,
    excluded_centers: ArrayLike | None = None,
    excluded_diameters: ArrayLike | None = None,
    scans: ArrayLike | None = None,
    max_marks: int | None = LUNA16_MAX_MARKS,
) -> FrocMatch:
    """Match CAD marks to nodules by distance, exactly as the LUNA16 script does.

    Args:
        mark_ids: (M,) series UID of each mark.
        mark_centers: (M, 3) world mm, x-y-z.
        mark_probs: (M,) finite probabilities (any monotone score).
        nodule_ids: (N,) series UID of each annotated nodule.
        nodule_centers: (N, 3) world mm, x-y-z.
        nodule_diameters: (N,) mm; negative means unknown (10 mm is used).
        excluded_ids: (E,) series UID of each excluded finding (``annotations_excluded``).
        excluded_centers: (E, 3) world mm, x-y-z.
        excluded_diameters: (E,) mm; negative means 10 mm.
        scans: the evaluated scan list (``seriesuids.csv``). Scans without nodules or marks
            still count in FPs per scan; marks and nodules of other scans are dropped and
            counted in ``n_outside``. Default: every UID seen in marks and nodules.
        max_marks: per-scan cap (LUNA16: 100); ``None`` or 0 disables it.

    Returns:
        The matched TP/FP probabilities and the tallies.
    """
    m_ids = as_ids(mark_ids, "mark_ids")
    m_xyz = check_points(mark_centers, "mark_centers", 3)
    m_p = check_1d(mark_probs, "mark_probs")
    check_finite(m_p, "mark_probs")
    check_same_length(mark_ids=m_ids, mark_centers=m_xyz, mark_probs=m_p)
    n_ids = as_ids(nodule_ids, "nodule_ids")
    n_xyz = check_points(nodule_centers, "nodule_centers", 3)
    n_d = check_1d(nodule_diameters, "nodule_diameters")
    check_finite(n_d, "nodule_diameters")
    check_same_length(nodule_ids=n_ids, nodule_centers=n_xyz, nodule_diameters=n_d)
    given = [x is not None for x in (excluded_ids, excluded_centers, excluded_diameters)]
    if any(given) and not all(given):
        raise ValueError("excluded_ids, excluded_centers and excluded_diameters go together.")
    e_ids = as_ids([] if excluded_ids is None else excluded_ids, "excluded_ids")
    e_xyz = check_points(
        [] if excluded_centers is None else excluded_centers, "excluded_centers", 3
    )
    e_d = check_1d([] if excluded_diameters is None else excluded_diameters, "excluded_diameters")
    check_finite(e_d, "excluded_diameters")
    check_same_length(excluded_ids=e_ids, excluded_centers=e_xyz, excluded_diameters=e_d)

    scan_list = resolve_scans(scans, m_ids, n_ids)
    n_scans = len(scan_list)
    m_scan, n_scan, e_scan = (index_ids(ids, scan_list) for ids in (m_ids, n_ids, e_ids))
    m_in = m_scan >= 0
    n_outside = int((~m_in).sum())

    keep = cap_marks_per_scan(m_scan[m_in], m_p[m_in], max_marks, n_scans)
    m_scan, m_xyz, m_p = m_scan[m_in][keep], m_xyz[m_in][keep], m_p[m_in][keep]
    n_in, e_in = n_scan >= 0, e_scan >= 0

    hit_m, hit_n = _hits_within_radius(m_scan, m_xyz, n_scan[n_in], n_xyz[n_in], n_d[n_in], n_scans)
    ex_m, _ = _hits_within_radius(m_scan, m_xyz, e_scan[e_in], e_xyz[e_in], e_d[e_in], n_scans)
    ignored = np.zeros(len(m_p), dtype=bool)
    ignored[ex_m] = True
    return resolve_hits(
        scans=scan_list,
        mark_scans=m_scan,
        mark_probs=m_p,
        nodule_scans=n_scan[n_in],
        hit_marks=hit_m,
        hit_nodules=hit_n,
        ignored_marks=ignored,
        n_capped=int((~keep).sum()),
        n_outside=n_outside,
    )


def _sorted_entries(
    tp_probs: NDArray[np.float64], fp_probs: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.intp], NDArray[np.intp]]:
    """TP then FP entries sorted by decreasing probability.

    Returns:
        sorted probabilities (E,), whether each is a TP (E,), the last index of each run of
        tied probabilities (T,), and the sorting order into the TP-then-FP concatenation (E,).
    """
    probs = np.concatenate((tp_probs, fp_probs))
    is_tp = np.concatenate((np.ones(len(tp_probs), bool), np.zeros(len(fp_probs), bool)))
    order = np.argsort(probs, kind="stable")[::-1]
    probs, is_tp = probs[order], is_tp[order]
    ends = np.r_[np.flatnonzero(np.diff(probs)), len(probs) - 1] if len(probs) else np.empty(0, int)
    return probs, is_tp, ends.astype(np.intp), order


def _rescale(
    cum_tp: NDArray,
    cum_fp: NDArray,
    total_tp: NDArray | float,
    total_fp: NDArray | float,
    n_nodules: NDArray | float,
    n_scans: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FPs per scan and sensitivity from cumulative counts.

    The arithmetic copies the script's ``fpr * n_fp / n_scans`` and ``tpr * n_tp / n_nodules``
    (rates from scikit-learn first) so that ``np.interp`` sees the same floats and lands on
    the same side of a vertical step; exact counts would differ there by a rounding. With no
    FP at all the script sets FPs per scan to 0, which this does too.
    """
    cum_tp = np.asarray(cum_tp, dtype=np.float64)
    cum_fp = np.asarray(cum_fp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fps = np.where(total_fp > 0, cum_fp / total_fp * total_fp / n_scans, 0.0)
        sens = np.where(total_tp > 0, cum_tp / total_tp * total_tp / n_nodules, 0.0)
    return fps, sens


def froc_curve(
    tp_probs: ArrayLike,
    fp_probs: ArrayLike,
    *,
    n_nodules: int,
    n_scans: int,
    drop_intermediate: bool = True,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """FROC curve over decreasing thresholds, as the LUNA16 script builds it.

    Args:
        tp_probs: (D,) probability of each detected nodule (one per nodule).
        fp_probs: (F,) probability of each false-positive mark.
        n_nodules: all nodules, missed ones included (D <= n_nodules).
        n_scans: all evaluated scans (FPs are divided by it).
        drop_intermediate: drop collinear points as scikit-learn's ``roc_curve`` does; the
            interpolated curve is unchanged.

    Returns:
        fps_per_scan (K,), sensitivity (K,) and thresholds (K,), starting at (0, 0) with
        threshold ``inf``; point k counts the entries with probability >= thresholds[k].
    """
    tp = check_1d(tp_probs, "tp_probs")
    fp = check_1d(fp_probs, "fp_probs")
    check_finite(tp, "tp_probs")
    check_finite(fp, "fp_probs")
    if n_scans <= 0:
        raise ValueError(f"n_scans must be positive, got {n_scans}.")
    if n_nodules < len(tp):
        raise ValueError(f"n_nodules ({n_nodules}) is below the detected count ({len(tp)}).")
    probs, is_tp, ends, _ = _sorted_entries(tp, fp)
    cum_tp = np.cumsum(is_tp)[ends]
    cum_fp = ends + 1 - cum_tp
    thresholds = probs[ends]
    if drop_intermediate and len(ends) > 2:
        bends = np.logical_or(np.diff(cum_tp, 2), np.diff(cum_fp, 2))
        kept = np.flatnonzero(np.r_[True, bends, True])
        cum_tp, cum_fp, thresholds = cum_tp[kept], cum_fp[kept], thresholds[kept]
    cum_tp = np.r_[0, cum_tp]
    cum_fp = np.r_[0, cum_fp]
    fps, sens = _rescale(
        cum_tp, cum_fp, float(cum_tp[-1]), float(cum_fp[-1]), float(n_nodules), n_scans
    )
    return fps, sens, np.r_[np.inf, thresholds]


def sensitivity_at_fp_rates(
    fps_per_scan: ArrayLike,
    sensitivity: ArrayLike,
    fp_rates: ArrayLike = LUNA16_FP_RATES,
) -> NDArray[np.float64]:
    """Sensitivities read from the linearly interpolated curve (``np.interp``, as LUNA16).

    Args:
        fps_per_scan: (K,) non-decreasing, from :func:`froc_curve`.
        sensitivity: (K,) matching sensitivities.
        fp_rates: FPs per scan to read at (default 1/8 ... 8).

    Returns:
        (len(fp_rates),) sensitivities; beyond the curve's end the last value holds.
    """
    x = check_1d(fps_per_scan, "fps_per_scan")
    y = check_1d(sensitivity, "sensitivity")
    check_same_length(fps_per_scan=x, sensitivity=y)
    if x.size == 0:
        raise ValueError("the FROC curve is empty; build it with froc_curve().")
    return np.interp(check_fp_rates(fp_rates), x, y)


def cpm_score(
    fps_per_scan: ArrayLike,
    sensitivity: ArrayLike,
    fp_rates: ArrayLike = LUNA16_FP_RATES,
) -> float:
    """Competition performance metric: mean sensitivity at ``fp_rates`` (LUNA16 CPM)."""
    return float(np.mean(sensitivity_at_fp_rates(fps_per_scan, sensitivity, fp_rates)))


def percentile_interval(
    samples: NDArray[np.float64], confidence: float = 0.95
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Bootstrap interval along axis 0 by the LUNA16 script's rule.

    The script sorts the B samples and takes ``floor(p * B)`` for p = (1 - confidence) / 2
    and 1 - p; NaN samples (a resample without nodules) are left out first.
    """
    check_confidence(confidence)
    tail = (1.0 - confidence) / 2.0
    data = np.sort(samples, axis=0)
    valid = np.sum(np.isfinite(data), axis=0)
    lo_idx = np.floor(tail * valid).astype(int)
    hi_idx = np.minimum(np.floor((1.0 - tail) * valid).astype(int), np.maximum(valid - 1, 0))
    lower = np.take_along_axis(data, np.expand_dims(lo_idx, 0), axis=0)[0]
    upper = np.take_along_axis(data, np.expand_dims(hi_idx, 0), axis=0)[0]
    none = valid == 0
    return np.where(none, np.nan, lower), np.where(none, np.nan, upper)


@dataclass(frozen=True)
class FrocBootstrap:
    """Bootstrap of a FROC analysis over scans.

    Attributes:
        fp_rates: (P,) operating points, FPs per scan.
        sensitivities: (B, P) sensitivity of each resample at each point (NaN: no nodules).
        cpm: (B,) CPM of each resample.
        lower, upper: (P,) interval of the sensitivity at each point.
        cpm_lower, cpm_upper: interval of the CPM.
        grid: (G,) FPs per scan of the band (for plots).
        band_mean, band_lower, band_upper: (G,) mean and interval of the curve on ``grid``.
        confidence: the interval's level, e.g. 0.95.
    """

    fp_rates: NDArray[np.float64]
    sensitivities: NDArray[np.float64]
    cpm: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    cpm_lower: float
    cpm_upper: float
    grid: NDArray[np.float64]
    band_mean: NDArray[np.float64]
    band_lower: NDArray[np.float64]
    band_upper: NDArray[np.float64]
    confidence: float


def froc_bootstrap(
    match: FrocMatch,
    *,
    n_bootstrap: int = 1000,
    fp_rates: ArrayLike = LUNA16_FP_RATES,
    confidence: float = 0.95,
    grid: ArrayLike | None = None,
    seed: int = 0,
    chunk_size: int = 32,
    progress: bool = False,
) -> FrocBootstrap:
    """Resample scans with replacement and recompute the FROC points, vectorised over marks.

    Each resample weights every TP/FP entry by how often its scan was drawn; one cumulative
    sum over the entries (sorted once) then gives the curve. Only the head of the sorted
    entries that reaches past the largest FP rate is summed, so the cost is O(B x head)
    array work with no loop over marks or scans. The curve is read with ``np.interp`` per
    resample and the interval uses the script's sorted-sample rule, so each resample gives
    the numbers the LUNA16 script would give for that draw.

    Args:
        match: the matched marks (from :func:`match_luna16` or a box matcher).
        n_bootstrap: number of resamples B (LUNA16: 1000).
        fp_rates: operating points, FPs per scan.
        confidence: interval level.
        grid: (G,) FPs per scan for the plotted band; default 97 log-spaced points over the
            range of ``fp_rates``.
        seed: seed of the resampling.
        chunk_size: resamples processed together (memory ~ chunk_size x (D + F) x 8 bytes).
        progress: show a rich progress bar.
    """
    if n_bootstrap <= 0:
        raise ValueError(f"n_bootstrap must be positive, got {n_bootstrap}.")
    if match.n_scans == 0:
        raise ValueError("the match holds no scans; nothing to resample.")
    rates = check_fp_rates(fp_rates)
    check_confidence(confidence)
    fine = (
        np.geomspace(rates.min(), rates.max(), 97)
        if grid is None
        else check_fp_rates(np.asarray(grid, dtype=float).ravel().tolist())
    )
    n_scans = match.n_scans
    _, is_tp, ends, order = _sorted_entries(match.tp_probs, match.fp_probs)
    entry_scan = np.concatenate((match.tp_scans, match.fp_scans))[order]
    tp_per_scan = np.bincount(match.tp_scans, minlength=n_scans)
    fp_per_scan = np.bincount(match.fp_scans, minlength=n_scans)
    nodules_per_scan = np.bincount(match.nodule_scans, minlength=n_scans)
    # One cumulative sum carries both tallies, TPs in the high 32 bits and FPs in the low
    # ones, which halves the dominant cost; it needs every FP tally to fit in 32 bits.
    if n_scans * int(fp_per_scan.max(initial=0)) >= 1 << 32:
        raise ValueError("too many false positives per scan for the packed bootstrap tally.")
    unit = np.where(is_tp, np.int64(1) << 32, np.int64(1))
    # Only the curve up to the largest FP rate is ever read, and with ~100 marks per scan
    # that is a small head of the sorted entries. Resamples whose head does not reach past
    # the largest rate (rare: a heavy draw of FP-poor scans) are redone in full.
    limit = max(float(rates.max()), float(fine.max())) * n_scans
    fp_tally = np.cumsum(~is_tp)[ends] if len(ends) else np.empty(0, np.int64)
    head_ends = int(np.searchsorted(fp_tally, 2.0 * limit + 16, side="right")) + 1
    rng = np.random.default_rng(seed)
    sens_pts = np.empty((n_bootstrap, len(rates)))
    sens_grid = np.empty((n_bootstrap, len(fine)))

    def interpolate(weights: NDArray[np.int64], n_ends: int, out: slice | NDArray) -> NDArray:
        """Fill rows ``out`` from the first ``n_ends`` tie groups; return rows cut short."""
        n_rows = len(weights)
        zero = np.zeros((n_rows, 1), np.int64)
        if n_ends:
            last = int(ends[n_ends - 1]) + 1
            packed = np.cumsum(weights[:, entry_scan[:last]] * unit[:last], axis=1)
            packed = packed[:, ends[:n_ends]]
            cum_tp = np.concatenate((zero, packed >> 32), axis=1)
            cum_fp = np.concatenate((zero, packed & 0xFFFFFFFF), axis=1)
        else:
            cum_tp = cum_fp = zero
        total_tp = (weights @ tp_per_scan)[:, None]
        total_fp = (weights @ fp_per_scan)[:, None]
        n_nod = (weights @ nodules_per_scan)[:, None]
        fps, sens = _rescale(cum_tp, cum_fp, total_tp, total_fp, n_nod, n_scans)
        pts = np.empty((n_rows, len(rates)))
        band = np.empty((n_rows, len(fine)))
        # np.interp runs once per resample (a loop over B, not over marks) to keep its
        # exact tie semantics on every curve.
        for r in range(n_rows):
            pts[r] = np.interp(rates, fps[r], sens[r])
            band[r] = np.interp(fine, fps[r], sens[r])
        pts[n_nod[:, 0] == 0] = np.nan
        band[n_nod[:, 0] == 0] = np.nan
        sens_pts[out] = pts
        sens_grid[out] = band
        complete = (n_ends >= len(ends)) | (cum_fp[:, -1] > limit)
        return np.flatnonzero(~complete)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("FROC bootstrap", total=n_bootstrap)
        for lo in range(0, n_bootstrap, chunk_size):
            hi = min(lo + chunk_size, n_bootstrap)
            draws = rng.integers(0, n_scans, size=(hi - lo, n_scans))
            rows = np.arange(hi - lo)[:, None] * n_scans
            weights = np.bincount((draws + rows).ravel(), minlength=(hi - lo) * n_scans)
            weights = weights.reshape(hi - lo, n_scans)
            short = interpolate(weights, min(head_ends, len(ends)), slice(lo, hi))
            if short.size:
                interpolate(weights[short], len(ends), lo + short)
            bar.advance(task, hi - lo)
    cpm = sens_pts.mean(axis=1)
    lower, upper = percentile_interval(sens_pts, confidence)
    cpm_lo, cpm_hi = percentile_interval(cpm[:, None], confidence)
    band_lo, band_hi = percentile_interval(sens_grid, confidence)
    with np.errstate(invalid="ignore"):
        band_mean = (
            np.nanmean(sens_grid, axis=0)
            if np.isfinite(sens_grid).any()
            else np.full(len(fine), np.nan)
        )
    return FrocBootstrap(
        fp_rates=rates,
        sensitivities=sens_pts,
        cpm=cpm,
        lower=lower,
        upper=upper,
        cpm_lower=float(cpm_lo[0]),
        cpm_upper=float(cpm_hi[0]),
        grid=fine,
        band_mean=band_mean,
        band_lower=band_lo,
        band_upper=band_hi,
        confidence=confidence,
    )


def fp_rate_label(rate: float) -> str:
    """Key of an operating point in JSON output: ``0.125``, ``0.25``, ..., ``1``, ``8``."""
    return str(int(rate)) if float(rate).is_integer() else repr(float(rate))


def luna16_summary(
    match: FrocMatch,
    *,
    fp_rates: ArrayLike = LUNA16_FP_RATES,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, object], tuple[NDArray, NDArray, NDArray], FrocBootstrap | None]:
    """CPM, sensitivities, intervals and counts as ``activecad eval froc --json`` prints them.

    Returns:
        The summary dict, the curve ``(fps_per_scan, sensitivity, thresholds)`` and the
        bootstrap (``None`` when ``n_bootstrap`` is 0).
    """
    if match.n_scans == 0:
        raise ValueError("no scans to evaluate; give a scan list or some marks/nodules.")
    curve = froc_curve(
        match.tp_probs, match.fp_probs, n_nodules=match.n_nodules, n_scans=match.n_scans
    )
    rates = check_fp_rates(fp_rates)
    sens = sensitivity_at_fp_rates(curve[0], curve[1], rates)
    boot = (
        froc_bootstrap(
            match,
            n_bootstrap=n_bootstrap,
            fp_rates=rates,
            confidence=confidence,
            seed=seed,
            progress=progress,
        )
        if n_bootstrap > 0
        else None
    )
    ci: dict[str, object] = {}
    if boot is not None:
        ci = {
            "cpm": [_finite_or_none(boot.cpm_lower), _finite_or_none(boot.cpm_upper)],
            "sensitivities": {
                fp_rate_label(r): [_finite_or_none(lo), _finite_or_none(hi)]
                for r, lo, hi in zip(rates, boot.lower, boot.upper, strict=True)
            },
            "confidence": confidence,
            "n_bootstrap": n_bootstrap,
        }
    summary: dict[str, object] = {
        "cpm": float(np.mean(sens)),
        "sensitivities": {fp_rate_label(r): float(s) for r, s in zip(rates, sens, strict=True)},
        "ci": ci,
        "counts": match.counts(),
    }
    return summary, curve, boot


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
