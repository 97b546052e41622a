"""``make``: the two commands build the venv with visible progress and say how to run activecad."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_install_shows_progress_and_how_to_run(tmp_path: Path) -> None:
    out = _dry_run("install", tmp_path)
    # pip's own progress is shown: no --quiet on any install line.
    pip_lines = [line for line in out.splitlines() if "pip install" in line]
    assert len(pip_lines) == 2 and not any("--quiet" in line or " -q" in line for line in pip_lines)
    stages = [line for line in out.splitlines() if line.startswith('echo "==> [')]
    assert [s.split("]")[0][-3:] for s in stages] == ["1/3", "2/3", "3/3"]
    assert f"{tmp_path / 'venv'}/bin/activecad --help" in out
    assert f"source {tmp_path / 'venv'}/bin/activate" in out


def test_demo_says_where_the_results_are(tmp_path: Path) -> None:
    out = _dry_run("demo", tmp_path)
    assert "activecad demo --quick" in out
    assert "demo_out/" in out
