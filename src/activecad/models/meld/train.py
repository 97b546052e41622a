"""Training, inference and model folders of MELD, through the shared training engine.

Training follows section 4.2 of Yan et al. (2020): minibatches of 4 samples of 9 slices,
RAdam, 8 epochs, the rate divided by 10 after epochs 4 and 6; the single-type datasets
contribute, every epoch, all their lesion slices and as many freshly drawn negative slices,
which a *sampler* (a callable drawing one epoch's samples) expresses. Augmentation (random
resizing by 0.8-1.2 and shifts of up to 8 px in the paper) is the data side's callable.

Fine-tuning with mined annotations (sections 3.2-3.3) is training from an intermediate
checkpoint (``init_from``) on samples whose ``boxes`` include the mined lesions and whose
``ignore_boxes`` hold the suspicious regions of :func:`activecad.lesions.suspicious_regions`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from activecad.config import validate_config
from activecad.data.lesion_slices import DATASETS, ORGANS, SliceSample
from activecad.errors import InputError
from activecad.metrics import KEY_SLICE_FP_RATES, cpm_score, froc_curve, match_boxes
from activecad.models.bundle import load_weights, read_bundle_config, read_bundle_info, write_bundle
from activecad.models.meld.config import MeldConfig, MeldPreprocessing
from activecad.models.meld.network import HEADS, MeldBatch, MeldNet, make_batch
from activecad.training.engine import Callback, FitPlan, FitState, fit

__all__ = [
    "Augment",
    "MeldFitTask",
    "SampleSource",
    "draw_samples",
    "embed_boxes",
    "initial_weights",
    "load_meld",
    "load_meld_preprocessing",
    "predict",
    "save_meld",
    "train_meld",
    "validation_metrics",
]

MODEL_NAME = "meld"
TRAINED_BY = "activecad train meld"

Augment = Callable[[SliceSample, np.random.Generator], SliceSample]
"""A training augmentation: a sample and a generator in, a new sample out."""

SampleSource = Sequence[SliceSample] | Callable[[np.random.Generator], Sequence[SliceSample]]
"""Training samples: a fixed sequence, or a sampler that draws one epoch's samples."""

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
PREPROCESS_FILE = "preprocess.json"


class MeldFitTask:
    """Batches of slice samples for :func:`activecad.training.fit`.

    Each epoch draws its samples (calling the sampler, if one is given), shuffles them and
    walks through them ``batch_size`` at a time, reshuffling when they run out.
    """

    def __init__(
        self,
        net: MeldNet,
        train: SampleSource,
        val: Sequence[SliceSample] | None,
        config: MeldConfig,
        augment: Augment | None = None,
    ) -> None:
        # The engine sees the network as its model and as the module that returns the losses.
        self.model: nn.Module = net
        self.loss_module: nn.Module = net
        self.net = net
        self.source, self.val, self.config, self.augment = train, val, config, augment
        self.rng = np.random.default_rng(config.seed)
        self.samples: list[SliceSample] = []
        self.order = np.zeros(0, dtype=np.intp)
        self.cursor = 0

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int) -> None:
        self.samples = draw_samples(self.source, self.rng)
        self.order = self.rng.permutation(len(self.samples))
        self.cursor = 0

    def next_batch(self, device: str) -> MeldBatch:
        picked, sizes = [], []
        for _ in range(self.config.batch_size):
            if self.cursor == len(self.order):
                self.order, self.cursor = self.rng.permutation(len(self.samples)), 0
            sample = self.samples[self.order[self.cursor]]
            self.cursor += 1
            sizes.append((int(sample.image.shape[-2]), int(sample.image.shape[-1])))
            picked.append(sample if self.augment is None else self.augment(sample, self.rng))
        return make_batch(
            picked, image_size=self.config.image_size, device=device, sizes_before=sizes
        )

    def validate(self) -> dict[str, float]:
        return validation_metrics(self.net, self.val) if self.val else {}


def draw_samples(source: SampleSource, rng: np.random.Generator) -> list[SliceSample]:
    """One epoch's samples of ``source``.

    Raises:
        InputError: the source gives no sample.
    """
    samples = list(source(rng) if callable(source) else source)
    if not samples:
        raise InputError(
            "no training samples", fix="give slices with lesions (and negative slices) to train on"
        )
    return samples


