"""``activecad train meld``: train MELD, the multi-dataset universal lesion detector."""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from activecad.cli._common import atomic_output, output_folder, usage_error
from activecad.cli.detector import train_app
from activecad.errors import InputError
from activecad.training.engine import Callback, FitState

if TYPE_CHECKING:
    from activecad.data.lesion_samples import DatasetSamples, LesionSets
    from activecad.models.meld import MeldConfig, MeldPreprocessing

# Slices of each preset (mm): pixel size, interval of a sample's 9 slices. The paper's are
# MELD's appendix 7.2. The cpu preset's fit the small phantom (2.8 mm pixels, 2.5 mm
# slices): at 2 mm resized to 160 px its lesions became ~3 px boxes, below every anchor, and
# a 4-epoch run found nothing; at 1.4 mm fed at its own size with anchors from 6 px the
# smallest lesions span more than one cell of the finest feature map (benchmarks/meld.py).
# Per preset: pixel mm, slice mm, HU window. The cpu preset's narrower window is a
# deviation from the paper (see README, "Universal lesions"): in MELD's -1024..3071 a
# soft-tissue lesion's contrast is 0.5-2 % of the input range, four times less than here.
DATA_DEFAULTS: dict[str, tuple[float, float, tuple[float, float]]] = {
    "cpu": (1.4, 2.5, (-600.0, 400.0)),
    "paper": (0.8, 2.0, (-1024.0, 3071.0)),
}
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "cpu": {"image_size": None, "anchor_sizes": (6, 12, 24, 48)},
    "paper": {},
}
# The lesion sets' folder names, accepted for --datasets beside the dataset names.
_FOLDER_NAMES = {
    "deeplesion": "universal",
    "luna": "lung_nodules",
    "lits": "liver_tumours",
    "nih_ln": "lymph_nodes",
}


def parse_datasets(value: str | None) -> tuple[str, ...] | None:
    """``--datasets``: comma-separated dataset (or folder) names -> dataset names.

    Raises:
        typer.BadParameter: an unknown or repeated name, or none at all.
    """
    from activecad.data.lesion_slices import DATASETS
    from activecad.registry import unknown_name_message

    if value is None:
        return None
    chosen: list[str] = []
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        dataset = _FOLDER_NAMES.get(name, name)
        if dataset not in DATASETS:
            raise usage_error(
                unknown_name_message("dataset", name, [*DATASETS, *_FOLDER_NAMES]),
                option="--datasets",
            )
        if dataset in chosen:
            raise usage_error(f"{name!r} is given twice", option="--datasets")
        chosen.append(dataset)
    if not chosen:
        raise usage_error(
            f"names no dataset; give some of {', '.join(DATASETS)}", option="--datasets"
        )
    return tuple(chosen)


