"""``activecad train detector``: train the 3D nodule detector (``detect`` is in cli/detect.py).

``train`` is a sub-app so that later models (``fpr``, ``meld``, ``cxr``) add their own
``activecad train NAME`` commands beside ``detector``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from activecad.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

train_app = typer.Typer(
    help="Train a model on a data folder.", no_args_is_help=True, add_completion=False
)


@train_app.command("detector")
def train_detector_command(
    data_dir: Path = typer.Argument(..., help="LUNA16-style folder: ct/ and annotations.csv."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Model folder to write (weights, config, checkpoint.pt, metrics.jsonl, split.json).",
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="cpu (default for a new run) or paper."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the epochs."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Override steps per epoch."),
    config: Path | None = typer.Option(None, "--config", help="YAML with config overrides."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out with its saved settings; only what you pass "
        "(--epochs, --steps, ...) changes.",
    ),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Fine-tune: start from this model folder's weights (its network and "
        "preprocessing settings are kept).",
    ),
    hard_negatives: Path | None = typer.Option(
        None,
        "--hard-negatives",
        help="CSV of places not to mark (seriesuid, coordX, coordY, coordZ world mm), e.g. "
        "'activecad detect' run on the training scans: rows on a nodule or an excluded "
        "finding are dropped, and hard_negative_fraction (config; default 0.5) of the "
        "background patches are centred on the rest. Fine-tune with --init-from.",
    ),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache folder."),
    time_budget: float | None = typer.Option(
        None,
        "--time-budget",
        min=1,
        help="Stop after the epoch that passes this many seconds; the learning rate drops "
        "at 90 % of it if that comes before the last tenth of the epochs.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train the 3D nodule detector with loss prediction.

    After Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule Detection"
    (MICCAI 2020). Under torchrun (python -m activecad) it trains data-parallel.
    """
    from activecad.cli._common import output_folder, usage_error
    from activecad.config import read_yaml_mapping
    from activecad.models.detector3d import PRESETS, resolve_config, train_detector
    from activecad.registry import unknown_name_message
    from activecad.training import distributed

    if preset is not None and preset not in PRESETS:
        raise usage_error(unknown_name_message("preset", preset, PRESETS), option="--preset")
    if resume and init_from is not None:
        raise usage_error(
            "--resume continues the run in --out from its own checkpoint; drop --init-from",
            option="--init-from",
        )
    out = output_folder(out, writes="weights.pt, config.yaml, checkpoint.pt and metrics.jsonl")
    overrides: dict[str, object] = {}
    if config is not None:
        overrides.update(read_yaml_mapping(config))
        config_preset = overrides.pop("preset", None)
        if config_preset is not None and preset is not None and config_preset != preset:
            raise InputError(
                "the config's preset differs from --preset", path=config, fix="make them agree"
            )
        preset = preset or config_preset  # type: ignore[assignment]
    if epochs is not None:
        overrides["epochs"] = epochs
    if steps is not None:
        overrides["steps_per_epoch"] = steps
    if resume and not (out / "checkpoint.pt").is_file():
        raise InputError(
            "nothing to resume (no checkpoint.pt)",
            path=out,
            fix="drop --resume to start a new run in this folder",
        )
    # Settled before any scan is read: a change that cannot apply fails in a second.
    cfg = resolve_config(preset, overrides, resume_dir=out if resume else None, init_from=init_from)
    places = _read_places(hard_negatives) if hard_negatives is not None else None
    try:
        result = train_detector(
            data_dir,
            out,
            cfg,
            resume=resume,
            init_from=init_from,
            cache_dir=cache,
            hard_negatives=places,
            time_budget_s=time_budget,
        )
        is_main = distributed.context().is_main
    finally:
        distributed.teardown()
    if not is_main:
        return
    summary = {
        "model_dir": str(result.model_dir),
        "epochs_done": result.epochs_done,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "best_cpm": result.best_cpm,
        "last": result.history[-1] if result.history else None,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"model written to {result.model_dir} ({result.epochs_done} epochs)")


def _read_places(path: Path) -> pd.DataFrame:
    """A table of world-mm places: a submission, a candidates table or an annotations table."""
    import pandas as pd  # late, so that --help stays fast

    from activecad.cli._common import usage_error
    from activecad.io.tables import guess_table_kind, read_table

    if not path.is_file():
        raise usage_error(f"no such file: {path}", option="--hard-negatives")
    header = pd.read_csv(path, nrows=0).columns
    kind = guess_table_kind(list(header), file_name=path.name)
    if kind not in ("submission", "candidates", "annotations", "excluded"):
        raise InputError(
            "not a table of places: it needs seriesuid, coordX, coordY and coordZ",
            path=path,
            fix="give detections (activecad detect) or a LUNA16 candidates.csv",
        )
    return read_table(path, kind)


def register(app: typer.Typer) -> None:
    """Add ``train`` (with ``detector``) to ``app``."""
    app.add_typer(train_app, name="train")
