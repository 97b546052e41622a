"""``activecad al report``: learning curves, ALC and labels saved from loop folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activecad.active.config import LoopConfig
from activecad.active.loop import run_loop
from activecad.active.report import read_curves, write_report
from activecad.errors import InputError
from tests.active.test_loop import FakeLearner, _folder


def _loops(tmp_path: Path) -> tuple[Path, Path]:
    data = _folder(tmp_path / "data")
    # pool 20 (no test split): 2 at random, then 4 per cycle -> 2, 6, 10 labelled
    base = {"data": data, "query_size": 4, "cycles": 3, "test_fraction": 0.0}
    first = LoopConfig(**base, strategies=["random", "learning_loss"], seeds=[0])
    second = LoopConfig(**base, strategies=["random", "learning_loss"], seeds=[1])
    run_loop(first, tmp_path / "seed0", learner=FakeLearner())
    run_loop(second, tmp_path / "seed1", learner=FakeLearner())
    return tmp_path / "seed0", tmp_path / "seed1"


def test_report_numbers_by_hand(tmp_path: Path) -> None:
    folders = list(_loops(tmp_path))
    summary = write_report(folders, tmp_path / "report")
    assert summary["labelled"] == [2, 6, 10] and summary["pool_size"] == 20
    for name in ("curves.png", "scatter.png", "report.json", "report.md", "selected.csv"):
        assert (tmp_path / "report" / name).is_file()
    # FakeLearner's CPM is (labelled items) / 100: 0.02, 0.06, 0.10 at 10, 30, 50 % labelled.
    # A straight line's normalised ALC is the mean of its ends: (0.02 + 0.10) / 2 = 0.06,
    # the same for every seed, so the t-interval collapses onto it.
    random_cpm = summary["strategies"]["random"]["cpm"]
    assert random_cpm["percent_labelled"] == [10.0, 30.0, 50.0]
    assert random_cpm["alc"]["mean"] == pytest.approx(0.06)
    assert random_cpm["final"]["mean"] == pytest.approx(0.10) and random_cpm["final"]["n"] == 2
    # no full-data CPM given: target = 0.95 x random's last mean CPM = 0.095, which both
    # strategies first reach at 10 labels -> 0 saved
    assert summary["target"]["metric"] == "cpm"
    assert summary["target"]["value"] == pytest.approx(0.095)
    reach = summary["strategies"]["learning_loss"]["labels_to_target"]
    assert reach["per_seed"] == [10.0, 10.0] and reach["saved"]["mean"] == 0.0
    # the scatter holds the scans learning_loss chose in cycles 1 and 2 (4 each, 2 seeds)
    selected = (tmp_path / "report" / "selected.csv").read_text().splitlines()
    assert len(selected) == 1 + 2 * 2 * 4
    # annotation minutes (default cost: 3 per scan, +1 per nodule, +0.5 per 10 mm; every
    # nodule of the fake folder is 6 mm): strictly increasing with the labels
    frame = read_curves(folders).runs["random"][0]
    assert frame["minutes"].is_monotonic_increasing and frame["minutes"].iloc[0] >= 6.0
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == summary


def test_report_with_a_full_data_cpm_and_never_reached(tmp_path: Path, run_cli) -> None:
    folders = _loops(tmp_path)
    result = run_cli(
        "al", "report", *folders, "--out", tmp_path / "r", "--full-cpm", "0.5", "--json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    # target 0.475 is above every CPM of the fake learner: never reached (None, not NaN)
    assert summary["strategies"]["learning_loss"]["labels_to_target"]["per_seed"] == [None, None]
    assert "never" in (tmp_path / "r" / "report.md").read_text()


def test_report_refuses_a_run_twice_and_non_loop_folders(tmp_path: Path, run_cli) -> None:
    first, _ = _loops(tmp_path)
    with pytest.raises(InputError, match="two of the folders"):
        read_curves([first, first])
    result = run_cli("al", "report", tmp_path / "data", "--out", tmp_path / "r")
    assert result.exit_code == 1 and "not a loop folder" in result.stderr
    assert not (tmp_path / "r").exists()
