"""The nodule index: exact search, saving, and the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.errors import InputError
from activecad.metrics import recall_at_k
from activecad.retrieval import NoduleIndex


def _metadata(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "seriesuid": [f"1.2.{k}" for k in range(n)],
            "coordX": np.arange(n, dtype=float),
            "coordY": -np.arange(n, dtype=float),
            "coordZ": 10.0 * np.arange(n),
            "diameter_mm": 5.0 + np.arange(n),
            "malignancy": [1.0, 1.5, 4.5, 5.0, np.nan][:n],
        }
    )


# Five crafted embeddings: two benign nodules near (0, 0), two malignant near (10, 0), and
# one far away with no rating.
EMBEDDINGS = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [12.0, 0.0], [0.0, 50.0]])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_a_query_at_an_indexed_nodule_finds_itself_first(metric: str) -> None:
    x = np.random.default_rng(0).normal(size=(200, 16))
    metadata = pd.concat([_metadata(5)] * 40, ignore_index=True)
    index = NoduleIndex(x, metadata, metric=metric)
    for k in (0, 57, 199):
        (found,) = index.search(x[k], k=4)
        assert found[0].rank == 1 and found[0].distance == pytest.approx(0.0, abs=1e-5)
        assert [n.rank for n in found] == [1, 2, 3, 4]
        assert found[0].seriesuid == metadata.seriesuid[k]


def test_neighbours_carry_world_position_distance_and_malignancy() -> None:
    index = NoduleIndex(EMBEDDINGS, _metadata(5))
    (found,) = index.search(np.array([11.0, 0.0]), k=2)
    # by hand: nodules 2 and 3 are each 1.0 away; the tie goes to the lower index
    assert [(n.seriesuid, n.distance) for n in found] == [("1.2.2", 1.0), ("1.2.3", 1.0)]
    assert (found[0].x, found[0].y, found[0].z, found[0].malignancy) == (2.0, -2.0, 20.0, 4.5)


def test_recall_at_k_on_the_crafted_index() -> None:
    # benign (1, 1.5) vs malignant (4.5, 5), the unrated one left out as Park et al. leave out
    # score 3: each nodule's nearest other nodule has its class -> Recall@1 = 1 (by hand)
    labels = np.array([0, 0, 1, 1])
    assert recall_at_k(EMBEDDINGS[:4], labels, k=(1, 2)) == {1: 1.0, 2: 1.0}
    # and the index agrees: the nearest other nodule of each is in its class
    index = NoduleIndex(EMBEDDINGS[:4], _metadata(4))
    for k in range(4):
        neighbour = index.search(EMBEDDINGS[k], k=2)[0][1]
        assert labels[int(neighbour.seriesuid.split(".")[-1])] == labels[k]


def test_save_load_round_trip_and_version_check(tmp_path: Path) -> None:
    shifted = EMBEDDINGS + 1.0  # cosine needs non-zero vectors
    index = NoduleIndex(shifted, _metadata(5), metric="cosine", model_version="abc123")
    index.save(tmp_path / "idx")
    again = NoduleIndex.load(tmp_path / "idx", model_version="abc123")
    assert len(again) == 5 and again.metric == "cosine" and again.dimension == 2
    query = np.array([1.0, 0.2])
    assert again.search(query, k=3) == index.search(query, k=3)
    with pytest.raises(InputError, match="model version 'abc123', not 'zzz'"):
        NoduleIndex.load(tmp_path / "idx", model_version="zzz")
    with pytest.raises(InputError, match="3 dimensions, the index 2"):
        again.search(np.zeros(3))


def test_bad_index_files_are_clear_errors(tmp_path: Path) -> None:
    NoduleIndex(EMBEDDINGS, _metadata(5)).save(tmp_path / "idx")
    with pytest.raises(InputError, match="no such index folder"):
        NoduleIndex.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a readable nodule index"):
        NoduleIndex.load(tmp_path / "empty")
    faiss_file = tmp_path / "idx" / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:20])  # truncated
    with pytest.raises(InputError, match="unreadable"):
        NoduleIndex.load(tmp_path / "idx")
    NoduleIndex(EMBEDDINGS, _metadata(5)).save(tmp_path / "idx")
    (tmp_path / "idx" / "metadata.csv").write_text(_metadata(3).to_csv(index=False))
    with pytest.raises(InputError, match="3 rows for 5 embeddings"):
        NoduleIndex.load(tmp_path / "idx")
    with pytest.raises(InputError, match="one metadata row per embedding"):
        NoduleIndex(EMBEDDINGS, _metadata(4))
    with pytest.raises(InputError, match="not finite"):
        NoduleIndex(np.array([[np.nan, 0.0]]), _metadata(1))
