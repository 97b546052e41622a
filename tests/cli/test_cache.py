"""``activecad cache info|clear`` on the folder of $ACTIVECAD_CACHE or --cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from activecad.data import PreparedScan, PreprocessCache


def _fill(root: Path, count: int) -> None:
    cache = PreprocessCache(root)
    for k in range(count):
        prepared = PreparedScan(
            array=np.zeros((4, 4, 4), np.float32),
            spacing=np.ones(3),
            origin=np.zeros(3),
            direction=np.eye(3),
            seriesuid=f"1.{k}",
        )
        cache._write(f"key{k}", prepared)


def test_info_and_clear_use_the_environment_variable(
    run_cli: Callable[..., object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "env"))
    _fill(tmp_path / "env", 2)
    (tmp_path / "env" / "key9.1-ab.tmp.npy").write_bytes(b"torn")  # an interrupted write
    result = run_cli("cache", "info", "--json")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    info = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert info["folder"] == str(tmp_path / "env")
    assert (info["entries"], info["partial"]) == (2, 1)
    assert info["bytes"] == sum(p.stat().st_size for p in (tmp_path / "env").iterdir())
    human = run_cli("cache", "info").stdout  # type: ignore[attr-defined]
    assert "scans:   2" in human and "partial: 1" in human
    cleared = run_cli("cache", "clear", "--json")
    assert json.loads(cleared.stdout)["removed"] == 2  # type: ignore[attr-defined]
    assert list((tmp_path / "env").iterdir()) == []


def test_cache_option_overrides_and_a_file_is_refused(
    run_cli: Callable[..., object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "env"))
    _fill(tmp_path / "other", 1)
    result = run_cli("cache", "info", "--cache", tmp_path / "other", "--json")
    assert json.loads(result.stdout)["entries"] == 1  # type: ignore[attr-defined]
    (tmp_path / "file").write_text("x")
    bad = run_cli("cache", "clear", "--cache", tmp_path / "file")
    assert bad.exit_code == 1  # type: ignore[attr-defined]
    assert "must be a folder" in bad.stderr  # type: ignore[attr-defined]
    assert (tmp_path / "file").read_text() == "x"
