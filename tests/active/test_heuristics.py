"""Heuristics on crafted inputs whose answers are worked out by hand in each test."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from activecad.active.heuristics import (
    HEURISTICS,
    Heuristic,
    get_heuristic,
    k_center_greedy,
    register_heuristic,
    tta_disagreement,
)
from activecad.active.items import Detections, ItemScores
from activecad.errors import InputError


def _items(**l_scan: float) -> list[ItemScores]:
    return [ItemScores(k, l_scan=v) for k, v in l_scan.items()]


def test_learning_loss_orders_by_l_scan_and_breaks_ties_by_key():
    items = _items(c=0.5, a=0.5, b=0.9, d=0.1)
    sel = get_heuristic("learning_loss").select(items, 4)
    # 0.9 first; a and c tie at 0.5 -> a before c; then 0.1.
    assert sel.items == ("b", "a", "c", "d")
    assert sel.scores == (0.9, 0.5, 0.5, 0.1)
    assert sel.ranks == (1, 2, 3, 4)


def test_selection_does_not_depend_on_the_pools_order():
    items = _items(a=0.3, b=0.3, c=0.7, d=0.3, e=0.0)
    for name in ("learning_loss", "random"):
        first = get_heuristic(name).select(items, 3, seed=4)
        again = get_heuristic(name).select(items[::-1], 3, seed=4)
        assert first == again


def test_non_finite_scores_rank_last_with_a_warning(caplog):
    items = _items(a=math.nan, b=1.0, c=math.inf, d=-math.inf, e=0.0)
    with caplog.at_level(logging.WARNING, logger="activecad"):
        sel = get_heuristic("learning_loss").select(items, 5)
    # finite ones by score (b, e), then the non-finite ones by key (a, c, d).
    assert sel.items == ("b", "e", "a", "c", "d")
    assert "3 of 5 items a non-finite score" in caplog.text


def test_budget_larger_than_the_pool_returns_the_whole_pool():
    assert get_heuristic("learning_loss").select(_items(a=1.0, b=2.0), 10).items == ("b", "a")
    assert get_heuristic("learning_loss").select([], 3).items == ()


def test_random_is_fixed_by_the_seed():
    items = _items(**{f"s{i}": 0.0 for i in range(20)})
    h = get_heuristic("random")
    assert h.select(items, 5, seed=1) == h.select(items, 5, seed=1)
    assert h.select(items, 5, seed=1) != h.select(items, 5, seed=2)


def test_roi_readings_and_a_missing_reading():
    items = [
        ItemScores("a", l_roi={"loss_of_confident": 0.2, "score_above_tau": 3.0}),
        ItemScores("b", l_roi={"loss_of_confident": 0.8, "score_above_tau": 1.0}),
    ]
    assert get_heuristic("roi").select(items, 2).items == ("b", "a")
    assert get_heuristic("roi", reading="score_above_tau").select(items, 2).items == ("a", "b")
    with pytest.raises(InputError, match="loss_above_tau"):
        get_heuristic("roi", reading="loss_above_tau").select(items, 1)
    with pytest.raises(InputError, match="did you mean 'loss_above_tau'"):
        get_heuristic("roi", reading="loss_above_ta")


def test_combined_normalises_each_term_over_the_pool():
    # l_scan 0, 5, 10 -> 0, .5, 1; L_RoI 2, 0, 1 -> 1, 0, .5 (min-max by hand).
    items = [
        ItemScores("a", l_scan=0.0, l_roi={"loss_of_confident": 2.0}),
        ItemScores("b", l_scan=5.0, l_roi={"loss_of_confident": 0.0}),
        ItemScores("c", l_scan=10.0, l_roi={"loss_of_confident": 1.0}),
    ]
    sel = get_heuristic("combined").select(items, 3)
    assert sel.items == ("c", "a", "b")
    assert sel.scores == pytest.approx((1.5, 1.0, 0.5))
    sel = get_heuristic("combined", w_scan=1.0, w_roi=3.0).select(items, 3)
    # a: 0 + 3 = 3; b: .5 + 0 = .5; c: 1 + 1.5 = 2.5
    assert sel.items == ("a", "c", "b")
    assert sel.scores == pytest.approx((3.0, 2.5, 0.5))


def test_mean_entropy_by_hand():
    items = [
        ItemScores("sure", probabilities=[0.0, 1.0]),
        ItemScores("half", probabilities=[0.5]),
        ItemScores("none"),
    ]
    sel = get_heuristic("entropy").select(items, 3)
    assert sel.items == ("half", "none", "sure")
    assert sel.scores == pytest.approx((math.log(2), 0.0, 0.0))


def test_tta_disagreement_by_hand():
    plain = Detections([[0, 0, 0], [50, 0, 0]], [0.9, 0.6])
    # matched within 5 mm: |0.9 - 0.7| = 0.2; the plain 0.6 is unmatched; a new 0.3 appears.
    flip = Detections([[1, 1, 1], [0, 80, 0]], [0.7, 0.3])
    assert tta_disagreement([plain, flip]) == pytest.approx(0.2 + 0.6 + 0.3)
    # two flips: mean of 1.1 and 0 (identical pass).
    assert tta_disagreement([plain, flip, plain]) == pytest.approx(0.55)
    items = [
        ItemScores("stable", tta=[plain, plain]),
        ItemScores("unstable", tta=[plain, flip]),
    ]
    assert get_heuristic("tta").select(items, 1).items == ("unstable",)
    with pytest.raises(InputError, match="needs 'tta'"):
        get_heuristic("tta").select([ItemScores("x")], 1)


def test_coreset_picks_the_far_points():
    # A tight cluster at the origin (labelled), a near point and two far ones.
    emb = {"near": [0.1, 0.0], "far_x": [10.0, 0.0], "far_y": [0.0, 8.0], "mid": [1.0, 1.0]}
    items = [ItemScores(k, embedding=v) for k, v in emb.items()]
    labelled = [ItemScores("l0", embedding=[0.0, 0.0])]
    sel = get_heuristic("coreset").select(items, 2, labelled=labelled)
    assert sel.items == ("far_x", "far_y")
    # distances when picked: 10 to the origin; then far_y: min(8, |(0,8)-(10,0)|) = 8.
    assert sel.scores == pytest.approx((10.0, 8.0))


def test_k_center_greedy_without_centres_starts_farthest_from_the_mean():
    x = np.array([[0.0], [1.0], [2.0], [9.0]])  # mean 3: farthest is 9 (6), then 0 (9)
    picks, dist = k_center_greedy(x, 2)
    assert picks.tolist() == [3, 0]
    assert dist.tolist() == [6.0, 9.0]


def test_uncertainty_then_diversity_spreads_the_batch():
    # The four most uncertain form two pairs of near-duplicates; omega=2 keeps those four
    # of the five; k-center then takes one of each pair rather than the top two.
    rows = {"a1": (0.9, [0, 0]), "a2": (0.8, [0, 0.1]), "b1": (0.7, [5, 5]), "b2": (0.6, [5, 5.1])}
    rows["c"] = (0.1, [100, 100])
    items = [ItemScores(k, l_scan=s, embedding=e) for k, (s, e) in rows.items()]
    h = get_heuristic("uncertainty_then_diversity", uncertainty="learning_loss", omega=2)
    sel = h.select(items, 2)
    assert "c" not in sel.items
    assert {sel.items[0][0], sel.items[1][0]} == {"a", "b"}
    # With a labelled item beside pair b, k-center starts in pair a, farthest from it.
    sel = h.select(items, 1, labelled=[ItemScores("l", embedding=[5, 5.05])])
    assert sel.items == ("a1",)  # top 2 by l_scan: a1, a2; a1 at (0, 0) is the farther
    assert sel.scores == (0.9,)
    km = get_heuristic(
        "uncertainty_then_diversity", uncertainty="learning_loss", omega=2, diversity="kmeans++"
    )
    assert km.select(items, 2, seed=0) == km.select(items, 2, seed=0)


def test_a_wrong_name_lists_the_valid_ones_and_the_nearest():
    with pytest.raises(InputError) as err:
        get_heuristic("corset")
    assert "did you mean 'coreset'" in str(err.value)
    for name in ("random", "learning_loss", "roi", "combined", "entropy", "tta", "coreset"):
        assert name in str(err.value)
    with pytest.raises(InputError, match="takes no options"):
        get_heuristic("random", seed=3)


def test_a_user_heuristic_is_one_class():
    @register_heuristic("test_max_probability")
    class MaxProbability(Heuristic):
        needs = ("probabilities",)

        def compute_score(self, items, *, seed=0):
            return np.array([i.probabilities.max(initial=0.0) for i in items])

    try:
        items = [ItemScores("a", probabilities=[0.2]), ItemScores("b", probabilities=[0.7])]
        assert get_heuristic("test_max_probability").select(items, 1).items == ("b",)
    finally:
        HEURISTICS._items.pop("test_max_probability")


def test_a_duplicated_item_is_an_error():
    with pytest.raises(InputError, match="twice"):
        get_heuristic("random").select([ItemScores("a"), ItemScores("a")], 1)
