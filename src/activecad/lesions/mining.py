"""Missing-annotation matching (MAM) and negative-region mining (NRM) of MELD.

Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
Datasets" (2020), sections 3.2 and 3.3. Both take box tables (pandas DataFrames), one row
per box:

- ``image``: the slice the box lies on, e.g. DeepLesion's ``File_name``
  ``<patient>_<study>_<series>_<slice>.png``; two boxes meet only on the same image.
- ``x1, y1, x2, y2``: top-left and bottom-right corner in pixels of that slice
  (x = column, y = row; continuous corners, so a box is ``x2 - x1`` wide).
- ``patient`` (MAM): the patient, grouping all their studies, series and slices.
- ``score`` (proposals): the detection score of the head that proposed the box.

Other columns are carried along. Boxes "overlap" when their IoU exceeds ``overlap_iou``
(default 0: any shared area).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from activecad.metrics._box_matching import check_boxes, paired_box_iou

__all__ = ["ignore_boxes_by_image", "mine_missing", "suspicious_regions"]

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
"""Box columns of every table here: pixels of the slice, top-left then bottom-right."""

# Proposal-annotation pairs whose embedding distances are computed at once (bounds memory
# to about _PAIR_CHUNK x embedding size x 8 bytes when a patient has many proposals).
_PAIR_CHUNK = 65536


def _check_table(table: pd.DataFrame, name: str, columns: Iterable[str]) -> pd.DataFrame:
    """Return ``table``; raise ``TypeError``/``ValueError`` unless it holds ``columns``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}.")
    needed = list(columns)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {', '.join(missing)}; it needs {', '.join(needed)} "
            f"(found {', '.join(map(str, table.columns)) or 'none'})."
        )
    return table


def _boxes(table: pd.DataFrame, name: str) -> NDArray[np.float64]:
    return check_boxes(table[list(BOX_COLUMNS)].to_numpy(np.float64), name).reshape(-1, 4)


def _check_overlap_iou(overlap_iou: float) -> None:
    if not 0.0 <= overlap_iou < 1.0:
        raise ValueError(f"overlap_iou must lie in [0, 1), got {overlap_iou}.")


def _overlaps_any(
    images: NDArray[np.str_],
    boxes: NDArray[np.float64],
    other_images: NDArray[np.str_],
    other_boxes: NDArray[np.float64],
    overlap_iou: float,
) -> NDArray[np.bool_]:
    """(N,) whether each box overlaps (IoU > ``overlap_iou``) some other box of its image."""
    left = pd.DataFrame({"image": images, "i": np.arange(len(images))})
    right = pd.DataFrame({"image": other_images, "j": np.arange(len(other_images))})
    pairs = left.merge(right, on="image")
    i = pairs["i"].to_numpy(np.intp)
    j = pairs["j"].to_numpy(np.intp)
    hit = np.zeros(len(images), dtype=bool)
    hit[i[paired_box_iou(boxes[i], other_boxes[j]) > overlap_iou]] = True
    return hit


def _embeddings(values: ArrayLike, name: str, n_rows: int) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or len(arr) != n_rows:
        raise ValueError(
            f"{name} must have shape ({n_rows}, D), one embedding per table row, got {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values; embed every box before matching.")
    return arr


def mine_missing(
    proposals: pd.DataFrame,
    annotations: pd.DataFrame,
    proposal_embeddings: ArrayLike,
    annotation_embeddings: ArrayLike,
    *,
    theta: float = 0.15,
    overlap_iou: float = 0.0,
) -> pd.DataFrame:
    """Missing-annotation matching: proposals that look like an annotated lesion of their patient.

    A radiologist marks a lesion on one key slice of one series of one study; the same
    lesion on the other slices, series and studies of the patient stays unmarked. MAM
    compares a lesion embedding of every proposal with that of every annotation **of the
    same patient** and mines the proposals whose **Euclidean (L2) distance** to one of them
    is **strictly below** ``theta``, as the paper does. Proposals and annotations of different
    patients are never compared. A proposal that overlaps an annotation on its own image is
    that annotated lesion, not a missing one, and is never mined.

    The paper used LesaNet's 256-d lesion embedding, for which ``theta = 0.15``; an
    embedding from another model needs its own ``theta`` (see its distance distribution).
    Mined lesions are positives for the classification heads only: their boxes are
    detections, not drawn, and the paper does not train box regression on them.

    Args:
        proposals: detections on the patient's slices; columns ``patient``, ``image``,
            ``x1, y1, x2, y2`` (pixels of the slice), more columns kept.
        annotations: existing annotations; the same columns.
        proposal_embeddings: (P, D) one embedding per proposal row, in row order.
        annotation_embeddings: (A, D) one embedding per annotation row, same space.
        theta: L2 distance a match must stay strictly below (paper: 0.15).
        overlap_iou: IoU above which a proposal is taken for an annotation of its image.

    Returns:
        The mined proposals (rows of ``proposals``, index kept, in their order) with two
        more columns: ``annotation``, the 0-based row of the nearest matching annotation
        (among those of the patient under ``theta``), and ``distance``, their L2 distance.
    """
    columns = ("patient", "image", *BOX_COLUMNS)
    _check_table(proposals, "proposals", columns)
    _check_table(annotations, "annotations", columns)
    if not (np.isfinite(theta) and theta > 0):
        raise ValueError(f"theta must be a positive distance, got {theta}.")
    _check_overlap_iou(overlap_iou)
    emb_p = _embeddings(proposal_embeddings, "proposal_embeddings", len(proposals))
    emb_a = _embeddings(annotation_embeddings, "annotation_embeddings", len(annotations))
    if emb_p.shape[1] != emb_a.shape[1] and len(proposals) and len(annotations):
        raise ValueError(
            f"proposal_embeddings have {emb_p.shape[1]} dimensions and annotation_embeddings "
            f"{emb_a.shape[1]}; embed both with the same model."
        )
    box_p = _boxes(proposals, "proposals")
    box_a = _boxes(annotations, "annotations")
    image_p = proposals["image"].astype(str).to_numpy()
    image_a = annotations["image"].astype(str).to_numpy()

    already = _overlaps_any(image_p, box_p, image_a, box_a, overlap_iou)
    left = pd.DataFrame(
        {"patient": proposals["patient"].astype(str).to_numpy(), "i": np.arange(len(proposals))}
    )[~already]
    right = pd.DataFrame(
        {"patient": annotations["patient"].astype(str).to_numpy(), "j": np.arange(len(annotations))}
    )
    pairs = left.merge(right, on="patient")
    i = pairs["i"].to_numpy(np.intp)
    j = pairs["j"].to_numpy(np.intp)
    distance = np.empty(len(pairs))
    for start in range(0, len(pairs), _PAIR_CHUNK):
        part = slice(start, start + _PAIR_CHUNK)
        distance[part] = np.linalg.norm(emb_p[i[part]] - emb_a[j[part]], axis=1)
    close = distance < theta
    i, j, distance = i[close], j[close], distance[close]
    # The nearest annotation of each mined proposal: sort by proposal, then distance.
    order = np.lexsort((distance, i))
    i, j, distance = i[order], j[order], distance[order]
    first = np.r_[True, i[1:] != i[:-1]] if len(i) else np.zeros(0, dtype=bool)
    mined = proposals.iloc[i[first]].copy()
    mined["annotation"] = j[first]
    mined["distance"] = distance[first]
    return mined


