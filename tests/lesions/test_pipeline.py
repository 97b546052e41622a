"""MELD's fine-tuning set and the mining's precision/recall, on hand-made slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.data.lesion_samples import PreparedVolume, TrainingSlices
from activecad.data.lesion_slices import SliceSample
from activecad.lesions.pipeline import (
    MiningInputs,
    MiningResult,
    finetune_samples,
    mine_from,
    mining_quality,
)

BOX = ["x1", "y1", "x2", "y2"]


def _sample(image_id: str, boxes: list[list[float]]) -> SliceSample:
    return SliceSample(
        image=np.zeros((9, 32, 32), np.float32),
        boxes=np.array(boxes, float).reshape(-1, 4),
        organs=np.tile(np.array([[0, 1, 0]], np.float32), (len(boxes), 1)),
        dataset="universal",
        image_id=image_id,
        patient="p1",
    )


def _slices() -> TrainingSlices:
    # one key slice (10) with a labelled lesion, four unlabelled slices (0, 2, 4, 6)
    samples = [_sample("p1_01_01_010", [[4, 4, 8, 8]])]
    samples += [_sample(f"p1_01_01_{k:03d}", []) for k in (0, 2, 4, 6)]
    # identity geometry: sample pixels are stored pixels + 0.5 (pixel-centre convention)
    volume = PreparedVolume(np.zeros((11, 32, 32), np.float16), 2.0, 1.0, (1.0, 1.0), (0, 0))
    volume_of = {s.image_id: volume for s in samples}
    stored = {s.image_id: int(s.image_id[-3:]) for s in samples}
    return TrainingSlices(samples, volume_of, stored)


def _result() -> MiningResult:
    organs = {"organ_lung": [0.0], "organ_liver": [1.0], "organ_lymph_node": [0.0]}
    mined = pd.DataFrame(
        {"image": ["p1_01_01_002"], "patient": ["p1"], "x1": [20.0], "y1": [20.0],
         "x2": [24.0], "y2": [24.0], "score": [0.4], "annotation": [0], "distance": [0.1],
         **organs}
    )  # fmt: skip
    suspicious = pd.DataFrame(
        {"image": ["p1_01_01_010", "p1_01_01_004"], "patient": ["p1", "p1"],
         "x1": [12.0, 1.0], "y1": [12.0, 1.0], "x2": [16.0, 3.0], "y2": [16.0, 3.0],
         "score": [0.9, 0.8], "expert": ["lung_nodules", "lymph_nodes"]}
    )  # fmt: skip
    annotations = pd.DataFrame(
        {"image": ["p1_01_01_010"], "patient": ["p1"], "x1": [4.0], "y1": [4.0],
         "x2": [8.0], "y2": [8.0]}
    )  # fmt: skip
    return MiningResult(mined, suspicious, annotations, _slices())


def test_finetune_set_adds_mined_positives_and_ignores_suspicious_regions() -> None:
    # 1 key slice; added_fraction 2 -> 2 of the 4 unlabelled slices join
    assert len(finetune_samples(_result(), added_fraction=2.0, seed=0)) == 3
    out = finetune_samples(_result(), added_fraction=4.0)
    by_id = {s.image_id: s for s in out}
    key = by_id["p1_01_01_010"]
    np.testing.assert_array_equal(key.boxes, [[4, 4, 8, 8]])  # suspicious region not a box
    np.testing.assert_array_equal(key.ignore_boxes, [[12, 12, 16, 16]])
    # the mined lesion, with its annotation's organ; the other expert's region ignored
    np.testing.assert_array_equal(by_id["p1_01_01_002"].boxes, [[20, 20, 24, 24]])
    np.testing.assert_array_equal(by_id["p1_01_01_002"].organs, [[0, 1, 0]])
    # A mined box is a detection: it trains the scores, not box regression.
    assert by_id["p1_01_01_002"].regressed.tolist() == [False]
    assert key.regressed.tolist() == [True]
    np.testing.assert_array_equal(by_id["p1_01_01_004"].ignore_boxes, [[1, 1, 3, 3]])
    assert len(by_id["p1_01_01_004"].boxes) == 0


def test_suspicious_as_positive_gets_the_experts_organ() -> None:
    out = finetune_samples(_result(), suspicious_as="positive", added_fraction=0.0)
    (key,) = out
    np.testing.assert_array_equal(key.boxes, [[4, 4, 8, 8], [12, 12, 16, 16]])
    np.testing.assert_array_equal(key.organs, [[0, 1, 0], [1, 0, 0]])  # lung expert -> lung
    assert key.regressed.tolist() == [True, False]
    assert len(key.ignore_boxes) == 0


def test_switches_leave_out_what_is_not_used() -> None:
    out = finetune_samples(
        _result(), use_mined=False, use_suspicious=False, added_fraction=4.0, seed=1
    )
    assert len(out) == 5
    assert sum(len(s.boxes) for s in out) == 1 and sum(len(s.ignore_boxes) for s in out) == 0
    with pytest.raises(ValueError, match="suspicious_as"):
        finetune_samples(_result(), suspicious_as="negative")


def test_mining_quality_counts_boxes_on_unlabelled_truth() -> None:
    # Truth: the labelled lesion on slice 10, an unlabelled liver lesion centred at (21.5,
    # 21.5) stored px on key slice 3 with a 6 mm short axis (half thickness 1.5 slices of
    # 2 mm: slices 1.5..4.5), and an unlabelled lung lesion no box touches.
    truth = pd.DataFrame(
        {
            "series": ["p1_01_01"] * 3,
            "Bounding_boxes": [(3.5, 3.5, 7.5, 7.5), (19.5, 19.5, 23.5, 23.5), (0, 20, 4, 24)],
            "Spacing_mm_px_": [(1.0, 1.0, 2.0)] * 3,
            "Key_slice_index": [10, 3, 6],
            "short_axis_mm": [4.0, 6.0, 4.0],
            "labelled": [1, 0, 0],
            "organ": ["liver", "liver", "lung"],
        }
    )
    quality = mining_quality(_result(), truth)
    # the mined box (slice 2, centre 21.5 stored px) lies on the liver lesion: precision 1,
    # one of the two unlabelled lesions found
    assert quality["mam"] == {
        "boxes": 1, "precision": 1.0, "lesions_eligible": 2, "recall": 0.5
    }  # fmt: skip
    # neither suspicious box lies on a lesion
    assert quality["nrm"]["precision"] == 0.0 and quality["nrm"]["recall"] == 0.0


def test_one_set_of_network_outputs_serves_every_threshold() -> None:
    # The annotation on slice 010 has embedding (1, 0). Proposals on slice 002 of the same
    # patient lie 0 and 0.632 away (|(1, 0) - (0.8, 0.6)| = sqrt(0.04 + 0.36)); one of
    # another patient lies 0 away but may never match. The lung expert's 0.9 box on slice
    # 004 overlaps nothing.
    annotations = pd.DataFrame(
        {"image": ["p1_01_01_010"], "patient": ["p1"], "x1": [4.0], "y1": [4.0],
         "x2": [8.0], "y2": [8.0], "organ_lung": [0.0], "organ_liver": [1.0],
         "organ_lymph_node": [0.0]}
    )  # fmt: skip
    proposals = pd.DataFrame(
        {"image": ["p1_01_01_002", "p1_01_01_002", "p2_01_01_002"],
         "patient": ["p1", "p1", "p2"], "x1": [20.0, 2.0, 20.0], "y1": [20.0, 2.0, 20.0],
         "x2": [24.0, 6.0, 24.0], "y2": [24.0, 6.0, 24.0], "score": [0.6, 0.5, 0.9]}
    )  # fmt: skip
    expert = pd.DataFrame(
        {"image": ["p1_01_01_004"], "patient": ["p1"], "x1": [1.0], "y1": [1.0],
         "x2": [3.0], "y2": [3.0], "score": [0.9]}
    )  # fmt: skip
    inputs = MiningInputs(
        annotations,
        np.array([[1.0, 0.0]], np.float32),
        proposals,
        np.array([[1.0, 0.0], [0.8, 0.6], [1.0, 0.0]], np.float32),
        {"lung_nodules": expert},
        _slices(),
    )
    tight = mine_from(inputs, theta=0.15, sigma=0.5)
    loose = mine_from(inputs, theta=0.7, sigma=0.95)
    assert tight.mined["x1"].tolist() == [20.0] and set(loose.mined["x1"]) == {20.0, 2.0}
    assert (tight.mined["patient"] == "p1").all() and (loose.mined["patient"] == "p1").all()
    assert tight.suspicious["expert"].tolist() == ["lung_nodules"] and loose.suspicious.empty
    assert mine_from(inputs, experts=()).suspicious.empty
    # A score cut between the two p1 proposals (0.6 and 0.5) leaves the 0.6 one to match.
    cut = mine_from(inputs, theta=0.7, sigma=0.95, min_score=0.55)
    assert cut.mined["x1"].tolist() == [20.0]


def _detections(rows: list[tuple[int, list[float], float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"slice": z, **dict(zip(BOX, box, strict=True)), "score": score}
            for z, box, score in rows
        ],
        columns=["slice", *BOX, "score"],
    )


def test_volume_froc_on_hand_made_detections() -> None:
    from activecad.lesions.pipeline import volume_froc

    lesion_a, lesion_b = [10.0, 10.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]
    detections = [
        # a: the lesion on slices 1-3 (one 3D box, 0.9) and a false positive (0.8)
        _detections([(1, lesion_a, 0.9), (2, lesion_a, 0.9), (3, lesion_a, 0.9),
                     (0, [50.0, 50.0, 60.0, 60.0], 0.8)]),
        # b: a false positive (0.7) above its lesion (0.6); c: nothing, no lesion
        _detections([(1, [0.0, 0.0, 5.0, 5.0], 0.7), (1, lesion_b, 0.6)]),
        _detections([]),
    ]  # fmt: skip
    truths = [
        (np.array([2]), np.array([lesion_a])),
        (np.array([1]), np.array([lesion_b])),
        (np.zeros(0, np.int64), np.zeros((0, 4))),
    ]
    result = volume_froc(["a", "b", "c"], detections, truths, bootstrap=200)
    # By hand, thresholds going down over 3 sub-volumes: 0.9 TP (sensitivity 1/2 at 0 FPs),
    # 0.8 FP (1/3 FP per sub-volume), 0.7 FP (2/3), 0.6 TP (sensitivity 1 at 2/3). So 0.5 at
    # 1/8, 1/4 and 1/2 FPs per sub-volume, 1.0 from 1 on: average (3 x 0.5 + 4 x 1) / 7.
    assert list(result["sensitivities"].values()) == pytest.approx([0.5] * 3 + [1.0] * 4)
    assert result["average_sensitivity"] == pytest.approx(5.5 / 7)
    assert result["counts"] == {"sub_volumes": 3, "lesions": 2, "detected": 2, "boxes_3d": 4}
    low, high = result["ci_95"]["average_sensitivity"]
    assert low <= 5.5 / 7 <= high and low < high
    # Only true positives: every resample finds every lesion.
    perfect = volume_froc(["a", "b"], [detections[0].iloc[:3], detections[1].iloc[1:]],
                          truths[:2], bootstrap=50)  # fmt: skip
    assert perfect["ci_95"]["average_sensitivity"] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="one detection table and one truth"):
        volume_froc(["a"], detections, truths)


def test_paired_difference_resamples_the_same_sub_volumes_for_both() -> None:
    from activecad.lesions.pipeline import VolumePredictions, paired_volume_difference

    lesion, elsewhere = [10.0, 10.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]
    truths = [(np.array([1]), np.array([lesion])), (np.array([1]), np.array([lesion]))]
    hit, miss = _detections([(1, lesion, 0.9)]), _detections([(1, elsewhere, 0.5)])
    a = VolumePredictions(["v1", "v2"], [hit, miss], truths)  # finds 1 of 2
    b = VolumePredictions(["v1", "v2"], [hit, hit.copy()], truths)  # finds both
    result = paired_volume_difference(a, b, bootstrap=2000, seed=0)
    # By hand: b's average sensitivity is 1 and a's 1/2. A resample of two sub-volumes
    # gives b - a = the share of v2 in it: 0 (v1 twice, p = 1/4), 1/2 (p = 1/2) or 1
    # (p = 1/4); so b is ahead in 3/4 of the resamples and the interval spans [0, 1].
    assert result["difference"] == pytest.approx(0.5)
    assert result["share_positive"] == pytest.approx(0.75, abs=0.03)
    assert (result["lower"], result["upper"]) == (0.0, 1.0)
    # What a run saves and reads back compares the same way.
    tables = b.to_tables()
    again = VolumePredictions.from_tables(*tables, ["v1", "v2"])
    assert paired_volume_difference(a, again, bootstrap=2000, seed=0) == result
    with pytest.raises(ValueError, match="same sub-volumes"):
        paired_volume_difference(a, VolumePredictions(["v2", "v1"], [hit, hit], truths))


def test_volume_predictions_match_lists_lesions_in_the_order_of_the_truths() -> None:
    from activecad.lesions.pipeline import VolumePredictions

    lesion, elsewhere = [10.0, 10.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]
    truths = [(np.array([1]), np.array([elsewhere])), (np.array([1]), np.array([lesion]))]
    # v1's lesion is missed (its only box is elsewhere); v2's is hit at 0.8.
    found = VolumePredictions(
        ["v1", "v2"],
        [_detections([(1, lesion, 0.3)]), _detections([(1, lesion, 0.8)])],
        truths,
    ).match()
    assert np.isnan(found.nodule_probs[0]) and found.nodule_probs[1] == pytest.approx(0.8)
    assert found.fp_probs.tolist() == pytest.approx([0.3])
