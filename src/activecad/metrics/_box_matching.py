"""FROC by box overlap (2D or 3D) instead of distance, with the LUNA16 counting rules.

Boxes are MONAI's standard mode in voxels (or pixels) of their image:
2D ``(xmin, ymin, xmax, ymax)``, 3D ``(xmin, ymin, zmin, xmax, ymax, zmax)``. How the
corners count pixels is the IoU convention (:class:`IouConvention`): ``"continuous"``
(MONAI, torchvision: a box is ``xmax - xmin`` wide) or ``"pixel"`` (the DeepLesion
authors' evaluation: ``xmax`` is the last pixel inside, so it is ``xmax - xmin + 1`` wide).
"""

from __future__ import annotations

import difflib
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from activecad.metrics._froc import (
    FrocMatch,
    cap_marks_per_scan,
    index_ids,
    resolve_hits,
    resolve_scans,
    same_scan_pairs,
)
from activecad.metrics._validation import (
    as_ids,
    check_1d,
    check_finite,
    check_same_length,
)

KEY_SLICE_FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
"""FPs per key slice of DeepLesion's key-slice FROC (Yan et al. 2020, Table 3)."""


class IouConvention(StrEnum):
    """How box corners count pixels (voxels) when an IoU is computed.

    Attributes:
        CONTINUOUS: corners are points of the continuous image plane; a box is
            ``xmax - xmin`` wide (MONAI, torchvision; activecad's default).
        PIXEL: corners are the first and the last pixel inside the box; a box is
            ``xmax - xmin + 1`` wide, as in the evaluation code the DeepLesion authors
            released, which DeepLesion papers report. On 8-60 px lesions it gives IoUs up to
            a few hundredths higher than the continuous convention.
    """

    CONTINUOUS = "continuous"
    PIXEL = "pixel"


def check_iou_convention(value: str) -> IouConvention:
    """Look an IoU convention up by name; a wrong name raises ``ValueError`` with a hint."""
    try:
        return IouConvention(value)
    except ValueError:
        valid = [c.value for c in IouConvention]
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"iou_convention must be one of {', '.join(valid)}, got {value!r}.{hint}"
        ) from None


