"""``activecad eval boxes``: lesion-detection FROC from DeepLesion-style tables.

Reads the lesions (``lesions`` table: DeepLesion's ``DL_info.csv`` columns, one box per
lesion on its key slice) and 2D detections per slice (``lesion_predictions`` table), checks
them with messages that name the file, the column and the line, and hands plain arrays to
:mod:`activecad.metrics`. Two protocols (Yan et al., "Universal Lesion Detection by
Learning from Multiple Heterogeneously Labeled Datasets", 2020, section 4.3):

* ``volume``: detections on consecutive slices with IoU > 0.5 are stacked into 3D boxes; a
  3D box detects a lesion when one of its 2D cross-sections has IoU > 0.5 with the lesion's
  box on the same slice; sensitivity at 1/8 .. 8 FPs per sub-volume and their mean, the
  average sensitivity. A sub-volume is a series' slices that ``Slice_range`` covers:
  the ranges of the lesions of one series that overlap or touch form one sub-volume.
* ``key-slice``: DeepLesion's official test protocol; only the key slices are images, every
  detection on another slice is left out, and sensitivity is read at 0.5, 1, 2 and 4 FPs
  per key slice.

Counting follows activecad's box FROC (LUNA16's rules: IoU strictly above 0.5, a lesion
counts once at its best hit, extra hits are neither TP nor FP). ``--iou pixel`` computes
the IoU as the DeepLesion authors' evaluation does, with boxes ``x2 - x1 + 1`` pixels wide.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from activecad.cli._common import atomic_output, output_folder, usage_error
from activecad.cli.eval import eval_app
from activecad.errors import InputError
from activecad.identifiers import check_overlap
from activecad.io.tables import read_table
from activecad.metrics import (
    KEY_SLICE_FP_RATES,
    LUNA16_FP_RATES,
    FrocMatch,
    IouConvention,
    froc_curve,
    match_boxes,
    match_stacked_boxes,
    sensitivity_at_fp_rates,
    stack_slice_boxes,
)
from activecad.registry import unknown_name_message

logger = logging.getLogger("activecad")
_out = Console()

MODES = ("volume", "key-slice")
_FPS_PER = {"volume": "sub-volume", "key-slice": "key slice"}
_FPS_COLUMN = {"volume": "fps_per_sub_volume", "key-slice": "fps_per_key_slice"}
# `<series>_<slice>.png` (DL_info.csv's File_name) or `<series>/<slice>.png` (the image
# path under DeepLesion's Images_png), with or without folders before it.
_SLICE_NAME = r"(?:^|/)(?P<series>[^/]+?)[_/](?P<slice>\d+)(?:\.[^./]*)?$"
_NAME_FIX = (
    "Name each slice <patient>_<study>_<series>_<slice>.png as DL_info.csv does, or "
    "<patient>_<study>_<series>/<slice>.png"
)


def _check_mode(value: str) -> str:
    if value not in MODES:
        raise usage_error(unknown_name_message("mode", value, MODES), option="--mode")
    return value


def _check_iou(value: str) -> str:
    valid = [c.value for c in IouConvention]
    if value not in valid:
        raise usage_error(unknown_name_message("IoU convention", value, valid), option="--iou")
    return value


def _split_slice_names(names: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Series id and slice index of each ``File_name``; a name of no known form is an error."""
    parts = names.astype(str).str.strip().str.replace("\\", "/").str.extract(_SLICE_NAME)
    bad = parts["series"].isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"column 'File_name' holds {names.iloc[first]!r} at line {first + 2}, which names "
            "no series and slice",
            path=path,
            fix=_NAME_FIX,
        )
    return parts["series"].to_numpy(str), parts["slice"].to_numpy(np.int64)


