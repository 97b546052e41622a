"""LUNA16 FROC/CPM: hand-worked rules, MONAI and the official algorithm as references."""

from __future__ import annotations

import numpy as np
import pytest
from monai.metrics.froc import compute_froc_curve_data, compute_froc_score
from sklearn.metrics import roc_curve

from activecad.metrics import (
    LUNA16_FP_RATES,
    cpm_score,
    froc_bootstrap,
    froc_curve,
    luna16_summary,
    match_luna16,
    sensitivity_at_fp_rates,
)


def _match(marks, nodules, excluded=(), scans=None, max_marks=100):
    """marks: (uid, x, y, z, p); nodules/excluded: (uid, x, y, z, diameter)."""
    m = list(marks)
    n = list(nodules)
    e = list(excluded)
    return match_luna16(
        [r[0] for r in m],
        np.array([r[1:4] for r in m], float).reshape(-1, 3),
        [r[4] for r in m],
        [r[0] for r in n],
        np.array([r[1:4] for r in n], float).reshape(-1, 3),
        [r[4] for r in n],
        excluded_ids=[r[0] for r in e],
        excluded_centers=np.array([r[1:4] for r in e], float).reshape(-1, 3),
        excluded_diameters=[r[4] for r in e],
        scans=scans,
        max_marks=max_marks,
    )


@pytest.fixture
def worked_example():
    # Scan A: nodules N1 (0,0,0) and N2 (6,0,0), both 10 mm (r^2 = 25).
    #   m1 (3,0,0) p=.9 is 3 mm from both -> detects both; m2 (0,1,0) p=.5 hits N1 only, a
    #   double hit; m3 (52,0,0) p=.8 lies in excluded E1 (diameter -1 -> 10 mm) -> ignored;
    #   m4 (100,0,0) p=.7 -> FP.  Scan B: no nodule, m5 p=.6 -> FP.  Scan C: nothing.
    #   Scan D: N3 with no mark -> missed.
    marks = [
        ("A", 3, 0, 0, 0.9),
        ("A", 0, 1, 0, 0.5),
        ("A", 52, 0, 0, 0.8),
        ("A", 100, 0, 0, 0.7),
        ("B", 0, 0, 0, 0.6),
    ]
    nodules = [("A", 0, 0, 0, 10.0), ("A", 6, 0, 0, 10.0), ("D", 0, 0, 0, 8.0)]
    excluded = [("A", 50, 0, 0, -1.0)]
    return _match(marks, nodules, excluded, scans=["A", "B", "C", "D"])


def test_worked_example_counts(worked_example):
    assert worked_example.counts() == {
        "nodules": 3,
        "detected": 2,
        "tp": 2,
        "fp": 2,
        "ignored": 1,
        "double_hits": 1,
        "scans": 4,
    }
    # Both nodules of scan A are credited at m1's 0.9; N3 is missed.
    np.testing.assert_array_equal(worked_example.nodule_probs[:2], [0.9, 0.9])
    assert np.isnan(worked_example.nodule_probs[2])


def test_worked_example_curve_and_cpm(worked_example):
    m = worked_example
    fps, sens, thr = froc_curve(m.tp_probs, m.fp_probs, n_nodules=3, n_scans=4)
    # Hand: thresholds inf, .9 (2 TP), .7 (1 FP), .6 (2 FP); the .7 point is collinear and
    # dropped as roc_curve drops it. FPs are over all 4 scans, sensitivity over 3 nodules.
    np.testing.assert_allclose(fps, [0, 0, 0.5])
    np.testing.assert_allclose(sens, [0, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.6])
    np.testing.assert_allclose(sensitivity_at_fp_rates(fps, sens), [2 / 3] * 7)
    assert cpm_score(fps, sens) == pytest.approx(2 / 3)


def test_mark_on_the_radius_is_not_a_hit():
    # d^2 = 25 = r^2: the script's test is strict.
    m = _match([("A", 5, 0, 0, 0.9)], [("A", 0, 0, 0, 10.0)])
    assert (m.n_detected, m.n_fp) == (0, 1)


def test_negative_diameter_means_ten_mm():
    # 4.9 mm away: inside a 10 mm nodule (r^2 = 25 > 24.01) although the diameter is -1.
    m = _match([("A", 4.9, 0, 0, 0.9)], [("A", 0, 0, 0, -1.0)])
    assert m.n_detected == 1


