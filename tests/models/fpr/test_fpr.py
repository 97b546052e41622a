"""The FP-reduction classifier: shapes, online sample filtering, training, model folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from activecad.data import PreparedScan
from activecad.errors import InputError
from activecad.metrics import roc_auc_score
from activecad.models.fpr import (
    FprNet,
    apply_fpr,
    average_classifiers,
    build_net,
    candidate_set,
    combine_probabilities,
    load_fpr,
    predict,
    preset_config,
    recombine,
    save_fpr,
    train_fpr,
)
from activecad.models.fpr.train import _FprLoss, _initial_hardness

TINY = {"patch_size": 16, "widths": (4, 8), "patches_per_candidate": 2, "batch_size": 8}


def test_logits_and_embedding_shapes_and_a_larger_input() -> None:
    net = FprNet((4, 8, 16), stem_stride=2).eval()
    logits, embedding = net.forward_with_embedding(torch.zeros(3, 1, 32, 32, 32))
    assert logits.shape == (3, 2) and embedding.shape == (3, 16)
    # Fully convolutional: any size divisible by the network's total stride works.
    assert net(torch.zeros(1, 1, 48, 48, 48)).shape == (1, 2)


def test_online_sample_filtering_keeps_the_hardest_negatives() -> None:
    net = FprNet((2, 4))
    loss = _FprLoss(net, keep_negatives=0.5)
    patches = torch.randn(6, 1, 8, 8, 8)
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    total = loss((patches, labels))["total"]
    per_sample = torch.nn.functional.cross_entropy(net(patches), labels, reduction="none")
    # Both positives and the 2 hardest of the 4 negatives (ceil(0.5 * 4) = 2) enter the mean.
    kept = torch.cat([per_sample[:2], per_sample[2:].topk(2).values])
    assert total.item() == pytest.approx(kept.mean().item(), rel=1e-5)


def test_mining_may_start_from_the_detectors_scores() -> None:
    # Rows 0 and 2 are negatives; row 3 is a negative no detector scored (an added place).
    table = pd.DataFrame({"det_probability": [0.5, 0.9, 0.75, np.nan]})
    negatives = np.array([0, 2, 3])
    np.testing.assert_array_equal(_initial_hardness(table, negatives, False), [1.0, 1.0, 1.0])
    # By hand: -log(1 - 0.5) = 0.6931, -log(1 - 0.75) = 1.3863, plus the 1e-3 floor.
    np.testing.assert_allclose(
        _initial_hardness(table, negatives, True), [0.6941, 1.3873, 1.0], atol=1e-4
    )
    unscored = pd.DataFrame({"det_probability": [1.0, 1.0, 1.0, 1.0]})  # candidates.csv
    np.testing.assert_array_equal(_initial_hardness(unscored, negatives, True), [1.0, 1.0, 1.0])
    assert preset_config("cpu", mine_from_detector="true").mine_from_detector is True


def test_combined_probability_is_the_geometric_mean() -> None:
    assert combine_probabilities(np.array([0.64, 1.0]), np.array([0.25, 0.0])) == pytest.approx(
        [0.4, 0.0]
    )


def test_the_classifier_weight_moves_the_combination_between_the_stages() -> None:
    det, fpr = np.array([1 / 16, 1.0, 0.0]), np.array([1.0, 1 / 16, 0.3])
    # By hand: (1/16)^(1/4) = 1/2 and (1/16)^(3/4) = 1/8; 0^0 = 1 leaves the classifier's 0.3.
    assert combine_probabilities(det, fpr, 0.75)[:2] == pytest.approx([0.5, 0.125])
    assert combine_probabilities(det, fpr, 1.0) == pytest.approx(fpr)
    assert combine_probabilities(det, fpr, 0.0) == pytest.approx(det)
    with pytest.raises(InputError, match="between 0 and 1"):
        combine_probabilities(det, fpr, 1.5)


def test_recombining_moves_blob_scores_and_the_weight_without_a_classifier_pass() -> None:
    rescored = pd.DataFrame(
        {"source": ["detector", "blob", "blob"], "det_probability": [0.64, 0.05, 0.05],
         "fpr_probability": [0.25, 0.64, 0.01], "probability": [0.4, np.sqrt(0.032), 0.0]}
    )  # fmt: skip
    moved = recombine(rescored, blob_score=0.25)
    # sqrt(0.25 x 0.64) = 0.4 and sqrt(0.25 x 0.01) = 0.05 by hand; the mark keeps its 0.4.
    assert moved["det_probability"].tolist() == [0.64, 0.25, 0.25]
    assert moved["probability"].tolist() == pytest.approx([0.4, 0.4, 0.05])
    assert rescored["det_probability"].tolist() == [0.64, 0.05, 0.05]  # the input is kept
    # Weight 1: the classifier's own probability, whatever the detector said.
    alone = recombine(rescored, fpr_weight=1.0)
    assert alone["probability"].tolist() == pytest.approx([0.25, 0.64, 0.01])
    assert alone["det_probability"].tolist() == [0.64, 0.05, 0.05]


def _balls_and_tubes(seed: int) -> tuple[PreparedScan, pd.DataFrame]:
    """A 1 mm scan with bright balls (nodules) and bright rods along z (vessel mimics)."""
    rng = np.random.default_rng(seed)
    array = rng.normal(0.1, 0.02, (64, 64, 64)).astype(np.float32)
    zz, yy, xx = np.mgrid[:64, :64, :64]
    rows = []
    for k, (z, y, x) in enumerate(rng.integers(10, 54, (8, 3))):
        if k % 2 == 0:
            array[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 9] = 0.8
            label = 1
        else:
            array[(yy - y) ** 2 + (xx - x) ** 2 <= 4] = 0.8
            label = 0
        rows.append((f"s{seed}", float(x), float(y), float(z), label, 6.0 if label else np.nan))
    table = pd.DataFrame(
        rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "label", "diameter_mm"]
    )
    return PreparedScan(array, np.ones(3), np.zeros(3), np.eye(3), f"s{seed}"), table


def test_a_tiny_classifier_learns_balls_from_rods() -> None:
    config = preset_config("cpu", steps=60, lr=3e-3, curriculum_share=0.0, **TINY)
    train_scan, train_table = _balls_and_tubes(0)
    test_scan, test_table = _balls_and_tubes(1)
    train = candidate_set(train_table, {"s0": train_scan})
    test = candidate_set(test_table, {"s1": test_scan})
    net, history = train_fpr(train, None, config, device="cpu")
    assert len(history) == 1
    probs, embeddings = predict(net, test, config, with_embeddings=True)
    assert probs.shape == (8, 2) and embeddings.shape == (8, 8)
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert roc_auc_score(test_table["label"], probs.mean(axis=1)) >= 0.9


def test_model_folder_round_trip_and_rescoring(tmp_path: Path) -> None:
    config = preset_config("cpu", **TINY)
    torch.manual_seed(0)
    net = build_net(config).eval()
    save_fpr(tmp_path / "fpr", net, config, [])
    loaded, loaded_config = load_fpr(tmp_path / "fpr")
    assert loaded_config == config
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(loaded(x), net(x))


def test_loading_another_kind_of_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bundle.json").write_text('{"model": "detector3d"}')
    with pytest.raises(InputError, match="not a 'fpr' one"):
        load_fpr(tmp_path / "m")


def test_apply_fpr_keeps_both_scores(tmp_path: Path, tiny_cohort: Path) -> None:
    from activecad.data import PreprocessCache
    from activecad.data.folders import read_luna_folder

    config = preset_config("cpu", **TINY)
    save_fpr(tmp_path / "fpr", build_net(config), config, [])
    folder = read_luna_folder(tiny_cohort)
    marks = folder.annotations[["seriesuid", "coordX", "coordY", "coordZ"]].head(3).copy()
    marks["probability"] = [0.9, 0.5, 0.1]
    out = apply_fpr(marks, folder.scans, tmp_path / "fpr", cache=PreprocessCache())
    assert out["det_probability"].tolist() == [0.9, 0.5, 0.1]
    expected = np.sqrt(out["det_probability"] * out["fpr_probability"])
    assert out["probability"].to_numpy() == pytest.approx(expected.to_numpy())
    # Two classifiers: each candidate's classifier probability is the two models' mean.
    torch.manual_seed(1)
    save_fpr(tmp_path / "fpr_2", build_net(config), config, [])
    second = apply_fpr(marks, folder.scans, tmp_path / "fpr_2", cache=PreprocessCache())
    both = apply_fpr(
        marks, folder.scans, [tmp_path / "fpr", tmp_path / "fpr_2"], cache=PreprocessCache()
    )
    mean = (out["fpr_probability"] + second["fpr_probability"]) / 2
    assert both["fpr_probability"].to_numpy() == pytest.approx(mean.to_numpy())
    assert both["probability"].to_numpy() == pytest.approx(np.sqrt(both["det_probability"] * mean))
    assert not np.allclose(out["fpr_probability"], second["fpr_probability"])  # two models


def test_averaging_classifiers_needs_the_same_candidates() -> None:
    one = pd.DataFrame(
        {"seriesuid": ["a", "a"], "coordX": [1.0, 2.0], "coordY": [0.0, 0.0],
         "coordZ": [0.0, 0.0], "det_probability": [0.9, 0.4], "fpr_probability": [0.2, 0.1]}
    )  # fmt: skip
    other = one.assign(fpr_probability=[0.6, 0.9])
    mean = average_classifiers([one, other])
    # By hand: means 0.4 and 0.5; sqrt(0.9 x 0.4) = 0.6 and sqrt(0.4 x 0.5) = sqrt(0.2).
    assert mean["fpr_probability"].tolist() == pytest.approx([0.4, 0.5])
    assert mean["probability"].tolist() == pytest.approx([0.6, np.sqrt(0.2)])
    with pytest.raises(InputError, match="other candidates"):
        average_classifiers([one, other.iloc[::-1]])


def test_a_given_validation_split_is_kept_and_may_not_overlap(
    tmp_path: Path, tiny_cohort: Path
) -> None:
    """The detector's quality run hands its own patient split to the second stage."""
    import json

    from activecad.data.folders import read_luna_folder
    from activecad.models.fpr import train_fpr_on_folder

    uids = sorted(read_luna_folder(tiny_cohort).annotations["seriesuid"].unique())
    config = preset_config("cpu", steps=2, **TINY)
    summary = train_fpr_on_folder(
        tiny_cohort,
        tmp_path / "fpr",
        config,
        seriesuids=uids[1:],
        val_seriesuids=uids[:1],
    )
    split = json.loads((tmp_path / "fpr" / "split.json").read_text())
    assert split == {"train": uids[1:], "val": uids[:1]}
    assert summary["val_candidates"] > 0
    with pytest.raises(InputError, match="both training and validation"):
        train_fpr_on_folder(
            tiny_cohort,
            tmp_path / "fpr2",
            config,
            seriesuids=uids,
            val_seriesuids=uids[:1],
        )
