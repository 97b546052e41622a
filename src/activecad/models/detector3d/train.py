"""Training of the nodule detector: the detector task for the engine, and the folder run.

:func:`fit_detector` fine-tunes or trains a detector in memory on labelled scans (what the
active-learning loop calls each cycle); :func:`train_detector` is ``activecad train
detector``: it reads a LUNA16-style folder (see :mod:`activecad.data.folders`), splits it
by patient, preprocesses, fits and writes the model folder. Both run on
:func:`activecad.training.fit`.

The model folder receives the bundle (see :mod:`.bundle`) holding the weights of the best
validation epoch by CPM (the LUNA16 competition performance metric on the validation
split; the latest weights until the first validation, and when there is no validation
split), ``checkpoint.pt`` (the last epoch's weights, optimiser state and history, for
``--resume``), ``metrics.jsonl`` (one line per epoch), ``split.json`` (the
train/validation series) and, when hard negatives were given, ``hard_negatives.csv`` (the
false positives among them that training centred patches on; ``--resume`` reuses them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.console import Console
from torch import nn

from activecad.data.folders import (
    LunaFolder,
    false_positive_places,
    froc_summary,
    labelled,
    read_luna_folder,
    split_by_patient,
    split_series,
)
from activecad.data.patches import LabelledScan, PatchSampler
from activecad.data.preprocess import PreparedScan, PreprocessCache
from activecad.errors import InputError
from activecad.models.detector3d.bundle import load_bundle, save_bundle
from activecad.models.detector3d.config import DetectorConfig, preset_config
from activecad.models.detector3d.inference import SUBMISSION_COLUMNS, detect_prepared
from activecad.models.detector3d.network import NoduleDetector
from activecad.training import distributed
from activecad.training.engine import Callback, FitPlan, FitResult, FitState, fit

__all__ = [
    "ARCHITECTURE_KEYS",
    "RESUMABLE_KEYS",
    "DetectorTask",
    "LunaFolder",
    "TrainResult",
    "fit_detector",
    "froc_summary",
    "labelled",
    "read_luna_folder",
    "resolve_config",
    "split_by_patient",
    "split_series",
    "train_detector",
    "validate",
]

# Settings that shape the weights or the data they were trained on: a fine-tuned model
# (--init-from) keeps them from the model it starts from, a resumed run from its start.
ARCHITECTURE_KEYS = frozenset(
    {
        "preset",
        "preprocess",
        "backbone_widths",
        "backbone_norm",
        "fpn_channels",
        "head_levels",
        "head_convs",
        "base_anchor_shapes",
        "loss_hidden",
    }
)
# What --resume may change on a half-trained run: the budget and what happens after it.
RESUMABLE_KEYS = frozenset(
    {
        "epochs",
        "steps_per_epoch",
        "val_every",
        "score_thresh",
        "nms_thresh",
        "detections_per_scan",
        "sw_overlap",
        "sw_roi_size",
        "mirror_tta",
        "amp",
    }
)


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


class _LossModule(nn.Module):
    """``forward(batch)`` -> the detector's loss terms (the module DDP wraps)."""

    def __init__(self, detector: NoduleDetector):
        super().__init__()
        self.detector = detector
        self.generator = torch.Generator()

    def forward(self, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]]) -> dict:
        images, targets = batch
        losses = self.detector.compute_losses(images, targets, generator=self.generator)
        return {
            "total": losses.total,
            "target": losses.target,
            "scan": losses.scan,
            "roi": losses.roi,
        }


