"""``activecad train fpr`` from the command line, on a phantom folder's candidates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from activecad.models.fpr import load_fpr


def test_train_fpr_writes_a_loadable_model(
    run_cli: Callable[..., object], tiny_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fpr"
    result = run_cli(
        "train",
        "fpr",
        tiny_cohort,
        "--out",
        out,
        "--steps",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]
    assert summary["train_nodules"] > 0 and summary["train_candidates"] > summary["train_nodules"]
    _, config = load_fpr(out)
    assert config.steps == 2
    assert set(json.loads((out / "split.json").read_text())) == {"train", "val"}


@pytest.mark.parametrize("blobs", [[], ["--blobs", "5"]])
def test_a_missing_candidates_file_fails_before_training(
    run_cli: Callable[..., object], tiny_cohort: Path, tmp_path: Path, blobs: list[str]
) -> None:
    missing = tmp_path / "no.csv"
    cache = tmp_path / "c"
    args = ["--out", tmp_path / "m", "--candidates", missing, "--cache", cache, *blobs]
    result = run_cli("train", "fpr", tiny_cohort, *args)
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "candidates file does not exist" in result.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "m").exists()
    # With --blobs too, before the blob filter read any scan.
    assert not cache.exists() or not any(cache.iterdir())


def test_train_fpr_with_blobs_also_learns_from_blob_candidates(
    run_cli: Callable[..., object], tiny_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fpr"
    args = ["train", "fpr", tiny_cohort, "--out", out, "--steps", "2"]
    result = run_cli(*args, "--blobs", "20", "--json")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]
    # Blobs that no candidate of candidates.csv already covers joined them.
    assert 0 < summary["extra_candidates"] <= 20 * len(list((tiny_cohort / "ct").glob("*.mhd")))
    load_fpr(out)
