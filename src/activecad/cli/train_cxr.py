"""``activecad train cxr``: train Network 1 or 2 (Kim et al.) on a radiograph data folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from activecad.cli._common import atomic_output, output_folder, usage_error
from activecad.cli.detector import train_app

_LABEL_COLUMNS = {"clean": "label", "noisy": "label_noisy"}


@train_app.command("cxr")
def train_cxr_command(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="Radiograph folder: images/, labels.csv, masks/ (Network 2), lungs/ "
            "(optional), or a phantom cohort holding cxr/.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    network: Annotated[
        int, typer.Option("--network", help="1: image-level labels (CAM); 2: pixel-level masks.")
    ] = 1,
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="clean: CT-referenced column 'label'; noisy: report-mined 'label_noisy'.",
        ),
    ] = "clean",
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from", help="Model folder to start from (pretrain noisy, then fine-tune)."
        ),
    ] = None,
    preset: Annotated[str, typer.Option("--preset", help="cpu or paper.")] = "cpu",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a chest-radiograph nodule classifier: Network 1 (image labels) or 2 (masks).

    Kim et al., "Better performance of deep learning pulmonary nodule detection using chest
    radiography with reference to computed tomography: data quality is matter" (2023).
    """
    from activecad.models.cxr.data import load_cxr_items
    from activecad.models.cxr.train import load_cxr_bundle, preset_cxr_config, train_cxr

    if network not in (1, 2):
        raise usage_error(f"must be 1 or 2, got {network}", option="--network")
    if labels not in _LABEL_COLUMNS:
        raise usage_error(f"must be clean or noisy, got {labels!r}", option="--labels")
    if preset not in ("cpu", "paper"):
        raise usage_error(f"must be cpu or paper, got {preset!r}", option="--preset")
    out = output_folder(out, writes="bundle.json, config.json, weights.pt and history.json")
    if init_from is not None:
        load_cxr_bundle(init_from)  # fails now, not after the data are read
    overrides: dict[str, object] = {
        "network": network,
        "seed": seed,
        "label_column": _LABEL_COLUMNS[labels],
    }
    if steps is not None:
        overrides["steps"] = steps
    cfg = preset_cxr_config(preset, **overrides)
    items = load_cxr_items(data_dir, cfg.label_column, need_masks=False)
    if network == 2 and not any(it.mask is not None for it in items):
        from activecad.errors import InputError

        raise InputError(
            "Network 2 needs nodule masks, and the folder has none (masks/<id>.png)",
            path=data_dir,
            fix="train --network 1, or add masks/",
        )
    with atomic_output(out) as tmp:
        _, history = train_cxr(items, cfg, tmp, init_from=init_from, progress=False)
    summary = {
        "model_dir": str(out),
        "network": network,
        "labels": labels,
        "images": len(items),
        "steps": cfg.steps,
        "last": history[-1] if history else None,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"model written to {out} (Network {network}, {len(items)} images)")