def _batches(count: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, count)) for s in range(0, count, size)]


def _device_of(net: MeldNet) -> torch.device:
    return next(net.parameters()).device


def predict(
    net: MeldNet,
    samples: Sequence[SliceSample],
    *,
    dataset: str = "universal",
    batch_size: int = 8,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Detections of one dataset expert on every sample's centre slice.

    Args:
        net: a MELD network (evaluated in eval mode, on its own device).
        samples: the slices.
        dataset: the expert whose RPN and box regressor propose the boxes and whose fused
            score is ``score``: ``universal`` for universal lesion detection, a single-type
            dataset for negative-region mining.
        batch_size: samples per forward pass.

    Returns:
        A table, one row per detection, highest score first within a slice: ``image_id``,
        ``patient``, ``x1, y1, x2, y2`` (pixels of the sample's image), ``score`` (the
        expert's Eq. 1 score), ``score_<dataset>`` for every dataset (Eq. 1 on that dataset's
        output of each head, same box), ``head_<head>`` (the expert's score from each head,
        ``HEADS`` order) and ``gate_<organ>`` (the organ weights); and (rows, E) float32
        lesion embeddings, one per row. Rename ``image_id`` to ``image`` for
        :mod:`activecad.lesions`' mining tables.
    """
    was_training = net.training
    net.eval()
    device = _device_of(net)
    parts, embeddings = [], []
    for index in _batches(len(samples), batch_size):
        chunk = [samples[i] for i in index]
        batch = make_batch(chunk, image_size=net.config.image_size, device=device)
        for sample, scale, found in zip(
            chunk, batch.scales, net.detect(batch, dataset), strict=True
        ):
            table = pd.DataFrame(found.boxes / scale, columns=list(BOX_COLUMNS))
            table.insert(0, "patient", sample.patient)
            table.insert(0, "image_id", sample.image_id)
            table["score"] = found.scores
            for k, name in enumerate(DATASETS):
                table[f"score_{name}"] = found.dataset_scores[:, k]
            for k, name in enumerate(HEADS):
                table[f"head_{name}"] = found.head_scores[:, k]
            for k, name in enumerate(ORGANS):
                table[f"gate_{name}"] = found.gates[:, k]
            parts.append(table)
            embeddings.append(found.embeddings)
    net.train(was_training)
    if not parts:
        return _empty_table(), np.zeros((0, net.embedding_dim), np.float32)
    return pd.concat(parts, ignore_index=True), np.concatenate(embeddings).astype(np.float32)


def _empty_table() -> pd.DataFrame:
    columns = [
        "image_id",
        "patient",
        *BOX_COLUMNS,
        "score",
        *(f"score_{d}" for d in DATASETS),
        *(f"head_{h}" for h in HEADS),
        *(f"gate_{o}" for o in ORGANS),
    ]
    return pd.DataFrame(
        {c: pd.Series(dtype=object if c in ("image_id", "patient") else float) for c in columns}
    )


def embed_boxes(net: MeldNet, samples: Sequence[SliceSample], *, batch_size: int = 8) -> np.ndarray:
    """Lesion embeddings of the samples' own boxes (the annotations' side of MAM).

    Returns:
        (sum of N, E) float32, the samples' boxes in order, embedded as :func:`predict`
        embeds its detections (L2-normalised shared box feature).
    """
    was_training = net.training
    net.eval()
    device = _device_of(net)
    out = []
    for index in _batches(len(samples), batch_size):
        chunk = [samples[i] for i in index]
        batch = make_batch(chunk, image_size=net.config.image_size, device=device)
        out += [e.cpu().numpy() for e in net.embed(batch, [t["boxes"] for t in batch.targets])]
    net.train(was_training)
    return (
        np.concatenate(out).astype(np.float32)
        if out
        else np.zeros((0, net.embedding_dim), np.float32)
    )


def validation_metrics(net: MeldNet, samples: Sequence[SliceSample]) -> dict[str, float]:
    """Average sensitivity at 0.5, 1, 2 and 4 FPs per slice, per dataset and their mean.

    Each dataset's slices are scored by that dataset's expert, against that dataset's boxes
    (IoU > 0.5; detections over an ignore box are neither TP nor FP), as DeepLesion's
    key-slice FROC counts (Yan et al. 2020, Table 3).

    Returns:
        ``sensitivity_<dataset>`` for every dataset with at least one box, and
        ``avg_sensitivity``, their mean (empty when no sample has a box).
    """
    metrics: dict[str, float] = {}
    for dataset in DATASETS:
        part = [s for s in samples if s.dataset == dataset]
        if not sum(len(s.boxes) for s in part):
            continue
        table, _ = predict(net, part, dataset=dataset)
        # Positions, not image ids, name the slices: ids may repeat across readers' copies.
        names = {s.image_id: str(k) for k, s in enumerate(part)}
        ids = [str(k) for k in range(len(part))]
        match = match_boxes(
            table["image_id"].map(names).to_numpy(str),
            table[list(BOX_COLUMNS)].to_numpy(float),
            table["score"].to_numpy(float),
            np.repeat(ids, [len(s.boxes) for s in part]),
            np.concatenate([s.boxes for s in part]),
            iou_threshold=0.5,
            ignore_ids=np.repeat(ids, [len(s.ignore_boxes) for s in part]),
            ignore_boxes=np.concatenate([s.ignore_boxes.reshape(-1, 4) for s in part]),
            images=ids,
        )
        fps, sensitivity, _ = froc_curve(
            match.tp_probs, match.fp_probs, n_nodules=len(match.nodule_scans), n_scans=len(ids)
        )
        metrics[f"sensitivity_{dataset}"] = cpm_score(fps, sensitivity, KEY_SLICE_FP_RATES)
    if metrics:
        metrics["avg_sensitivity"] = float(np.mean(list(metrics.values())))
    return metrics


def _selection_metric(val: Sequence[SliceSample] | None) -> str:
    """The validation metric that picks the kept epoch (see :func:`train_meld`)."""
    universal = any(s.dataset == "universal" and len(s.boxes) for s in val or ())
    return "sensitivity_universal" if universal else "avg_sensitivity"


class _KeepEpochWeights(Callback):
    """Writes each epoch's weights, so fine-tuning can start from an intermediate epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        tmp = self.folder / f"epoch_{state.epoch:03d}.pt.tmp"
        torch.save(weights, tmp)
        tmp.replace(self.folder / f"epoch_{state.epoch:03d}.pt")


