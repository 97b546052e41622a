"""``activecad mine``: MELD's missing annotations (MAM) and suspicious regions (NRM).

Runs a trained MELD model over the training slices of a DeepLesion-style folder (every key
slice and a stored slice every ``--every-mm``) and writes one row per finding, in the
coordinates ``DL_info.csv`` uses (pixel centres of the stored slice), with its reason:
``missing_annotation`` (a universal proposal whose lesion embedding lies within ``--theta``
of an annotated lesion of the same patient, among the proposals scored at least
``--min-score``) or ``suspicious`` (a single-type expert's
proposal scored above ``--sigma`` that overlaps no annotation and no mined lesion). Yan et
al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
Datasets" (2020), sections 3.2-3.3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from activecad.cli._common import atomic_output, output_file
from activecad.errors import InputError

COLUMNS = (
    "File_name", "x1", "y1", "x2", "y2", "score", "reason", "expert", "distance",
    "matched_annotation",
)  # fmt: skip


def _deeplesion_folder(data: Path) -> Path:
    if not data.is_dir():
        raise InputError(
            "no such folder",
            path=data,
            fix="give a DeepLesion-style folder (DL_info.csv, Images_png/) or one holding it",
        )
    for folder in (data, data / "deeplesion"):
        if (folder / "DL_info.csv").is_file():
            return folder
    raise InputError(
        "no DL_info.csv here or in deeplesion/",
        path=data,
        fix="give a DeepLesion-style folder (DL_info.csv, Images_png/) or the folder holding it",
    )


def _to_rows(table: pd.DataFrame, found, reason: str) -> pd.DataFrame:
    """Mining rows (sample pixels) -> output rows (stored slice, pixel centres)."""
    from activecad.lesions.mining import BOX_COLUMNS

    out = []
    for _, row in table.iterrows():
        image = str(row["image"])
        volume = found.slices.volume_of[image]
        box = volume.boxes_to_stored(row[list(BOX_COLUMNS)].to_numpy(float))[0] - 0.5
        series = image.rsplit("_", 1)[0]
        entry = {
            "File_name": f"{series}_{found.slices.stored_slice[image]:03d}.png",
            **dict(zip(("x1", "y1", "x2", "y2"), np.round(box, 2), strict=True)),
            "score": round(float(row["score"]), 4),
            "reason": reason,
            "expert": row.get("expert", ""),
            "distance": round(float(row["distance"]), 4) if "distance" in row else np.nan,
            "matched_annotation": "",
        }
        if "annotation" in row:
            matched = str(found.annotations.iloc[int(row["annotation"])]["image"])
            entry["matched_annotation"] = (
                f"{matched.rsplit('_', 1)[0]}_{found.slices.stored_slice[matched]:03d}.png"
            )
        out.append(entry)
    return pd.DataFrame(out, columns=list(COLUMNS))


def mine_command(
    data: Annotated[
        Path,
        typer.Argument(
            help="DeepLesion-style folder (DL_info.csv, Images_png/), or one holding deeplesion/.",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path, typer.Option("--model", help="MELD model folder (train meld).", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", help="CSV to write, one row per finding.", show_default=False)
    ],
    theta: Annotated[
        float, typer.Option("--theta", min=0.0, help="MAM: L2 distance between embeddings.")
    ] = 0.15,
    sigma: Annotated[
        float, typer.Option("--sigma", min=0.0, max=1.0, help="NRM: score of the experts.")
    ] = 0.5,
    min_score: Annotated[
        float,
        typer.Option(
            "--min-score", min=0.0, max=1.0, help="MAM: match only proposals scored this high."
        ),
    ] = 0.0,
    every_mm: Annotated[
        float, typer.Option("--every-mm", min=0.1, help="Unlabelled slices taken every this mm.")
    ] = 5.0,
    all_patients: Annotated[
        bool,
        typer.Option(
            "--all-patients",
            help="Mine every patient, not only the training split (Train_Val_Test = 1).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a summary as JSON.")] = False,
) -> None:
    """Mine missing annotations and suspicious regions with a MELD model (Yan et al. 2020)."""
    import torch

    from activecad.data.lesion_samples import deeplesion_training_slices
    from activecad.io.lesion_sets import read_deeplesion
    from activecad.lesions.pipeline import mine_lesions
    from activecad.models.meld import load_meld, load_meld_preprocessing

    out = output_file(out)
    if theta <= 0:
        raise InputError("--theta must be above 0", fix="e.g. --theta 0.15")
    folder = _deeplesion_folder(data)
    net = load_meld(model)
    prep = load_meld_preprocessing(model)
    deeplesion = read_deeplesion(folder)
    info = deeplesion.info
    patients = None
    if not all_patients:
        patients = sorted(
            set(info.loc[info["Train_Val_Test"] == 1, "series"].str.split("_").str[0])
        )
        if not patients:
            raise InputError(
                "no training patient (Train_Val_Test = 1) in DL_info.csv",
                path=folder / "DL_info.csv",
                fix="add --all-patients to mine every patient",
            )
    slices = deeplesion_training_slices(
        deeplesion, pixel_mm=prep.pixel_mm, slice_mm=prep.slice_mm, every_mm=every_mm,
        patients=patients, crop_borders=prep.crop_borders, hu_window=prep.hu_window,
    )  # fmt: skip
    with torch.inference_mode():
        found = mine_lesions(net, slices, theta=theta, sigma=sigma, min_score=min_score)
    table = pd.concat(
        [
            _to_rows(found.mined, found, "missing_annotation"),
            _to_rows(found.suspicious, found, "suspicious"),
        ],
        ignore_index=True,
    )
    with atomic_output(out, folder=False) as tmp:
        table.to_csv(tmp, index=False)
    summary = {
        "slices": len(slices.samples),
        "key_slices": len(slices.key_slices),
        "missing_annotations": int((table["reason"] == "missing_annotation").sum()),
        "suspicious": int((table["reason"] == "suspicious").sum()),
        "out": str(out),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['missing_annotations']} missing annotations and {summary['suspicious']} "
            f"suspicious regions on {summary['slices']} slices ({summary['key_slices']} key "
            f"slices) -> {out}"
        )


def register(app: typer.Typer) -> None:
    """Add ``mine`` to ``app``."""
    app.command("mine")(mine_command)
