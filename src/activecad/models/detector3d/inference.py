"""Whole-scan detection: preprocess, sliding-window network, NMS, boxes -> world mm.

Frames: detections come out as world mm x-y-z centres (LUNA16 ``coordX, coordY, coordZ``),
``diameter_mm`` from the mean edge of the box in mm, and ``probability``.

With ``config.mirror_tta`` the scan is also run mirrored along every subset of its axes and
the eight passes' boxes are fused (:func:`fuse_passes`), as nnDetection (Baumgartner et
al., "nnDetection: A Self-configuring Method for Medical Object Detection", MICCAI 2021)
does at test time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from activecad.data.preprocess import PreparedScan, PreprocessCache, preprocess_scan
from activecad.errors import InputError
from activecad.io.scan import Scan
from activecad.models.detector3d.config import DetectorConfig
from activecad.models.detector3d.loss_prediction import ROI_VARIANTS, roi_uncertainties
from activecad.models.detector3d.network import Detections, NoduleDetector

SUBMISSION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
# L_roi is the configured reading of Eq. 2; the other columns give every reading.
UNCERTAINTY_COLUMNS = ["seriesuid", "l_scan", "L_roi", *(f"L_roi_{v}" for v in ROI_VARIANTS)]
# The mirrorings of test-time augmentation: every subset of the input's axes (0 = x), the
# unmirrored pass first.
MIRRORS: tuple[tuple[int, ...], ...] = tuple(
    axes for n in range(4) for axes in itertools.combinations(range(3), n)
)


@dataclass
class ScanResult:
    """Detections of one scan in world coordinates, its uncertainties and embedding.

    Attributes:
        detections: rows with :data:`SUBMISSION_COLUMNS` (world mm, x-y-z).
        l_scan: predicted scan-level loss (Eq. 1), pooled over the scan, not the padding.
        l_roi: L_RoI (Eq. 2) in the detector's configured reading.
        l_roi_variants: L_RoI in every reading (:data:`.loss_prediction.ROI_VARIANTS`).
        embedding: (4C,) float32, P2..P5 averaged over the scan's valid region.
        passes: with mirrored test-time augmentation, each pass's detections before they
            were fused (:data:`SUBMISSION_COLUMNS`, world mm; the unmirrored pass first),
            what the ``tta`` active-learning heuristic compares; empty otherwise.
    """

    detections: pd.DataFrame
    l_scan: float
    l_roi: float
    l_roi_variants: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    passes: tuple[pd.DataFrame, ...] = ()

    def uncertainty_row(self, seriesuid: str) -> tuple[object, ...]:
        """The scan's row of :data:`UNCERTAINTY_COLUMNS`."""
        variants = tuple(self.l_roi_variants.get(v, float("nan")) for v in ROI_VARIANTS)
        return (seriesuid, self.l_scan, self.l_roi, *variants)


