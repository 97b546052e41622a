"""Benchmark of activecad.metrics: LUNA16 FROC with bootstrap, and DeLong on 10^6 cases.

Run: ``.venv/bin/python benchmarks/metrics.py [--repeats 3]`` (writes
``benchmarks/results/metrics.json``; ``--out`` changes it).

Measures (1) the whole LUNA16 evaluation (matching, curve, CPM, 1,000 bootstrap resamples)
over 1,000 scans x 100 marks, (2) the same evaluation done the way the official
``noduleCADEvaluationLUNA16.py`` does it (a loop per scan and per candidate, scikit-learn's
``roc_curve``, a bootstrap that concatenates each resampled scan's candidates one by one),
re-implemented here from its documented algorithm and run on the same input, and checks
that both give the same CPM; (3) DeLong's variance and test on 10^6 cases. Times are
medians over repeats; the reference bootstrap runs a subset of the resamples and is
extrapolated linearly (each resample costs the same), as stated in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve

from activecad.metrics import (
    LUNA16_FP_RATES,
    delong_interval,
    delong_test,
    luna16_summary,
    match_luna16,
)

N_SCANS = 1000
MARKS_PER_SCAN = 100
N_BOOTSTRAP = 1000


def make_luna_like(seed: int = 0) -> dict[str, object]:
    """Synthetic LUNA16-like input: 1.3 nodules and ~0.5 excluded findings per scan,
    85% of nodules marked (1-3 marks near the centre), the rest of 100 marks random."""
    rng = np.random.default_rng(seed)
    uids = np.array([f"1.3.6.1.4.1.14519.5.2.1.{i:06d}" for i in range(N_SCANS)])
    n_nod = rng.poisson(1.3, N_SCANS)
    nod_uid = np.repeat(uids, n_nod)
    nod_xyz = rng.uniform(-150, 150, (len(nod_uid), 3))
    nod_d = rng.choice([4.0, 6.0, 8.0, 12.0, 20.0, 30.0], len(nod_uid))
    n_exc = rng.poisson(0.5, N_SCANS)
    exc_uid = np.repeat(uids, n_exc)
    exc_xyz = rng.uniform(-150, 150, (len(exc_uid), 3))
    exc_d = np.where(rng.random(len(exc_uid)) < 0.5, -1.0, 5.0)

    mark_uid, mark_xyz, mark_p = [], [], []
    hit = rng.random(len(nod_uid)) < 0.85
    per_nod = rng.integers(1, 4, len(nod_uid)) * hit
    mark_uid.append(np.repeat(nod_uid, per_nod))
    jitter = rng.normal(0, 1, (int(per_nod.sum()), 3)) * np.repeat(nod_d, per_nod)[:, None] / 8
    mark_xyz.append(np.repeat(nod_xyz, per_nod, axis=0) + jitter)
    mark_p.append(rng.beta(4, 2, int(per_nod.sum())))
    counts = np.bincount(np.searchsorted(uids, mark_uid[0]), minlength=N_SCANS)
    n_fp = np.maximum(MARKS_PER_SCAN - counts, 0)
    mark_uid.append(np.repeat(uids, n_fp))
    mark_xyz.append(rng.uniform(-150, 150, (int(n_fp.sum()), 3)))
    # Probabilities on a 1e-4 grid, as CAD systems print them: plenty of ties.
    mark_p.append(np.round(rng.beta(1, 5, int(n_fp.sum())), 4))
    return {
        "uids": uids,
        "mark_uid": np.concatenate(mark_uid),
        "mark_xyz": np.concatenate(mark_xyz),
        "mark_p": np.round(np.concatenate(mark_p), 4),
        "nod_uid": nod_uid,
        "nod_xyz": nod_xyz,
        "nod_d": nod_d,
        "exc_uid": exc_uid,
        "exc_xyz": exc_xyz,
        "exc_d": exc_d,
    }


def ours(data: dict, n_bootstrap: int) -> dict:
    match = match_luna16(
        data["mark_uid"],
        data["mark_xyz"],
        data["mark_p"],
        data["nod_uid"],
        data["nod_xyz"],
        data["nod_d"],
        excluded_ids=data["exc_uid"],
        excluded_centers=data["exc_xyz"],
        excluded_diameters=data["exc_d"],
        scans=data["uids"],
    )
    summary, _, _ = luna16_summary(match, n_bootstrap=n_bootstrap, seed=0)
    return summary


def _reference_froc(gt, prob, excl, n_images):
    """The script's computeFROC: roc_curve over non-excluded entries, rescaled."""
    keep = ~excl
    gt_l, prob_l = gt[keep], prob[keep]
    n_det = gt_l.sum()
    fpr, tpr, _ = sk_roc_curve(gt_l, prob_l)
    # The script's border case: with no false positive the FP axis is all zeros.
    no_fp = gt.sum() == len(gt)
    fps = np.zeros(len(fpr)) if no_fp else fpr * (len(prob_l) - n_det) / n_images
    return fps, tpr * n_det / gt.sum()


