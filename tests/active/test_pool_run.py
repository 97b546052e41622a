"""Pool, queries and oracles on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest

from activecad.active import (
    AnnotationCost,
    HumanOracle,
    ItemScores,
    LabelRecord,
    Pool,
    SimulatedOracle,
    create_run,
    current_query,
    open_run,
    propose_query,
)
from activecad.errors import InputError
from activecad.store import open_store

UIDS = [f"1.2.{k}" for k in range(6)]
TRUTH = pd.DataFrame(
    {
        "seriesuid": ["1.2.0", "1.2.0", "1.2.3"],
        "coordX": [10.0, -20.0, 5.0],
        "coordY": [0.0, 5.0, 5.0],
        "coordZ": [-100.0, -50.0, 0.0],
        "diameter_mm": [6.0, 14.0, 4.0],
    }
)


def test_a_query_is_recorded_answered_and_followed_by_the_next(tmp_path, db_url):
    run = create_run(tmp_path / "run", UIDS, db_url=db_url, seeds={"query": 3})
    try:
        scores = [ItemScores(u, l_scan=float(k)) for k, u in enumerate(UIDS)]
        query = propose_query(run, scores, heuristic="learning_loss", budget=2, seed=3)
        assert query is not None and query.cycle == 0
        assert [r.item for r in query.rows] == ["1.2.5", "1.2.4"]
        assert [r.rank for r in query.rows] == [1, 2]
        with pytest.raises(InputError, match="still waits for 2 labels"):
            propose_query(run, scores, heuristic="learning_loss", budget=2)

        oracle = SimulatedOracle(TRUTH, cost=AnnotationCost())
        first = run.pool.record_labels(
            oracle.answer(query.pending), annotator="simulated", cycle=0, source="simulated"
        )
        assert first.recorded == ("1.2.4", "1.2.5")
        again = run.pool.record_labels(
            oracle.answer(["1.2.4", "1.2.5"]), annotator="simulated", cycle=0, source="simulated"
        )
        assert again.recorded == () and again.already == ("1.2.4", "1.2.5")
        assert current_query(run).answered

        # The next cycle chooses among the unlabelled only; budget above what is left.
        query = propose_query(run, scores, heuristic="learning_loss", budget=10, seed=4)
        assert query.cycle == 1
        assert [r.item for r in query.rows] == ["1.2.3", "1.2.2", "1.2.1", "1.2.0"]
        run.pool.record_labels(oracle.answer(query.pending), annotator="sim", cycle=1)
        # The pool is used up: no query, no error.
        assert propose_query(run, scores, heuristic="learning_loss", budget=2) is None

        states = {i.key: i for i in run.pool.items()}
        assert states["1.2.5"].cycle == 0 and states["1.2.5"].annotator == "simulated"
        assert states["1.2.0"].cycle == 1
        labels = run.pool.labels_table()
        assert sorted(labels["seriesuid"]) == ["1.2.0", "1.2.0", "1.2.3"]
    finally:
        run.close()

    with open(tmp_path / "run" / "selections.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["item"] for r in rows] == ["1.2.5", "1.2.4", "1.2.3", "1.2.2", "1.2.1", "1.2.0"]
    assert [r["cycle"] for r in rows] == ["0", "0", "1", "1", "1", "1"]
    assert rows[0] == {
        "cycle": "0",
        "strategy": "learning_loss",
        "seed": "3",
        "item": "1.2.5",
        "score": "5.0",
        "rank": "1",
    }
    for name in ("run.json", "config.yaml", "versions.json", "seeds.json"):
        assert (tmp_path / "run" / name).is_file()


def test_labels_are_all_or_nothing(tmp_path, db_url):
    store = open_store(db_url)
    try:
        pool = Pool(store, "p")
        pool.add_scans(["a", "b"])
        bad = [LabelRecord("a", np.zeros((0, 4))), LabelRecord("b", [[0, 0, 0, math.nan]])]
        with pytest.raises(InputError, match="not a finite number"):
            pool.record_labels(bad, annotator="x", cycle=None)
        assert pool.labelled() == []
        with pytest.raises(InputError, match="not in the pool"):
            pool.record_labels([LabelRecord("zz", np.zeros((0, 4)))], annotator="x", cycle=None)
        assert HumanOracle(pool).pending(["a", "b"]) == ["a", "b"]
    finally:
        store.close()


def test_labels_give_first_answers_without_rejected_or_deleted_findings(tmp_path, db_url):
    from sqlalchemy import select, update

    from activecad.store import Finding

    store = open_store(db_url)
    try:
        pool = Pool(store, "p")
        pool.add_scans(["a", "b", "c"])
        two = np.array([[1.0, 2.0, 3.0, 6.0], [4.0, 5.0, 6.0, 8.0]])
        pool.record_labels(
            [LabelRecord("a", two), LabelRecord("b", np.zeros((0, 4)))], annotator="r1", cycle=None
        )
        # a second reader's answer of "a" does not change what the loop trains on
        pool.record_labels([LabelRecord("a", np.zeros((0, 4)))], annotator="r2", cycle=None)
        labels = pool.labels()
        assert sorted(labels) == ["a", "b"]
        np.testing.assert_array_equal(labels["a"], two)
        assert labels["b"].shape == (0, 4)
        # a reviewer rejects the first finding in the annotation service
        with store.session() as session:
            first = session.scalars(select(Finding.id).order_by(Finding.id)).first()
            session.execute(update(Finding).where(Finding.id == first).values(status="rejected"))
        np.testing.assert_array_equal(pool.labels()["a"], two[1:])
    finally:
        store.close()


def test_random_first_query_and_a_reopened_run(tmp_path):
    run = create_run(tmp_path / "r", UIDS)
    first = propose_query(run, None, heuristic="random", budget=3, seed=7)
    run.close()
    other = create_run(tmp_path / "r2", list(reversed(UIDS)))
    second = propose_query(other, None, heuristic="random", budget=3, seed=7)
    other.close()
    assert [r.item for r in first.rows] == [r.item for r in second.rows]  # same seed, same pick
    with open_run(tmp_path / "r") as again:
        assert current_query(again) == first
    with pytest.raises(InputError, match="already holds a run"):
        create_run(tmp_path / "r", UIDS)
    with pytest.raises(InputError, match=r"no run\.json"):
        open_run(tmp_path)


def test_simulated_oracle_cost_and_candidate_hits():
    cost = AnnotationCost(base_minutes=2.0, per_nodule_minutes=1.0, per_10mm_minutes=0.5)
    oracle = SimulatedOracle(TRUTH, cost=cost)
    (rec,) = oracle.answer(["1.2.0"])
    # 2 + 1 * 2 nodules + 0.5 * (6 + 14) / 10 = 5.0 minutes (by hand)
    assert rec.minutes == pytest.approx(5.0)
    assert oracle.answer(["1.2.1"])[0].minutes == pytest.approx(2.0)  # negative scan
    assert len(oracle.answer(["1.2.1"])[0].findings) == 0
    assert oracle.is_nodule("1.2.0", [10.0, 0.0, -97.5])  # 2.5 mm from a 6 mm nodule
    assert not oracle.is_nodule("1.2.0", [10.0, 0.0, -96.5])  # 3.5 mm: outside its radius


def test_candidate_pool_uses_the_same_queries(tmp_path):
    run = create_run(tmp_path / "c", [], item_kind="candidate")
    try:
        keys = run.pool.add_candidates("1.2.0", [[10.0, 0.0, -100.0], [50.0, 50.0, 50.0]])
        assert keys == ["1.2.0#0", "1.2.0#1"]
        scores = [
            ItemScores(keys[0], kind="candidate", probabilities=[0.5]),
            ItemScores(keys[1], kind="candidate", probabilities=[0.99]),
        ]
        query = propose_query(run, scores, heuristic="entropy", budget=1)
        assert [r.item for r in query.rows] == ["1.2.0#0"]
        with pytest.raises(InputError, match="scan-level"):
            Pool(run.store, "other").add_candidates("x", [[0, 0, 0]])
    finally:
        run.close()