def scaled_drops(drops: tuple[int, ...], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """The rate drops of an ``epochs`` schedule at the same share of a ``new_epochs`` one.

    The paper drops after epochs 4 and 6 of 8; a 4-epoch run drops after 2 and 3, a 2-epoch
    run after 1, a 1-epoch run never. Drops that would fall on the last epoch are left out.
    """
    if new_epochs == epochs:
        return drops
    moved = {round(d * new_epochs / epochs) for d in drops}
    return tuple(sorted(d for d in moved if 0 < d < new_epochs))


class _LiveProgress(Callback):
    """A transient bar of the steps on stderr and one line per finished epoch."""

    def __init__(self, console: Console) -> None:
        self.epochs = 0
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("epoch 1")
        self.start = time.perf_counter()

    def on_fit_start(self, state: FitState) -> None:
        self.epochs = state.plan.epochs
        self.bar.update(self.task, total=state.plan.epochs * state.plan.steps_per_epoch)
        self.bar.start()

    def on_step_end(self, state: FitState, losses: dict[str, float]) -> None:
        self.bar.update(
            self.task,
            advance=1,
            description=f"epoch {state.epoch + 1}/{self.epochs} loss {losses['total']:.3f}",
        )

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        sens = record.get("avg_sensitivity")
        shown = "" if sens is None else f", validation avg sensitivity {sens:.3f}"
        self.bar.console.print(
            f"epoch {state.epoch}/{self.epochs}: loss {record['total']:.4f}{shown} "
            f"({time.perf_counter() - self.start:.0f} s)",
            highlight=False,
        )

    def on_fit_end(self, state: FitState) -> None:
        self.bar.stop()


def _start_model(init_from: Path) -> tuple[Path, MeldConfig, MeldPreprocessing]:
    """The MELD model folder that ``--init-from`` names or holds, its config and preprocessing.

    A folder must be a MELD model folder; a file (``epochs/epoch_NNN.pt``, ``checkpoint.pt``)
    must lie in one, whose ``config.yaml`` says what network its weights fit.
    """
    from activecad.models.meld import load_meld, load_meld_preprocessing

    if not init_from.exists():
        raise InputError(
            "no such model folder or weights file",
            path=init_from,
            fix="give a folder of 'activecad train meld' or an epoch file in its epochs/",
        )
    folder = init_from
    if init_from.is_file():
        around = (init_from.parent, init_from.parent.parent)
        holders = [p for p in around if (p / "bundle.json").is_file()]
        if not holders:
            raise InputError(
                "a weights file outside a MELD model folder: the network it fits is unknown",
                path=init_from,
                fix="give the model folder, or an epoch file in its epochs/ folder",
            )
        folder = holders[0]
    net = load_meld(folder)  # checks the kind: a folder of another model is refused here
    return folder, net.config, load_meld_preprocessing(folder)


@train_app.command("meld")
def train_meld_command(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder holding some of deeplesion/ (DL_info.csv, Images_png/), luna/, "
            "lits/ and nih_ln/, e.g. from 'activecad phantom --lesion-sets'.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Model folder to write (weights.pt, config.yaml, preprocess.json, "
            "history.json, training.json, epochs/).",
        ),
    ],
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="cpu (default for a new model) or paper (DenseNet-121, 0.8 mm pixels, 2 mm "
            "slices, for a GPU).",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="Epochs (preset: 8); the rate drops keep their share of the schedule.",
        ),
    ] = None,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            "--steps-per-epoch",
            min=1,
            help="Optimiser steps per epoch (default: one pass over the epoch's samples).",
        ),
    ] = None,
    single_type_share: Annotated[
        float | None,
        typer.Option(
            "--single-type-share",
            min=0.01,
            max=0.99,
            help="At most this share of each epoch from the single-type sets (e.g. 0.5 when "
            "the universal set is small beside them; default: all their samples).",
            show_default=False,
        ),
    ] = None,
    pixel_mm: Annotated[
        float | None,
        typer.Option(
            "--pixel-mm",
            min=0.01,
            help="In-plane pixel size of the slices, mm (cpu 1.4, paper 0.8; with "
            "--init-from, the start model's).",
            show_default=False,
        ),
    ] = None,
    slice_mm: Annotated[
        float | None,
        typer.Option(
            "--slice-mm",
            min=0.01,
            help="Interval of a sample's 9 slices, mm (cpu 2.5, paper 2; with --init-from, "
            "the start model's).",
            show_default=False,
        ),
    ] = None,
    hu_window: Annotated[
        str | None,
        typer.Option(
            "--hu-window",
            metavar="LOW,HIGH",
            help="HU range mapped to [0, 1], e.g. --hu-window=-1024,3071 (MELD's single "
            "window, the paper preset's) or -600,400 (the cpu preset's); with --init-from, "
            "the start model's.",
            show_default=False,
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Fine-tune: start from this MELD model folder, or an epoch file in its "
            "epochs/ (its network and preprocessing are kept).",
        ),
    ] = None,
    datasets: Annotated[
        str | None,
        typer.Option(
            "--datasets",
            help="Train on these datasets only, comma-separated: universal, lung_nodules, "
            "liver_tumours, lymph_nodes (universal alone: the single-dataset baseline). "
            "Default: every one found.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default 0).")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted run of --out from its last finished epoch, with "
            "the settings it started with.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train MELD, the multi-expert universal lesion detector, on several lesion datasets.

    Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
    Datasets" (2020): a 2.5D Faster R-CNN on 9-slice samples with one expert per dataset
    (DeepLesion as 'universal', LUNA, LiTS, NIH lymph nodes), organ heads and organ gating.
    Single-type datasets give all their lesion slices and as many fresh lesion-free slices
    each epoch; training samples are resized by 0.8-1.2 and shifted by up to 8 px. The
    epoch of best validation sensitivity of the universal expert is kept (of the experts'
    mean without universal validation slices). Until the run ends, its
    checkpoint lives in a hidden folder beside --out (.NAME.partial), from which --resume
    continues; --out itself is written only when training has finished.
    """
    from activecad.config import validate_config
    from activecad.data.lesion_samples import augment_sample
    from activecad.data.lesion_slices import DATASETS
    from activecad.models.meld import (
        PRESETS,
        MeldConfig,
        MeldPreprocessing,
        preset_config,
        train_meld,
    )
    from activecad.registry import unknown_name_message

    if preset is not None and preset not in PRESETS:
        raise usage_error(unknown_name_message("preset", preset, PRESETS), option="--preset")
    out = output_folder(out, writes="weights.pt, config.yaml, preprocess.json and history.json")
    partial = partial_folder(out)
    if resume:
        given = [
            option
            for option, value in (
                ("--preset", preset), ("--epochs", epochs), ("--steps-per-epoch", steps_per_epoch),
                ("--single-type-share", single_type_share),
                ("--pixel-mm", pixel_mm), ("--slice-mm", slice_mm), ("--hu-window", hu_window),
                ("--init-from", init_from), ("--datasets", datasets), ("--seed", seed),
            )
            if value is not None
        ]  # fmt: skip
        if given:
            raise usage_error(
                f"--resume continues with the run's own settings; drop {', '.join(given)}",
                option="--resume",
            )
    elif (partial / RUN_FILE).is_file():
        raise InputError(
            f"an interrupted run of this --out is kept in {partial}",
            path=out,
            fix="continue it with --resume, or remove that folder to start again",
        )
    chosen = parse_datasets(datasets)
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "no such data folder"
        raise InputError(
            what, path=data_dir, fix="give the folder holding deeplesion/, luna/, lits/, nih_ln/"
        )

    window = None if hu_window is None else parse_window(hu_window)
    overrides: dict[str, object] = {"seed": seed or 0}
    if steps_per_epoch is not None:
        overrides["steps_per_epoch"] = steps_per_epoch
    if single_type_share is not None:
        overrides["single_type_share"] = single_type_share
    if resume:
        config, prep, chosen, init_from = _read_run(partial, data_dir)
    elif init_from is not None:
        start_dir, start, prep = _start_model(init_from)  # checked before any slice is read
        if preset is not None and preset != start.preset:
            raise usage_error(
                f"the start model is a {start.preset!r} model; drop --preset (its network is kept)",
                option="--preset",
            )
        for option, given, kept in (
            ("--pixel-mm", pixel_mm, prep.pixel_mm),
            ("--slice-mm", slice_mm, prep.slice_mm),
        ):
            if given is not None and given != kept:
                raise InputError(
                    f"{option} {given:g} differs from the {kept:g} mm the start model was "
                    "trained at",
                    path=start_dir,
                    fix=f"drop {option} (fine-tuning keeps the start model's preprocessing)",
                )
        if window is not None and window != tuple(prep.hu_window):
            low, high = prep.hu_window
            raise InputError(
                f"--hu-window differs from the {low:g},{high:g} HU the start model was trained at",
                path=start_dir,
                fix="drop --hu-window (fine-tuning keeps the start model's preprocessing)",
            )
        base = start
    else:
        preset = preset or "cpu"
        base = preset_config(preset, **MODEL_DEFAULTS[preset])
        prep = MeldPreprocessing(
            pixel_mm=pixel_mm if pixel_mm is not None else DATA_DEFAULTS[preset][0],
            slice_mm=slice_mm if slice_mm is not None else DATA_DEFAULTS[preset][1],
            hu_window=window if window is not None else DATA_DEFAULTS[preset][2],
        )
    if not resume:
        if epochs is not None:
            overrides["epochs"] = epochs
            overrides["lr_drop_epochs"] = scaled_drops(base.lr_drop_epochs, base.epochs, epochs)
        config = validate_config(MeldConfig, {**base.model_dump(), **overrides})

    sets = _load_sets(data_dir, prep, chosen)
    counts = {name: _count(item) for name, item in sets.datasets.items()}
    val = sets.val_samples()
    console = Console(stderr=True)
    if not as_json:
        shown = ", ".join(f"{n} {c['train_patients']} patients" for n, c in counts.items())
        console.print(
            f"training MELD ({config.preset}, {prep.pixel_mm:g} mm pixels, {prep.slice_mm:g} mm "
            f"slices, window {prep.hu_window[0]:g}..{prep.hu_window[1]:g} HU) on {shown}; "
            f"{len(val)} validation slices"
            + ("" if val else " (the last epoch's weights are kept)"),
            highlight=False,
        )
    live = None if as_json else _LiveProgress(console)
    start_time = time.perf_counter()
    if not resume:
        _write_run(partial, data_dir, config, prep, chosen, init_from)
    try:
        _, history = train_meld(
            functools.partial(sets.train_source, single_type_share=config.single_type_share),
            val or None,
            config,
            augment=augment_sample,
            out_dir=partial,
            init_from=None if resume else init_from,  # the checkpoint holds the weights
            resume=resume,
            callbacks=[] if live is None else [live],
            preprocessing=prep,
        )
    except BaseException:
        if live is not None:
            live.bar.stop()
        if (partial / "checkpoint.pt").is_file():
            console.print(
                f"the run's last finished epoch is kept in {partial}; continue with "
                f"'activecad train meld {data_dir} --out {out} --resume'",
                highlight=False,
            )
        else:
            shutil.rmtree(partial, ignore_errors=True)  # no epoch finished: nothing to keep
        raise
    if live is not None:
        live.bar.stop()
    seconds = time.perf_counter() - start_time
    with atomic_output(out, folder=True) as tmp:
        for child in partial.iterdir():
            if child.name not in (RUN_FILE, "checkpoint.pt"):
                shutil.move(str(child), tmp / child.name)
        training = {
            "data_dir": str(data_dir),
            "datasets": counts,
            "test_patients": sets.test_patients,
            "init_from": None if init_from is None else str(init_from),
            "resumed": resume,
            "seconds": round(seconds, 1),
        }
        (tmp / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    shutil.rmtree(partial)
    summary = {
        "model_dir": str(out),
        "preset": config.preset,
        "pixel_mm": prep.pixel_mm,
        "slice_mm": prep.slice_mm,
        "hu_window": list(prep.hu_window),
        "datasets": counts,
        "epochs": len(history),
        "steps_per_epoch": config.steps_per_epoch,
        "seconds": round(seconds, 1),
        "history": history,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    _print_history(history, [d for d in DATASETS if d in counts])
    typer.echo(f"model written to {out} ({len(history)} epochs, {seconds:.0f} s)")


RUN_FILE = "run.json"


def partial_folder(out: Path) -> Path:
    """Where a run of ``out`` keeps its checkpoint until it finishes: ``.NAME.partial``."""
    return out.parent / f".{out.name}.partial"


def _write_run(
    partial: Path,
    data_dir: Path,
    config: MeldConfig,
    prep: MeldPreprocessing,
    chosen: tuple[str, ...] | None,
    init_from: Path | None,
) -> None:
    """Record what a run started with, for --resume."""
    partial.mkdir(parents=True, exist_ok=True)
    run = {
        "data_dir": str(data_dir.resolve()),
        "config": config.model_dump(mode="json"),
        "preprocessing": prep.model_dump(mode="json"),
        "datasets": None if chosen is None else list(chosen),
        "init_from": None if init_from is None else str(init_from),
    }
    (partial / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")


def _read_run(
    partial: Path, data_dir: Path
) -> tuple[MeldConfig, MeldPreprocessing, tuple[str, ...] | None, Path | None]:
    """The settings of the interrupted run in ``partial`` (see :func:`_write_run`)."""
    from activecad.config import validate_config
    from activecad.models.meld import MeldConfig, MeldPreprocessing

    if not (partial / RUN_FILE).is_file() or not (partial / "checkpoint.pt").is_file():
        raise InputError(
            "nothing to resume (no finished epoch of an interrupted run)",
            path=partial,
            fix="drop --resume to start a new run",
        )
    run = json.loads((partial / RUN_FILE).read_text())
    if Path(run["data_dir"]) != data_dir.resolve():
        raise InputError(
            f"the run started on {run['data_dir']}, not on this data folder",
            path=data_dir,
            fix="give the data folder the run started with",
        )
    config = validate_config(MeldConfig, run["config"], source=partial / RUN_FILE)
    prep = validate_config(MeldPreprocessing, run["preprocessing"], source=partial / RUN_FILE)
    datasets = None if run["datasets"] is None else tuple(run["datasets"])
    return config, prep, datasets, None if run["init_from"] is None else Path(run["init_from"])


def parse_window(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (low, high) HU; a usage error unless two numbers with low < high."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise usage_error(
            f"--hu-window takes LOW,HIGH in HU (e.g. --hu-window=-1024,3071), got {text!r}",
            option="--hu-window",
        ) from None
    if not low < high:
        raise usage_error(f"--hu-window needs LOW < HIGH, got {text!r}", option="--hu-window")
    return low, high


def _load_sets(
    data_dir: Path, prep: MeldPreprocessing, chosen: tuple[str, ...] | None
) -> LesionSets:
    """The lesion sets of ``data_dir``, restricted to ``chosen``; a chosen set must be there."""
    from activecad.data.lesion_samples import load_lesion_sets

    if chosen is not None:
        folder = {dataset: name for name, dataset in _FOLDER_NAMES.items()}
        missing = [d for d in chosen if not (data_dir / folder[d]).is_dir()]
        if missing:
            names = ", ".join(f"{folder[d]}/ ({d})" for d in missing)
            raise InputError(
                f"--datasets names {names}, which the folder lacks",
                path=data_dir,
                fix="drop it from --datasets, or add the folder",
            )
    sets = load_lesion_sets(
        data_dir,
        pixel_mm=prep.pixel_mm,
        slice_mm=prep.slice_mm,
        seed=0,  # the same validation patients whatever --seed, so seeds compare
        crop_borders=prep.crop_borders,
        hu_window=prep.hu_window,
    )
    if chosen is not None:
        sets = replace(sets, datasets={d: sets.datasets[d] for d in chosen})
    return sets


def _count(item: DatasetSamples) -> dict[str, int]:
    train = item.train
    return {
        "train_patients": len(item.train_patients),
        "val_patients": len(item.val_patients),
        "train_lesion_slices": len(train) if isinstance(train, list) else train.n_positive,
        "val_slices": len(item.val),
    }


def _print_history(history: list[dict[str, float]], datasets: list[str]) -> None:
    table = Table(title="validation sensitivity (mean at 0.5-4 FPs per slice)")
    table.add_column("epoch", justify="right")
    table.add_column("loss", justify="right")
    shown = [d for d in datasets if any(f"sensitivity_{d}" in r for r in history)]
    for name in shown:
        table.add_column(name, justify="right")
    table.add_column("average", justify="right")
    table.add_column("s", justify="right")
    for record in history:
        cells = [f"{record.get(f'sensitivity_{d}', float('nan')):.3f}" for d in shown]
        sens = record.get("avg_sensitivity")
        table.add_row(
            str(int(record["epoch"])),
            f"{record['total']:.4f}",
            *cells,
            "-" if sens is None else f"{sens:.3f}",
            f"{record.get('seconds', 0.0):.0f}",
        )
    Console().print(table)
