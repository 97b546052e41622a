"""Real chest-radiograph label tables: NIH ChestX-ray14, Google 2019, VinDr-CXR, NODE21.

Layouts, as published (every reader accepts the plain ``.csv`` or the gzipped ``.csv.gz``):

* NIH ChestX-ray14 ``Data_Entry_2017*.csv`` (Wang et al., "ChestX-ray8", CVPR 2017):
  one row per image, ``Image Index`` and ``Finding Labels`` (report-mined findings joined
  by ``|``; "No Finding"); read into ``image_id, findings, patient_id, view, width,
  height, pixel_mm`` plus ``nodule`` and ``mass`` (0/1).
* NIH ``BBox_List_2017.csv``: ``Image Index, Finding Label, Bbox [x,y,w,h]`` (pixels of
  the original image, top-left corner and size); read into the ``cxr_boxes`` layout
  ``image_id, x1, y1, x2, y2, label`` (x1, y1 the top-left pixel, x2 = x + w).
* Google 2019 expert labels for a subset of NIH images (Majkowska et al., "Chest radiograph
  interpretation with deep learning models", Radiology 2020): ``Image Index`` and the
  adjudicated ``Nodule or mass`` YES/NO (plus three more findings) and ``Set Id``.
* VinDr-CXR training boxes (Nguyen et al., "VinDr-CXR", Scientific Data 2022): one row per
  radiologist and finding, ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max,
  y_max`` (empty box for "No finding").
* NODE21 (Sogancioglu et al., NODE21 challenge, 2021) ``metadata.csv``: ``img_name, x, y,
  width, height, label`` (label 1 = nodule; a box of zeros for images without a nodule).

These readers need only the table files; torchxrayvision's wheel ships the NIH, Google and
VinDr tables, which is how the tests read the real files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from activecad.errors import InputError

__all__ = [
    "GOOGLE2019_ROWS",
    "NIH_BBOX_ROWS",
    "NIH_DATA_ENTRY_ROWS",
    "VINDR_TRAIN_ROWS",
    "read_google2019_labels",
    "read_nih_bbox",
    "read_nih_data_entry",
    "read_node21_table",
    "read_vindr_boxes",
    "reader_box_agreement",
    "report_label_accuracy",
]

#: Published row counts (the NIH release notes; Google's and VinDr's own tables).
NIH_DATA_ENTRY_ROWS = 112_120
NIH_BBOX_ROWS = 984
GOOGLE2019_ROWS = 4_376  # 1,962 test + 2,414 validation images
VINDR_TRAIN_ROWS = 67_914


def _read_csv(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such {what} file", path=path, fix="check the path")
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read as a {what} CSV ({type(exc).__name__})",
            path=path,
            fix="give the table as published (.csv or .csv.gz)",
        ) from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(
            f"not a {what} table: column '{missing[0]}' is missing",
            path=path,
            fix=f"give the {what} file, whose header has {', '.join(required)}",
        )
    return table


def read_nih_data_entry(path: str | Path) -> pd.DataFrame:
    """Read NIH ChestX-ray14's ``Data_Entry_2017(_v2020).csv``.

    Returns:
        One row per image: ``image_id`` (file name), ``findings`` (the report-mined string),
        ``patient_id`` (int), ``view`` (PA/AP), ``width``, ``height`` (pixels),
        ``pixel_mm``, ``nodule`` and ``mass`` (0/1 report-mined labels).

    Raises:
        InputError: missing file or not this layout.
    """
    t = _read_csv(path, ("Image Index", "Finding Labels", "Patient ID"), "NIH Data_Entry")
    findings = t["Finding Labels"].fillna("").astype(str)
    parts = findings.str.split("|")
    cols = list(t.columns)
    out = pd.DataFrame(
        {
            "image_id": t["Image Index"].astype(str),
            "findings": findings,
            "patient_id": t["Patient ID"].astype(int),
            "view": t.get("View Position", pd.Series([""] * len(t))).astype(str),
        }
    )
    # The size and spacing columns are split over two header cells: "[Width" and "Height]".
    if "OriginalImage[Width" in cols:
        i = cols.index("OriginalImage[Width")
        out["width"] = t.iloc[:, i].astype(int)
        out["height"] = t.iloc[:, i + 1].astype(int)
    if "OriginalImagePixelSpacing[x" in cols:
        out["pixel_mm"] = t.iloc[:, cols.index("OriginalImagePixelSpacing[x")].astype(float)
    out["nodule"] = parts.map(lambda p: int("Nodule" in p))
    out["mass"] = parts.map(lambda p: int("Mass" in p))
    return out


def read_nih_bbox(path: str | Path) -> pd.DataFrame:
    """Read NIH's ``BBox_List_2017.csv`` into the ``cxr_boxes`` layout.

    Returns:
        ``image_id, x1, y1, x2, y2, label`` (pixels of the original 1024 x 1024 image; x1,
        y1 the top-left corner, x2 = x + w, y2 = y + h), label = the finding ("Nodule",
        "Mass", ...).

    Raises:
        InputError: missing file or not this layout.
    """
    t = _read_csv(path, ("Image Index", "Finding Label"), "NIH BBox_List")
    cols = list(t.columns)
    start = next((i for i, c in enumerate(cols) if str(c).startswith("Bbox")), None)
    if start is None or start + 4 > len(cols):
        raise InputError(
            "not an NIH BBox_List table: no 'Bbox [x,y,w,h]' columns",
            path=path,
            fix="give BBox_List_2017.csv as published",
        )
    xywh = t.iloc[:, start : start + 4].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "image_id": t["Image Index"].astype(str),
            "x1": xywh[:, 0],
            "y1": xywh[:, 1],
            "x2": xywh[:, 0] + xywh[:, 2],
            "y2": xywh[:, 1] + xywh[:, 3],
            "label": t["Finding Label"].astype(str),
        }
    )


def read_google2019_labels(path: str | Path) -> pd.DataFrame:
    """Read Google's 2019 expert-adjudicated labels for NIH images.

    Returns:
        ``image_id, patient_id, split`` ("test"/"validation"), ``nodule_or_mass``,
        ``pneumothorax``, ``opacity``, ``fracture`` (0/1, adjudicated by radiologists).

    Raises:
        InputError: missing file or not this layout.
    """
    t = _read_csv(path, ("Image Index", "Nodule or mass"), "Google 2019 labels")

    def yes(col: str) -> pd.Series:
        if col not in t.columns:
            return pd.Series(np.zeros(len(t), dtype=int))
        return (t[col].astype(str).str.upper() == "YES").astype(int)

    return pd.DataFrame(
        {
            "image_id": t["Image Index"].astype(str),
            "patient_id": t.get("Patient ID", pd.Series([-1] * len(t))).astype(int),
            "split": t.get("Set Id", pd.Series([""] * len(t))).astype(str),
            "nodule_or_mass": yes("Nodule or mass"),
            "pneumothorax": yes("Pneumothorax"),
            "opacity": yes("Airspace opacity"),
            "fracture": yes("Fracture"),
        }
    )


def read_vindr_boxes(path: str | Path) -> pd.DataFrame:
    """Read VinDr-CXR's per-radiologist training annotations.

    Returns:
        ``image_id, label, rad_id, x1, y1, x2, y2`` (pixels of the original image; NaN box
        for "No finding").

    Raises:
        InputError: missing file or not this layout.
    """
    t = _read_csv(
        path, ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"), "VinDr"
    )
    return pd.DataFrame(
        {
            "image_id": t["image_id"].astype(str),
            "label": t["class_name"].astype(str),
            "rad_id": t["rad_id"].astype(str),
            "x1": t["x_min"].astype(float),
            "y1": t["y_min"].astype(float),
            "x2": t["x_max"].astype(float),
            "y2": t["y_max"].astype(float),
        }
    )


def read_node21_table(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a NODE21-style ``metadata.csv`` (``img_name, x, y, width, height, label``).

    Returns:
        ``(labels, boxes)``: labels ``image_id, label`` (1 when the image has a nodule box),
        boxes in the ``cxr_boxes`` layout ``image_id, x1, y1, x2, y2, label`` ("nodule").
        ``image_id`` is the file name without its suffix, as :func:`read_radiograph` names
        images.

    Raises:
        InputError: missing file, not this layout, or a label that is not 0/1.
    """
    t = _read_csv(path, ("img_name", "x", "y", "width", "height", "label"), "NODE21")
    bad = ~t["label"].isin([0, 1])
    if bad.any():
        raise InputError(
            f"label must be 0 or 1, got {t.loc[bad, 'label'].iloc[0]!r} "
            f"(row {int(np.flatnonzero(bad)[0]) + 2})",
            path=path,
            fix="use 1 for a nodule box and 0 for an image without nodule",
        )
    ids = t["img_name"].astype(str).str.replace(r"\.(png|mha|dcm|jpg)$", "", regex=True)
    labels = (
        pd.DataFrame({"image_id": ids, "label": t["label"].astype(int)})
        .groupby("image_id", sort=False)["label"]
        .max()
        .reset_index()
    )
    pos = t["label"].astype(int) == 1
    boxes = pd.DataFrame(
        {
            "image_id": ids[pos].to_numpy(),
            "x1": t.loc[pos, "x"].to_numpy(dtype=float),
            "y1": t.loc[pos, "y"].to_numpy(dtype=float),
            "x2": (t.loc[pos, "x"] + t.loc[pos, "width"]).to_numpy(dtype=float),
            "y2": (t.loc[pos, "y"] + t.loc[pos, "height"]).to_numpy(dtype=float),
            "label": "nodule",
        }
    )
    return labels, boxes