def _check_boxes(boxes: np.ndarray, column: str, path: Path) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 whose bottom-right corner is not above or left of the top-left."""
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{column} at line {first + 2} has x2 < x1 or y2 < y1: {boxes[first].tolist()}",
            path=path,
            fix="Write boxes as x1, y1 (top-left) then x2, y2 (bottom-right), in pixels",
        )
    return boxes


def _whole_numbers(values: np.ndarray, column: str, path: Path) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    bad = values != np.round(values)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
        raise InputError(
            f"column '{column}' holds {values[first].tolist()} at line {first + 2}",
            path=path,
            fix=f"Write '{column}' as whole slice indices",
        )
    return values.astype(np.int64)


def _read_lesions(path: Path) -> pd.DataFrame:
    """One row per lesion: series, key slice, slice range and box (pixels of the key slice)."""
    table = read_table(path, "lesions")
    if table.empty:
        raise InputError("the table holds no lesion", path=path, fix="Pass the annotated lesions")
    series, name_slice = _split_slice_names(table["File_name"], path)
    key = _whole_numbers(table["Key_slice_index"].to_numpy(), "Key_slice_index", path)
    differs = key != name_slice
    if differs.any():
        first = int(np.flatnonzero(differs)[0])
        raise InputError(
            f"line {first + 2}: File_name {table['File_name'].iloc[first]!r} names slice "
            f"{name_slice[first]} but Key_slice_index is {key[first]}",
            path=path,
            fix="Count slices the same way in both columns",
        )
    ranges = _whole_numbers(np.array(table["Slice_range"].tolist()), "Slice_range", path)
    outside = (key < ranges[:, 0]) | (key > ranges[:, 1])
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"line {first + 2}: Key_slice_index {key[first]} lies outside Slice_range "
            f"{ranges[first].tolist()}",
            path=path,
            fix="Give each lesion the first and last slice of the sub-volume around its key slice",
        )
    boxes = _check_boxes(np.array(table["Bounding_boxes"].tolist()), "Bounding_boxes", path)
    return pd.DataFrame(
        {
            "series": series,
            "slice": key,
            "first": ranges[:, 0],
            "last": ranges[:, 1],
            "x1": boxes[:, 0],
            "y1": boxes[:, 1],
            "x2": boxes[:, 2],
            "y2": boxes[:, 3],
        }
    )


def _read_predictions(path: Path) -> pd.DataFrame:
    """One row per 2D detection: series, slice, box (pixels of that slice) and score."""
    table = read_table(path, "lesion_predictions")
    series, slices = _split_slice_names(table["File_name"], path)
    boxes = _check_boxes(table[["x1", "y1", "x2", "y2"]].to_numpy(np.float64), "the box", path)
    return pd.DataFrame(
        {
            "series": series,
            "slice": slices,
            "x1": boxes[:, 0],
            "y1": boxes[:, 1],
            "x2": boxes[:, 2],
            "y2": boxes[:, 3],
            "score": table["score"].to_numpy(np.float64),
        }
    )


def _sub_volumes(lesions: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Merge the lesions' slice ranges into the sub-volumes of each series.

    Args:
        lesions: columns ``series``, ``first`` and ``last`` (slice indices, inclusive).

    Returns:
        The sub-volumes (columns ``volume``, ``series``, ``first``, ``last``; disjoint within
        a series) and the (N,) sub-volume id of each lesion. Ranges of one series that
        overlap or touch (``first <= previous last + 1``) form one sub-volume.
    """
    order = lesions.sort_values(["series", "first", "last"], kind="stable")
    running_end = order.groupby("series")["last"].cummax()
    previous_end = running_end.groupby(order["series"]).shift()
    starts = previous_end.isna() | (order["first"] > previous_end + 1)
    group = starts.cumsum().to_numpy() - 1
    volumes = order.groupby(group).agg(
        series=("series", "first"), first=("first", "min"), last=("last", "max")
    )
    volumes.insert(
        0,
        "volume",
        volumes["series"] + ":" + volumes["first"].astype(str) + "-" + volumes["last"].astype(str),
    )
    volume_of_lesion = np.empty(len(lesions), dtype=object)
    volume_of_lesion[lesions.index.get_indexer(order.index)] = volumes["volume"].to_numpy()[group]
    return volumes.reset_index(drop=True), volume_of_lesion.astype(str)


def _evaluate_volume(
    lesions: pd.DataFrame, predictions: pd.DataFrame, iou: str
) -> tuple[FrocMatch, dict[str, int], pd.DataFrame]:
    volumes, lesion_volume = _sub_volumes(lesions)
    pairs = predictions.merge(volumes, on="series")
    pairs = pairs[(pairs["slice"] >= pairs["first"]) & (pairs["slice"] <= pairs["last"])]
    if len(pairs) < len(predictions):
        logger.info(
            "%d of %d predictions lie outside the annotated sub-volumes and are not evaluated",
            len(predictions) - len(pairs),
            len(predictions),
        )
    box = ["x1", "y1", "x2", "y2"]
    stacked = stack_slice_boxes(
        pairs["volume"].to_numpy(str),
        pairs["slice"].to_numpy(),
        pairs[box].to_numpy(np.float64),
        pairs["score"].to_numpy(np.float64),
        iou_convention=iou,
    )
    match = match_stacked_boxes(
        stacked,
        lesion_volume,
        lesions["slice"].to_numpy(),
        lesions[box].to_numpy(np.float64),
        volumes=volumes["volume"].to_numpy(str),
        iou_convention=iou,
    )
    table = stacked.to_frame()
    counts = {"evaluated": len(pairs), "boxes_3d": len(stacked.scores)}
    return match, counts, table