def test_mark_hitting_nodule_and_excluded_is_a_tp_not_ignored():
    m = _match([("A", 1, 0, 0, 0.9)], [("A", 0, 0, 0, 10.0)], [("A", 2, 0, 0, 10.0)])
    assert (m.n_detected, m.n_ignored, m.n_fp) == (1, 0, 0)


def test_cap_keeps_marks_strictly_above_the_next_probability():
    # max_marks=3: the 4th highest is 0.7, so only 0.9 and 0.8 survive (the tied 0.7s go).
    probs = [0.9, 0.8, 0.7, 0.7, 0.6]
    marks = [("A", 100 + i, 0, 0, p) for i, p in enumerate(probs)]
    m = _match(marks, [], max_marks=3)
    np.testing.assert_array_equal(np.sort(m.fp_probs), [0.8, 0.9])
    assert m.n_capped == 3
    # A scan with exactly max_marks marks keeps them all; None disables the cap.
    assert _match(marks[:3], [], max_marks=3).n_fp == 3
    assert _match(marks, [], max_marks=None).n_fp == 5


def test_default_cap_is_100_marks():
    # 101 distinct probabilities: the lowest one (0.0) is dropped, the nodule it hit is missed.
    marks = [("A", 100 + i, 0, 0, (i + 1) / 101) for i in range(100)] + [("A", 0, 0, 0, 0.0)]
    m = _match(marks, [("A", 0, 0, 0, 10.0)])
    assert (m.n_fp, m.n_detected, m.n_capped) == (100, 0, 1)


def test_tied_tp_and_fp_share_one_threshold():
    # TP and FP both at 0.5, one FP at 0.3; 2 nodules (one missed), 2 scans.
    # Curve: (0,0) -> (1/2, 1/2) -> (1, 1/2); at 1/4 FPs the interpolation gives 1/4,
    # not the 1/2 a TP-first tie-break would give.
    m = _match(
        [("A", 0, 0, 0, 0.5), ("A", 50, 0, 0, 0.5), ("B", 50, 0, 0, 0.3)],
        [("A", 0, 0, 0, 10.0), ("B", 0, 0, 0, 10.0)],
    )
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=2, n_scans=2)
    np.testing.assert_allclose(fps, [0, 0.5, 1])
    np.testing.assert_allclose(sens, [0, 0.5, 0.5])
    assert sensitivity_at_fp_rates(fps, sens, [0.25])[0] == pytest.approx(0.25)


def test_empty_predictions_give_zero_sensitivity():
    m = _match([], [("A", 0, 0, 0, 10.0), ("B", 0, 0, 0, 5.0)])
    summary, curve, _ = luna16_summary(m)
    assert summary["cpm"] == 0.0
    assert summary["counts"]["scans"] == 2
    np.testing.assert_array_equal(curve[0], [0.0])


def test_marks_outside_the_scan_list_are_dropped_and_counted():
    m = _match([("A", 0, 0, 0, 0.9), ("Z", 0, 0, 0, 0.9)], [("A", 0, 0, 0, 10.0)], scans=["A"])
    assert (m.n_outside, m.n_fp, m.n_detected) == (1, 0, 1)


def test_no_false_positives_reads_the_final_sensitivity():
    # The script's border case: no FP at all -> FPs per scan are 0 everywhere.
    m = _match([("A", 0, 0, 0, 0.9)], [("A", 0, 0, 0, 10.0), ("A", 50, 0, 0, 10.0)])
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=2, n_scans=1)
    assert cpm_score(fps, sens) == pytest.approx(0.5)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="non-finite"):
        match_luna16(["A"], [[0, 0, 0]], [np.nan], [], np.empty((0, 3)), [])
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        match_luna16(["A"], [[0, 0]], [0.5], [], np.empty((0, 3)), [])
    with pytest.raises(ValueError, match="same length"):
        match_luna16(["A", "B"], [[0, 0, 0]], [0.5], [], np.empty((0, 3)), [])
    with pytest.raises(ValueError, match="more than once"):
        match_luna16([], np.empty((0, 3)), [], [], np.empty((0, 3)), [], scans=["A", "A"])