def report_label_accuracy(nih: pd.DataFrame, expert: pd.DataFrame) -> dict[str, float]:
    """How report-mined nodule/mass labels compare with expert labels on the same images.

    Args:
        nih: :func:`read_nih_data_entry` table (report-mined ``nodule``, ``mass``).
        expert: :func:`read_google2019_labels` table (adjudicated ``nodule_or_mass``).

    Returns:
        ``images`` (joined), ``prevalence_expert``, ``prevalence_report``, ``sensitivity``,
        ``specificity``, ``ppv``, ``npv`` of the report-mined label "Nodule or Mass"
        against the expert label as the truth.
    """
    j = expert.merge(nih[["image_id", "nodule", "mass"]], on="image_id", how="inner")
    truth = j["nodule_or_mass"].to_numpy() == 1
    report = ((j["nodule"] + j["mass"]) > 0).to_numpy()
    tp = int((truth & report).sum())
    fn = int((truth & ~report).sum())
    fp = int((~truth & report).sum())
    tn = int((~truth & ~report).sum())
    return {
        "images": len(j),
        "prevalence_expert": float(truth.mean()),
        "prevalence_report": float(report.mean()),
        "sensitivity": tp / max(tp + fn, 1),
        "specificity": tn / max(tn + fp, 1),
        "ppv": tp / max(tp + fp, 1),
        "npv": tn / max(tn + fn, 1),
    }