def network_input(
    prepared: PreparedScan, patch_size: Sequence[int], mirror_axes: Sequence[int] = ()
) -> torch.Tensor:
    """The (1, 1, X, Y, Z) network input of a preprocessed scan, zero-padded to multiples of 32.

    ``mirror_axes`` (0 = x) are mirrored before padding, so the scan keeps the corner of the
    input at the origin and ``valid_shape`` stays the same for every mirroring.

    Raises:
        InputError: the scan is smaller than the patch along some axis.
    """
    shape_xyz = np.array(prepared.array.shape[::-1])
    if np.any(shape_xyz < np.asarray(patch_size)):
        raise InputError(
            f"scan {prepared.seriesuid or '(no id)'} is {tuple(int(s) for s in shape_xyz)} "
            f"voxels (x, y, z) after resampling, smaller than the model's patch "
            f"{tuple(patch_size)}",
            fix="give a whole chest CT, or train a model with a smaller patch_size",
        )
    padded = -(-shape_xyz // 32) * 32
    volume = np.zeros(tuple(int(p) for p in padded), dtype=np.float32)
    array_xyz = np.asarray(prepared.array).transpose(2, 1, 0)
    if mirror_axes:
        array_xyz = np.flip(array_xyz, axis=tuple(mirror_axes))
    volume[: shape_xyz[0], : shape_xyz[1], : shape_xyz[2]] = array_xyz
    return torch.from_numpy(volume)[None, None]


def unmirror(found: Detections, mirror_axes: Sequence[int], valid_xyz: Sequence[int]) -> Detections:
    """The detections of a pass on a mirrored input, in the voxels of the unmirrored one.

    Along a mirrored axis of n voxels index i is n - 1 - i (the convention of training's
    flips, :func:`~activecad.data.augment.augment_patch`), so a box [a, b] becomes
    [n - 1 - b, n - 1 - a].
    """
    boxes = found.boxes.clone()
    for axis in mirror_axes:
        end = valid_xyz[axis] - 1
        boxes[:, axis] = end - found.boxes[:, axis + 3]
        boxes[:, axis + 3] = end - found.boxes[:, axis]
    return replace(found, boxes=boxes)


def cluster_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, source: torch.Tensor, iou_thresh: float
) -> list[torch.Tensor]:
    """Weighted box clustering's grouping: which boxes of several sources (passes, models)
    mark the same object.

    A simple form of the weighted box clustering of Jaeger et al. ("Retina U-Net", ML4H
    2020) that nnDetection applies to its mirrored passes: taking boxes from the highest
    score down, each box not yet clustered gathers every unclustered box whose IoU with it
    exceeds ``iou_thresh``; from each source the cluster keeps that source's best box.

    Args:
        boxes: (N, 6) xmin, ymin, zmin, xmax, ymax, zmax of every source's boxes.
        scores: (N,) their probabilities.
        source: (N,) int, which source each box came from.
        iou_thresh: the IoU above which two boxes are one object.

    Returns:
        one index tensor per cluster, in the order the clusters formed: the best box of each
        source present, scores descending.
    """
    from monai.data.box_utils import box_iou

    overlap = box_iou(boxes, boxes) if len(boxes) else torch.zeros(0, 0)
    free = torch.ones(len(boxes), dtype=torch.bool)
    clusters = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if not free[i]:
            continue
        members = free & (overlap[i] > iou_thresh)
        members[i] = True
        free &= ~members
        index = torch.where(members)[0]
        index = index[torch.argsort(scores[index], descending=True, stable=True)]
        # each source's best box: its first, scores descending
        best = index[np.unique(source[index].numpy(), return_index=True)[1]]
        clusters.append(best[torch.argsort(scores[best], descending=True, stable=True)])
    return clusters


def cluster_weights(scores: torch.Tensor) -> torch.Tensor:
    """The weights of a cluster's members in its fused box: their scores over the scores'
    sum, or equal weights where every score is 0 (a score threshold of 0 keeps boxes whose
    probability underflowed; their mean box is still a box, not NaN)."""
    total = scores.sum()
    if total > 0:
        return scores / total
    return torch.full_like(scores, 1.0 / len(scores))


