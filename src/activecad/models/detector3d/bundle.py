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

import torch
import yaml

import activecad
from activecad.config import validate_config
from activecad.errors import InputError
from activecad.models.detector3d.config import DetectorConfig
from activecad.models.detector3d.network import NoduleDetector

MODEL_NAME = "detector3d"
BUNDLE_FORMAT = 1


def save_bundle(model_dir: str | Path, detector: NoduleDetector) -> Path:
    """Write ``detector`` as a model folder; files are replaced atomically one by one."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = detector.config
    files = {
        "config.yaml": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        "preprocess.json": json.dumps(config.preprocess.model_dump(mode="json"), indent=2),
        "bundle.json": json.dumps(
            {
                "model": MODEL_NAME,
                "activecad_version": activecad.__version__,
                "preset": config.preset,
                "format": BUNDLE_FORMAT,
            },
            indent=2,
        ),
    }
    tmp = model_dir / "weights.pt.tmp"
    torch.save({k: v.detach().cpu() for k, v in detector.state_dict_for_bundle().items()}, tmp)
    tmp.replace(model_dir / "weights.pt")
    for name, text in files.items():
        tmp_text = model_dir / f"{name}.tmp"
        tmp_text.write_text(text)
        tmp_text.replace(model_dir / name)
    return model_dir


def read_bundle_info(model_dir: str | Path) -> dict[str, object]:
    """``bundle.json`` of a model folder, checked for model kind, format and version.

    Raises:
        InputError: the folder or its files are missing, or it was written by another
            activecad version or for another model.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(
            "model folder does not exist",
            path=model_dir,
            fix="train one with 'activecad train detector'",
        )
    info_path = model_dir / "bundle.json"
    if not info_path.is_file():
        raise InputError(
            "not a model folder (bundle.json is missing)",
            path=model_dir,
            fix="give the --out folder of 'activecad train detector'",
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"bundle.json is not valid JSON ({exc})", path=info_path) from None
    if info.get("model") != MODEL_NAME:
        raise InputError(
            f"holds a {info.get('model')!r} model, not a {MODEL_NAME!r} one", path=model_dir
        )
    version = info.get("activecad_version")
    if version != activecad.__version__:
        raise InputError(
            f"model was saved by activecad {version}, this is activecad {activecad.__version__}",
            path=model_dir,
            fix=f"retrain it with this version, or install activecad {version} to use it",
        )
    if info.get("format") != BUNDLE_FORMAT:
        raise InputError(f"unknown bundle format {info.get('format')!r}", path=info_path)
    return info


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
    for name in ("config.yaml", "weights.pt"):
        if not (model_dir / name).is_file():
            raise InputError(
                f"{name} is missing", path=model_dir, fix="retrain or re-copy the model"
            )
    raw = yaml.safe_load((model_dir / "config.yaml").read_text()) or {}
    config = validate_config(DetectorConfig, raw, source=model_dir / "config.yaml")
    detector = NoduleDetector(config)
    state = torch.load(model_dir / "weights.pt", map_location=map_location, weights_only=True)
    try:
        detector.network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"weights do not fit the config ({first})", path=model_dir) from None
    detector.eval()
    return detector