def _random_case(rng, n_scans=30, marks_per_scan=15, max_nodules=3):
    uids = [f"1.2.{i}" for i in range(n_scans)]
    nod, exc, marks = [], [], []
    for uid in uids:
        for _ in range(rng.integers(0, max_nodules + 1)):
            nod.append((uid, *rng.uniform(0, 25, 3), rng.choice([-1.0, 4.0, 8.0, 20.0])))
        for _ in range(rng.integers(0, 2)):
            exc.append((uid, *rng.uniform(0, 25, 3), rng.choice([-1.0, 6.0])))
        for _ in range(rng.integers(0, marks_per_scan + 1)):
            # Rounded probabilities create ties, across scans and within them.
            marks.append((uid, *rng.uniform(0, 25, 3), round(float(rng.random()), 2)))
    return uids, marks, nod, exc


def _official_algorithm(uids, marks, nodules, excluded, max_marks):
    """Loop-per-scan, loop-per-candidate re-implementation of the LUNA16 script's counting,
    written from its documented rules; returns the 7 sensitivities."""
    gt, prob, exclude = [], [], []
    for uid in uids:
        cands = [c for c in marks if c[0] == uid]
        if max_marks and len(cands) > max_marks:
            cut = sorted((c[4] for c in cands), reverse=True)[max_marks]
            cands = [c for c in cands if c[4] > cut]
        left = dict(enumerate(cands))
        annots = [(n, "in") for n in nodules if n[0] == uid]
        annots += [(n, "ex") for n in excluded if n[0] == uid]
        for annot, state in annots:
            diam = annot[4] if annot[4] >= 0 else 10.0
            hits = []
            for idx, c in enumerate(cands):
                d2 = sum((annot[k] - c[k]) ** 2 for k in (1, 2, 3))
                if d2 < (diam / 2) ** 2:
                    if state == "in":
                        hits.append(c[4])
                        left.pop(idx, None)
                    else:
                        left.pop(idx, None)
            if state == "in":
                gt.append(1.0)
                prob.append(max(hits) if hits else -1.0)
                exclude.append(not hits)
        for c in left.values():
            gt.append(0.0)
            prob.append(c[4])
            exclude.append(False)
    gt_l = np.array([g for g, e in zip(gt, exclude, strict=True) if not e])
    pr_l = np.array([p for p, e in zip(prob, exclude, strict=True) if not e])
    fpr, tpr, _ = roc_curve(gt_l, pr_l)
    fps = fpr * (len(pr_l) - gt_l.sum()) / len(uids)
    sens = tpr * gt_l.sum() / sum(gt)
    return np.interp(LUNA16_FP_RATES, fps, sens)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_the_official_algorithm(seed):
    # Reference: a per-candidate loop following noduleCADEvaluationLUNA16.py, with
    # scikit-learn's roc_curve as the script uses; the cap is lowered to exercise it.
    rng = np.random.default_rng(seed)
    uids, marks, nod, exc = _random_case(rng)
    m = _match(marks, nod, exc, scans=uids, max_marks=10)
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=m.n_nodules, n_scans=m.n_scans)
    expected = _official_algorithm(uids, marks, nod, exc, max_marks=10)
    np.testing.assert_allclose(sensitivity_at_fp_rates(fps, sens), expected, atol=1e-12)


@pytest.mark.parametrize("with_missed", [True, False])
def test_curve_matches_monai(with_missed):
    # Reference: MONAI's compute_froc_curve_data, whose points are ours (threshold order
    # reversed) without our lowest-threshold point unless a missed nodule adds a 0 to its
    # probability list.
    rng = np.random.default_rng(7)
    tp = np.round(rng.uniform(0.05, 1, 40), 2)
    fp = np.round(rng.uniform(0.01, 1, 300), 2)
    n_missed = 5 if with_missed else 0
    monai_tp = np.r_[tp, np.zeros(n_missed)]
    ref_fps, ref_sens = compute_froc_curve_data(fp, monai_tp, len(monai_tp), 25)
    fps, sens, _ = froc_curve(
        tp, fp, n_nodules=len(tp) + n_missed, n_scans=25, drop_intermediate=False
    )
    ours = np.c_[fps, sens][::-1]
    if not with_missed:
        ours = ours[1:]
    np.testing.assert_allclose(ours, np.c_[ref_fps, ref_sens], rtol=0, atol=1e-9)
    rates = (0.25, 0.5, 1, 2, 4, 8)
    assert cpm_score(fps, sens, rates) == pytest.approx(
        compute_froc_score(ref_fps, ref_sens, rates), abs=1e-9
    )


