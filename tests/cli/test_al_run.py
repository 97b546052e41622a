"""``activecad al run``: a loop from a YAML config, and its --resume."""

from __future__ import annotations

from pathlib import Path

from tests.active.test_loop import _folder


def test_al_run_and_resume(tmp_path: Path, run_cli) -> None:
    data = _folder(tmp_path / "data")
    config = tmp_path / "loop.yaml"
    config.write_text(f"data: {data}\nseeds: [0, 1]\nquery_size: 4\ncycles: 2\n")
    out = tmp_path / "run"
    first = run_cli("al", "run", config, "--out", out)
    assert first.exit_code == 0, first.stderr
    assert "random-seed1: 2 cycles finished" in first.stdout
    rows = (out / "selections.csv").read_text().splitlines()
    # 20 scans, 4 patients held out: pool 16; cycle 0 = 2 (10 %), cycle 1 = 4; two seeds
    assert len(rows) == 1 + 2 * (2 + 4)
    again = run_cli("al", "run", config, "--out", out)
    assert again.exit_code == 1 and "--resume" in again.stderr
    resumed = run_cli("al", "run", config, "--out", out, "--resume")
    assert resumed.exit_code == 0
    assert (out / "selections.csv").read_text().splitlines() == rows


def test_example_config_is_valid() -> None:
    from activecad.active.config import LoopConfig
    from activecad.config import load_config

    example = Path(__file__).parents[2] / "examples" / "al-quick.yaml"
    assert load_config(LoopConfig, example).cycles == 2


def test_a_detector_loop_with_a_human_oracle_waits_for_the_readers(tmp_path: Path, run_cli) -> None:
    # The detector trains on the answers recorded in the store (tests/active/test_loop.py
    # checks that a reader's answer wins over annotations.csv), so a human-oracle loop that
    # trains is allowed: it proposes cycle 0 and waits for 'al label' before any training.
    data = _folder(tmp_path / "data")
    config = tmp_path / "loop.yaml"
    config.write_text(f"data: {data}\nstrategies: [learning_loss]\noracle: human\ncycles: 2\n")
    result = run_cli("al", "run", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "waiting for labels" in result.stdout
    assert not list((tmp_path / "run").rglob("model"))
