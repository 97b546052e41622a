"""``activecad train detector`` and ``activecad detect`` on a hand-made LUNA16-style folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from activecad.io.tables import read_table
from tests.models.detector3d.conftest import write_sphere_folder


@pytest.fixture(scope="module")
def luna_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_folder(tmp_path_factory.mktemp("luna"))


def test_train_then_detect_writes_submission_and_uncertainty(
    run_cli: Callable[..., object], luna_folder: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    trained = run_cli(
        "train", "detector", luna_folder, "--out", model, "--config", luna_folder / "tiny.yaml",
        "--cache", tmp_path / "cache", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    assert json.loads(trained.stdout)["epochs_done"] == 1
    assert (model / "weights.pt").is_file() and (model / "checkpoint.pt").is_file()
    assert len((model / "metrics.jsonl").read_text().splitlines()) == 1

    resumed = run_cli(
        "train", "detector", luna_folder, "--out", model, "--config", luna_folder / "tiny.yaml",
        "--cache", tmp_path / "cache", "--epochs", "2", "--resume", "--json",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs_done"] == 2
    assert len((model / "metrics.jsonl").read_text().splitlines()) == 2

    scans = sorted((luna_folder / "ct").glob("*.mhd"))
    out, unc = tmp_path / "det.csv", tmp_path / "unc.csv"
    detected = run_cli(
        "detect", *scans, "--model", model, "--out", out, "--uncertainty", unc, "--json"
    )
    assert detected.exit_code == 0, detected.stderr
    table = read_table(out, "submission")
    assert {"seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"} <= set(
        table.columns
    )
    uncertainty = pd.read_csv(unc, dtype={"seriesuid": str})
    assert list(uncertainty.columns)[:3] == ["seriesuid", "l_scan", "L_roi"]
    assert sorted(uncertainty.seriesuid) == ["1.2.826.0.1.1", "1.2.826.0.1.2"]


def test_training_into_a_used_folder_without_resume_is_refused(
    run_cli: Callable[..., object], luna_folder: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "checkpoint.pt").write_bytes(b"")
    result = run_cli("train", "detector", luna_folder, "--out", model)
    assert result.exit_code == 1
    assert "--resume" in result.stderr


def test_bad_inputs_exit_1_with_a_message(
    run_cli: Callable[..., object], luna_folder: Path, tmp_path: Path
) -> None:
    scan = next((luna_folder / "ct").glob("*.mhd"))
    missing = run_cli("detect", scan, "--model", tmp_path / "none", "--out", tmp_path / "d.csv")
    assert missing.exit_code == 1
    assert "model folder does not exist" in missing.stderr
    not_luna = run_cli("train", "detector", tmp_path, "--out", tmp_path / "m")
    assert not_luna.exit_code == 1
    assert "no ct/ subfolder" in not_luna.stderr
    bad_preset = run_cli(
        "train", "detector", luna_folder, "--out", tmp_path / "m", "--preset", "gpu"
    )
    assert bad_preset.exit_code == 2  # a wrong option value is a usage error
    assert "did you mean" in bad_preset.stderr or "valid: cpu, paper" in bad_preset.stderr
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("epochz: 3\n")
    typo = run_cli("train", "detector", luna_folder, "--out", tmp_path / "m", "--config", bad_key)
    assert typo.exit_code == 1
    assert "epochz" in typo.stderr


def test_validation_froc_counts_as_luna16() -> None:
    from activecad.data.folders import froc_summary

    truth = pd.DataFrame(
        {
            "seriesuid": ["a"],
            "coordX": [0.0],
            "coordY": [0.0],
            "coordZ": [0.0],
            "diameter_mm": [6.0],
        }
    )
    marks = pd.DataFrame(
        {
            "seriesuid": ["a", "a"],
            "coordX": [0.5, 50.0],
            "coordY": [0.0, 0.0],
            "coordZ": [0.0, 0.0],
            "probability": [0.9, 0.5],
        }
    )
    # By hand: the 0.9 mark lies 0.5 mm from the nodule (radius 3 mm) and hits it before
    # any false positive, so sensitivity is 1 at every rate; one FP over 2 scans.
    summary, _ = froc_summary(marks, truth, None, ["a", "b"])
    assert summary["cpm"] == pytest.approx(1.0)
    assert summary["counts"]["fp"] == 1


def test_split_keeps_a_patients_scans_together() -> None:
    from activecad.models.detector3d import split_series

    uids = [f"s{k}" for k in range(10)]
    groups = {f"s{k}": f"p{k // 2}" for k in range(10)}  # five patients, two scans each
    train, val = split_series(uids, 0.2, seed=1, groups=groups)
    assert len(val) == 2 and groups[val[0]] == groups[val[1]]
    assert sorted(train + val) == uids
    assert split_series(uids, 0.2, seed=1, groups=groups) == (train, val)
