"""Nodule probability, heat map and boxes for radiographs (``activecad detect``, cxr model).

Per image: the preprocessed radiograph goes through the network; the image probability is
``sigmoid(logit)`` (Network 2: the maximum of its probability map). The map (Network 2's
probability map, Network 1's class activation map through a sigmoid) is resized back into
the lung-field crop of the original image. Boxes are the connected components of the map
above ``box_threshold`` (0.5), each with the map's maximum inside it as its probability,
in NODE21's layout (x, y = top-left pixel, width, height, original image pixels).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from skimage import transform

from activecad.models.cxr.data import read_cxr_image
from activecad.models.cxr.network import CxrNet
from activecad.models.cxr.preprocess import preprocess_radiograph
from activecad.models.cxr.train import CxrConfig

__all__ = [
    "BOX_THRESHOLD",
    "DETECT_COLUMNS",
    "heatmap_boxes",
    "predict_arrays",
    "predict_files",
    "write_overlay",
]

BOX_THRESHOLD = 0.5
DETECT_COLUMNS = ["image_id", "probability", "x", "y", "width", "height", "box_probability"]


def predict_arrays(
    net: CxrNet, cfg: CxrConfig, images: list[np.ndarray], lungs: list[np.ndarray | None]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probabilities (N,) and heat maps, each (y, x) float32 in [0, 1] on its input image."""
    probs, maps = [], []
    with torch.no_grad():
        for img, lung in zip(images, lungs, strict=True):
            x, _, box = preprocess_radiograph(img, cfg.size, lungs=lung, clahe=cfg.clahe)
            y0, y1, x0, x1 = box
            out = net(torch.from_numpy(x)[None, None])
            probs.append(float(out.probability[0]))
            small = out.heatmap[0, 0].numpy()
            full = np.zeros(img.shape, dtype=np.float32)
            full[y0:y1, x0:x1] = transform.resize(small, (y1 - y0, x1 - x0), order=1)
            maps.append(full)
    return np.asarray(probs), maps


def heatmap_boxes(heatmap: np.ndarray, threshold: float = BOX_THRESHOLD) -> list[tuple]:
    """Boxes (x, y, width, height, probability) of the map's components above ``threshold``."""
    lab, _n = ndimage.label(heatmap > threshold)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        p = float(heatmap[sl][lab[sl] == k].max())
        ys, xs = sl
        boxes.append((xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start, p))
    return sorted(boxes, key=lambda b: -b[4])


def write_overlay(image: np.ndarray, heatmap: np.ndarray, path: Path) -> None:
    """An RGB PNG: the radiograph in gray, the heat map blended in red (alpha = map value)."""
    from PIL import Image

    lo, hi = np.percentile(image, [0.5, 99.5])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    a = np.clip(heatmap, 0, 1) * 0.6
    rgb = np.stack([g * (1 - a) + a, g * (1 - a), g * (1 - a)], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8), mode="RGB").save(path)


def _sibling_lungs(path: Path) -> np.ndarray | None:
    """The lung mask ``../lungs/<name>`` beside an ``images/`` folder (the phantom's layout)."""
    lungs = path.parent.parent / "lungs" / path.name
    if path.parent.name != "images" or not lungs.is_file():
        return None
    from activecad.models.cxr.train import read_cxr_mask

    return read_cxr_mask(lungs)


def predict_files(
    net: CxrNet,
    cfg: CxrConfig,
    paths: list[Path],
    heatmap_dir: Path | None = None,
    box_threshold: float = BOX_THRESHOLD,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run the network on radiograph files.

    Every file is read and checked first (a bad one fails before any work). The lung crop
    uses ``../lungs/<name>`` when the image lies in an ``images/`` folder that has one
    beside it (the phantom's layout), else the estimated lung field.

    Returns:
        The table (``DETECT_COLUMNS``: one row per box; an image without a box has one row
        with empty box columns) and timing ``{"images", "seconds", "images_per_s"}``.
    """
    arrays = [read_cxr_image(p) for p in paths]
    t0 = time.perf_counter()
    probs, maps = predict_arrays(net, cfg, arrays, [_sibling_lungs(p) for p in paths])
    seconds = time.perf_counter() - t0
    rows = []
    for path, arr, p, hm in zip(paths, arrays, probs, maps, strict=True):
        image_id = path.stem
        boxes = heatmap_boxes(hm, box_threshold)
        if not boxes:
            rows.append({"image_id": image_id, "probability": p})
        for x, y, w, h, bp in boxes:
            rows.append(
                {
                    "image_id": image_id,
                    "probability": p,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "box_probability": bp,
                }
            )
        if heatmap_dir is not None:
            write_overlay(arr, hm, heatmap_dir / f"{image_id}.png")
    table = pd.DataFrame(rows, columns=DETECT_COLUMNS)
    n = len(paths)
    return table, {"images": n, "seconds": seconds, "images_per_s": n / max(seconds, 1e-9)}