def reference(data: dict, n_bootstrap: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Loop-per-scan, loop-per-candidate evaluation following noduleCADEvaluationLUNA16.py.

    Returns the 7 sensitivities and the seconds spent in ``n_bootstrap`` resamples.
    """
    by_scan: dict[str, list] = {}
    for uid, xyz, p in zip(data["mark_uid"], data["mark_xyz"], data["mark_p"], strict=True):
        by_scan.setdefault(uid, []).append((float(xyz[0]), float(xyz[1]), float(xyz[2]), p))
    annots: dict[str, list] = {}
    for uid, xyz, d in zip(data["nod_uid"], data["nod_xyz"], data["nod_d"], strict=True):
        annots.setdefault(uid, []).append((*map(float, xyz), float(d), True))
    for uid, xyz, d in zip(data["exc_uid"], data["exc_xyz"], data["exc_d"], strict=True):
        annots.setdefault(uid, []).append((*map(float, xyz), float(d), False))

    gt, prob, excl, owner = [], [], [], []
    for uid in data["uids"]:
        cands = by_scan.get(uid, [])
        if len(cands) > 100:
            cut = sorted((c[3] for c in cands), reverse=True)[100]
            cands = [c for c in cands if c[3] > cut]
        remaining = dict(enumerate(cands))
        for x, y, z, diameter, included in annots.get(uid, []):
            r2 = ((diameter if diameter >= 0 else 10.0) / 2.0) ** 2
            matches = []
            for idx, (cx, cy, cz, p) in enumerate(cands):
                if (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < r2:
                    if included:
                        matches.append(p)
                    remaining.pop(idx, None)
            if included:
                gt.append(1.0)
                prob.append(max(matches) if matches else -1.0)
                excl.append(not matches)
                owner.append(uid)
        for _, (_, _, _, p) in remaining.items():
            gt.append(0.0)
            prob.append(p)
            excl.append(False)
            owner.append(uid)
    gt_a, prob_a, excl_a = np.array(gt), np.array(prob), np.array(excl)
    fps, sens = _reference_froc(gt_a, prob_a, excl_a, len(data["uids"]))
    points = np.interp(LUNA16_FP_RATES, fps, sens)

    # The script's bootstrap: a dict scan -> candidate columns, then per resample the drawn
    # scans' columns concatenated one at a time and computeFROC run on the result.
    stacked = np.vstack((gt_a, prob_a, excl_a.astype(float)))
    per_scan: dict[str, np.ndarray] = {}
    for i, uid in enumerate(owner):
        col = stacked[:, i : i + 1]
        per_scan[uid] = col if uid not in per_scan else np.concatenate((per_scan[uid], col), 1)
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.125, 8, 10000)
    start = time.perf_counter()
    for _ in range(n_bootstrap):
        drawn = data["uids"][rng.integers(0, len(data["uids"]), len(data["uids"]))]
        sample = None
        for uid in drawn:
            if uid in per_scan:
                sample = (
                    per_scan[uid] if sample is None else np.concatenate((sample, per_scan[uid]), 1)
                )
        fps_b, sens_b = _reference_froc(sample[0], sample[1], sample[2] > 0, len(drawn))
        np.interp(grid, fps_b, sens_b)
    return points, time.perf_counter() - start


def _median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-bootstrap", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics.json"))
    args = parser.parse_args()

    data = make_luna_like()
    print(f"FROC input: {N_SCANS} scans, {len(data['mark_p'])} marks, {len(data['nod_d'])} nodules")
    t_ours, all_ours, summary = _median_time(lambda: ours(data, N_BOOTSTRAP), args.repeats)
    print(f"ours, 1000 bootstrap: median {t_ours:.2f} s  CPM {summary['cpm']:.6f}")
    t_ours_nb, _, _ = _median_time(lambda: ours(data, 0), args.repeats)

    start = time.perf_counter()
    ref_points, _ = reference(data, 0)
    t_ref_match = time.perf_counter() - start
    _, t_ref_boot = reference(data, args.reference_bootstrap)
    t_ref_boot_full = t_ref_boot / args.reference_bootstrap * N_BOOTSTRAP
    t_ref_total = t_ref_match + t_ref_boot_full
    ours_points = np.array(list(summary["sensitivities"].values()))
    cpm_diff = abs(float(ref_points.mean()) - summary["cpm"])
    print(
        f"reference: {t_ref_match:.2f} s without bootstrap, ~{t_ref_total:.1f} s with 1000 "
        f"(extrapolated from {args.reference_bootstrap}); CPM diff {cpm_diff:.2e}"
    )

    rng = np.random.default_rng(1)
    n = 10**6
    y = (rng.random(n) < 0.3).astype(int)
    a = rng.normal(size=n) + 0.8 * y
    b = 0.7 * a + 0.7 * rng.normal(size=n) + 0.2 * y
    t_dl, all_dl, ci = _median_time(lambda: delong_interval(y, a), args.repeats)
    t_dt, _, test = _median_time(lambda: delong_test(y, a, b), args.repeats)
    start = time.perf_counter()
    sk = sk_auc(y, a)
    t_sk = time.perf_counter() - start
    print(f"DeLong 1e6: interval {t_dl:.2f} s, two-curve test {t_dt:.2f} s")

    result = {
        "froc": {
            "input": {
                "scans": N_SCANS,
                "marks": len(data["mark_p"]),
                "nodules": len(data["nod_d"]),
                "excluded": len(data["exc_d"]),
                "bootstrap": N_BOOTSTRAP,
            },
            "ours_median_s": round(t_ours, 3),
            "ours_runs_s": [round(t, 3) for t in all_ours],
            "ours_without_bootstrap_median_s": round(t_ours_nb, 3),
            "reference_without_bootstrap_s": round(t_ref_match, 3),
            "reference_with_bootstrap_s": round(t_ref_total, 1),
            "reference_bootstrap_measured": args.reference_bootstrap,
            "speedup_with_bootstrap": round(t_ref_total / t_ours, 1),
            "speedup_without_bootstrap": round(t_ref_match / t_ours_nb, 1),
            "cpm": summary["cpm"],
            "cpm_reference": float(ref_points.mean()),
            "max_abs_diff_7_points": float(np.max(np.abs(ours_points - ref_points))),
            "target_s": 10.0,
        },
        "delong": {
            "n": n,
            "interval_median_s": round(t_dl, 3),
            "interval_runs_s": [round(t, 3) for t in all_dl],
            "test_two_curves_median_s": round(t_dt, 3),
            "auc": ci.auc,
            "auc_sklearn": float(sk),
            "sklearn_roc_auc_s": round(t_sk, 3),
            "p_value": test.p_value,
            "target_s": 2.0,
        },
        "machine": {
            "cpu_threads": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit_learn": sklearn.__version__,
        },
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
