"""MELD's mining on a trained model, the fine-tuning set it gives, and the volumetric FROC.

Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
Datasets" (2020), sections 3.2-3.3 and 4: train MELD on the key slices, apply it to the
training slices (key slices and unlabelled ones every 5 mm), mine missing annotations
(MAM: proposals whose lesion embedding lies within ``theta`` of an annotation of the same
patient) and suspicious regions (NRM: single-type experts' proposals above ``sigma`` that
overlap no existing or mined annotation), then fine-tune from an intermediate checkpoint on
the key slices plus unlabelled slices (about half as many), mined lesions as positives and
suspicious regions ignored (or, as the paper's weaker alternative, as positives).

The lesion embedding is the MELD network's own (the L2-normalised shared box feature of
:func:`activecad.models.meld.predict`), not LesaNet's 256-d embedding the paper used; its
distances have another scale, so ``theta`` must be chosen for it (the benchmark sweeps it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from activecad.data.lesion_samples import EvalVolume, TrainingSlices
from activecad.data.lesion_slices import DATASETS, ORGANS, SliceSample
from activecad.lesions.mining import BOX_COLUMNS, mine_missing, suspicious_regions
from activecad.metrics import (
    LUNA16_FP_RATES,
    FrocMatch,
    froc_bootstrap,
    froc_curve,
    match_stacked_boxes,
    sensitivity_at_fp_rates,
    stack_slice_boxes,
)

__all__ = [
    "MiningInputs",
    "MiningResult",
    "VolumePredictions",
    "evaluate_volumes",
    "finetune_samples",
    "mine_from",
    "mine_lesions",
    "mining_quality",
    "paired_volume_difference",
    "predict_for_mining",
    "predict_volumes",
    "volume_froc",
]

EXPERT_ORGAN = dict(zip(DATASETS[1:], ORGANS, strict=True))
"""The organ of each single-type expert (its suspicious lesions' organ target)."""


@dataclass
class MiningResult:
    """What MAM and NRM found on the training slices.

    Attributes:
        mined: MAM's mined lesions: ``image``, ``patient``, ``x1, y1, x2, y2`` (pixels of the
            sample), ``score`` (universal), ``annotation`` (row of ``annotations``),
            ``distance`` (L2 between embeddings), ``organ_*`` (the annotation's targets).
        suspicious: NRM's suspicious regions: ``image``, ``patient``, box, ``score`` (of the
            expert), ``expert`` (its dataset).
        annotations: the existing annotations: ``image``, ``patient``, box.
        slices: the slices mined over.
    """

    mined: pd.DataFrame
    suspicious: pd.DataFrame
    annotations: pd.DataFrame
    slices: TrainingSlices


def _annotation_table(samples: Sequence[SliceSample]) -> pd.DataFrame:
    rows = [
        (s.image_id, s.patient, *box, *organs)
        for s in samples
        for box, organs in zip(s.boxes, s.organs, strict=True)
    ]
    columns = ["image", "patient", *BOX_COLUMNS, *(f"organ_{o}" for o in ORGANS)]
    return pd.DataFrame(rows, columns=columns)


@dataclass
class MiningInputs:
    """What mining thresholds, computed once by :func:`predict_for_mining`.

    The network's passes over the training slices are the whole cost of mining; MAM's
    ``theta`` and NRM's ``sigma`` only threshold these tables, so a sweep over them
    (Yan et al. 2020, Fig. 5) computes this once and calls :func:`mine_from` per value.

    Attributes:
        annotations: the existing annotations (``image``, ``patient``, box, ``organ_*``).
        annotation_embeddings: (A, E) their lesion embeddings.
        proposals: the universal expert's detections (``image``, ``patient``, box, ...).
        proposal_embeddings: (P, E) their lesion embeddings.
        expert_proposals: each single-type expert's detections, by dataset.
        slices: the slices mined over.
    """

    annotations: pd.DataFrame
    annotation_embeddings: np.ndarray
    proposals: pd.DataFrame
    proposal_embeddings: np.ndarray
    expert_proposals: dict[str, pd.DataFrame]
    slices: TrainingSlices


def predict_for_mining(
    net: object,
    slices: TrainingSlices,
    *,
    experts: Sequence[str] = DATASETS[1:],
    batch_size: int = 8,
) -> MiningInputs:
    """The passes of a trained MELD network that MAM and NRM need (see :class:`MiningInputs`).

    Args:
        net: a :class:`activecad.models.meld.MeldNet`.
        slices: key slices and unlabelled slices (:func:`deeplesion_training_slices`).
        experts: the single-type experts NRM asks (paper: all three).
        batch_size: slices per forward pass.
    """
    from activecad.models.meld import embed_boxes, predict

    keyed = slices.key_slices
    annotation_emb = embed_boxes(net, keyed, batch_size=batch_size)  # type: ignore[arg-type]
    proposals, proposal_emb = predict(net, slices.samples, batch_size=batch_size)  # type: ignore[arg-type]
    by_expert = {}
    for expert in experts:
        table, _ = predict(net, slices.samples, dataset=expert, batch_size=batch_size)  # type: ignore[arg-type]
        by_expert[expert] = table.rename(columns={"image_id": "image"})
    return MiningInputs(
        _annotation_table(keyed),
        annotation_emb,
        proposals.rename(columns={"image_id": "image"}),
        proposal_emb,
        by_expert,
        slices,
    )


def mine_from(
    inputs: MiningInputs,
    *,
    theta: float = 0.15,
    sigma: float = 0.5,
    min_score: float = 0.0,
    experts: Sequence[str] | None = None,
) -> MiningResult:
    """MAM and NRM on the network outputs of :func:`predict_for_mining`.

    Args:
        inputs: the network's outputs on the training slices.
        theta: MAM's L2 distance threshold between lesion embeddings.
        sigma: NRM's score threshold of the single-type experts.
        min_score: MAM matches only universal proposals scored at least this. The paper
            matched about 6 proposals a slice (1,429K on 233K slices) without stating a
            cut; a weaker detector proposes many more low-scored boxes (the phantom's
            MELD: 19 a slice, median score 0.04), and an embedding of the detector's own
            box features finds most of them close to some lesion.
        experts: the single-type experts NRM asks; ``None``: every one in ``inputs``.
    """
    annotations = inputs.annotations
    keep = inputs.proposals["score"].to_numpy(float) >= min_score
    mined = mine_missing(
        inputs.proposals[keep],
        annotations,
        inputs.proposal_embeddings[keep],
        inputs.annotation_embeddings,
        theta=theta,
    )
    organ_columns = [f"organ_{o}" for o in ORGANS]
    matched = annotations.iloc[mined["annotation"].to_numpy(int)][organ_columns].to_numpy()
    mined = mined[["image", "patient", *BOX_COLUMNS, "score", "annotation", "distance"]].copy()
    mined[organ_columns] = matched
    expert_tables = []
    for expert in inputs.expert_proposals if experts is None else experts:
        table = inputs.expert_proposals[expert]
        found = suspicious_regions(table, annotations, mined, sigma=sigma)
        found = found[["image", "patient", *BOX_COLUMNS, "score"]].copy()
        found["expert"] = expert
        expert_tables.append(found)
    suspicious = pd.concat(expert_tables, ignore_index=True) if expert_tables else pd.DataFrame()
    return MiningResult(mined.reset_index(drop=True), suspicious, annotations, inputs.slices)


def mine_lesions(
    net: object,
    slices: TrainingSlices,
    *,
    theta: float = 0.15,
    sigma: float = 0.5,
    min_score: float = 0.0,
    experts: Sequence[str] = DATASETS[1:],
    batch_size: int = 8,
) -> MiningResult:
    """Run MAM and NRM with a trained MELD network on the training slices: the network's
    passes (:func:`predict_for_mining`), then the thresholds (:func:`mine_from`).

    Args:
        net: a :class:`activecad.models.meld.MeldNet`.
        slices: key slices and unlabelled slices (:func:`deeplesion_training_slices`).
        theta: MAM's L2 distance threshold between lesion embeddings.
        sigma: NRM's score threshold of the single-type experts.
        min_score: MAM's cut on the universal proposals' scores (see :func:`mine_from`).
        experts: the single-type experts NRM asks (paper: all three).
        batch_size: slices per forward pass.
    """
    inputs = predict_for_mining(net, slices, experts=experts, batch_size=batch_size)
    return mine_from(inputs, theta=theta, sigma=sigma, min_score=min_score)


def finetune_samples(
    result: MiningResult,
    *,
    use_mined: bool = True,
    use_suspicious: bool = True,
    suspicious_as: str = "ignore",
    added_fraction: float = 0.5,
    seed: int = 0,
) -> list[SliceSample]:
    """The universal fine-tuning set: key slices plus unlabelled slices, with the mining.

    Args:
        result: :func:`mine_lesions`' output.
        use_mined: add MAM's mined lesions as positive boxes.
        use_suspicious: add NRM's suspicious regions (as ``suspicious_as`` says).
        suspicious_as: ``"ignore"`` (neither positive nor negative; the paper's better
            choice) or ``"positive"`` (boxes with the expert's organ as target).
        added_fraction: unlabelled slices added, as a share of the key slices (paper: about
            one half was best, Fig. 5b); drawn at random with ``seed``.
        seed: seed of that draw.
    """
    if suspicious_as not in ("ignore", "positive"):
        raise ValueError(f"suspicious_as must be 'ignore' or 'positive', got {suspicious_as!r}.")
    if not added_fraction >= 0:
        raise ValueError(f"added_fraction must be >= 0, got {added_fraction}.")
    samples = result.slices.samples
    keyed = [s for s in samples if len(s.boxes)]
    unlabelled = [s for s in samples if not len(s.boxes)]
    count = min(len(unlabelled), round(added_fraction * len(keyed)))
    pick = np.sort(np.random.default_rng(seed).choice(len(unlabelled), count, replace=False))
    chosen = keyed + [unlabelled[i] for i in pick]
    organ_columns = [f"organ_{o}" for o in ORGANS]
    mined = result.mined.groupby("image") if use_mined and len(result.mined) else None
    suspicious = (
        result.suspicious.groupby("image") if use_suspicious and len(result.suspicious) else None
    )
    out = []
    for sample in chosen:
        boxes, organs, ignore = [sample.boxes], [sample.organs], [sample.ignore_boxes]
        detected = [
            sample.detected if sample.detected is not None else np.zeros(len(sample.boxes), bool)
        ]
        if mined is not None and sample.image_id in mined.groups:
            rows = mined.get_group(sample.image_id)
            boxes.append(rows[list(BOX_COLUMNS)].to_numpy(float))
            organs.append(rows[organ_columns].to_numpy(np.float32))
            detected.append(np.ones(len(rows), bool))
        if suspicious is not None and sample.image_id in suspicious.groups:
            rows = suspicious.get_group(sample.image_id)
            found = rows[list(BOX_COLUMNS)].to_numpy(float)
            if suspicious_as == "ignore":
                ignore.append(found)
            else:
                boxes.append(found)
                targets = np.zeros((len(rows), len(ORGANS)), np.float32)
                for k, expert in enumerate(rows["expert"]):
                    targets[k, ORGANS.index(EXPERT_ORGAN[expert])] = 1.0
                organs.append(targets)
                detected.append(np.ones(len(rows), bool))
        out.append(
            replace(
                sample,
                boxes=np.concatenate(boxes).reshape(-1, 4),
                organs=np.concatenate(organs).reshape(-1, len(ORGANS)).astype(np.float32),
                ignore_boxes=np.concatenate(ignore).reshape(-1, 4),
                detected=np.concatenate(detected),
            )
        )
    return out


@dataclass
class VolumePredictions:
    """A detector's 2D detections on fully annotated sub-volumes, with their truth.

    Attributes:
        volume_ids: one id per sub-volume.
        detections: per sub-volume, ``slice`` (position in the sub-volume), ``x1, y1, x2,
            y2`` and ``score``.
        truths: per sub-volume, (G,) slice positions and (G, 4) boxes of its lesions.
    """

    volume_ids: list[str]
    detections: list[pd.DataFrame]
    truths: list[tuple[np.ndarray, np.ndarray]]

    def to_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(detections, truth) as two flat tables with a ``volume_id`` column (to save)."""
        columns = ["volume_id", "slice", *BOX_COLUMNS]
        detections = pd.concat(
            [
                t[["slice", *BOX_COLUMNS, "score"]].assign(volume_id=v)
                for v, t in zip(self.volume_ids, self.detections, strict=True)
            ],
            ignore_index=True,
        )[[*columns, "score"]]
        truth = pd.DataFrame(
            [
                (v, int(z), *box)
                for v, (slices, boxes) in zip(self.volume_ids, self.truths, strict=True)
                for z, box in zip(slices, np.asarray(boxes).reshape(-1, 4), strict=True)
            ],
            columns=columns,
        )
        return detections, truth

    def match(self) -> FrocMatch:
        """The 2D detections stacked to 3D boxes and matched with the lesions (the rule of
        :func:`volume_froc`); ``nodule_probs`` follows the order of ``truths``."""
        return _volume_match(self.volume_ids, self.detections, self.truths)[0]

    @classmethod
    def from_tables(
        cls, detections: pd.DataFrame, truth: pd.DataFrame, volume_ids: Sequence[str]
    ) -> VolumePredictions:
        """The inverse of :meth:`to_tables` (``volume_ids``: every sub-volume, in order)."""
        by_volume = dict(tuple(detections.groupby("volume_id")))
        truth_of = dict(tuple(truth.groupby("volume_id")))
        empty = pd.DataFrame(columns=["slice", *BOX_COLUMNS, "score"])
        tables, truths = [], []
        for v in volume_ids:
            tables.append(by_volume.get(v, empty).reset_index(drop=True))
            t = truth_of.get(v, pd.DataFrame(columns=truth.columns))
            truths.append((t["slice"].to_numpy(np.int64), t[list(BOX_COLUMNS)].to_numpy(float)))
        return cls(list(volume_ids), tables, truths)


def predict_volumes(
    net: object, volumes: Iterable[EvalVolume], *, dataset: str = "universal", batch_size: int = 8
) -> VolumePredictions:
    """Every slice position of every sub-volume through ``net``'s expert ``dataset``."""
    from activecad.models.meld import predict

    names: list[str] = []
    detections: list[pd.DataFrame] = []
    truths: list[tuple[np.ndarray, np.ndarray]] = []
    for volume in volumes:
        table, _ = predict(net, volume.samples, dataset=dataset, batch_size=batch_size)  # type: ignore[arg-type]
        position = {s.image_id: j for j, s in enumerate(volume.samples)}
        names.append(volume.volume_id)
        detections.append(table.assign(slice=table["image_id"].map(position)))
        truths.append(volume.ground_truth())
    return VolumePredictions(names, detections, truths)


def evaluate_volumes(
    net: object,
    volumes: Iterable[EvalVolume],
    *,
    dataset: str = "universal",
    batch_size: int = 8,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, object]:
    """FROC per sub-volume of ``net``'s expert ``dataset`` on fully annotated sub-volumes
    (Yan et al. 2020, Table 1): every slice position predicted, then :func:`volume_froc`.
    """
    found = predict_volumes(net, volumes, dataset=dataset, batch_size=batch_size)
    return volume_froc(
        found.volume_ids, found.detections, found.truths, bootstrap=bootstrap, seed=seed
    )


def _volume_match(
    volume_ids: Sequence[str],
    detections: Sequence[pd.DataFrame],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
):
    """Stack each sub-volume's 2D detections to 3D boxes and match them with its lesions."""
    if not volume_ids:
        raise ValueError("no sub-volume to evaluate")
    if not len(volume_ids) == len(detections) == len(truths):
        raise ValueError(
            f"one detection table and one truth per sub-volume: got {len(volume_ids)} ids, "
            f"{len(detections)} tables and {len(truths)} truths"
        )
    ids = np.concatenate(
        [np.full(len(t), v, dtype=object) for v, t in zip(volume_ids, detections, strict=True)]
    )
    stacked = stack_slice_boxes(
        ids.astype(str),
        np.concatenate([t["slice"].to_numpy(np.int64) for t in detections]),
        np.concatenate([t[list(BOX_COLUMNS)].to_numpy(float) for t in detections]).reshape(-1, 4),
        np.concatenate([t["score"].to_numpy(float) for t in detections]),
    )
    gt_ids = [
        np.full(len(z), v, dtype=object) for v, (z, _) in zip(volume_ids, truths, strict=True)
    ]
    match = match_stacked_boxes(
        stacked,
        np.concatenate(gt_ids).astype(str),
        np.concatenate([np.asarray(z) for z, _ in truths]),
        np.concatenate([np.asarray(b, float).reshape(-1, 4) for _, b in truths]),
        volumes=np.asarray(volume_ids, dtype=str),
    )
    return match, len(stacked.scores)


def _operating_points(match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve of a match and its sensitivities at 1/8..8 FPs per sub-volume."""
    fps, sens, _ = froc_curve(
        match.tp_probs, match.fp_probs, n_nodules=match.n_nodules, n_scans=match.n_scans
    )
    return fps, sens, sensitivity_at_fp_rates(fps, sens, np.asarray(LUNA16_FP_RATES))


def volume_froc(
    volume_ids: Sequence[str],
    detections: Sequence[pd.DataFrame],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, object]:
    """FROC per sub-volume from 2D detections on fully annotated sub-volumes.

    Detections on consecutive slices with IoU > 0.5 are stacked into 3D boxes; a 3D box
    detects a lesion when a cross-section has IoU > 0.5 with the lesion's box on its key
    slice (continuous IoU). Sensitivities at 1/8..8 FPs per sub-volume and their mean.

    Args:
        volume_ids: one id per sub-volume.
        detections: per sub-volume, a table with ``slice`` (position in the sub-volume),
            ``x1, y1, x2, y2`` and ``score``.
        truths: per sub-volume, (G,) slice positions and (G, 4) boxes of its lesions.
        bootstrap: when > 0, the result also holds ``ci_95``: 95 % percentile intervals of
            the average sensitivity and of each operating point over that many resamples of
            the sub-volumes (with replacement, as the LUNA16 script resamples scans).
        seed: seed of the resampling.

    Raises:
        ValueError: no sub-volume, or lists of different lengths.
    """
    match, n_boxes = _volume_match(volume_ids, detections, truths)
    fps, sens, points = _operating_points(match)
    result: dict[str, object] = {
        "average_sensitivity": float(np.mean(points)),
        "sensitivities": {f"{r:g}": float(s) for r, s in zip(LUNA16_FP_RATES, points, strict=True)},
        "curve": {"fps": fps.tolist(), "sensitivity": sens.tolist()},
        "counts": {
            "sub_volumes": match.n_scans,
            "lesions": match.n_nodules,
            "detected": match.n_detected,
            "boxes_3d": n_boxes,
        },
    }
    if bootstrap > 0:
        draws = froc_bootstrap(match, n_bootstrap=bootstrap, seed=seed)
        result["ci_95"] = {
            "average_sensitivity": [draws.cpm_lower, draws.cpm_upper],
            "sensitivities": {
                f"{r:g}": [float(lo), float(hi)]
                for r, lo, hi in zip(LUNA16_FP_RATES, draws.lower, draws.upper, strict=True)
            },
            "resamples": bootstrap,
        }
    return result


def paired_volume_difference(
    a: VolumePredictions, b: VolumePredictions, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Average sensitivity of ``b`` minus ``a`` on the same sub-volumes, with a paired
    bootstrap: every resample draws the same sub-volumes for both detectors, so what the
    two share (which lesions are hard) cancels out of the interval.

    Returns:
        ``difference`` (on all sub-volumes), ``lower`` / ``upper`` (95 % percentile
        interval), ``share_positive`` (resamples where ``b`` is ahead) and ``resamples``.

    Raises:
        ValueError: the two cover different sub-volumes.
    """
    if a.volume_ids != b.volume_ids:
        raise ValueError("a paired comparison needs the same sub-volumes in the same order")
    match_a, _ = _volume_match(a.volume_ids, a.detections, a.truths)
    match_b, _ = _volume_match(b.volume_ids, b.detections, b.truths)
    # froc_bootstrap's draws depend only on the seed and the number of sub-volumes, so the
    # two runs resample the same sub-volumes draw by draw.
    draws = (
        froc_bootstrap(match_b, n_bootstrap=bootstrap, seed=seed).cpm
        - froc_bootstrap(match_a, n_bootstrap=bootstrap, seed=seed).cpm
    )
    whole = [float(np.mean(_operating_points(match)[2])) for match in (match_a, match_b)]
    return {
        "difference": whole[1] - whole[0],
        "lower": float(np.nanquantile(draws, 0.025)),
        "upper": float(np.nanquantile(draws, 0.975)),
        "share_positive": float(np.mean(draws > 0)),
        "resamples": bootstrap,
    }


def mining_quality(result: MiningResult, truth: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Precision and recall of the mined lesions and suspicious regions against full truth.

    A mined or suspicious box is *true* when its centre lies on a lesion of the full truth:
    inside the lesion's key-slice box (stored pixels, same series) on a slice within half
    the lesion's short axis of its key slice (the lesion taken as that thick). Recall is
    over the lesions the training table left unlabelled (``labelled == 0``) in the mined
    slices' series: the share hit by at least one box (for NRM: lesions of the experts'
    three organs only, the only ones it can find).

    Args:
        result: :func:`mine_lesions`' output.
        truth: the full-truth table (a phantom's ``DL_info_full.csv``, read with
            :func:`activecad.io.lesion_sets.read_deeplesion`, so with a ``series`` column).
    """
    series_of = {image: image.rsplit("_", 1)[0] for image in result.slices.volume_of}
    truth = truth[truth["series"].isin(set(series_of.values()))].reset_index(drop=True)
    key_boxes = np.array([tuple(b) for b in truth["Bounding_boxes"]], float).reshape(-1, 4)
    spacing_z = np.array([tuple(s)[2] for s in truth["Spacing_mm_px_"]], float)
    half = truth["short_axis_mm"].to_numpy(float) / 2 / spacing_z
    keys = truth["Key_slice_index"].to_numpy(float)

    def lesions_hit(table: pd.DataFrame) -> list[np.ndarray]:
        hits = []
        for _, row in table.iterrows():
            volume = result.slices.volume_of[row["image"]]
            box = volume.boxes_to_stored(row[list(BOX_COLUMNS)].to_numpy(float)) - 0.5
            cx, cy = (box[0, 0] + box[0, 2]) / 2, (box[0, 1] + box[0, 3]) / 2
            s = result.slices.stored_slice[row["image"]]
            on = (
                (truth["series"].to_numpy() == series_of[row["image"]])
                & (np.abs(s - keys) <= half)
                & (key_boxes[:, 0] <= cx) & (cx <= key_boxes[:, 2])
                & (key_boxes[:, 1] <= cy) & (cy <= key_boxes[:, 3])
            )  # fmt: skip
            hits.append(np.flatnonzero(on))
        return hits

    unlabelled = truth["labelled"].to_numpy(int) == 0
    experts = truth["organ"].map(lambda o: str(o).startswith(("lung", "liver", "lymph")))
    out: dict[str, dict[str, float]] = {}
    for name, table, eligible in (
        ("mam", result.mined, unlabelled),
        ("nrm", result.suspicious, unlabelled & experts.to_numpy(bool)),
    ):
        hits = lesions_hit(table) if len(table) else []
        true = np.array([len(h) > 0 for h in hits], bool)
        found = np.zeros(len(truth), bool)
        for h in hits:
            found[h] = True
        out[name] = {
            "boxes": len(table),
            "precision": float(true.mean()) if len(true) else float("nan"),
            "lesions_eligible": int(eligible.sum()),
            "recall": float(found[eligible].mean()) if eligible.any() else float("nan"),
        }
    return out