def suspicious_regions(
    expert_proposals: pd.DataFrame,
    annotations: pd.DataFrame,
    mined: pd.DataFrame | None = None,
    *,
    sigma: float = 0.5,
    overlap_iou: float = 0.0,
) -> pd.DataFrame:
    """Negative-region mining: single-type experts' confident proposals that nobody marked.

    For each proposal of the single-type experts (lung nodules, liver tumours, lymph nodes
    in the paper), a score **strictly above** ``sigma`` that overlaps **no existing and no
    mined annotation** of its image makes it a suspicious lesion. Fine-tuning ignores these
    regions (samples them as neither positive nor negative; see
    :func:`ignore_boxes_by_image`), and the rest of the image, outside annotations, mined
    lesions and suspicious regions, is reliable negative region. The paper found ignoring
    them better than taking them as positives.

    Args:
        expert_proposals: the single-type experts' detections; columns ``image``,
            ``x1, y1, x2, y2`` (pixels of the slice) and ``score``, more columns kept.
        annotations: existing annotations; columns ``image`` and ``x1, y1, x2, y2``.
        mined: mined missing annotations (e.g. :func:`mine_missing`'s result), the same
            columns; ``None`` when MAM was not run.
        sigma: score a suspicious proposal must exceed (paper: 0.5).
        overlap_iou: IoU above which a proposal overlaps an annotation (default 0: any
            shared area).

    Returns:
        Exactly the suspicious proposals: rows of ``expert_proposals`` (index kept, in their
        order).
    """
    box_columns = ("image", *BOX_COLUMNS)
    _check_table(expert_proposals, "expert_proposals", (*box_columns, "score"))
    _check_table(annotations, "annotations", box_columns)
    if mined is not None:
        _check_table(mined, "mined", box_columns)
    if not np.isfinite(sigma):
        raise ValueError(f"sigma must be a finite score threshold, got {sigma}.")
    _check_overlap_iou(overlap_iou)
    scores = expert_proposals["score"].to_numpy(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("expert_proposals' score holds non-finite values.")
    known = {"annotations": annotations, **({} if mined is None else {"mined": mined})}
    known_images = np.concatenate([t["image"].astype(str).to_numpy() for t in known.values()])
    known_boxes = np.concatenate([_boxes(t, name) for name, t in known.items()])
    boxes = _boxes(expert_proposals, "expert_proposals")
    images = expert_proposals["image"].astype(str).to_numpy()
    covered = _overlaps_any(images, boxes, known_images, known_boxes, overlap_iou)
    return expert_proposals[(scores > sigma) & ~covered].copy()


def ignore_boxes_by_image(
    suspicious: pd.DataFrame, images: Iterable[str] | None = None
) -> dict[str, NDArray[np.float64]]:
    """The regions fine-tuning must ignore, per image.

    A training sampler takes no anchor or proposal that overlaps an ignore box as a
    negative, and none as a positive unless it matches an annotation: the suspicious
    lesions of :func:`suspicious_regions` thus add no wrong signal either way.

    Args:
        suspicious: boxes to ignore; columns ``image`` and ``x1, y1, x2, y2`` (pixels).
        images: the images to return; each gets an entry, a (0, 4) array when it has no
            box to ignore, and boxes of other images are left out. Default: the images of
            ``suspicious``.

    Returns:
        image -> (K, 4) float64 boxes ``(x1, y1, x2, y2)``, pixels of that image, in the
        order of ``suspicious``.
    """
    _check_table(suspicious, "suspicious", ("image", *BOX_COLUMNS))
    boxes = _boxes(suspicious, "suspicious")
    names = suspicious["image"].astype(str).to_numpy()
    wanted = list(dict.fromkeys(names)) if images is None else [str(i) for i in images]
    rows = pd.Series(np.arange(len(names))).groupby(names, sort=False).indices
    return {name: boxes[rows[name]] if name in rows else np.empty((0, 4)) for name in wanted}