def _slow_bootstrap_points(m, draws):
    """Rebuild each resample's TP/FP lists scan by scan; read it with froc_curve + interp."""
    out = []
    for drawn in draws:
        tp = np.concatenate([m.tp_probs[m.tp_scans == s] for s in drawn])
        fp = np.concatenate([m.fp_probs[m.fp_scans == s] for s in drawn])
        n_nod = int(sum(np.sum(m.nodule_scans == s) for s in drawn))
        fps, sens, _ = froc_curve(tp, fp, n_nodules=n_nod, n_scans=m.n_scans)
        out.append(sensitivity_at_fp_rates(fps, sens) if n_nod else np.full(7, np.nan))
    return np.array(out)


def test_bootstrap_matches_a_slow_resampling():
    # Reference: the same draws, resampled the slow way.
    rng = np.random.default_rng(3)
    uids, marks, nod, exc = _random_case(rng, n_scans=12)
    m = _match(marks, nod, exc, scans=uids)
    n_boot = 20
    boot = froc_bootstrap(m, n_bootstrap=n_boot, seed=5, chunk_size=n_boot)
    draws = np.random.default_rng(5).integers(0, m.n_scans, size=(n_boot, m.n_scans))
    np.testing.assert_allclose(boot.sensitivities, _slow_bootstrap_points(m, draws), atol=1e-12)
    np.testing.assert_allclose(boot.cpm, boot.sensitivities.mean(axis=1))


def test_bootstrap_head_shortcut_and_its_fallback():
    # Scan 0 holds 600 high-probability FPs, the 19 others 5 low ones each plus a nodule:
    # the bootstrap reads only the head of the sorted marks (scan 0's FPs), which is enough
    # when scan 0 is drawn and must be redone in full when it is not. Both paths must equal
    # the slow resampling.
    rng = np.random.default_rng(8)
    uids = [f"s{i}" for i in range(20)]
    marks = [("s0", 500, 0, 0, 0.5 + 0.49 * i / 600) for i in range(600)]
    nod = []
    for uid in uids[1:]:
        marks += [(uid, 500, 0, 0, float(p)) for p in rng.uniform(0.01, 0.4, 5)]
        marks.append((uid, 0, 0, 0, float(rng.uniform(0.05, 0.95))))
        nod.append((uid, 0, 0, 0, 10.0))
    m = _match(marks, nod, scans=uids, max_marks=None)
    n_boot = 30
    boot = froc_bootstrap(m, n_bootstrap=n_boot, seed=2, chunk_size=n_boot)
    draws = np.random.default_rng(2).integers(0, 20, size=(n_boot, 20))
    assert 0 < np.sum(~np.any(draws == 0, axis=1)) < n_boot
    np.testing.assert_allclose(boot.sensitivities, _slow_bootstrap_points(m, draws), atol=1e-12)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(4)
    uids, marks, nod, exc = _random_case(rng, n_scans=40)
    m = _match(marks, nod, exc, scans=uids)
    a = froc_bootstrap(m, n_bootstrap=200, seed=1)
    b = froc_bootstrap(m, n_bootstrap=200, seed=1, chunk_size=7)
    np.testing.assert_array_equal(a.sensitivities, b.sensitivities)
    fps, sens, _ = froc_curve(m.tp_probs, m.fp_probs, n_nodules=m.n_nodules, n_scans=m.n_scans)
    cpm = cpm_score(fps, sens)
    assert a.cpm_lower <= cpm <= a.cpm_upper
    assert np.all(a.band_lower <= a.band_upper)


def test_summary_json_keys():
    rng = np.random.default_rng(5)
    uids, marks, nod, exc = _random_case(rng, n_scans=10)
    summary, _, boot = luna16_summary(_match(marks, nod, exc, scans=uids), n_bootstrap=50)
    assert list(summary["sensitivities"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert set(summary["counts"]) == {
        "nodules",
        "detected",
        "tp",
        "fp",
        "ignored",
        "double_hits",
        "scans",
    }
    assert boot is not None
    assert set(summary["ci"]) == {"cpm", "sensitivities", "confidence", "n_bootstrap"}
