"""Model folders, shared by every model kind.

Layout of ``MODEL_DIR``::

    bundle.json       {"model": KIND, "activecad_version", "preset", "format"}
    config.yaml       the resolved configuration
    weights.pt        the network's state_dict (no optimiser or training state)
    ...               any further files of the kind (preprocess.json, history.json)

Every file is replaced atomically, one by one, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

import activecad
from activecad.errors import InputError

BUNDLE_FORMAT = 1


def write_bundle(
    model_dir: str | Path,
    *,
    kind: str,
    preset: str,
    config: Mapping[str, object],
    weights: Mapping[str, torch.Tensor],
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write a model folder of ``kind`` (weights moved to the CPU first)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "config.yaml": yaml.safe_dump(dict(config), sort_keys=False),
        **(files or {}),
        "bundle.json": json.dumps(
            {
                "model": kind,
                "activecad_version": activecad.__version__,
                "preset": preset,
                "format": BUNDLE_FORMAT,
            },
            indent=2,
        ),
    }
    tmp = model_dir / "weights.pt.tmp"
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, tmp)
    tmp.replace(model_dir / "weights.pt")
    for name, text in texts.items():
        tmp_text = model_dir / f"{name}.tmp"
        tmp_text.write_text(text)
        tmp_text.replace(model_dir / name)
    return model_dir


def read_bundle_info(model_dir: str | Path, kind: str, trained_by: str) -> dict[str, object]:
    """``bundle.json`` of a model folder, checked for model kind, format and version.

    Args:
        model_dir: the folder.
        kind: the model kind expected (``detector3d``, ``fpr``).
        trained_by: the command that makes such folders, for the error messages.

    Raises:
        InputError: the folder or its files are missing, or it was written by another
            activecad version or for another model.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(
            "model folder does not exist", path=model_dir, fix=f"train one with '{trained_by}'"
        )
    info_path = model_dir / "bundle.json"
    if not info_path.is_file():
        raise InputError(
            "not a model folder (bundle.json is missing)",
            path=model_dir,
            fix=f"give the --out folder of '{trained_by}'",
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"bundle.json is not valid JSON ({exc})", path=info_path) from None
    if info.get("model") != kind:
        raise InputError(
            f"holds a {info.get('model')!r} model, not a {kind!r} one",
            path=model_dir,
            fix=f"give a model folder of '{trained_by}'",
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
    for name in ("config.yaml", "weights.pt"):
        if not (model_dir / name).is_file():
            raise InputError(
                f"{name} is missing", path=model_dir, fix="retrain or re-copy the model"
            )
    return info


def read_bundle_config(model_dir: str | Path) -> dict[str, object]:
    """The raw ``config.yaml`` mapping of a checked model folder."""
    return yaml.safe_load((Path(model_dir) / "config.yaml").read_text()) or {}


def load_weights(module: torch.nn.Module, model_dir: str | Path, map_location: str = "cpu") -> None:
    """Load ``weights.pt`` into ``module``.

    Raises:
        InputError: the weights do not fit the module (another configuration).
    """
    state = torch.load(Path(model_dir) / "weights.pt", map_location=map_location, weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"weights do not fit the config ({first})", path=model_dir) from None
