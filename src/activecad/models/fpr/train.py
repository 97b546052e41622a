"""Training and inference of the FP-reduction classifier, through the shared engine.

The recipe follows Park et al., who train "by curriculum learning with hard example mining
and on-line sample filtering" after Dou et al. (MICCAI 2017). What each means here:

- **Curriculum** (the first ``curriculum_share`` of the steps): nodules are drawn with
  probability proportional to their diameter (large, conspicuous nodules first) and every
  patch is the plain centred view; afterwards nodules are drawn uniformly and every patch
  is one of the candidate's ``m`` augmented views.
- **Hard-example mining**: after the curriculum, a non-nodule candidate is drawn with
  probability proportional to its last cross-entropy (initially 1), so the mimics the
  classifier still gets wrong come back more often. A run sees each of ~18,000 negatives
  about once, so most keep their initial value; with ``mine_from_detector`` that value is
  ``-log(1 - p_detector)``, the cross-entropy the negative would have if the classifier
  agreed with the detector, so the places the detector was surest of (on a phantom, the
  faint nodules no reader marked) come first rather than by chance.
- **Online sample filtering**: within each batch only the hardest ``keep_negatives`` share
  of the non-nodule patches enters the loss (every nodule patch does), so the many easy
  negatives do not drown the gradient.

A candidate's probability is the mean nodule probability over its ``m`` augmented patches;
its embedding is the mean of the patches' mid-level features, L2-normalised.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch import nn
from torch.nn import functional

from activecad.config import validate_config
from activecad.data.candidates import XYZ, cut_patch
from activecad.data.preprocess import PreparedScan, PreprocessCache
from activecad.errors import InputError
from activecad.metrics import roc_auc_score
from activecad.models.bundle import load_weights, read_bundle_config, read_bundle_info, write_bundle
from activecad.models.fpr.config import FprConfig
from activecad.models.fpr.network import FprNet
from activecad.training.engine import Callback, FitPlan, FitState, fit

MODEL_NAME = "fpr"
TRAINED_BY = "activecad train fpr"


@dataclass
class CandidateSet:
    """Candidates with their preprocessed scans, ready to cut patches from.

    Attributes:
        table: one row per candidate (``seriesuid, coordX..Z``; ``label`` 1/0 for training
            and validation; ``diameter_mm`` of the nodule hit, NaN for non-nodules).
        scans: the preprocessed scan of every ``seriesuid`` in ``table`` (memmaps).
        centres_zyx: (N, 3) each candidate's continuous index in its scan's array.
    """

    table: pd.DataFrame
    scans: dict[str, PreparedScan]
    centres_zyx: np.ndarray

    def patches(self, index: np.ndarray, config: FprConfig) -> np.ndarray:
        """(len(index), m, 1, S, S, S) augmented patches (the same on every call)."""
        plan = config.patch_plan()
        out = []
        for i in np.asarray(index):
            uid = str(self.table["seriesuid"].iat[i])
            rng = np.random.default_rng([config.seed, int(i)])
            views = [
                cut_patch(self.scans[uid].array, self.centres_zyx[i], plan, j, rng)
                for j in range(plan.m)
            ]
            out.append(np.stack(views)[:, None])
        return np.stack(out) if out else np.zeros((0, plan.m, 1, *(plan.size,) * 3), np.float32)


def prepare_scans(
    paths: Iterable[Path], config: FprConfig, cache: PreprocessCache, *, progress: bool = False
) -> dict[str, PreparedScan]:
    """Preprocess (or read from ``cache``) every scan, keyed by its series id."""
    paths = list(paths)
    scans: dict[str, PreparedScan] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("preparing scans", total=len(paths))
        for path in paths:
            scan = cache.load(path, config.preprocess)
            scans[scan.seriesuid] = scan
            bar.advance(task)
    return scans


def candidate_set(table: pd.DataFrame, scans: dict[str, PreparedScan]) -> CandidateSet:
    """``table``'s candidates with their scans and array indices.

    Raises:
        InputError: a candidate's series has no scan in ``scans``.
    """
    table = table.reset_index(drop=True)
    missing = sorted(set(table["seriesuid"].astype(str)) - set(scans))
    if missing:
        raise InputError(
            f"{len(missing)} candidate series have no scan, e.g. {missing[0]}",
            fix="give the data folder whose ct/ holds the candidates' scans",
        )
    centres = np.zeros((len(table), 3))
    for uid, rows in table.groupby("seriesuid", sort=False).groups.items():
        index = np.asarray(list(rows))
        centres[index] = scans[str(uid)].world_to_index(table.loc[index, XYZ].to_numpy(float))
    used = {uid: scans[uid] for uid in table["seriesuid"].astype(str).unique()}
    return CandidateSet(table, used, centres)


def _initial_hardness(
    table: pd.DataFrame, negatives: np.ndarray, from_detector: bool
) -> np.ndarray:
    """The negatives' hardness before any is drawn: 1 each, or with ``from_detector`` the
    cross-entropy ``-log(1 - p)`` of their detector score (1 where there is none, and for
    all when every score is the same: a LUNA16 candidates.csv carries none)."""
    scored = from_detector and "det_probability" in table.columns
    p = table["det_probability"].to_numpy(float)[negatives] if scored else None
    if p is None or not np.isfinite(p).any() or np.nanmax(p) == np.nanmin(p):
        return np.ones(len(negatives))
    return np.where(np.isnan(p), 1.0, -np.log1p(-np.clip(p, 0.0, 1.0 - 1e-6)) + 1e-3)


class _FprLoss(nn.Module):
    """Cross-entropy with online sample filtering; keeps each sample's loss for mining."""

    def __init__(self, net: FprNet, keep_negatives: float) -> None:
        super().__init__()
        self.net = net
        self.keep_negatives = keep_negatives
        self.last_losses = torch.zeros(0)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        patches, labels = batch
        per_sample = functional.cross_entropy(self.net(patches), labels, reduction="none")
        self.last_losses = per_sample.detach().cpu()
        positive = labels > 0
        negative_losses = per_sample[~positive]
        keep = max(1, math.ceil(self.keep_negatives * len(negative_losses)))
        kept = torch.cat(
            [per_sample[positive], negative_losses.topk(min(keep, len(negative_losses))).values]
        )
        return {"total": kept.mean(), "ce": per_sample.mean().detach()}