class DetectorTask:
    """The detector as a :class:`activecad.training.FitTask`.

    Args:
        detector: the detector to train (on the training device).
        train: the labelled training scans (preprocessed; voxel boxes).
        val: preprocessed validation scans.
        annotations: nodules of the validation scans (world mm), for the FROC.
        excluded: excluded findings (world mm), neither hits nor false positives.
    """

    def __init__(
        self,
        detector: NoduleDetector,
        train: Sequence[LabelledScan],
        val: Sequence[PreparedScan] = (),
        annotations: pd.DataFrame | None = None,
        excluded: pd.DataFrame | None = None,
    ):
        config = detector.config
        self.detector = detector
        self.model: nn.Module = detector.network
        self.loss_module: nn.Module = _LossModule(detector)
        self.sampler = PatchSampler(
            list(train),
            config.patch_size,
            positive_fraction=config.positive_fraction,
            hard_negative_fraction=config.hard_negative_fraction,
            augment=config.augment,
            seed=config.seed,
        )
        self.val = list(val)
        self.annotations = annotations
        self.excluded = excluded

    def reseed(self, seed: int) -> None:
        """Reseed the patch draws and the ranking pairs."""
        self.sampler.rng = np.random.default_rng(seed)
        self.loss_module.generator.manual_seed(seed)  # type: ignore[union-attr]

    def start_epoch(self, epoch: int) -> None:
        """Stop loss-prediction gradients from ``config.stop_grad_epoch`` on."""
        self.detector.network.detach_loss_features = epoch >= self.detector.config.stop_grad_epoch

    def next_batch(self, device: str) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """A batch of ``config.batch_size`` patches and their boxes (x-y-z voxels)."""
        patches, boxes, ignored = self.sampler.batch(self.detector.config.batch_size)
        targets = [
            {
                "boxes": torch.from_numpy(b).float().to(device),
                "labels": torch.zeros(len(b), dtype=torch.long, device=device),
                "ignore_boxes": torch.from_numpy(ign).float().to(device),
            }
            for b, ign in zip(boxes, ignored, strict=True)
        ]
        return torch.from_numpy(patches).to(device), targets

    def validate(self) -> dict[str, float]:
        """LUNA16 CPM and sensitivities on the validation scans (empty without them)."""
        if not self.val or self.annotations is None:
            return {}
        return validate(self.detector, self.val, self.annotations, self.excluded)


def _initial_detector(config: DetectorConfig, init_from: object) -> NoduleDetector:
    detector = NoduleDetector(config)
    if init_from is None:
        return detector
    if isinstance(init_from, NoduleDetector):
        state: Mapping[str, torch.Tensor] = init_from.state_dict_for_bundle()
    elif isinstance(init_from, Mapping):
        state = init_from  # type: ignore[assignment]
    else:
        state = load_bundle(init_from).state_dict_for_bundle()  # type: ignore[arg-type]
    detector.network.load_state_dict(state)
    return detector


