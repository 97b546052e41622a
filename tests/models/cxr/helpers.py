"""Tiny generated radiograph folders for the CXR tests: bright blobs on a noisy background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from activecad.io.radiograph import write_png

TINY = {
    "size": 64,
    "growth_rate": 4,
    "block_config": (1, 1, 1, 1),
    "num_init_features": 8,
    "se_reduction": 2,
    "sub_channels": 8,
    "batch_size": 8,
    "lr": 1e-2,
    "augment": False,
}


def write_blob_folder(root: Path, n: int, seed: int, side: int = 96) -> Path:
    """``n`` radiographs, half with a bright disc (label 1, mask), lungs = the whole image.

    ``label_noisy`` flips a quarter of the labels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    rows = []
    for i in range(n):
        img = 20000 + rng.normal(0, 3000, (side, side))
        mask = np.zeros((side, side), dtype=np.uint8)
        label = i % 2
        if label:
            cy, cx = rng.uniform(20, side - 20, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2
            img[disk] += 25000
            mask[disk] = 255
        iid = f"img{i:03d}"
        write_png(np.clip(img, 0, 65535), root / "images" / f"{iid}.png", bits=16)
        write_png(mask, root / "masks" / f"{iid}.png", bits=8)
        write_png(np.full((side, side), 255), root / "lungs" / f"{iid}.png", bits=8)
        noisy = label if rng.random() > 0.25 else 1 - label
        rows.append({"image_id": iid, "label": label, "label_noisy": noisy})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root