class FprFitTask:
    """Batches of candidate patches for :func:`activecad.training.fit` (see the module doc)."""

    def __init__(
        self,
        net: FprNet,
        train: CandidateSet,
        val: CandidateSet | None,
        config: FprConfig,
        epochs: int,
    ) -> None:
        labels = train.table["label"].to_numpy()
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise InputError(
                f"training needs nodule and non-nodule candidates, got {len(self.positives)} "
                f"and {len(self.negatives)}",
                fix="give more scans or candidates (a detector's output has both)",
            )
        self.model = net
        self.loss_module = _FprLoss(net, config.keep_negatives)
        self.train, self.val, self.config = train, val, config
        diameters = train.table.get("diameter_mm", pd.Series(np.nan, index=train.table.index))
        size = np.nan_to_num(diameters.to_numpy(float)[self.positives], nan=5.0).clip(min=1.0)
        self.easy_weights = size / size.sum()
        self.hardness = _initial_hardness(train.table, self.negatives, config.mine_from_detector)
        self.easy_epochs = math.ceil(config.curriculum_share * epochs)
        self.rng = np.random.default_rng(config.seed)
        self.easy = True
        self._last_negatives = np.zeros(0, dtype=int)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int) -> None:
        self.easy = epoch < self.easy_epochs

    def _update_hardness(self) -> None:
        losses = self.loss_module.last_losses.numpy()
        if len(self._last_negatives) and len(losses):
            self.hardness[self._last_negatives] = losses[-len(self._last_negatives) :] + 1e-3

    def next_batch(self, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._update_hardness()
        config, rng = self.config, self.rng
        n_pos = max(1, round(config.batch_size * config.positive_fraction))
        n_neg = config.batch_size - n_pos
        pos = rng.choice(self.positives, n_pos, p=self.easy_weights if self.easy else None)
        mining = None if self.easy else self.hardness / self.hardness.sum()
        neg_slots = rng.choice(len(self.negatives), n_neg, p=mining)
        self._last_negatives = neg_slots
        plan = config.patch_plan()
        patches = []
        for i in np.concatenate([pos, self.negatives[neg_slots]]):
            uid = str(self.train.table["seriesuid"].iat[i])
            view = int(rng.integers(plan.m))
            patch_rng = None if self.easy else rng
            patches.append(
                cut_patch(
                    self.train.scans[uid].array, self.train.centres_zyx[i], plan, view, patch_rng
                )
            )
        x = torch.from_numpy(np.stack(patches)[:, None]).to(device)
        y = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).long().to(device)
        return x, y

    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        labels = self.val.table["label"].to_numpy()
        if labels.min() == labels.max():
            return {}
        device = next(self.model.parameters()).device
        probs = predict(self.model, self.val, self.config, device=str(device)).mean(axis=1)
        return {"auc": roc_auc_score(labels, probs)}


