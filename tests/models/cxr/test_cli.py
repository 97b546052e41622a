"""``activecad train cxr`` and ``activecad detect`` on a cxr model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .helpers import write_blob_folder


def _tiny_config_patch(monkeypatch) -> None:
    """The CLI's cpu preset is too big for a test: shrink it (same code path otherwise)."""
    from activecad.models.cxr import train

    from .helpers import TINY

    original = train.preset_cxr_config

    def tiny(preset: str = "cpu", **overrides: object):
        return original(preset, **{**TINY, **overrides})

    monkeypatch.setattr(train, "preset_cxr_config", tiny)


def test_train_then_detect_with_heatmaps(tmp_path: Path, run_cli, monkeypatch) -> None:
    _tiny_config_patch(monkeypatch)
    data = write_blob_folder(tmp_path / "data", 12, seed=4)
    model = tmp_path / "model"
    r = run_cli("train", "cxr", data, "--out", model, "--network", "2", "--steps", "3", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["network"] == 2
    assert json.loads((model / "bundle.json").read_text())["model"] == "cxr"
    # Transfer chain: Network 2 from the Network 2 model, noisy labels.
    r = run_cli(
        "train",
        "cxr",
        data,
        "--out",
        tmp_path / "m2",
        "--init-from",
        model,
        "--labels",
        "noisy",
        "--steps",
        "2",
    )
    assert r.exit_code == 0, r.stderr

    images = sorted((data / "images").glob("*.png"))[:3]
    out = tmp_path / "scores.csv"
    r = run_cli("detect", *images, "--model", model, "--out", out, "--heatmaps", tmp_path / "hm")
    assert r.exit_code == 0, r.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == [
        "image_id",
        "probability",
        "x",
        "y",
        "width",
        "height",
        "box_probability",
    ]
    assert set(table["image_id"]) == {p.stem for p in images}
    assert table["probability"].between(0, 1).all()
    assert sorted(p.name for p in (tmp_path / "hm").iterdir()) == sorted(p.name for p in images)


def test_errors_are_one_line_and_write_nothing(tmp_path: Path, run_cli) -> None:
    data = write_blob_folder(tmp_path / "data", 4, seed=4)
    r = run_cli("train", "cxr", data, "--out", tmp_path / "m", "--network", "3")
    assert r.exit_code == 2 and not (tmp_path / "m").exists()
    r = run_cli("train", "cxr", data, "--out", tmp_path / "m", "--labels", "other")
    assert r.exit_code == 2 and "--labels" in r.stderr
    r = run_cli("train", "cxr", tmp_path, "--out", tmp_path / "m")
    assert r.exit_code == 1 and "not a radiograph data folder" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m").exists()
    ct = tmp_path / "scan.mhd"
    ct.write_text("ObjectType = Image\n")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "bundle.json").write_text('{"model": "cxr"}')
    (tmp_path / "fake" / "config.json").write_text("{}")
    r = run_cli("detect", ct, "--model", tmp_path / "fake", "--out", tmp_path / "s.csv")
    assert r.exit_code == 1 and "CT scan, not a chest radiograph" in r.stderr
    assert not (tmp_path / "s.csv").exists()
    # The CT detector's second stage does not apply to a radiograph model.
    for option in (["--fpr", tmp_path], ["--fpr-weight", "0.8"], ["--blobs", "5"], ["--tta"]):
        r = run_cli(
            "detect", ct, "--model", tmp_path / "fake", "--out", tmp_path / "s.csv", *option
        )
        assert r.exit_code == 2 and "applies to CT detectors only" in r.stderr, r.stderr
        assert option[0] in r.stderr and not (tmp_path / "s.csv").exists()
    # An ensemble is of CT detectors only.
    two = ["--model", tmp_path / "fake", "--model", tmp_path / "fake"]
    r = run_cli("detect", ct, *two, "--out", tmp_path / "s.csv")
    assert r.exit_code == 2 and "an ensemble needs CT detectors" in r.stderr, r.stderr
    assert not (tmp_path / "s.csv").exists()
