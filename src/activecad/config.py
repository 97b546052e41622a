"""Typed configuration: strict pydantic models that reject unknown keys, loaded from YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from activecad.errors import InputError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base of every configuration: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def read_yaml_mapping(path: str | Path) -> dict[str, object]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping).

    Raises:
        InputError: the file is missing, is not YAML, or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("config file does not exist", path=path, fix="check the path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc})".replace("\n", " "), path=path) from None
    if not isinstance(data, dict):
        raise InputError("the top level must be a mapping of keys to values", path=path)
    return data


def load_config(cls: type[C], path: str | Path, **overrides: object) -> C:
    """Read a YAML file into ``cls``; ``overrides`` (non-None values) replace file values.

    Raises:
        InputError: the file is missing, is not YAML, or has unknown or invalid keys.
    """
    data = read_yaml_mapping(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(cls, data, source=path)


def validate_config(
    cls: type[C], data: dict[str, object], *, source: str | Path | None = None
) -> C:
    """Validate a plain mapping into ``cls``, turning pydantic's errors into one InputError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        valid = ", ".join(cls.model_fields)
        raise InputError(
            f"invalid config ({problems})", path=source, fix=f"valid keys: {valid}"
        ) from None


def preset_values(presets: Mapping[str, Mapping[str, object]], preset: str) -> dict[str, object]:
    """The values of a named preset (with ``"preset": preset``), to update and validate.

    Raises:
        InputError: ``preset`` is not a key of ``presets`` (the nearest name suggested).
    """
    from activecad.registry import unknown_name_message

    if preset not in presets:
        raise InputError(unknown_name_message("preset", preset, presets))
    return {"preset": preset, **presets[preset]}
