"""A tiny detector configuration (32^3 patches, 8 channels) and a tiny LUNA16-style folder,
shared by the detector tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from activecad.io.ct import write_scan
from activecad.io.scan import Scan
from activecad.io.tables import write_table
from activecad.models.detector3d import DetectorConfig, preset_config

TINY = {
    "preprocess": {"spacing": (1.0, 1.0, 1.0), "lung_crop": False},
    "backbone_widths": (4, 8, 8, 8),
    "fpn_channels": 8,
    "loss_hidden": 4,
    "patch_size": (32, 32, 32),
    "base_anchor_shapes": ((4.0, 4.0, 4.0), (8.0, 8.0, 8.0)),
    "epochs": 1,
    "steps_per_epoch": 2,
    "val_fraction": 0.0,
    "score_thresh": 0.0,
    "sw_roi_size": (32, 32, 32),
}


@pytest.fixture
def tiny_config() -> DetectorConfig:
    return preset_config("cpu", **TINY)


def write_sphere_folder(
    root: Path, *, uid_prefix: str = "1.2.826.0.1.", **config_overrides: object
) -> Path:
    """Two 40^3 scans (1 mm) with one bright 6 mm sphere each, as a LUNA16-style folder.

    ``annotations.csv`` names the series ``<uid_prefix>1`` and ``<uid_prefix>2`` (the scans
    are always ``1.2.826.0.1.1/2``, so another prefix makes annotations that match no scan);
    ``tiny.yaml`` holds :data:`TINY` with ``config_overrides`` on top.
    """
    (root / "ct").mkdir(parents=True)
    rows = []
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for k in range(2):
        uid = f"1.2.826.0.1.{k + 1}"
        array = np.full((40, 40, 40), -850.0, dtype=np.float32)
        centre = np.array([20.0, 15.0 + 5 * k, 22.0])  # z, y, x
        array[(zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 9] = 50
        origin = np.array([-20.0, 10.0, -100.0])
        write_scan(
            Scan(array=array, spacing=(1, 1, 1), origin=origin, seriesuid=uid),
            root / "ct" / f"{uid}.mhd",
        )
        x, y, z = origin + centre[::-1]
        rows.append(
            {
                "seriesuid": f"{uid_prefix}{k + 1}",
                "coordX": x,
                "coordY": y,
                "coordZ": z,
                "diameter_mm": 6.0,
            }
        )
    write_table(pd.DataFrame(rows), root / "annotations.csv", "annotations")
    tiny = {**TINY, **config_overrides}
    (root / "tiny.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(tiny))))
    return root
