"""ACFT selection (Zhou et al., "Active, continual fine tuning of convolutional neural
networks for reducing annotation efforts", Medical Image Analysis 2021) on the paper's own
Table 1 and on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activecad.active import ItemScores, get_heuristic
from activecad.active.acft import (
    acft_score,
    majority_patches,
    misclassified_candidates,
    randomised_selection,
    training_set,
)
from activecad.errors import InputError

# Table 1's patterns as the multisets of the 11 patch probabilities printed under them. The
# entropy row reproduces to rounding (A 7.52 printed, 7.50 here; C, D, E 1.30), as does
# A's entropy after majority selection (2.02). The paper's full diversities do not all
# reproduce from the printed probabilities (A: 4.38 printed, 5.35 here; B 1237.21 vs 1237.5;
# C 2816.66 vs 2817.4), so only the table's claims are tested, not its diversity digits.
TABLE_1 = {
    "A": [0.4, 0.5, 0.4, 0.5, 0.4, 0.5, 0.5, 0.6, 0.5, 0.6, 0.6],
    "B": [0.0, 0.6, 0.1, 0.7, 0.2, 0.8, 0.3, 1.0, 0.4, 1.0, 0.4],
    "C": [0.0, 0.9, 0.0, 1.0, 0.0, 1.0, 0.1, 1.0, 0.1, 1.0, 0.9],
    "D": [0.0, 0.0, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0],
    "E": [0.9, 1.0, 0.9, 1.0, 0.9, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0],
}


def entropy(pattern: str, alpha: float | None = None) -> float:
    return acft_score(np.array(TABLE_1[pattern]), alpha=alpha, lambda1=1.0, lambda2=0.0)


def diversity(pattern: str, alpha: float | None = None) -> float:
    return acft_score(np.array(TABLE_1[pattern]), alpha=alpha, lambda1=0.0, lambda2=1.0)


def test_table_1_entropy_ranks_pattern_a_first() -> None:
    # by hand: 3 x H(0.4) + 5 x H(0.5) + 3 x H(0.6) = 6 x 0.6730 + 5 x 0.6931 = 7.50 nats
    assert entropy("A") == pytest.approx(7.50, abs=0.01)
    assert entropy("C") == pytest.approx(1.30, abs=0.01)
    ranked = sorted(TABLE_1, key=entropy, reverse=True)
    assert ranked[0] == "A"
    # majority selection (alpha 1/4: 3 patches): A keeps its three 0.6 -> 3 x 0.6730 = 2.02
    assert entropy("A", 0.25) == pytest.approx(2.02, abs=0.01)
    assert max(TABLE_1, key=lambda p: entropy(p, 0.25)) == "A"


def test_table_1_majority_selection_zeroes_the_diversity_of_a_c_d_e() -> None:
    for pattern in "ACDE":
        assert diversity(pattern) > 1.0  # without majority selection they are diverse
        assert diversity(pattern, 0.25) == pytest.approx(0.0, abs=1e-9)
    # pattern B (a spread of predictions) keeps its diversity and ranks first, as the paper
    # says diversity + majority prefers B while plain diversity prefers C
    assert diversity("B", 0.25) > 1.0
    assert max(TABLE_1, key=lambda p: diversity(p, 0.25)) == "B"
    assert max(TABLE_1, key=diversity) == "C"


def test_majority_uses_the_dominant_class_and_several_classes() -> None:
    # mean nodule probability 0.3 < 0.5: the dominant class is "no nodule", so the kept
    # patches are those with the lowest nodule probability
    kept = majority_patches(np.array([0.9, 0.1, 0.2, 0.0]), alpha=0.5)
    np.testing.assert_allclose(kept[:, 1], [0.0, 0.1])
    three = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    np.testing.assert_allclose(majority_patches(three, alpha=0.5)[:, 0], [0.8, 0.7])
    # identical kept patches: zero diversity, entropy = 2 x the entropy of one patch
    one = -np.sum((three[0] + 2.2e-16) * np.log(three[0] + 2.2e-16))
    same = np.array([three[0], three[0], three[2]])
    assert acft_score(same, alpha=0.5, lambda2=1.0) == pytest.approx(2 * one)


def test_randomised_selection_draws_from_the_top_omega_b_only() -> None:
    scores = np.arange(100.0)  # item k has score k
    seen = set()
    for seed in range(200):
        picks = randomised_selection(scores, 4, omega=5, seed=seed)
        assert len(picks) == len(set(picks)) == 4
        seen.update(picks.tolist())
    # the pool is the top 20 (scores 80-99); the 20th (score 80) has probability 0 (Eq. 4)
    assert seen <= set(range(81, 100)) and len(seen) > 10
    # Eq. 4's probabilities: (a - a_20) / (a_1 - a_20) normalised; they sum to 1
    pool = np.arange(99.0, 79.0, -1.0)
    probability = (pool - pool[-1]) / (pool[0] - pool[-1])
    assert (probability / probability.sum()).sum() == pytest.approx(1.0)
    # same seed, same draw; all-equal scores fall back to pool order
    np.testing.assert_array_equal(
        randomised_selection(scores, 4, seed=3), randomised_selection(scores, 4, seed=3)
    )
    np.testing.assert_array_equal(randomised_selection(np.ones(10), 3), [0, 1, 2])


def test_the_registered_heuristic_selects_candidates() -> None:
    items = [
        ItemScores(f"s#{k}", kind="candidate", probabilities=np.array(TABLE_1[p]))
        for k, p in enumerate("ABCDE")
    ]
    greedy = get_heuristic("acft", omega=None, lambda2=0.0)
    assert greedy.select(items, 1).items == ("s#0",)  # pattern A by entropy
    chosen = get_heuristic("acft").select(items, 2, seed=1)
    assert len(chosen.items) == 2 and chosen.ranks == (1, 2)
    assert list(chosen.scores) == sorted(chosen.scores, reverse=True)
    with pytest.raises(InputError, match="probabilities"):
        get_heuristic("acft").select([ItemScores("s#9", kind="candidate")], 1)


def test_learning_strategies_of_table_2() -> None:
    labelled, queried = ["c1", "c2", "c3"], ["c4", "c5"]
    labels = {"c1": 1, "c2": 0, "c3": 1}
    predictions = {"c1": [0.9, 0.8], "c2": [0.7, 0.6], "c3": [0.2, 0.4]}
    wrong = misclassified_candidates(labels, predictions)
    assert wrong == ["c2", "c3"]  # H: exactly the labelled candidates the model gets wrong
    assert training_set("ACFT(HQ)", labelled, queried, misclassified=wrong) == (
        ["c2", "c3", "c4", "c5"],
        True,
    )
    assert training_set("ACFT(Q)", labelled, queried) == (["c4", "c5"], True)
    assert training_set("ACFT(LQ)", labelled, queried)[0] == ["c1", "c2", "c3", "c4", "c5"]
    assert training_set("AFT", labelled, queried)[1] is False  # from the pre-trained model
    assert training_set("RFT", [], queried) == (["c4", "c5"], True)  # empty start
    with pytest.raises(InputError, match="misclassified"):
        training_set("ACFT(HQ)", labelled, queried, misclassified=["c9"])
    assert not math.isnan(acft_score(np.array([0.0, 1.0])))