def _evaluate_key_slices(
    lesions: pd.DataFrame, predictions: pd.DataFrame, iou: str
) -> tuple[FrocMatch, dict[str, int]]:
    lesion_images = lesions["series"] + "/" + lesions["slice"].astype(str)
    pred_images = predictions["series"] + "/" + predictions["slice"].astype(str)
    box = ["x1", "y1", "x2", "y2"]
    match = match_boxes(
        pred_images.to_numpy(str),
        predictions[box].to_numpy(np.float64),
        predictions["score"].to_numpy(np.float64),
        lesion_images.to_numpy(str),
        lesions[box].to_numpy(np.float64),
        images=np.unique(lesion_images.to_numpy(str)),
        iou_convention=iou,
    )
    if match.n_outside:
        logger.info(
            "%d of %d predictions lie on slices that are no key slice and are not evaluated",
            match.n_outside,
            len(predictions),
        )
    return match, {"evaluated": len(predictions) - match.n_outside}


@eval_app.command("boxes")
def boxes(
    annotations: Path = typer.Option(
        ..., help="Lesions, DeepLesion DL_info.csv columns (a box on each key slice)."
    ),
    predictions: Path = typer.Option(
        ..., help="2D detections per slice: File_name,x1,y1,x2,y2,score (pixels of the slice)."
    ),
    mode: str = typer.Option(
        "volume",
        callback=_check_mode,
        metavar="volume|key-slice",
        help="volume: 3D boxes stacked from the slices, FPs per sub-volume (default); "
        "key-slice: DeepLesion's key slices only, FPs per key slice.",
    ),
    iou: str = typer.Option(
        "continuous",
        callback=_check_iou,
        metavar="continuous|pixel",
        help="IoU convention: continuous (a box is x2 - x1 wide; default) or pixel "
        "(x2 - x1 + 1, as the DeepLesion authors' evaluation counts).",
    ),
    out: Path | None = typer.Option(
        None,
        help="Folder to write boxes.json and froc.csv into (volume mode: also stacked.csv, "
        "the 3D boxes).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Lesion FROC from DeepLesion-style tables, per sub-volume or per key slice.

    Volume mode stacks the 2D detections into 3D boxes (IoU > 0.5 on consecutive slices) and
    reads the sensitivity at 1/8 to 8 FPs per sub-volume; key-slice mode reads it at 0.5 to 4
    FPs per key slice (Yan et al. 2020). A hit needs IoU > 0.5 on the lesion's slice.
    Predictions and annotations are joined by series: none in common is an error, a partial
    overlap a warning.
    """
    if out is not None:
        out = output_folder(out, writes="boxes.json, froc.csv and (volume mode) stacked.csv")
    lesions = _read_lesions(annotations)
    preds = _read_predictions(predictions)
    check_overlap(
        preds["series"],
        lesions["series"],
        ours_name="the predictions",
        theirs_name=f"the annotations ({annotations})",
        path=predictions,
    )
    stacked: pd.DataFrame | None = None
    if mode == "volume":
        match, extra, stacked = _evaluate_volume(lesions, preds, iou)
        rates = np.asarray(LUNA16_FP_RATES)
    else:
        match, extra = _evaluate_key_slices(lesions, preds, iou)
        rates = np.asarray(KEY_SLICE_FP_RATES)
    fps, sens, thresholds = froc_curve(
        match.tp_probs, match.fp_probs, n_nodules=match.n_nodules, n_scans=match.n_scans
    )
    points = sensitivity_at_fp_rates(fps, sens, rates)
    summary: dict[str, object] = {
        "mode": mode,
        "iou": iou,
        "fps_per": _FPS_PER[mode],
        "average_sensitivity": float(np.mean(points)),
        "sensitivities": {f"{r:g}": float(s) for r, s in zip(rates, points, strict=True)},
        "counts": {
            "lesions": match.n_nodules,
            "detected": match.n_detected,
            "tp": match.n_tp_marks,
            "fp": match.n_fp,
            "double_hits": match.n_double_hits,
            "images": match.n_scans,
            "predictions": len(preds),
            **extra,
        },
    }
    if out is not None:
        with atomic_output(out, folder=True) as tmp:
            (tmp / "boxes.json").write_text(json.dumps(summary, indent=2) + "\n")
            pd.DataFrame(
                {_FPS_COLUMN[mode]: fps, "sensitivity": sens, "threshold": thresholds}
            ).to_csv(tmp / "froc.csv", index=False)
            if stacked is not None:
                stacked.to_csv(tmp / "stacked.csv", index=False)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_boxes(summary)


def _print_boxes(summary: dict) -> None:
    title = (
        f"Lesion FROC ({summary['mode']}, {summary['iou']} IoU)  "
        f"average sensitivity = {summary['average_sensitivity']:.4f}"
    )
    table = Table(title=title)
    table.add_column(f"FPs per {summary['fps_per']}", justify="right")
    table.add_column("sensitivity", justify="right")
    for rate, sens in summary["sensitivities"].items():
        table.add_row(rate, f"{sens:.4f}")
    _out.print(table)
    _out.print(", ".join(f"{k} {v}" for k, v in summary["counts"].items()), highlight=False)