def fuse_passes(passes: Sequence[Detections], config: DetectorConfig) -> Detections:
    """Fuse the detections of several passes over one scan by weighted box clustering.

    The passes' boxes are grouped by :func:`cluster_boxes` with the detector's own notion
    of one object (IoU > ``config.nms_thresh``). A cluster's probability is the sum of its
    passes' best scores over the number of passes, so a box that one pass of eight found
    alone keeps an eighth of its score, and its box and predicted loss are their
    score-weighted means. At most ``config.detections_per_scan`` clusters are kept.

    l_scan and the embedding are the passes' means; L_RoI (every reading) is recomputed
    from the fused scores and predicted losses.

    Args:
        passes: detections of the passes, each in the voxels of the unmirrored input.
        config: the detector's settings (NMS IoU, detections per scan, Eq. 2's tau and
            reading).
    """
    boxes = torch.cat([p.boxes.float() for p in passes])
    scores = torch.cat([p.scores.float() for p in passes])
    roi = torch.cat([p.roi_losses.float() for p in passes])
    source = torch.cat([torch.full((len(p.scores),), k) for k, p in enumerate(passes)])
    fused_boxes, fused_scores, fused_roi = [], [], []
    for best in cluster_boxes(boxes, scores, source, config.nms_thresh):
        weight = cluster_weights(scores[best])
        fused_boxes.append((weight[:, None] * boxes[best]).sum(0))
        fused_scores.append(scores[best].sum() / len(passes))
        fused_roi.append((weight * roi[best]).sum())
    if fused_scores:
        out_scores = torch.stack(fused_scores)
        order = torch.argsort(out_scores, descending=True, stable=True)
        order = order[: config.detections_per_scan]
        out_boxes, out_scores = torch.stack(fused_boxes)[order], out_scores[order]
        out_roi = torch.stack(fused_roi)[order]
    else:
        out_boxes, out_scores, out_roi = torch.zeros(0, 6), torch.zeros(0), torch.zeros(0)
    variants = roi_uncertainties(out_roi, out_scores, config.roi_tau)
    embeddings = [p.embedding for p in passes if p.embedding is not None]
    return Detections(
        out_boxes,
        out_scores,
        out_roi,
        float(np.mean([p.l_scan for p in passes])),
        variants[config.roi_variant],
        embedding=torch.stack(embeddings).mean(0) if embeddings else None,
        l_roi_variants=variants,
    )


def fuse_models(
    tables: Sequence[pd.DataFrame], iou_thresh: float, most: int | None = None
) -> pd.DataFrame:
    """Fuse several detectors' detections of the same scans (an ensemble) in world mm.

    Each detection is the cube of its ``diameter_mm`` about its centre; per scan the
    models' cubes are grouped by :func:`cluster_boxes` and, as :func:`fuse_passes` does for
    passes, a cluster's probability is the sum of each model's best score over the number
    of models, its centre and diameter their score-weighted means. Working in world mm lets
    models of different spacings or crops be fused.

    Args:
        tables: each model's detections (:data:`SUBMISSION_COLUMNS`).
        iou_thresh: the IoU above which two cubes are one object (the detectors' NMS IoU).
        most: keep at most this many detections a scan; None keeps every cluster.

    Returns:
        rows with :data:`SUBMISSION_COLUMNS`, per scan by probability descending.
    """
    xyz = ["coordX", "coordY", "coordZ"]
    stacked = pd.concat(
        [t.assign(_source=k) for k, t in enumerate(tables)], ignore_index=True, sort=False
    )
    fused = []
    for uid, scan in stacked.groupby("seriesuid", sort=False):
        centres = torch.tensor(scan[xyz].to_numpy(np.float64))
        half = torch.tensor(scan["diameter_mm"].to_numpy(np.float64))[:, None] / 2
        scores = torch.tensor(scan["probability"].to_numpy(np.float64))
        source = torch.tensor(scan["_source"].to_numpy())
        boxes = torch.cat([centres - half, centres + half], dim=1)
        rows = []
        for best in cluster_boxes(boxes, scores, source, iou_thresh):
            weight = cluster_weights(scores[best])
            centre = (weight[:, None] * centres[best]).sum(0).tolist()
            diameter = float((weight * 2 * half[best, 0]).sum())
            rows.append([uid, *centre, float(scores[best].sum()) / len(tables), diameter])
        table = pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)
        fused.append(table.sort_values("probability", ascending=False, kind="stable")[:most])
    if not fused:
        return pd.DataFrame(columns=SUBMISSION_COLUMNS)
    return pd.concat(fused, ignore_index=True)