class _Say(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs, self.start = epochs, time.perf_counter()

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        sens = record.get("avg_sensitivity")
        shown = "" if sens is None else f", val avg sensitivity {sens:.3f}"
        print(
            f"epoch {state.epoch}/{self.epochs}: loss {record['total']:.4f}{shown} "
            f"({time.perf_counter() - self.start:.0f} s)",
            flush=True,
        )


def initial_weights(init_from: str | Path) -> dict[str, torch.Tensor]:
    """The weights to start a fit from.

    Args:
        init_from: a MELD model folder, an epoch file of its ``epochs/`` folder, or the
            engine's ``checkpoint.pt``.

    Raises:
        InputError: none of these.
    """
    path = Path(init_from)
    if path.is_dir():
        return load_meld(path).state_dict()
    if not path.is_file():
        raise InputError("no such model folder or weights file", path=path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        raise InputError(f"not a weights file ({type(exc).__name__})", path=path) from None
    weights = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(weights, dict):
        raise InputError("holds no state dict", path=path, fix="give a MELD model folder")
    return weights


def train_meld(
    train: SampleSource,
    val: Sequence[SliceSample] | None,
    config: MeldConfig,
    *,
    augment: Augment | None = None,
    out_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
    preprocessing: MeldPreprocessing | None = None,
) -> tuple[MeldNet, list[dict[str, float]]]:
    """Train (or, with ``init_from``, fine-tune) MELD on slice samples.

    Args:
        train: the training samples, or a sampler drawing each epoch's samples.
        val: validation samples; the epoch of best ``sensitivity_universal`` is kept (the
            whole-body detector is what MELD is for; the experts serve the mining), or of
            best ``avg_sensitivity`` when no universal sample has a box. ``None``: the last
            epoch's weights are kept.
        config: network and training settings (epochs, rate, drops; for the paper's
            fine-tuning, e.g. ``epochs=4, lr=1e-5, lr_drop_epochs=(2, 3)``).
        augment: applied to every training sample as it is drawn.
        out_dir: model folder to write (with ``checkpoint.pt`` for resuming and, with
            ``config.keep_epoch_weights``, ``epochs/epoch_NNN.pt``); ``None``: nothing.
        init_from: start from these weights (see :func:`initial_weights`).
        resume: continue the interrupted fit of ``out_dir``.
        device: torch device (default CUDA when available).
        progress: a line per epoch on stdout.
        callbacks: further engine callbacks (e.g. a progress display).
        preprocessing: how the samples were prepared, recorded in the model folder
            (``preprocess.json``) so that inference can repeat it.

    Returns:
        The trained network (eval mode, CPU) and one history record per epoch.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    net = MeldNet(config)
    if init_from is not None:
        try:
            net.load_state_dict(initial_weights(init_from))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"weights do not fit the config ({first})", path=init_from) from None
    steps = config.steps_per_epoch
    if steps is None:
        count = len(draw_samples(train, np.random.default_rng(config.seed)))
        steps = math.ceil(count / config.batch_size)
    plan = FitPlan(
        epochs=config.epochs,
        steps_per_epoch=steps,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        schedule="drops",
        lr_drops=tuple(e / config.epochs for e in config.lr_drop_epochs),
        best_metric=_selection_metric(val),
        seed=config.seed,
        amp=config.amp,
    )
    callbacks = [*([_Say(config.epochs)] if progress else []), *callbacks]
    checkpoint = None
    if out_dir is not None:
        checkpoint = Path(out_dir) / "checkpoint.pt"
        if config.keep_epoch_weights:
            callbacks.append(_KeepEpochWeights(Path(out_dir) / "epochs"))
    task = MeldFitTask(net.to(device), train, val, config, augment)
    result = fit(
        task,
        plan,
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        extra_state={"config": config.model_dump(mode="json")},
    )
    net = result.model.cpu().eval()  # type: ignore[assignment]
    if out_dir is not None:
        save_meld(out_dir, net, result.history, preprocessing=preprocessing)
    return net, result.history


def save_meld(
    out_dir: str | Path,
    net: MeldNet,
    history: Sequence[dict[str, float]] = (),
    *,
    preprocessing: MeldPreprocessing | None = None,
) -> Path:
    """Write the model folder (bundle.json, config.yaml, weights.pt, history.json and, with
    ``preprocessing``, preprocess.json)."""
    files = {"history.json": json.dumps(list(history), indent=1)}
    if preprocessing is not None:
        files[PREPROCESS_FILE] = preprocessing.model_dump_json(indent=1)
    return write_bundle(
        out_dir,
        kind=MODEL_NAME,
        preset=net.config.preset,
        config=net.config.model_dump(mode="json"),
        weights=net.state_dict(),
        files=files,
    )


def load_meld(model_dir: str | Path) -> MeldNet:
    """Load a MELD model folder: the network (eval mode, CPU), its config as ``net.config``.

    Raises:
        InputError: not such a model folder, another activecad version, bad weights.
    """
    read_bundle_info(model_dir, MODEL_NAME, TRAINED_BY)
    config = validate_config(
        MeldConfig, read_bundle_config(model_dir), source=Path(model_dir) / "config.yaml"
    )
    net = MeldNet(config)
    load_weights(net, model_dir)
    return net.eval()


def load_meld_preprocessing(model_dir: str | Path) -> MeldPreprocessing:
    """The preprocessing a MELD model folder was trained with (``preprocess.json``).

    Raises:
        InputError: not a MELD model folder, or one that records no preprocessing.
    """
    read_bundle_info(model_dir, MODEL_NAME, TRAINED_BY)
    path = Path(model_dir) / PREPROCESS_FILE
    if not path.is_file():
        raise InputError(
            f"the model records no preprocessing ({PREPROCESS_FILE} is missing)",
            path=model_dir,
            fix=f"retrain it with '{TRAINED_BY}', or write {PREPROCESS_FILE} with the "
            '{"pixel_mm": ..., "slice_mm": ...} it was trained at',
        )
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path=path) from None
    if not isinstance(values, dict):
        raise InputError("must hold a JSON object", path=path, fix='e.g. {"pixel_mm": 0.8, ...}')
    return validate_config(MeldPreprocessing, values, source=path)
