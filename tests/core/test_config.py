"""Typed configs: unknown keys are errors that name the key and the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from activecad.config import StrictConfig, load_config
from activecad.errors import InputError


class TinyConfig(StrictConfig):
    epochs: int = 1
    learning_rate: float = 1e-3


def test_yaml_values_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\n")
    config = load_config(TinyConfig, path)
    assert config.epochs == 5
    assert config.learning_rate == 1e-3


def test_unknown_key_is_an_error_naming_it_and_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epocs: 5\n")
    with pytest.raises(InputError) as info:
        load_config(TinyConfig, path)
    message = str(info.value)
    assert "epocs" in message
    assert "epochs, learning_rate" in message
    assert str(path) in message


def test_missing_file_and_bad_yaml_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config(TinyConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(TinyConfig, bad)


def test_overrides_replace_file_values_but_none_does_not(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\n")
    assert load_config(TinyConfig, path, epochs=7).epochs == 7
    assert load_config(TinyConfig, path, epochs=None).epochs == 5