def detections_to_world(detections: Detections, prepared: PreparedScan) -> pd.DataFrame:
    """Map boxes in voxels of the network input (x-y-z) to world centres and diameters.

    Args:
        detections: boxes (N, 6) xmin, ymin, zmin, xmax, ymax, zmax voxels of the input,
            whose voxel (x, y, z) is ``prepared.array[z, y, x]``.
        prepared: the scan the input came from (its grid's geometry).

    Returns:
        rows with :data:`SUBMISSION_COLUMNS`, sorted by probability descending.
    """
    boxes = detections.boxes.detach().cpu().double().numpy().reshape(-1, 6)
    centres_xyz = (boxes[:, :3] + boxes[:, 3:]) / 2
    world = prepared.index_to_world(centres_xyz[:, ::-1]) if len(boxes) else np.zeros((0, 3))
    extent_mm = (boxes[:, 3:] - boxes[:, :3]) * prepared.spacing[None, :]
    return pd.DataFrame(
        {
            "seriesuid": [prepared.seriesuid] * len(boxes),
            "coordX": world[:, 0],
            "coordY": world[:, 1],
            "coordZ": world[:, 2],
            "probability": detections.scores.detach().cpu().double().numpy(),
            "diameter_mm": extent_mm.mean(axis=1),
        },
        columns=SUBMISSION_COLUMNS,
    )


def detect_prepared(detector: NoduleDetector, prepared: PreparedScan) -> ScanResult:
    """Detect nodules in an already preprocessed scan (in eight mirrored passes, fused,
    when ``detector.config.mirror_tta``)."""
    config = detector.config
    device = next(detector.network.parameters()).device
    detector.eval()
    z, y, x = prepared.array.shape
    passes = []
    for axes in MIRRORS if config.mirror_tta else MIRRORS[:1]:
        image = network_input(prepared, config.patch_size, axes).to(device)
        passes.append(unmirror(detector.detect(image, valid_shape=(x, y, z)), axes, (x, y, z)))
    found = passes[0] if len(passes) == 1 else fuse_passes(passes, config)
    embedding = (
        found.embedding.detach().cpu().numpy().astype(np.float32)
        if found.embedding is not None
        else np.zeros(0, np.float32)
    )
    return ScanResult(
        detections_to_world(found, prepared),
        found.l_scan,
        found.l_roi,
        dict(found.l_roi_variants),
        embedding,
        tuple(detections_to_world(p, prepared) for p in passes) if len(passes) > 1 else (),
    )


def min_shape_zyx(detector: NoduleDetector) -> tuple[int, int, int]:
    """The smallest preprocessed array (z, y, x) the detector takes: its patch."""
    px, py, pz = detector.config.patch_size
    return pz, py, px


def detect_scan(detector: NoduleDetector, scan: Scan) -> ScanResult:
    """Detect nodules in a CT scan (HU, any spacing and direction).

    Raises:
        InputError: the scan is smaller than the model's patch.
    """
    prepared = preprocess_scan(
        scan, detector.config.preprocess, min_shape_zyx=min_shape_zyx(detector)
    )
    return detect_prepared(detector, prepared)


def detect_files(
    detector: NoduleDetector,
    paths: Sequence[str | Path],
    *,
    progress: bool = True,
    cache: PreprocessCache | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect nodules in scan files; returns (detections, uncertainties) tables.

    Args:
        detector: a trained detector.
        paths: CT scans (.mhd, .nii.gz, DICOM folders).
        progress: show a progress bar on stderr.
        cache: read preprocessed scans from (and add them to) this cache; None to
            preprocess every scan in memory.

    Returns:
        detections (:data:`SUBMISSION_COLUMNS`, world mm) and one row per scan of
        :data:`UNCERTAINTY_COLUMNS`.

    Raises:
        InputError: a file cannot be read or is smaller than the model's patch.
    """
    from activecad.models.detector3d.scoring import score_pool

    tables, rows = [], []
    for result in score_pool(
        detector, list(paths), cache=cache, use_cache=cache is not None, progress=progress
    ):
        tables.append(result.detections)
        rows.append(result.uncertainty_row(result.seriesuid))
    detections = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SUBMISSION_COLUMNS)
    )
    return detections, pd.DataFrame(rows, columns=UNCERTAINTY_COLUMNS)
