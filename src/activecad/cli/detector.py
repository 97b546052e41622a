"""``activecad train detector``: train the 3D nodule detector (``detect`` is in cli/detect.py).

``train`` is a sub-app so that later models (``fpr``, ``meld``, ``cxr``) add their own
``activecad train NAME`` commands beside ``detector``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from activecad.errors import InputError

train_app = typer.Typer(
    help="Train a model on a data folder.", no_args_is_help=True, add_completion=False
)


@train_app.command("detector")
def train_detector_command(
    data_dir: Path = typer.Argument(..., help="LUNA16-style folder: ct/ and annotations.csv."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    preset: str = typer.Option("cpu", "--preset", help="cpu or paper."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the epochs."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Override steps per epoch."),
    config: Path | None = typer.Option(None, "--config", help="YAML with config overrides."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache folder."),
    time_budget: float | None = typer.Option(
        None, "--time-budget", min=1, help="Stop after the epoch that passes this many seconds."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train the 3D nodule detector with loss prediction (papers/000)."""
    from activecad.config import read_yaml_mapping
    from activecad.models.detector3d import preset_config, train_detector

    overrides: dict[str, object] = {}
    if config is not None:
        overrides.update(read_yaml_mapping(config))
        if overrides.pop("preset", preset) != preset:
            raise InputError(
                "the config's preset differs from --preset", path=config, fix="make them agree"
            )
    if epochs is not None:
        overrides["epochs"] = epochs
    if steps is not None:
        overrides["steps_per_epoch"] = steps
    cfg = preset_config(preset, **overrides)
    result = train_detector(
        data_dir, out, cfg, resume=resume, cache_dir=cache, time_budget_s=time_budget
    )
    summary = {
        "model_dir": str(result.model_dir),
        "epochs_done": result.epochs_done,
        "stopped_early": result.stopped_early,
        "last": result.history[-1] if result.history else None,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"model written to {result.model_dir} ({result.epochs_done} epochs)")


def register(app: typer.Typer) -> None:
    """Add ``train`` (with ``detector``) to ``app``."""
    app.add_typer(train_app, name="train")
