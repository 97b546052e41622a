"""Training of the nodule detector on a LUNA16-style folder, resumable, with validation.

A data folder holds ``ct/`` (one ``.mhd``/``.mha``/``.nii[.gz]`` file or DICOM folder per
series) and ``annotations.csv`` (world mm, x-y-z, ``diameter_mm``), optionally
``annotations_excluded.csv``. The model folder receives the bundle (see :mod:`.bundle`),
``checkpoint.pt`` (weights, optimiser and random states after each epoch),
``metrics.jsonl`` (one line per epoch) and ``split.json`` (the train/validation series).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from activecad.data.patches import LabelledScan, PatchSampler
from activecad.data.preprocess import PreparedScan, PreprocessCache
from activecad.errors import InputError
from activecad.models.detector3d.bundle import save_bundle
from activecad.models.detector3d.config import DetectorConfig
from activecad.models.detector3d.inference import SUBMISSION_COLUMNS, detect_prepared
from activecad.models.detector3d.network import NoduleDetector

CT_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")


@dataclass
class LunaFolder:
    """The scans and tables of a LUNA16-style data folder.

    Attributes:
        scans: paths of the scans, sorted.
        annotations: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (world mm).
        excluded: findings that count neither as hits nor as false positives.
    """

    scans: list[Path]
    annotations: pd.DataFrame
    excluded: pd.DataFrame | None = None


def read_luna_folder(data_dir: str | Path) -> LunaFolder:
    """List the scans of ``data_dir/ct`` and read its annotation tables.

    Raises:
        InputError: the folder, ``ct/`` or ``annotations.csv`` is missing or holds no scan.
    """
    from activecad.io.tables import read_table

    data_dir = Path(data_dir)
    ct = data_dir / "ct"
    if not ct.is_dir():
        raise InputError(
            "not a LUNA16-style data folder (no ct/ subfolder)",
            path=data_dir,
            fix="give a folder with ct/ and annotations.csv, e.g. one from 'activecad phantom'",
        )
    scans = sorted(p for p in ct.iterdir() if p.is_dir() or p.name.lower().endswith(CT_SUFFIXES))
    if not scans:
        raise InputError("ct/ holds no scan (.mhd, .mha, .nii, .nii.gz or DICOM folder)", path=ct)
    annotations_path = data_dir / "annotations.csv"
    if not annotations_path.is_file():
        raise InputError("annotations.csv is missing", path=data_dir)
    excluded_path = data_dir / "annotations_excluded.csv"
    excluded = read_table(excluded_path, "excluded") if excluded_path.is_file() else None
    return LunaFolder(scans, read_table(annotations_path, "annotations"), excluded)


def split_series(
    uids: Sequence[str],
    val_fraction: float,
    seed: int,
    *,
    groups: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """A seeded train/validation split of series ids, whole groups (patients) at a time.

    Args:
        uids: series ids.
        val_fraction: share of the groups held out; none are held out below 5 groups.
        seed: seed of the permutation.
        groups: series id -> patient id; a series without one is its own group.

    Returns:
        (train, validation) series ids, each sorted.
    """
    groups = groups or {}
    keys = sorted({groups.get(u) or u for u in uids})
    count = round(len(keys) * val_fraction) if len(keys) >= 5 else 0
    order = np.random.default_rng(seed).permutation(len(keys))
    held = {keys[i] for i in order[:count]}
    val = sorted(u for u in uids if (groups.get(u) or u) in held)
    return sorted(u for u in uids if (groups.get(u) or u) not in held), val


def labelled(
    prepared: PreparedScan, annotations: pd.DataFrame, excluded: pd.DataFrame | None = None
) -> LabelledScan:
    """Attach the nodules of ``prepared``'s series, and its excluded findings as ignored."""
    xyz = ["coordX", "coordY", "coordZ"]
    rows = annotations[annotations["seriesuid"] == prepared.seriesuid]
    if excluded is None:
        excluded = pd.DataFrame(columns=["seriesuid", *xyz, "diameter_mm"])
    ignored = excluded[excluded["seriesuid"] == prepared.seriesuid]
    return LabelledScan.from_world(
        prepared,
        rows[xyz].to_numpy(dtype=np.float64),
        rows["diameter_mm"].to_numpy(dtype=np.float64),
        ignored_world=ignored[xyz].to_numpy(dtype=np.float64),
        ignored_diameters_mm=ignored["diameter_mm"].to_numpy(dtype=np.float64),
    )


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_dir: the model folder.
        epochs_done: epochs completed (fewer than asked when the time budget ran out).
        history: the metrics.jsonl records of this run.
        stopped_early: True when the time budget ended training.
    """

    model_dir: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def _make_optimizer(config: DetectorConfig, params: object) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,  # type: ignore[arg-type]
            lr=config.lr,
            momentum=0.9,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)  # type: ignore[arg-type]


def _lr_at(config: DetectorConfig, epoch: int) -> float:
    # papers/000 §3.1: the rate drops tenfold for the last tenth of training.
    return config.lr * (0.1 if epoch >= math.ceil(0.9 * config.epochs) else 1.0)


def froc_summary(
    detections: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    *,
    n_bootstrap: int = 0,
) -> tuple[dict[str, object], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """LUNA16 FROC of world-mm detections on ``seriesuids`` through :mod:`activecad.metrics`.

    Args:
        detections: LUNA16 submission rows (world mm).
        annotations: the nodules.
        excluded: findings that count neither as hits nor as false positives.
        seriesuids: the scans evaluated (scans without detections count too).
        n_bootstrap: scan-bootstrap resamples for 95% intervals (0: none).

    Returns:
        the summary (``cpm``, ``sensitivities`` at 1/8..8 FPs per scan, ``counts`` and,
        with ``n_bootstrap``, the intervals) and the curve (fps_per_scan, sensitivity,
        thresholds).
    """
    from activecad.metrics import luna16_summary, match_luna16

    xyz = ["coordX", "coordY", "coordZ"]
    extra: dict[str, object] = {}
    if excluded is not None:
        extra = {
            "excluded_ids": excluded["seriesuid"].to_numpy(str),
            "excluded_centers": excluded[xyz].to_numpy(np.float64).reshape(-1, 3),
            "excluded_diameters": excluded["diameter_mm"].to_numpy(np.float64),
        }
    match = match_luna16(
        detections["seriesuid"].to_numpy(str),
        detections[xyz].to_numpy(np.float64).reshape(-1, 3),
        detections["probability"].to_numpy(np.float64),
        annotations["seriesuid"].to_numpy(str),
        annotations[xyz].to_numpy(np.float64).reshape(-1, 3),
        annotations["diameter_mm"].to_numpy(np.float64),
        scans=np.asarray(list(seriesuids), dtype=str),
        **extra,  # type: ignore[arg-type]
    )
    summary, curve, _ = luna16_summary(match, n_bootstrap=n_bootstrap)
    return summary, curve


def validate(
    detector: NoduleDetector,
    scans: Sequence[PreparedScan],
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
) -> dict[str, float]:
    """CPM and sensitivities of ``detector`` on preprocessed validation scans (LUNA16)."""
    tables = [detect_prepared(detector, scan).detections for scan in scans]
    detections = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SUBMISSION_COLUMNS)
    )
    summary, _ = froc_summary(detections, annotations, excluded, [s.seriesuid for s in scans])
    sensitivities: dict[str, float] = summary["sensitivities"]  # type: ignore[assignment]
    return {
        "cpm": float(summary["cpm"]),  # type: ignore[arg-type]
        **{f"sens@{k}": float(v) for k, v in sensitivities.items()},
    }


def train_detector(
    data_dir: str | Path,
    model_dir: str | Path,
    config: DetectorConfig,
    *,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    train_uids: Sequence[str] | None = None,
    val_uids: Sequence[str] | None = None,
    time_budget_s: float | None = None,
    device: str | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train the detector and write the model folder.

    Args:
        data_dir: LUNA16-style folder (``ct/``, ``annotations.csv``).
        model_dir: output folder (bundle, checkpoint, metrics).
        config: the detector configuration.
        resume: continue from ``model_dir/checkpoint.pt``.
        cache_dir: where preprocessed arrays are cached (default ``model_dir/cache``).
        train_uids: series to train on (default: a seeded split by ``config.val_fraction``).
        val_uids: series to validate on (default: the rest of that split).
        time_budget_s: stop after the first epoch that ends past this many seconds.
        device: torch device (default CUDA when available).
        console: where progress goes (default stderr).

    Raises:
        InputError: bad data folder, or a finished run in ``model_dir`` without ``resume``.
    """
    start_time = time.monotonic()
    console = console or Console(stderr=True)
    model_dir = Path(model_dir)
    checkpoint_path = model_dir / "checkpoint.pt"
    if checkpoint_path.exists() and not resume:
        raise InputError(
            "the model folder already holds a training run",
            path=model_dir,
            fix="pass --resume to continue it, or choose another --out",
        )
    if resume and not checkpoint_path.exists():
        raise InputError("nothing to resume (no checkpoint.pt)", path=model_dir)
    folder = read_luna_folder(data_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    cache = PreprocessCache(cache_dir or model_dir / "cache")
    patch_zyx = (config.patch_size[2], config.patch_size[1], config.patch_size[0])
    prepared: dict[str, PreparedScan] = {}
    with Progress(
        TextColumn("preprocessing"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        for path in bar.track(folder.scans):
            scan = cache.load(path, config.preprocess, min_shape_zyx=patch_zyx)
            prepared[scan.seriesuid] = scan
    if train_uids is None:
        patients = {uid: scan.patient_id for uid, scan in prepared.items()}
        train_uids, default_val = split_series(
            list(prepared), config.val_fraction, config.seed, groups=patients
        )
        val_uids = default_val if val_uids is None else val_uids
    missing = sorted((set(train_uids) | set(val_uids or ())) - set(prepared))
    if missing:
        raise InputError(f"series not found in ct/: {', '.join(missing[:5])}", path=data_dir)
    val_uids = list(val_uids or [])
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "split.json").write_text(
        json.dumps({"train": list(train_uids), "val": val_uids}, indent=2)
    )

    detector = NoduleDetector(config).to(device)
    optimizer = _make_optimizer(config, detector.network.parameters())
    sampler = PatchSampler(
        [labelled(prepared[u], folder.annotations, folder.excluded) for u in train_uids],
        config.patch_size,
        positive_fraction=config.positive_fraction,
        augment=config.augment,
        seed=config.seed,
    )
    generator = torch.Generator().manual_seed(config.seed)
    use_amp = config.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    first_epoch, history = 0, []
    if resume:
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        detector.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first_epoch, history = state["epoch"], state["history"]
    metrics_path = model_dir / "metrics.jsonl"
    stopped_early = False
    epoch = first_epoch
    for epoch in range(first_epoch, config.epochs):
        detector.train()
        detector.network.detach_loss_features = epoch >= config.stop_grad_epoch
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, epoch)
        sums = {"loss": 0.0, "target": 0.0, "scan": 0.0, "roi": 0.0}
        epoch_start = time.monotonic()
        with Progress(
            TextColumn(f"epoch {epoch + 1}/{config.epochs}"),
            BarColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("train", total=config.steps_per_epoch, loss="")
            for _ in range(config.steps_per_epoch):
                patches, boxes, ignored = sampler.batch(config.batch_size)
                images = torch.from_numpy(patches).to(device)
                targets = [
                    {
                        "boxes": torch.from_numpy(b).float().to(device),
                        "labels": torch.zeros(len(b), dtype=torch.long, device=device),
                        "ignore_boxes": torch.from_numpy(ign).float().to(device),
                    }
                    for b, ign in zip(boxes, ignored, strict=True)
                ]
                with torch.autocast("cuda", enabled=use_amp):
                    losses = detector.compute_losses(images, targets, generator=generator)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses.total).backward()
                scaler.step(optimizer)
                scaler.update()
                for key, value in (
                    ("loss", losses.total),
                    ("target", losses.target),
                    ("scan", losses.scan),
                    ("roi", losses.roi),
                ):
                    sums[key] += float(value.detach())
                bar.update(task, advance=1, loss=f"loss {float(losses.total.detach()):.3f}")
        record: dict[str, float] = {
            "epoch": epoch + 1,
            **{k: v / config.steps_per_epoch for k, v in sums.items()},
            "lr": _lr_at(config, epoch),
            "seconds": time.monotonic() - epoch_start,
        }
        out_of_time = time_budget_s is not None and time.monotonic() - start_time > time_budget_s
        last = epoch + 1 == config.epochs or out_of_time
        if val_uids and ((epoch + 1) % config.val_every == 0 or last):
            record.update(
                validate(
                    detector, [prepared[u] for u in val_uids], folder.annotations, folder.excluded
                )
            )
        history.append(record)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        console.print(
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            ),
            highlight=False,
        )
        tmp = model_dir / "checkpoint.pt.tmp"
        torch.save(
            {
                "network": detector.network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler_rng": sampler.rng.bit_generator.state,
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
            },
            tmp,
        )
        tmp.replace(checkpoint_path)
        save_bundle(model_dir, detector)
        if out_of_time and epoch + 1 < config.epochs:
            stopped_early = True
            break
    if first_epoch >= config.epochs:
        save_bundle(model_dir, detector)
    done = epoch + 1 if config.epochs > first_epoch else first_epoch
    return TrainResult(model_dir, done, history, stopped_early)
