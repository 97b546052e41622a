"""``activecad detect`` on a chest-radiograph model folder (bundle.json "model": "cxr").

``cli/detect.py`` calls :func:`is_cxr_model` and, when true, :func:`detect_cxr` instead of
the CT detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from activecad.cli._common import atomic_output, output_file
from activecad.errors import InputError


def is_cxr_model(model_dir: Path) -> bool:
    """Whether ``model_dir/bundle.json`` names a ``cxr`` model (False when unreadable)."""
    try:
        return json.loads((Path(model_dir) / "bundle.json").read_text()).get("model") == "cxr"
    except (OSError, ValueError, AttributeError):
        return False


def detect_cxr(
    images: list[Path], model: Path, out: Path, heatmaps: Path | None, as_json: bool
) -> None:
    """Write per image the nodule probability and the heat map's boxes; heat-map overlays.

    Every input is checked before the first image is processed; --out is written atomically.
    """
    from activecad.models.cxr.data import read_cxr_image
    from activecad.models.cxr.inference import predict_files
    from activecad.models.cxr.train import load_cxr_bundle

    out = output_file(out)
    if heatmaps is not None and heatmaps.exists() and not heatmaps.is_dir():
        raise InputError(
            "--heatmaps must be a folder, but this is a file",
            path=heatmaps,
            fix="give a folder name",
        )
    for path in images:
        read_cxr_image(path)
    net, cfg = load_cxr_bundle(model)
    if heatmaps is not None:
        with atomic_output(heatmaps, folder=True) as tmp_dir:
            table, timing = predict_files(net, cfg, images, heatmap_dir=tmp_dir)
            with atomic_output(out, folder=False) as tmp:
                table.to_csv(tmp, index=False)
    else:
        table, timing = predict_files(net, cfg, images)
        with atomic_output(out, folder=False) as tmp:
            table.to_csv(tmp, index=False)
    boxes = int(table["x"].notna().sum())
    if as_json:
        typer.echo(json.dumps({"images": len(images), "boxes": boxes, "out": str(out), **timing}))
    else:
        Console(stderr=True).print(
            f"{len(images)} radiographs, {boxes} boxes -> {out}", highlight=False
        )