def check_boxes(boxes: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return finite (N, 4) or (N, 6) boxes with max >= min on every axis."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, arr.shape[-1] if arr.ndim == 2 and arr.shape[-1] in (4, 6) else 4)
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise ValueError(
            f"{name} must have shape (N, 4) or (N, 6) in standard mode "
            f"(xmin, ymin[, zmin], xmax, ymax[, zmax]), got {arr.shape}."
        )
    check_finite(arr, name)
    d = arr.shape[1] // 2
    if np.any(arr[:, d:] < arr[:, :d]):
        first = int(np.flatnonzero(np.any(arr[:, d:] < arr[:, :d], axis=1))[0])
        raise ValueError(f"{name}[{first}] has a max corner below its min corner: {arr[first]}.")
    return arr


def paired_box_iou(
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    convention: IouConvention = IouConvention.CONTINUOUS,
) -> NDArray[np.float64]:
    """IoU of ``a[i]`` with ``b[i]`` for each i; both (P, 2d) standard-mode boxes."""
    d = a.shape[1] // 2
    # The pixel convention counts both corner pixels: one more pixel along every axis.
    extra = 1.0 if convention is IouConvention.PIXEL else 0.0
    lo = np.maximum(a[:, :d], b[:, :d])
    hi = np.minimum(a[:, d:], b[:, d:])
    inter = np.prod(np.clip(hi - lo + extra, 0.0, None), axis=1)
    vol_a = np.prod(a[:, d:] - a[:, :d] + extra, axis=1)
    vol_b = np.prod(b[:, d:] - b[:, :d] + extra, axis=1)
    union = vol_a + vol_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou(
    boxes_a: ArrayLike, boxes_b: ArrayLike, *, iou_convention: str = "continuous"
) -> NDArray[np.float64]:
    """Pairwise IoU matrix.

    Args:
        boxes_a: (A, 4) or (A, 6) standard-mode boxes.
        boxes_b: (B, same) boxes in the same frame.
        iou_convention: ``"continuous"`` (a box is ``xmax - xmin`` wide) or ``"pixel"``
            (``xmax - xmin + 1``, the DeepLesion evaluation's); see :class:`IouConvention`.

    Returns:
        (A, B) IoU; degenerate (zero-size) pairs give 0.
    """
    convention = check_iou_convention(iou_convention)
    a = check_boxes(boxes_a, "boxes_a")
    b = check_boxes(boxes_b, "boxes_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"boxes_a and boxes_b differ in dimension: {a.shape} vs {b.shape}.")
    ia, ib = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    return paired_box_iou(a[ia.ravel()], b[ib.ravel()], convention).reshape(len(a), len(b))


def overlapping_pairs(
    scan_a: NDArray[np.intp],
    boxes_a: NDArray[np.float64],
    scan_b: NDArray[np.intp],
    boxes_b: NDArray[np.float64],
    n_scans: int,
    iou_threshold: float,
    convention: IouConvention = IouConvention.CONTINUOUS,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pairs (i, j) in the same scan whose IoU is strictly above ``iou_threshold``."""
    ia, jb = same_scan_pairs(scan_a, scan_b, n_scans)
    keep = paired_box_iou(boxes_a[ia], boxes_b[jb], convention) > iou_threshold
    return ia[keep], jb[keep]


def match_boxes(
    pred_ids: ArrayLike,
    pred_boxes: ArrayLike,
    pred_scores: ArrayLike,
    gt_ids: ArrayLike,
    gt_boxes: ArrayLike,
    *,
    iou_threshold: float = 0.5,
    ignore_ids: ArrayLike | None = None,
    ignore_boxes: ArrayLike | None = None,
    images: ArrayLike | None = None,
    max_marks: int | None = None,
    iou_convention: str = "continuous",
) -> FrocMatch:
    """Match predicted boxes to ground-truth boxes by IoU, counting as LUNA16 does.

    A prediction hits a ground truth when their IoU is strictly above ``iou_threshold``
    (Yan et al. 2020: "IoU > 0.5"); a box over two ground truths detects both; a ground truth
    counts once at its best-scoring hit; predictions overlapping only an ignore box are
    neither TP nor FP. Read sensitivity at any FP rate (Liu, Cao & Tian, MICCAI 2020,
    report 4 FPs per scan) with :func:`froc_curve` and :func:`sensitivity_at_fp_rates`.

    Args:
        pred_ids: (M,) image (scan, slice, sub-volume) id of each prediction.
        pred_boxes: (M, 4) or (M, 6) standard-mode boxes, voxels of that image.
        pred_scores: (M,) finite scores.
        gt_ids: (N,) image id of each ground-truth box.
        gt_boxes: (N, same) standard-mode boxes.
        iou_threshold: overlap a hit must exceed.
        ignore_ids: (E,) image id of each ignore box.
        ignore_boxes: (E, same) boxes whose otherwise-FP hits are ignored.
        images: the evaluated image list (FPs are per image); default every id seen.
        max_marks: optional per-image cap with LUNA16's strict rule (``None``: no cap).
        iou_convention: ``"continuous"`` (default) or ``"pixel"``, the pixel-inclusive IoU
            of the DeepLesion authors' evaluation (see :class:`IouConvention`); it applies
            to hits and to ignore boxes alike.
    """
    convention = check_iou_convention(iou_convention)
    p_ids = as_ids(pred_ids, "pred_ids")
    p_box = check_boxes(pred_boxes, "pred_boxes")
    p_s = check_1d(pred_scores, "pred_scores")
    check_finite(p_s, "pred_scores")
    check_same_length(pred_ids=p_ids, pred_boxes=p_box, pred_scores=p_s)
    g_ids = as_ids(gt_ids, "gt_ids")
    g_box = check_boxes(gt_boxes, "gt_boxes")
    check_same_length(gt_ids=g_ids, gt_boxes=g_box)
    if (ignore_ids is None) != (ignore_boxes is None):
        raise ValueError("ignore_ids and ignore_boxes go together.")
    e_ids = as_ids([] if ignore_ids is None else ignore_ids, "ignore_ids")
    e_box = check_boxes([] if ignore_boxes is None else ignore_boxes, "ignore_boxes")
    check_same_length(ignore_ids=e_ids, ignore_boxes=e_box)
    dims = {arr.shape[1] for arr in (p_box, g_box, e_box) if len(arr)}
    if len(dims) > 1:
        raise ValueError(f"boxes mix 2D and 3D: widths {sorted(dims)}.")
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1), got {iou_threshold}.")
    width = dims.pop() if dims else 4
    p_box, g_box, e_box = (b.reshape(-1, width) for b in (p_box, g_box, e_box))

    image_list = resolve_scans(images, p_ids, g_ids)
    n_images = len(image_list)
    p_scan, g_scan, e_scan = (index_ids(ids, image_list) for ids in (p_ids, g_ids, e_ids))
    p_in = p_scan >= 0
    keep = cap_marks_per_scan(p_scan[p_in], p_s[p_in], max_marks, n_images)
    p_scan, p_box, p_s = p_scan[p_in][keep], p_box[p_in][keep], p_s[p_in][keep]
    g_in, e_in = g_scan >= 0, e_scan >= 0
    hit_p, hit_g = overlapping_pairs(
        p_scan, p_box, g_scan[g_in], g_box[g_in], n_images, iou_threshold, convention
    )
    ign_p, _ = overlapping_pairs(
        p_scan, p_box, e_scan[e_in], e_box[e_in], n_images, iou_threshold, convention
    )
    ignored = np.zeros(len(p_s), dtype=bool)
    ignored[ign_p] = True
    return resolve_hits(
        scans=image_list,
        mark_scans=p_scan,
        mark_probs=p_s,
        nodule_scans=g_scan[g_in],
        hit_marks=hit_p,
        hit_nodules=hit_g,
        ignored_marks=ignored,
        n_capped=int((~keep).sum()),
        n_outside=int((~p_in).sum()),
    )
