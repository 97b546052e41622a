"""Recall@K with the query excluded, worked by hand."""

from __future__ import annotations

import pytest

from activecad.metrics import recall_at_k


def test_recall_at_k_by_hand():
    # 1-D embeddings 0, 1, 3, 10, 11 with labels a, b, a, b, b. First same-label
    # neighbour rank: 0 -> 2 (via 3), 1 -> 3 (via 10), 3 -> 2 (via 0), 10 -> 1, 11 -> 1.
    emb = [[0.0], [1.0], [3.0], [10.0], [11.0]]
    labels = ["a", "b", "a", "b", "b"]
    assert recall_at_k(emb, labels, k=(1, 2, 3)) == pytest.approx({1: 0.4, 2: 0.8, 3: 1.0})


def test_query_is_never_its_own_neighbour():
    # Two items with different labels: each one's only neighbour disagrees.
    assert recall_at_k([[0.0], [1.0]], [1, 2], k=(1,)) == {1: 0.0}


def test_cosine_and_bad_k():
    emb = [[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]]
    # Cosine: item 0 and 1 point the same way, so each finds the other first.
    assert recall_at_k(emb, [0, 0, 1], k=(1,), metric="cosine") == pytest.approx({1: 2 / 3})
    with pytest.raises(ValueError, match="k must lie"):
        recall_at_k(emb, [0, 0, 1], k=(3,))