def build_net(config: FprConfig) -> FprNet:
    """The (untrained) classifier ``config`` describes."""
    return FprNet(tuple(config.widths), norm=config.norm, stem_stride=config.stem_stride)


def _batches(count: int, size: int) -> Iterable[np.ndarray]:
    for start in range(0, count, size):
        yield np.arange(start, min(start + size, count))


@torch.no_grad()
def predict(
    net: FprNet,
    candidates: CandidateSet,
    config: FprConfig,
    *,
    device: str = "cpu",
    batch_candidates: int = 16,
    with_embeddings: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nodule probability of every augmented patch of every candidate.

    Returns:
        (N, m) probabilities; with ``with_embeddings`` also (N, D) embeddings (the mean
        over the patches of the mid-level feature, L2-normalised).
    """
    was_training = net.training
    net.eval()
    n, m = len(candidates.table), config.patches_per_candidate
    probs = np.zeros((n, m), np.float32)
    embeddings = np.zeros((n, net.embedding_dim), np.float32)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("classifying candidates", total=n)
        for index in _batches(n, batch_candidates):
            x = torch.from_numpy(candidates.patches(index, config)).flatten(0, 1).to(device)
            logits, features = net.forward_with_embedding(x)
            probs[index] = logits.softmax(dim=1)[:, 1].reshape(len(index), m).cpu().numpy()
            pooled = features.reshape(len(index), m, -1).mean(dim=1)
            embeddings[index] = functional.normalize(pooled, dim=1).cpu().numpy()
            bar.advance(task, len(index))
    net.train(was_training)
    return (probs, embeddings) if with_embeddings else probs


def train_fpr(
    train: CandidateSet,
    val: CandidateSet | None,
    config: FprConfig,
    *,
    out_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    steps: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> tuple[FprNet, list[dict[str, float]]]:
    """Train (or, with ``init_from``, fine-tune) the classifier on labelled candidates.

    Args:
        train: training candidates, ``label`` 1 or 0 (ignored ones removed).
        val: validation candidates for the AUC that picks the kept weights, or None.
        config: the classifier's configuration.
        out_dir: model folder to write, or None.
        init_from: a model folder whose weights start this fit (same configuration).
        steps: this fit's steps (default ``config.steps``).
        device: torch device (default CUDA when available).
        progress: a progress line per epoch on stderr.

    Returns:
        The trained network (eval mode, CPU) and one history record per epoch.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    net = build_net(config)
    if init_from is not None:
        start, _ = load_fpr(init_from)
        net.load_state_dict(start.state_dict())
    steps = steps or config.steps
    per_epoch = min(steps, 250)
    epochs = max(1, steps // per_epoch)
    task = FprFitTask(net.to(device), train, val, config, epochs)
    plan = FitPlan(
        epochs=epochs,
        steps_per_epoch=per_epoch,
        lr=config.lr,
        optimizer="adamw",
        weight_decay=config.weight_decay,
        schedule="cosine",
        best_metric="auc",
        seed=config.seed,
    )
    start_time = time.perf_counter()

    class _Say(Callback):
        def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
            if progress:
                auc = f", val AUC {record['auc']:.3f}" if "auc" in record else ""
                print(
                    f"epoch {state.epoch}/{epochs}: loss {record['total']:.4f}{auc} "
                    f"({time.perf_counter() - start_time:.0f} s)",
                    flush=True,
                )

    result = fit(task, plan, device=device, callbacks=[_Say()])
    net = result.model.cpu().eval()
    if out_dir is not None:
        save_fpr(out_dir, net, config, result.history)
    return net, result.history


def train_fpr_on_folder(
    data_dir: str | Path,
    out_dir: str | Path,
    config: FprConfig,
    *,
    candidates: str | Path | None = None,
    extra_candidates: pd.DataFrame | None = None,
    seriesuids: list[str] | None = None,
    val_seriesuids: list[str] | None = None,
    init_from: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """Train on a LUNA16-style folder's candidates; write the model folder and split.json.

    The scans (all of ``ct/``, or ``seriesuids``) are split by patient into training and
    validation (``config.val_fraction``), unless ``val_seriesuids`` names the validation
    scans (a split made elsewhere, e.g. the detector's); the candidates of each part are
    labelled by the LUNA16 hit rule, with every annotated nodule added as a candidate.
    ``extra_candidates`` come from a second generator (e.g.
    :func:`activecad.models.blobs.blob_candidates_for_files`); those that no candidate of
    ``candidates`` covers join them (:func:`activecad.models.blobs.merge_candidates`), so
    the classifier learns the mimics it will be handed from that generator too.

    Returns:
        A summary: candidate counts, the best validation AUC and the epochs.

    Raises:
        InputError: a missing folder or table, series that are not in ``ct/``, a training
            part without nodule or without non-nodule candidates.
    """
    from activecad.data.candidates import read_candidates, training_candidates
    from activecad.data.folders import Split, read_luna_folder, split_by_patient

    folder = read_luna_folder(data_dir)
    table = read_candidates(candidates or Path(data_dir) / "candidates.csv")
    extra_kept = 0
    if extra_candidates is not None:
        from activecad.models.blobs import merge_candidates

        # The score is not used in training; candidates of a LUNA16 file carry 1.
        merged = merge_candidates(table, extra_candidates, blob_score=1.0)
        extra_kept, table = len(merged) - len(table), merged
    scans = prepare_scans(folder.scans, config, PreprocessCache(cache_dir), progress=progress)
    uids = sorted(scans) if seriesuids is None else list(seriesuids)
    missing = sorted(set(uids).union(val_seriesuids or []) - set(scans))
    if missing:
        raise InputError(
            f"{len(missing)} series are not in ct/, e.g. {missing[0]}",
            path=data_dir,
            fix="name series that have a scan in ct/",
        )
    if val_seriesuids is None:
        patients = {uid: scans[uid].patient_id for uid in uids}
        split = split_by_patient(
            uids, val_fraction=config.val_fraction, seed=config.seed, groups=patients
        )
    else:
        both = sorted(set(uids) & set(val_seriesuids))
        if both:
            raise InputError(
                f"{len(both)} series are both training and validation scans, e.g. {both[0]}",
                path=data_dir,
                fix="give val_seriesuids scans that seriesuids leaves out",
            )
        split = Split(train=sorted(uids), val=sorted(val_seriesuids), test=[])
    labelled = training_candidates(
        table[table["seriesuid"].isin(split.train + split.val)],
        folder.annotations,
        folder.excluded,
    )
    train = candidate_set(labelled[labelled["seriesuid"].isin(split.train)], scans)
    val = (
        candidate_set(labelled[labelled["seriesuid"].isin(split.val)], scans) if split.val else None
    )
    _, history = train_fpr(
        train, val, config, out_dir=out_dir, init_from=init_from, progress=progress
    )
    Path(out_dir, "split.json").write_text(
        json.dumps({"train": split.train, "val": split.val}, indent=2)
    )
    aucs = [h["auc"] for h in history if "auc" in h]
    return {
        "train_candidates": len(train.table),
        **({"extra_candidates": extra_kept} if extra_candidates is not None else {}),
        "train_nodules": int((train.table["label"] == 1).sum()),
        "val_candidates": 0 if val is None else len(val.table),
        "val_auc": round(max(aucs), 4) if aucs else None,
        "epochs": len(history),
    }


def combine_probabilities(
    det_probability: np.ndarray, fpr_probability: np.ndarray, fpr_weight: float = 0.5
) -> np.ndarray:
    """Final probability of a detection after FP reduction: the weighted geometric mean
    ``p_detector ** (1 - w) x p_fpr ** w`` with ``w = fpr_weight``; the default 0.5 is
    ``sqrt(p_detector x p_fpr)``.

    Why this rule: a mark must convince both stages (either one near 0 sinks it), and with
    one stage's score fixed the ranking is the other's, so neither stage's ranking is lost.
    The weight says how far to trust the classifier over the detector; choose it on
    validation scans (w = 1 ranks by the classifier alone, w = 0 by the detector alone).

    Raises:
        InputError: ``fpr_weight`` outside [0, 1].
    """
    if not 0 <= fpr_weight <= 1:
        raise InputError(
            f"the classifier's weight must lie between 0 and 1, got {fpr_weight}",
            fix="0.5 (the default) weighs the detector and the classifier alike",
        )
    det = np.clip(np.asarray(det_probability, dtype=np.float64), 0, 1)
    fpr = np.clip(np.asarray(fpr_probability, dtype=np.float64), 0, 1)
    if fpr_weight == 0.5:  # the default, computed as it always was
        return np.sqrt(det * fpr)
    return det ** (1 - fpr_weight) * fpr**fpr_weight


def recombine(
    rescored: pd.DataFrame, *, fpr_weight: float = 0.5, blob_score: float | None = None
) -> pd.DataFrame:
    """:func:`apply_fpr`'s output with every final probability combined anew with the
    classifier's weight ``fpr_weight``, after giving every blob candidate (``source``
    "blob") the detector probability ``blob_score`` when one is given.

    The classifier's probability of a candidate depends on neither, so comparing weights
    and blob scores (on validation scans) needs one classifier pass, not one each.
    """
    out = rescored.copy()
    if blob_score is not None and "source" in out.columns:
        out.loc[(out["source"] == "blob").to_numpy(), "det_probability"] = float(blob_score)
    out["probability"] = combine_probabilities(
        out["det_probability"].to_numpy(), out["fpr_probability"].to_numpy(), fpr_weight
    )
    return out


def apply_fpr(
    detections: pd.DataFrame,
    scans: Iterable[Path],
    model_dir: str | Path | Sequence[str | Path],
    *,
    cache: PreprocessCache,
    fpr_weight: float = 0.5,
    device: str = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """Re-score a detector's marks with an FP-reduction model, or with several.

    Args:
        model_dir: a model folder, or several (an ensemble: each scores every candidate
            and :func:`average_classifiers` takes the mean).
        fpr_weight: the classifier's weight in :func:`combine_probabilities`.

    Returns:
        ``detections`` with ``det_probability`` (the detector's), ``fpr_probability`` (the
        mean over the candidate's augmented patches, and over the models) and
        ``probability`` replaced by :func:`combine_probabilities`.

    Raises:
        InputError: no model folder, one that is not a classifier, a bad weight.
    """
    combine_probabilities(np.zeros(0), np.zeros(0), fpr_weight)  # a bad weight fails first
    folders = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
    if not folders:
        raise InputError("no FP-reduction model folder given", fix="give one or more")
    models = [load_fpr(folder) for folder in folders]  # every one checked before any scan
    out = detections.reset_index(drop=True).copy()
    if out.empty:
        return out.assign(det_probability=[], fpr_probability=[])
    paths = list(scans)
    out["det_probability"] = out["probability"].to_numpy(float)
    scored = []
    for net, config in models:
        prepared = prepare_scans(paths, config, cache, progress=progress)
        fpr = predict(
            net.to(device), candidate_set(out, prepared), config, device=device, progress=progress
        )
        scored.append(out.assign(fpr_probability=np.asarray(fpr).mean(axis=1)))
    return average_classifiers(scored, fpr_weight=fpr_weight)


def average_classifiers(
    rescored: Sequence[pd.DataFrame], *, fpr_weight: float = 0.5
) -> pd.DataFrame:
    """One table from :func:`apply_fpr`'s outputs for the same candidates by several
    classifiers: ``fpr_probability`` is their mean and ``probability`` is combined anew.

    Why the mean of probabilities: members trained from other seeds (or on other
    candidates) err on different mimics, so averaging thins the false positives a single
    classifier scores near 1 — the ones that decide sensitivity at few false positives.

    Raises:
        InputError: no tables, or tables that do not list the same candidates in order.
    """
    if not rescored:
        raise InputError("no re-scored tables to average", fix="give one or more")
    first = rescored[0]
    keys = ["seriesuid", *XYZ, "det_probability"]
    for other in rescored[1:]:
        if len(other) != len(first) or not other[keys].reset_index(drop=True).equals(
            first[keys].reset_index(drop=True)
        ):
            raise InputError(
                "the re-scored tables list other candidates",
                fix="score the same detections, in the same order, with every classifier",
            )
    out = first.reset_index(drop=True).copy()
    out["fpr_probability"] = np.mean(
        [table["fpr_probability"].to_numpy(float) for table in rescored], axis=0
    )
    return recombine(out, fpr_weight=fpr_weight)


def save_fpr(
    out_dir: str | Path, net: FprNet, config: FprConfig, history: list[dict[str, float]]
) -> Path:
    """Write the model folder (bundle.json, config.yaml, weights.pt, history.json)."""
    return write_bundle(
        out_dir,
        kind=MODEL_NAME,
        preset=config.preset,
        config=config.model_dump(mode="json"),
        weights=net.state_dict(),
        files={"history.json": json.dumps(history, indent=1)},
    )


def is_fpr_model(model_dir: str | Path) -> bool:
    """True when ``model_dir`` holds an FP-reduction classifier."""
    info = Path(model_dir) / "bundle.json"
    try:
        return json.loads(info.read_text()).get("model") == MODEL_NAME
    except (OSError, ValueError):
        return False


def load_fpr(model_dir: str | Path) -> tuple[FprNet, FprConfig]:
    """Load an FP-reduction model folder (the network in eval mode) and its configuration.

    Raises:
        InputError: not such a model folder, another activecad version, bad weights.
    """
    read_bundle_info(model_dir, MODEL_NAME, TRAINED_BY)
    config = validate_config(
        FprConfig, read_bundle_config(model_dir), source=Path(model_dir) / "config.yaml"
    )
    net = build_net(config)
    load_weights(net, model_dir)
    return net.eval(), config


__all__ = [
    "CandidateSet",
    "FprFitTask",
    "apply_fpr",
    "average_classifiers",
    "build_net",
    "candidate_set",
    "combine_probabilities",
    "is_fpr_model",
    "load_fpr",
    "predict",
    "prepare_scans",
    "recombine",
    "save_fpr",
    "train_fpr",
    "train_fpr_on_folder",
]
