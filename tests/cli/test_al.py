"""``activecad al next`` / ``al label``: the round trip a radiologist makes."""

from __future__ import annotations

import json

import pytest

from activecad.active import create_run, propose_query
from activecad.active.items import ItemScores

UIDS = ["1.2.10", "1.2.11", "1.2.12", "1.2.13"]
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    with create_run(folder, UIDS, seeds={"query": 0}) as run:
        scores = [
            ItemScores(u, l_scan=s)
            for u, s in zip(UIDS, [0.1, 0.9, float("nan"), 0.5], strict=True)
        ]
        propose_query(run, scores, heuristic="learning_loss", budget=3, seed=0)
    return folder


def test_next_label_round_trip(run_cli, run_dir, tmp_path):
    result = run_cli("al", "next", run_dir, "--json")
    assert result.exit_code == 0, result.stderr
    query = json.loads(result.stdout)
    assert query["cycle"] == 0 and query["strategy"] == "learning_loss"
    # 0.9, 0.5, 0.1 by score; the NaN scan is ranked last and not in the budget of 3.
    assert [i["item"] for i in query["items"]] == ["1.2.11", "1.2.13", "1.2.10"]
    assert [i["rank"] for i in query["items"]] == [1, 2, 3]
    assert query["answered"] is False and query["pending"] == 3

    text = run_cli("al", "next", run_dir)
    assert "3 of 3 to label" in text.stdout and "1.2.11" in text.stdout

    labels = tmp_path / "labels.csv"
    labels.write_text(HEADER + "1.2.11,1.0,2.0,3.0,6.5\n1.2.11,9.0,9.0,9.0,4.0\n")
    result = run_cli("al", "label", run_dir, "--annotations", labels, "--annotator", "dr_a")
    assert result.exit_code == 0, result.stderr
    assert "recorded 3 scans for cycle 0 by dr_a (1 with nodules, 2 negative)" in result.stdout
    assert "2 of 3 queried scans have no row" in result.stderr

    answered = json.loads(run_cli("al", "next", run_dir, "--json").stdout)
    assert answered["answered"] is True
    assert all(i["labelled"] for i in answered["items"])

    # Answering the same query again records nothing, and says so.
    again = run_cli(
        "al", "label", run_dir, "--annotations", labels, "--annotator", "dr_a", "--json"
    )
    assert again.exit_code == 0, again.stderr
    payload = json.loads(again.stdout)
    assert payload["recorded"] == [] and payload["already_labelled"] == [
        "1.2.10",
        "1.2.11",
        "1.2.13",
    ]
    text = run_cli("al", "label", run_dir, "--annotations", labels, "--annotator", "dr_b")
    assert "already answered; nothing recorded" in text.stdout
    assert "recorded as negatives" not in text.stderr  # nothing was recorded this time

    from activecad.active import open_run

    with open_run(run_dir) as run:
        table = run.pool.labels_table()
        assert len(table) == 2 and set(table["annotator"]) == {"dr_a"}
        assert table["diameter_mm"].tolist() == [6.5, 4.0]


def test_label_refuses_scans_outside_the_query_and_records_nothing(run_cli, run_dir, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(HEADER + "1.2.11,1.0,2.0,3.0,6.5\n1.2.12,0,0,0,5\n")
    result = run_cli("al", "label", run_dir, "--annotations", labels)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "1.2.12" in result.stderr and "al next" in result.stderr
    assert json.loads(run_cli("al", "next", run_dir, "--json").stdout)["pending"] == 3

    labels.write_text(HEADER + "9.9.9,1.0,2.0,3.0,6.5\n")
    result = run_cli("al", "label", run_dir, "--annotations", labels)
    assert result.exit_code == 1 and "no identifier" in result.stderr


def test_a_header_only_table_labels_the_whole_query_negative(run_cli, run_dir, tmp_path):
    labels = tmp_path / "none.csv"
    labels.write_text(HEADER)
    result = run_cli("al", "label", run_dir, "--annotations", labels, "--annotator", "x", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["answered"] is True


def test_bad_run_folders_and_usage(run_cli, tmp_path):
    result = run_cli("al", "next", tmp_path)
    assert result.exit_code == 1 and "no run.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("al", "label", tmp_path).exit_code == 2  # --annotations missing
    empty = tmp_path / "empty"
    create_run(empty, UIDS).close()
    assert "no query yet" in run_cli("al", "next", empty).stdout
    labels = tmp_path / "l.csv"
    labels.write_text(HEADER)
    result = run_cli("al", "label", empty, "--annotations", labels)
    assert result.exit_code == 1 and "no query to answer" in result.stderr


def test_a_run_on_a_database_server_is_answered_the_same(run_cli, tmp_path, db_url):
    folder = tmp_path / "shared"
    with create_run(folder, UIDS, db_url=db_url) as run:
        propose_query(run, None, heuristic="random", budget=2, seed=1)
    assert json.loads((folder / "run.json").read_text())["db"] == db_url
    labels = tmp_path / "l.csv"
    labels.write_text(HEADER)
    result = run_cli("al", "label", folder, "--annotations", labels, "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["recorded"]) == 2
    assert json.loads(run_cli("al", "next", folder, "--json").stdout)["answered"] is True
