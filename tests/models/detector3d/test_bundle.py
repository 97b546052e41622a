"""The model folder: identical outputs after save/load, clear errors for bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from activecad.errors import InputError
from activecad.models.detector3d import DetectorConfig, NoduleDetector, load_bundle, save_bundle


def test_save_then_load_gives_identical_outputs(
    tiny_config: DetectorConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config).eval()
    save_bundle(tmp_path / "model", detector)
    loaded = load_bundle(tmp_path / "model", preset="cpu")
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before, after = detector.network(image), loaded.network(image)
    for key in before:
        for a, b in zip(before[key], after[key], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.config == tiny_config
    assert {p.name for p in (tmp_path / "model").iterdir()} == {
        "bundle.json",
        "config.yaml",
        "preprocess.json",
        "weights.pt",
    }


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model folder does not exist"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"bundle\.json is missing"):
        load_bundle(tmp_path / "empty")


def test_another_version_or_preset_is_a_clear_error(
    tiny_config: DetectorConfig, tmp_path: Path
) -> None:
    model = save_bundle(tmp_path / "model", NoduleDetector(tiny_config))
    with pytest.raises(InputError, match="preset 'cpu', expected 'paper'"):
        load_bundle(model, preset="paper")
    info = json.loads((model / "bundle.json").read_text())
    info["activecad_version"] = "0.0.1"
    (model / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"saved by activecad 0\.0\.1"):
        load_bundle(model)


def test_weights_of_another_shape_are_a_clear_error(
    tiny_config: DetectorConfig, tmp_path: Path
) -> None:
    model = save_bundle(tmp_path / "model", NoduleDetector(tiny_config))
    wider = tiny_config.model_copy(update={"fpn_channels": 16})
    torch.save(NoduleDetector(wider).network.state_dict(), model / "weights.pt")
    with pytest.raises(InputError, match="weights do not fit the config"):
        load_bundle(model)