def reader_box_agreement(
    boxes: pd.DataFrame, label: str = "Nodule/Mass", iou: float = 0.3
) -> dict[str, float]:
    """How often radiologists agree on a box of one finding (VinDr-CXR layout).

    For every image with at least one ``label`` box, each reader's boxes are grouped with
    the other readers' boxes that overlap them at IoU >= ``iou`` (single linkage). A group
    is one finding; its support is the number of distinct readers in it.

    Args:
        boxes: :func:`read_vindr_boxes` table.
        label: finding name.
        iou: overlap for two readers' boxes to be the same finding.

    Returns:
        ``images`` (with a box), ``findings`` (groups), ``share_support_1|2|3`` (share of
        groups marked by 1, 2, >= 3 readers), ``share_images_2plus`` (images where some
        finding has >= 2 readers, the paper's rule for its VinDr test set), box sides
        ``median_side_px``, ``p10_side_px``, ``p90_side_px`` (sqrt of box area).
    """
    from activecad.metrics import box_iou

    b = boxes[boxes["label"] == label].dropna(subset=["x1", "y1", "x2", "y2"])
    supports: list[int] = []
    images_2plus = 0
    for _, g in b.groupby("image_id", sort=False):
        xyxy = g[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
        readers = g["rad_id"].to_numpy()
        n = len(g)
        parent = list(range(n))

        def find(i: int, parent: list[int] = parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        overlap = box_iou(xyxy, xyxy)
        for i in range(n):
            for k in range(i + 1, n):
                if readers[i] != readers[k] and overlap[i, k] >= iou:
                    parent[find(i)] = find(k)
        groups: dict[int, set[str]] = {}
        for i in range(n):
            groups.setdefault(find(i), set()).add(str(readers[i]))
        s = [len(v) for v in groups.values()]
        supports += s
        images_2plus += int(max(s) >= 2)
    sup = np.asarray(supports)
    side = np.sqrt((b["x2"] - b["x1"]).to_numpy() * (b["y2"] - b["y1"]).to_numpy())
    n_img = int(b["image_id"].nunique())
    return {
        "images": n_img,
        "findings": len(sup),
        "share_support_1": float((sup == 1).mean()) if len(sup) else float("nan"),
        "share_support_2": float((sup == 2).mean()) if len(sup) else float("nan"),
        "share_support_3": float((sup >= 3).mean()) if len(sup) else float("nan"),
        "share_images_2plus": images_2plus / max(n_img, 1),
        "median_side_px": float(np.median(side)) if len(side) else float("nan"),
        "p10_side_px": float(np.percentile(side, 10)) if len(side) else float("nan"),
        "p90_side_px": float(np.percentile(side, 90)) if len(side) else float("nan"),
    }
