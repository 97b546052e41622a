"""The model folder: weights, config, preprocessing parameters and the activecad version.

Layout of ``MODEL_DIR``::

    bundle.json       {"model": "detector3d", "activecad_version", "preset", "format"}
    config.yaml       the resolved DetectorConfig (preprocessing included)
    preprocess.json   the preprocessing parameters alone, for tools that only prepare data
    weights.pt        the network's state_dict (no optimiser or training state)

Training state (optimiser, epoch, random states) lives in ``checkpoint.pt`` beside it and
is never needed to load the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from activecad.config import validate_config
from activecad.errors import InputError
from activecad.models.bundle import load_weights, read_bundle_config, write_bundle
from activecad.models.bundle import read_bundle_info as _read_bundle_info
from activecad.models.detector3d.config import DetectorConfig
from activecad.models.detector3d.network import NoduleDetector

MODEL_NAME = "detector3d"


def save_bundle(model_dir: str | Path, detector: NoduleDetector) -> Path:
    """Write ``detector`` as a model folder; files are replaced atomically one by one."""
    config = detector.config
    return write_bundle(
        model_dir,
        kind=MODEL_NAME,
        preset=config.preset,
        config=config.model_dump(mode="json"),
        weights=detector.state_dict_for_bundle(),
        files={"preprocess.json": json.dumps(config.preprocess.model_dump(mode="json"), indent=2)},
    )


def read_bundle_info(model_dir: str | Path) -> dict[str, object]:
    """``bundle.json`` of a detector folder, checked for model kind, format and version.

    Raises:
        InputError: the folder or its files are missing, or it was written by another
            activecad version or for another model.
    """
    return _read_bundle_info(model_dir, MODEL_NAME, "activecad train detector")


def load_bundle(
    model_dir: str | Path, *, preset: str | None = None, map_location: str = "cpu"
) -> NoduleDetector:
    """Load a model folder for inference (the network in eval mode).

    Args:
        model_dir: the folder written by :func:`save_bundle`.
        preset: when given, the preset the caller expects; another one is an error.
        map_location: device to load the weights onto.

    Raises:
        InputError: missing folder or files, another version, model kind or preset, or
            weights that do not fit the config.
    """
    model_dir = Path(model_dir)
    info = read_bundle_info(model_dir)
    if preset is not None and info.get("preset") != preset:
        raise InputError(
            f"model has preset {info.get('preset')!r}, expected {preset!r}",
            path=model_dir,
            fix=f"use a model trained with --preset {preset}",
        )
    raw = read_bundle_config(model_dir)
    config = validate_config(DetectorConfig, raw, source=model_dir / "config.yaml")
    detector = NoduleDetector(config)
    load_weights(detector.network, model_dir, map_location)
    detector.eval()
    return detector
