"""Registries: explicit registration, duplicates rejected, wrong names suggest the nearest."""

from __future__ import annotations

import pytest

from activecad.errors import InputError
from activecad.registry import Registry


def test_register_and_get_returns_the_registered_object() -> None:
    registry: Registry[type] = Registry("heuristic")

    @registry.register("random")
    class Random: ...

    assert registry.get("random") is Random
    assert "random" in registry
    assert registry.names() == ["random"]


def test_duplicate_name_is_rejected() -> None:
    registry: Registry[int] = Registry("model")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(2)


def test_unknown_name_lists_valid_names_and_suggests_the_nearest() -> None:
    registry: Registry[int] = Registry("heuristic")
    registry.register("learning_loss")(1)
    registry.register("random")(2)
    with pytest.raises(InputError) as info:
        registry.get("learning-los")
    message = str(info.value)
    assert "learning_loss, random" in message
    assert "did you mean 'learning_loss'?" in message
