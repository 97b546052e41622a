"""Models, registered by name so that configs and the command line can pick them.

``MODELS`` maps a model name to a function that builds the model from its preset name;
later issues add ``fpr``, ``meld`` and ``cxr``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from activecad.registry import Registry

MODELS: Registry[Callable[[str], nn.Module]] = Registry("model")


@MODELS.register("detector3d")
def build_detector3d(preset: str) -> nn.Module:
    """The 3D nodule detector of a preset (``cpu`` or ``paper``), untrained."""
    from activecad.models.detector3d import NoduleDetector, preset_config

    return NoduleDetector(preset_config(preset))


__all__ = ["MODELS", "build_detector3d"]