def fit_detector(
    config: DetectorConfig,
    train: Sequence[LabelledScan],
    val: Sequence[PreparedScan] = (),
    *,
    annotations: pd.DataFrame | None = None,
    excluded: pd.DataFrame | None = None,
    init_from: str | Path | NoduleDetector | Mapping[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    lr: float | None = None,
    schedule: str = "step",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    time_budget_s: float | None = None,
    lr_drop_in_budget: bool = True,
    device: str | None = None,
) -> FitResult:
    """Train or fine-tune a detector in memory; the active-learning loop's entry point.

    The budget (``epochs`` x ``steps_per_epoch``) and the learning-rate schedule belong to
    this fit; they default to the config's. Validation (when ``val`` and ``annotations``
    are given) runs every ``config.val_every`` epochs and after the last; the returned
    detector holds the weights of the best validation CPM.

    Args:
        config: the detector configuration (architecture must match ``init_from``).
        train: labelled, preprocessed training scans (see
            :func:`activecad.data.folders.labelled`).
        val: preprocessed validation scans.
        annotations: nodules (world mm) of the validation scans.
        excluded: excluded findings (world mm) of the validation scans.
        init_from: start weights: a model folder, a detector or a state dict; None:
            from scratch (seeded by ``config.seed``).
        epochs: epochs of this fit (default ``config.epochs``).
        steps_per_epoch: steps per epoch (default ``config.steps_per_epoch``).
        lr: peak learning rate (default ``config.lr``).
        schedule: ``step``, ``constant`` or ``cosine`` (see :class:`FitPlan`).
        checkpoint: file to checkpoint to after every epoch (None: none).
        resume: continue from ``checkpoint``.
        callbacks: progress and metric hooks.
        time_budget_s: stop after the epoch that ends past this many seconds (the rate
            drops at 90 % of it if that comes first: :class:`activecad.training.FitPlan`).
        lr_drop_in_budget: False: the ``step`` schedule drops at the last tenth of the
            epochs only, as fits before the budget could lower the rate.
        device: torch device (default CUDA when available; under torchrun, this rank's).

    Returns:
        the fit's result; ``result.model`` is the detector's network, and
        ``result.model``'s weights are those of the best validation epoch. Wrap them with
        ``NoduleDetector(config)`` / ``save_bundle`` to keep them.

    Example (one active-learning cycle: fine-tune last cycle's model for 300 steps)::

        from activecad.data.folders import labelled
        from activecad.models.detector3d import fit_detector, load_bundle, save_bundle

        previous = load_bundle("cycle_03/model")
        items = [labelled(prepared[u], annotations) for u in labelled_uids]
        result = fit_detector(
            previous.config, items, [prepared[u] for u in val_uids],
            annotations=annotations, init_from=previous,
            epochs=3, steps_per_epoch=100, lr=1e-4, schedule="cosine",
        )
        detector = NoduleDetector(previous.config)
        detector.network.load_state_dict(result.model.state_dict())
        save_bundle("cycle_04/model", detector)
    """
    ctx = distributed.setup(device)
    device = distributed.device_for(ctx, device)
    torch.manual_seed(config.seed)
    detector = _initial_detector(config, init_from).to(device)
    task = DetectorTask(detector, train, val, annotations, excluded)
    plan = FitPlan(
        epochs=epochs or config.epochs,
        steps_per_epoch=steps_per_epoch or config.steps_per_epoch,
        lr=lr or config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        schedule=schedule,  # type: ignore[arg-type]
        val_every=config.val_every,
        best_metric="cpm",
        seed=config.seed,
        time_budget_s=time_budget_s,
        lr_drop_in_budget=lr_drop_in_budget,
        amp=config.amp,
        ema_decay=config.ema_decay,
    )
    return fit(
        task,
        plan,
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        extra_state={"config": config.model_dump(mode="json")},
    )


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_dir: the model folder.
        epochs_done: epochs completed (fewer than asked when the time budget ran out).
        history: the metrics.jsonl records of the run (resumed epochs included).
        stopped_early: True when the time budget ended training.
        best_epoch: the epoch whose weights the model folder holds, when validated.
        best_cpm: the validation CPM of that epoch.
        network: the trained network in memory (the model folder's weights; on every
            rank under torchrun).
    """

    model_dir: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None
    best_cpm: float | None = None
    network: nn.Module | None = None


def _merge(base: dict[str, object], overrides: Mapping[str, object]) -> dict[str, object]:
    values = dict(base)
    for key, value in overrides.items():
        if key == "preprocess" and isinstance(value, dict):
            merged = dict(values.get("preprocess") or {})  # type: ignore[call-overload]
            merged.update(value)
            values["preprocess"] = merged
        else:
            values[key] = value
    return values


def _saved_config(model_dir: Path) -> DetectorConfig:
    from activecad.config import validate_config

    path = model_dir / "config.yaml"
    if not path.is_file():
        raise InputError(
            "config.yaml is missing",
            path=model_dir,
            fix="give a folder written by 'activecad train detector'",
        )
    return validate_config(DetectorConfig, yaml.safe_load(path.read_text()) or {}, source=path)


def resolve_config(
    preset: str | None,
    overrides: Mapping[str, object],
    *,
    resume_dir: str | Path | None = None,
    init_from: str | Path | None = None,
) -> DetectorConfig:
    """The configuration of a training run, checked before any data is read.

    * A new run: ``preset`` (default ``cpu``) with ``overrides`` on top.
    * ``resume_dir``: the run's saved ``config.yaml`` with ``overrides`` on top; only
      :data:`RESUMABLE_KEYS` may change (another preset, patch size or learning rate
      cannot apply to a half-trained run).
    * ``init_from``: the start model's configuration with ``overrides`` on top; the
      :data:`ARCHITECTURE_KEYS` (network shape, preprocessing, preset) must stay.

    Args:
        preset: the preset the user asked for (None: not given).
        overrides: config values the user gave (``--config`` YAML, ``--epochs``, ...).
        resume_dir: the model folder of the run to resume.
        init_from: the model folder to fine-tune from.

    Raises:
        InputError: an unknown preset or key, a bad value, or a change that cannot apply.
    """
    if resume_dir is None and init_from is None:
        return preset_config(preset or "cpu", **overrides)
    base_dir = Path(resume_dir if resume_dir is not None else init_from)  # type: ignore[arg-type]
    if init_from is not None and resume_dir is None:
        from activecad.models.detector3d.bundle import read_bundle_info

        read_bundle_info(base_dir)
    saved = _saved_config(base_dir)
    allowed = RESUMABLE_KEYS if resume_dir is not None else None
    what = "a resumed run" if resume_dir is not None else "a model fine-tuned with --init-from"
    from activecad.config import validate_config

    values = saved.model_dump(mode="json")
    if preset is not None:
        values = _merge(values, {"preset": preset})
    candidate = validate_config(DetectorConfig, _merge(values, overrides))
    new, old = candidate.model_dump(mode="json"), saved.model_dump(mode="json")
    changed = sorted(k for k in new if new[k] != old[k])
    refused = [
        k for k in changed if (k not in allowed if allowed is not None else k in ARCHITECTURE_KEYS)
    ]
    if refused:
        shown = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in refused[:3])
        fix = (
            "drop those settings to continue the run, or start a new one with another --out"
            if resume_dir is not None
            else "drop those settings (the weights fix them), or train from scratch"
        )
        raise InputError(f"{what} cannot change {shown}", path=base_dir / "config.yaml", fix=fix)
    return candidate


class _BundleWriter(Callback):
    """Rank 0: metrics.jsonl, progress lines, and the bundle of the best weights so far."""

    def __init__(self, model_dir: Path, config: DetectorConfig, console: Console):
        self.model_dir = model_dir
        self.detector = NoduleDetector(config)
        self.console = console

    def _save(self, state: FitState) -> None:
        self.detector.network.load_state_dict(state.model.state_dict())
        save_bundle(self.model_dir, self.detector)

    def on_step_end(self, state: FitState, losses: dict[str, float]) -> None:
        if state.step == 1 or state.step % 10 == 0:
            self.console.print(
                f"epoch {state.epoch + 1}/{state.plan.epochs} step {state.step}/"
                f"{state.plan.steps_per_epoch} loss {losses['total']:.3f}",
                highlight=False,
            )

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        with (self.model_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.console.print(
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            ),
            highlight=False,
        )
        # The bundle holds the best validation weights; before any validation, the latest.
        if state.improved or state.best_epoch is None:
            self._save(state)

    def on_fit_end(self, state: FitState) -> None:
        self._save(state)  # the model holds the best-validation (or last) weights now


def _training_hard_negatives(
    places: pd.DataFrame, folder: LunaFolder, train_uids: set[str], console: Console | None
) -> pd.DataFrame:
    """The false positives among ``places`` that lie on training scans, said on ``console``.

    Raises:
        InputError: none of them is a false positive on a training scan (the file names
            other scans, or only nodules), which would train as if none had been given.
    """
    on_train = places[places["seriesuid"].astype(str).isin(train_uids)]
    kept = false_positive_places(on_train, folder.annotations, folder.excluded)
    dropped = (
        f"{len(places) - len(on_train)} on scans outside training, "
        f"{len(on_train) - len(kept)} on nodules or excluded findings"
    )
    if kept.empty:
        raise InputError(
            f"none of the {len(places)} hard negatives is a false positive on a training "
            f"scan ({dropped})",
            fix="give marks of the training scans that are not nodules, e.g. 'activecad "
            "detect' on them",
        )
    if console is not None:
        console.print(f"hard negatives: {len(kept)} of {len(places)} ({dropped})", highlight=False)
    return kept


def train_detector(
    data_dir: str | Path,
    model_dir: str | Path,
    config: DetectorConfig,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    cache_dir: str | Path | None = None,
    train_uids: Sequence[str] | None = None,
    val_uids: Sequence[str] | None = None,
    hard_negatives: pd.DataFrame | None = None,
    time_budget_s: float | None = None,
    lr_drop_in_budget: bool = True,
    device: str | None = None,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train the detector on a LUNA16-style folder and write the model folder.

    Under ``torchrun`` every rank runs this; only rank 0 writes files.

    Args:
        data_dir: LUNA16-style folder (``ct/``, ``annotations.csv``).
        model_dir: output folder (bundle, checkpoint, metrics).
        config: the detector configuration (see :func:`resolve_config`).
        resume: continue from ``model_dir/checkpoint.pt``.
        init_from: a model folder whose weights training starts from (fine-tuning).
        cache_dir: where preprocessed arrays are cached (default: the user's cache folder,
            or ``$ACTIVECAD_CACHE``; see :class:`~activecad.data.preprocess.PreprocessCache`).
        train_uids: series to train on (default: a seeded split by patient).
        val_uids: series to validate on (default: the rest of that split).
        hard_negatives: places (``seriesuid`` and world mm) the detector should learn not to
            mark, e.g. its own marks on the training scans: those on a nodule or an
            excluded finding are dropped (:func:`false_positive_places`), and
            ``config.hard_negative_fraction`` of the background patches are centred on the
            rest.
        time_budget_s: stop after the first epoch that ends past this many seconds (the
            rate drops at 90 % of it if that comes first).
        lr_drop_in_budget: see :func:`fit_detector`.
        device: torch device (default CUDA when available).
        console: where progress goes (default stderr).
        callbacks: more hooks into the fit, after the one that writes the model folder.

    Raises:
        InputError: bad data folder, series that match no scan, or a finished run in
            ``model_dir`` without ``resume``.
    """
    from activecad.identifiers import check_overlap

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
        raise InputError(
            "nothing to resume (no checkpoint.pt)",
            path=model_dir,
            fix="drop --resume to start a new run in this folder",
        )
    if resume and init_from is not None:
        raise InputError(
            "--resume and --init-from cannot be combined",
            path=model_dir,
            fix="a resumed run continues from its own checkpoint; drop --init-from",
        )
    folder = read_luna_folder(data_dir)
    ctx = distributed.setup(device)
    cache = PreprocessCache(cache_dir)
    patch_zyx = (config.patch_size[2], config.patch_size[1], config.patch_size[0])
    prepared: dict[str, PreparedScan] = {}
    for count, path in enumerate(folder.scans, 1):
        scan = cache.load(path, config.preprocess, min_shape_zyx=patch_zyx)
        prepared[scan.seriesuid] = scan
        if ctx.is_main:
            console.print(f"preprocessing {count}/{len(folder.scans)}", end="\r", highlight=False)
    check_overlap(
        folder.annotations["seriesuid"].astype(str),
        prepared,
        ours_name="annotations.csv",
        theirs_name=f"the scans in {Path(data_dir) / 'ct'}",
        path=folder.annotations_path,
    )
    if resume and (model_dir / "split.json").is_file() and train_uids is None:
        saved_split = json.loads((model_dir / "split.json").read_text())
        train_uids, val_uids = saved_split["train"], saved_split["val"]
    if train_uids is None:
        patients = {uid: scan.patient_id for uid, scan in prepared.items()}
        split = split_by_patient(
            list(prepared), val_fraction=config.val_fraction, seed=config.seed, groups=patients
        )
        train_uids = split.train
        val_uids = split.val if val_uids is None else val_uids
    missing = sorted((set(train_uids) | set(val_uids or ())) - set(prepared))
    if missing:
        raise InputError(
            f"series not found in ct/: {', '.join(missing[:5])}",
            path=data_dir,
            fix="name series that have a scan in ct/",
        )
    val_uids = list(val_uids or [])
    kept_path = model_dir / "hard_negatives.csv"
    if resume and hard_negatives is None and kept_path.is_file():
        hard_negatives = pd.read_csv(kept_path, dtype={"seriesuid": str})
    if hard_negatives is not None:
        hard_negatives = _training_hard_negatives(
            hard_negatives, folder, set(train_uids), console if ctx.is_main else None
        )
    if ctx.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "split.json").write_text(
            json.dumps({"train": list(train_uids), "val": val_uids}, indent=2)
        )
        if hard_negatives is not None:  # a resumed run trains on the same ones
            hard_negatives.to_csv(kept_path, index=False)
    result = fit_detector(
        config,
        [
            labelled(prepared[u], folder.annotations, folder.excluded, hard_negatives)
            for u in train_uids
        ],
        [prepared[u] for u in val_uids],
        annotations=folder.annotations,
        excluded=folder.excluded,
        init_from=init_from,
        checkpoint=checkpoint_path,
        resume=resume,
        callbacks=[_BundleWriter(model_dir, config, console), *callbacks],
        time_budget_s=time_budget_s,
        lr_drop_in_budget=lr_drop_in_budget,
        device=device,
    )
    return TrainResult(
        model_dir,
        result.epochs_done,
        result.history,
        result.stopped_early,
        result.best_epoch,
        result.best_value,
        result.model,
    )
