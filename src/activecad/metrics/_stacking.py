"""2D-to-3D box stacking for slice-wise detectors and its FROC (Yan et al. 2020, section 4.3).

A 2.5D detector outputs 2D boxes per slice. Boxes on consecutive slices whose IoU is above
0.5 are chained into one 3D box; a 3D box is a TP when any of its 2D cross-sections has
IoU > 0.5 with a 2D ground-truth box on the same slice. FPs are counted per sub-volume.
Both IoUs follow the chosen convention (``iou_convention``: ``"continuous"`` or the
DeepLesion evaluation's ``"pixel"``, see :class:`~activecad.metrics.IouConvention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from activecad.metrics._box_matching import (
    IouConvention,
    check_boxes,
    check_iou_convention,
    overlapping_pairs,
    paired_box_iou,
)
from activecad.metrics._froc import FrocMatch, index_ids, resolve_hits, resolve_scans
from activecad.metrics._validation import as_ids, check_1d, check_finite, check_same_length


@dataclass(frozen=True)
class StackedBoxes:
    """3D boxes stacked from 2D slice boxes.

    Attributes:
        volume_ids: (T,) sub-volume id of each 3D box.
        boxes: (T, 6) standard mode ``(xmin, ymin, zmin, xmax, ymax, zmax)`` voxels; z is the
            slice index and ``zmax`` is the last slice + 1 (a slice spans [z, z + 1)).
        scores: (T,) the highest score of the box's 2D members.
        track: (N,) index of the 3D box each input 2D box belongs to.
        slice_volume_ids: (N,) the input sub-volume ids.
        slice_indices: (N,) the input slice indices.
        slice_boxes: (N, 4) the input 2D boxes ``(xmin, ymin, xmax, ymax)``.
    """

    volume_ids: NDArray[np.str_]
    boxes: NDArray[np.float64]
    scores: NDArray[np.float64]
    track: NDArray[np.intp]
    slice_volume_ids: NDArray[np.str_]
    slice_indices: NDArray[np.int64]
    slice_boxes: NDArray[np.float64]

    def to_frame(self) -> pd.DataFrame:
        """One row per 3D box: ``volume``, ``first_slice``, ``last_slice`` (inclusive), the
        in-plane box ``x1, y1, x2, y2`` and ``score``."""
        return pd.DataFrame(
            {
                "volume": self.volume_ids,
                "first_slice": self.boxes[:, 2].astype(np.int64),
                "last_slice": self.boxes[:, 5].astype(np.int64) - 1,
                "x1": self.boxes[:, 0],
                "y1": self.boxes[:, 1],
                "x2": self.boxes[:, 3],
                "y2": self.boxes[:, 4],
                "score": self.scores,
            }
        )


def _link(
    prev_boxes: NDArray[np.float64],
    prev_scores: NDArray[np.float64],
    cur_boxes: NDArray[np.float64],
    cur_scores: NDArray[np.float64],
    iou_threshold: float,
    convention: IouConvention,
) -> NDArray[np.intp]:
    """For each current box, the previous box it continues (-1: none); one-to-one, greedy.

    Pairs are taken by decreasing IoU, then decreasing summed score, so a box that two
    chains could continue joins the one it overlaps most.
    """
    grid_p, grid_c = np.meshgrid(
        np.arange(len(prev_boxes)), np.arange(len(cur_boxes)), indexing="ij"
    )
    ip, ic = grid_p.ravel(), grid_c.ravel()
    iou = paired_box_iou(prev_boxes[ip], cur_boxes[ic], convention)
    ok = iou > iou_threshold
    ip, ic, iou = ip[ok], ic[ok], iou[ok]
    order = np.lexsort((-(prev_scores[ip] + cur_scores[ic]), -iou))
    link = np.full(len(cur_boxes), -1, dtype=np.intp)
    used = np.zeros(len(prev_boxes), dtype=bool)
    # Greedy one-to-one assignment over the few overlapping pairs of two slices.
    for p, c in zip(ip[order], ic[order], strict=True):
        if not used[p] and link[c] < 0:
            used[p] = True
            link[c] = p
    return link


def stack_slice_boxes(
    volume_ids: ArrayLike,
    slice_indices: ArrayLike,
    boxes: ArrayLike,
    scores: ArrayLike,
    *,
    iou_threshold: float = 0.5,
    iou_convention: str = "continuous",
) -> StackedBoxes:
    """Chain 2D boxes on consecutive slices (IoU > ``iou_threshold``) into 3D boxes.

    Args:
        volume_ids: (N,) sub-volume id of each 2D box.
        slice_indices: (N,) integer slice index (z) of each box within its sub-volume.
        boxes: (N, 4) ``(xmin, ymin, xmax, ymax)`` pixels of the slice.
        scores: (N,) detection scores.
        iou_threshold: overlap needed to continue a chain (Yan et al. 2020: 0.5).
        iou_convention: ``"continuous"`` (default) or ``"pixel"`` (a box is
            ``xmax - xmin + 1`` pixels wide, as in the DeepLesion evaluation).
    """
    convention = check_iou_convention(iou_convention)
    vol = as_ids(volume_ids, "volume_ids")
    z_float = check_1d(slice_indices, "slice_indices")
    check_finite(z_float, "slice_indices")
    if np.any(z_float != np.round(z_float)):
        raise ValueError("slice_indices must be whole numbers (slice positions in the volume).")
    z = z_float.astype(np.int64)
    b = check_boxes(boxes, "boxes")
    if len(b) and b.shape[1] != 4:
        raise ValueError(f"boxes must be 2D (N, 4) slice boxes, got {b.shape}.")
    b = b.reshape(-1, 4)
    s = check_1d(scores, "scores")
    check_finite(s, "scores")
    check_same_length(volume_ids=vol, slice_indices=z, boxes=b, scores=s)

    track = np.full(len(s), -1, dtype=np.intp)
    order = np.lexsort((z, vol))
    n_tracks = 0
    prev_idx = np.empty(0, dtype=np.intp)
    # Walk the slices in order (a loop over slices; each slice's boxes are handled at once).
    sorted_vol, sorted_z = vol[order], z[order]
    new_slice = (sorted_vol[1:] != sorted_vol[:-1]) | (sorted_z[1:] != sorted_z[:-1])
    bounds = [*np.flatnonzero(np.r_[True, new_slice]).tolist(), len(s)] if len(s) else [0]
    for k in range(len(bounds) - 1):
        cur = order[bounds[k] : bounds[k + 1]]
        link = np.full(len(cur), -1, dtype=np.intp)
        if len(prev_idx) and vol[prev_idx[0]] == vol[cur[0]] and z[prev_idx[0]] == z[cur[0]] - 1:
            link = _link(b[prev_idx], s[prev_idx], b[cur], s[cur], iou_threshold, convention)
        continued = link >= 0
        track[cur[continued]] = track[prev_idx[link[continued]]]
        fresh = np.flatnonzero(~continued)
        track[cur[fresh]] = n_tracks + np.arange(len(fresh))
        n_tracks += len(fresh)
        prev_idx = cur

    out_boxes = np.empty((n_tracks, 6))
    out_boxes[:, [0, 1, 2]] = np.inf
    out_boxes[:, [3, 4, 5]] = -np.inf
    np.minimum.at(out_boxes[:, 0], track, b[:, 0])
    np.minimum.at(out_boxes[:, 1], track, b[:, 1])
    np.minimum.at(out_boxes[:, 2], track, z.astype(float))
    np.maximum.at(out_boxes[:, 3], track, b[:, 2])
    np.maximum.at(out_boxes[:, 4], track, b[:, 3])
    np.maximum.at(out_boxes[:, 5], track, z.astype(float) + 1.0)
    out_scores = np.full(n_tracks, -np.inf)
    np.maximum.at(out_scores, track, s)
    out_vol = np.empty(n_tracks, dtype=vol.dtype)
    out_vol[track] = vol
    return StackedBoxes(out_vol, out_boxes, out_scores, track, vol, z, b)


def match_stacked_boxes(
    stacked: StackedBoxes,
    gt_volume_ids: ArrayLike,
    gt_slice_indices: ArrayLike,
    gt_boxes: ArrayLike,
    *,
    iou_threshold: float = 0.5,
    volumes: ArrayLike | None = None,
    iou_convention: str = "continuous",
) -> FrocMatch:
    """Match stacked 3D boxes to 2D ground-truth boxes with the LUNA16 counting rules.

    Args:
        stacked: output of :func:`stack_slice_boxes`.
        gt_volume_ids: (G,) sub-volume id of each lesion.
        gt_slice_indices: (G,) slice of each lesion's 2D box (one box per lesion).
        gt_boxes: (G, 4) ``(xmin, ymin, xmax, ymax)`` pixels.
        iou_threshold: a cross-section must exceed it (Yan et al. 2020: 0.5).
        volumes: the evaluated sub-volumes (FPs per sub-volume); default every id seen.
        iou_convention: ``"continuous"`` (default) or ``"pixel"``, for the cross-section
            IoU; stack with the same convention.

    Returns:
        The match; read the FROC at 1/8 ... 8 FPs per sub-volume with :func:`froc_curve`.
    """
    convention = check_iou_convention(iou_convention)
    g_vol = as_ids(gt_volume_ids, "gt_volume_ids")
    g_z = check_1d(gt_slice_indices, "gt_slice_indices")
    check_finite(g_z, "gt_slice_indices")
    g_box = check_boxes(gt_boxes, "gt_boxes").reshape(-1, 4)
    check_same_length(gt_volume_ids=g_vol, gt_slice_indices=g_z, gt_boxes=g_box)
    volume_list = resolve_scans(volumes, stacked.volume_ids, g_vol)
    t_scan = index_ids(stacked.volume_ids, volume_list)
    g_scan = index_ids(g_vol, volume_list)
    t_in, g_in = t_scan >= 0, g_scan >= 0

    # Cross-sections and ground truths meet only on the same slice of the same volume.
    member_key = np.char.add(
        np.char.add(stacked.slice_volume_ids, "\x00"), stacked.slice_indices.astype(str)
    )
    gt_key = np.char.add(np.char.add(g_vol, "\x00"), g_z.astype(np.int64).astype(str))
    keys = np.unique(np.concatenate((member_key, gt_key)))
    hit_m, hit_g = overlapping_pairs(
        np.searchsorted(keys, member_key),
        stacked.slice_boxes,
        np.searchsorted(keys, gt_key),
        g_box,
        len(keys),
        iou_threshold,
        convention,
    )
    pairs = np.unique(np.c_[stacked.track[hit_m], hit_g], axis=0).reshape(-1, 2)
    pairs = pairs[t_in[pairs[:, 0]] & g_in[pairs[:, 1]]]
    # Renumber tracks and lesions to those of the evaluated volumes.
    t_new = np.cumsum(t_in) - 1
    g_new = np.cumsum(g_in) - 1
    return resolve_hits(
        scans=volume_list,
        mark_scans=t_scan[t_in],
        mark_probs=stacked.scores[t_in],
        nodule_scans=g_scan[g_in],
        hit_marks=t_new[pairs[:, 0]],
        hit_nodules=g_new[pairs[:, 1]],
        ignored_marks=np.zeros(int(t_in.sum()), dtype=bool),
        n_capped=0,
        n_outside=int((~t_in).sum()),
    )
