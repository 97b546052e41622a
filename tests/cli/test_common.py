"""``activecad.cli._common``: --out checks and atomic writing, the helpers every command uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from activecad.cli._common import atomic_output, output_file, output_folder
from activecad.errors import InputError


def test_output_file_refuses_a_folder_and_creates_the_parent(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--out must be a file, but this is a folder"):
        output_file(tmp_path)
    target = tmp_path / "a" / "b" / "d.csv"
    assert output_file(target) == target
    assert target.parent.is_dir() and not target.exists()


def test_output_folder_refuses_a_file_and_a_file_name(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=r"must be a folder \(froc\.json are written in it\)"):
        output_folder(tmp_path / "f", writes="froc.json")
    with pytest.raises(InputError, match=r"this names a \.json file"):
        output_folder(tmp_path / "results.json")
    assert not (tmp_path / "results.json").exists()
    # Nothing is created before the command succeeds.
    assert output_folder(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "d.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    with atomic_output(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_atomic_folder_keeps_other_files_and_cleans_up_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "froc.json").write_text("old")
    with atomic_output(out) as tmp:
        (tmp / "froc.json").write_text("new")
        (tmp / "plots").mkdir()
        (tmp / "plots" / "a.png").write_text("png")
    assert (out / "froc.json").read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == ["froc.json", "notes.txt", "plots"]
    deep = tmp_path / "x" / "y" / "z"
    with pytest.raises(KeyboardInterrupt), atomic_output(deep, folder=True) as tmp:
        (tmp / "half.json").write_text("{")
        raise KeyboardInterrupt
    # Neither the output nor the folders made for it are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
