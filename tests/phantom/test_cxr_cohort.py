"""Radiograph-only phantom sets for Kim et al.'s design (balanced, disjoint, other sites)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from activecad.models.cxr.data import load_cxr_items
from activecad.phantom import cxr_cohort as cc


def test_balanced_set_with_ct_referenced_masks(tmp_path: Path) -> None:
    info = cc.write_cxr_set(
        tmp_path / "ext", 2, seed=3, site=cc.SITES["external_b"], first_patient=0
    )
    assert info["normal"] == 2 and info["nodule"] == 2
    table = pd.read_csv(tmp_path / "ext" / "labels.csv")
    assert table["label"].sum() == 2 and len(table) == 4
    for row in table.itertuples():
        with Image.open(tmp_path / "ext" / "masks" / f"{row.image_id}.png") as im:
            mask = np.asarray(im)
        with Image.open(tmp_path / "ext" / "images" / f"{row.image_id}.png") as im:
            assert im.size == (cc.SITES["external_b"].size,) * 2
        assert (mask.max() > 0) == bool(row.label)  # a mask exactly on the nodule images
    boxes = pd.read_csv(tmp_path / "ext" / "boxes.csv")
    assert set(boxes["image_id"]) == set(table.loc[table["label"] == 1, "image_id"])
    # The folder is what 'train cxr' reads, noisy labels included.
    assert len(load_cxr_items(tmp_path / "ext", "label_noisy", need_masks=True)) == 4


def test_sites_differ_and_patients_are_not_shared(tmp_path: Path) -> None:
    a = cc.generate_cxr(5, 0, cc.SITES["internal"], with_nodules=False)
    b = cc.generate_cxr(5, 0, cc.SITES["external_a"], with_nodules=False)
    assert a.image.shape == (256, 256) and b.image.shape == (320, 320)
    # Same patient, other site: other noise (dose) and grey levels (exposure, curve).
    assert not np.isclose(a.image.mean() / 65535, b.image.mean() / 65535, atol=0.01)
    info = cc.write_cxr_set(tmp_path / "s", 1, 0, cc.SITES["internal"], first_patient=7)
    assert info["next_patient"] >= 9
    ids = pd.read_csv(tmp_path / "s" / "labels.csv")["patient_id"]
    assert ids.is_unique


def test_report_labels_follow_the_nih_vs_google_rates() -> None:
    rng = np.random.default_rng(0)
    d = np.array([cc.MEAN_LARGEST_VISIBLE_MM])  # the mean largest: sensitivity REPORT_SENSITIVITY
    se = np.mean([cc._report_label(1, d, rng) for _ in range(4000)])
    sp = 1 - np.mean([cc._report_label(0, d, rng) for _ in range(4000)])
    assert abs(se - 0.42) < 0.03 and abs(sp - 0.947) < 0.01


def test_nodule_gain_scales_only_the_nodules_attenuation() -> None:
    site = cc.SITES["internal"]

    def line_integral(gain: float) -> tuple[np.ndarray, cc.Radiograph2D]:
        cxr = cc.generate_cxr(8, 0, site, with_nodules=True, nodule_gain=gain)
        # Undo the display curve (no pixel is clipped on this patient's lungs).
        return (cxr.image / 65535.0) ** (1 / site.gamma) * site.window, cxr

    one, cxr = line_integral(1.0)
    two, _ = line_integral(2.0)
    three, _ = line_integral(3.0)
    assert cxr.mask.any()
    # The same patient, noise and anatomy: away from every nodule (shown or too small to
    # show) nothing moves ...
    rows, cols = np.mgrid[0 : one.shape[0], 0 : one.shape[1]]
    far = np.ones(one.shape, dtype=bool)
    for (x, y), r in zip(cxr.center_px, cxr.radius_px, strict=True):
        far &= np.hypot(cols - x, rows - y) > r + 6
    assert np.abs(three - one)[far].max() < 1e-3
    # ... and on the shown nodules the excess line integral grows linearly with the gain
    # (by hand: (g3 - g1) = 2 (g2 - g1) for an attenuation a + g * d).
    inside = cxr.mask > 0
    np.testing.assert_allclose((three - one)[inside], 2 * (two - one)[inside], atol=2e-3)
    assert (three - one)[inside].mean() > 0.1
    with pytest.raises(ValueError, match="nodule_gain"):
        cc.generate_cxr(8, 0, site, with_nodules=True, nodule_gain=0.0)
