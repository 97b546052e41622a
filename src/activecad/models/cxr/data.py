"""Chest-radiograph data folders and checked image loading for Networks 1 and 2.

A data folder is the phantom's ``cxr/`` layout (the cohort folder or its ``cxr/`` folder)::

    images/<image_id>.png   16- or 8-bit grayscale radiographs (or .dcm)
    masks/<image_id>.png    nodule masks (0/255), needed for Network 2
    lungs/<image_id>.png    lung masks (0/255), optional: the lung-field crop uses them
    labels.csv              image_id, label (CT-referenced) [, label_noisy (report-mined)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activecad.errors import InputError

__all__ = ["CxrItem", "find_cxr_folder", "load_cxr_items", "read_cxr_image"]

_CT_NAMES = (".mhd", ".mha", ".nii", ".nii.gz", ".raw")


@dataclass
class CxrItem:
    """One radiograph of a data folder.

    Attributes:
        image_id: file stem.
        image: path of the radiograph.
        label: 0/1 image label (of the chosen column).
        mask: path of the nodule mask, or None.
        lungs: path of the lung mask, or None.
    """

    image_id: str
    image: Path
    label: int
    mask: Path | None
    lungs: Path | None


def read_cxr_image(path: str | Path) -> np.ndarray:
    """Read a radiograph for the CXR networks: (y, x) float32, larger = brighter.

    Raises:
        InputError: a CT scan (MetaImage, NIfTI, a CT DICOM or a multi-frame volume) where a
            radiograph is expected, a PNG of an unusable bit depth (1-bit, 32-bit, float),
            a corrupt or truncated file, a colour image, a constant image.
    """
    from PIL import Image

    from activecad.io.radiograph import read_radiograph

    path = Path(path)
    name = path.name.lower()
    if name.endswith(_CT_NAMES):
        raise InputError(
            "this is a CT scan, not a chest radiograph",
            path=path,
            fix="give .png or .dcm radiographs, or use a 'detector3d' model for CT",
        )
    if name.endswith(".png") and path.is_file():
        try:
            with Image.open(path) as im:
                mode = im.mode
        except Exception:  # read_radiograph below gives the message for corrupt files
            mode = "L"
        if mode in ("1", "I", "F", "P"):
            what = {"1": "1-bit", "I": "32-bit integer", "F": "floating-point", "P": "palette"}
            raise InputError(
                f"unusable PNG bit depth ({what[mode]}, mode '{mode}')",
                path=path,
                fix="save the radiograph as 8- or 16-bit grayscale PNG",
            )
    rg = read_radiograph(path)
    modality = str(rg.meta.get("modality", "")).upper()
    if modality in ("CT", "MR", "PT"):
        raise InputError(
            f"this DICOM is a {modality} slice, not a chest radiograph",
            path=path,
            fix="give CR/DX radiographs, or use a 'detector3d' model for CT",
        )
    arr = rg.array
    if float(arr.max()) <= float(arr.min()):
        raise InputError("the image is constant (blank)", path=path, fix="check the export")
    return arr


def find_cxr_folder(data_dir: str | Path) -> Path:
    """The folder holding ``images/`` and ``labels.csv`` (``data_dir`` or ``data_dir/cxr``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("no such data folder", path=data_dir, fix="check the path")
    for cand in (data_dir, data_dir / "cxr"):
        if (cand / "labels.csv").is_file() and (cand / "images").is_dir():
            return cand
    raise InputError(
        "not a radiograph data folder (no labels.csv beside images/, nor in cxr/)",
        path=data_dir,
        fix="give a folder written by 'activecad phantom' or one with images/ and labels.csv",
    )


def load_cxr_items(
    data_dir: str | Path,
    label_column: str = "label",
    need_masks: bool = False,
    ids: list[str] | None = None,
) -> list[CxrItem]:
    """The radiographs of a data folder with their labels (images and labels joined by id).

    Args:
        data_dir: cohort folder or its ``cxr/`` folder.
        label_column: ``label`` (CT-referenced) or ``label_noisy`` (report-mined).
        need_masks: every image must have ``masks/<id>.png`` (Network 2).
        ids: keep only these image ids (in this order), e.g. a split.

    Raises:
        InputError: not such a folder, no such label column, labels not 0/1, no image in
            common with the table, a missing mask when ``need_masks``.
    """
    import pandas as pd

    from activecad.identifiers import check_overlap

    folder = find_cxr_folder(data_dir)
    table_path = folder / "labels.csv"
    table = pd.read_csv(table_path, dtype={"image_id": str})
    if label_column not in table.columns:
        raise InputError(
            f"no label column '{label_column}' (columns: {', '.join(map(str, table.columns))})",
            path=table_path,
            fix="choose --labels clean (column 'label') or noisy (column 'label_noisy')",
        )
    values = pd.to_numeric(table[label_column], errors="coerce")
    if not values.isin([0, 1]).all():
        raise InputError(
            f"column '{label_column}' must hold 0 or 1", path=table_path, fix="fix the table"
        )
    images = {
        p.stem: p for p in sorted((folder / "images").iterdir()) if p.suffix in (".png", ".dcm")
    }
    common = check_overlap(
        table["image_id"], images, ours_name="labels.csv", theirs_name="images/", path=table_path
    )
    labels = dict(zip(table["image_id"].astype(str), values.astype(int), strict=True))
    order = [i for i in (ids if ids is not None else table["image_id"].astype(str)) if i in common]
    items = []
    for image_id in order:
        mask = folder / "masks" / f"{image_id}.png"
        lungs = folder / "lungs" / f"{image_id}.png"
        if need_masks and not mask.is_file():
            raise InputError(
                f"Network 2 needs a nodule mask for every image; {mask.name} is missing",
                path=folder / "masks",
                fix="train Network 1 on image-level labels, or add the masks",
            )
        items.append(
            CxrItem(
                image_id=image_id,
                image=images[image_id],
                label=int(labels[image_id]),
                mask=mask if mask.is_file() else None,
                lungs=lungs if lungs.is_file() else None,
            )
        )
    return items
