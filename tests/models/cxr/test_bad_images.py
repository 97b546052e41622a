"""Bad radiographs give one clear InputError naming the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activecad.errors import InputError
from activecad.io.radiograph import write_png
from activecad.models.cxr.data import read_cxr_image


def test_wrong_bit_depth(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.fromarray(np.eye(8, dtype=bool)).save(p)  # 1-bit
    with pytest.raises(InputError, match=r"bit depth \(1-bit.*8- or 16-bit grayscale"):
        read_cxr_image(p)
    q = tmp_path / "b.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(q)
    with pytest.raises(InputError, match="palette"):
        read_cxr_image(q)
    # 16-bit (Pillow's mode I;16) and 8-bit grayscale are accepted.
    assert (
        read_cxr_image(write_png(np.arange(64).reshape(8, 8) * 900, tmp_path / "c.png")).max() > 0
    )


def test_truncated_png(tmp_path: Path) -> None:
    p = write_png(np.arange(256 * 256).reshape(256, 256) % 65535, tmp_path / "t.png")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated"):
        read_cxr_image(p)


def test_ct_where_a_radiograph_is_expected(tmp_path: Path) -> None:
    from activecad.io import Scan, write_dicom_series, write_scan

    scan = Scan(array=np.zeros((4, 8, 8), dtype=np.int16), spacing=np.ones(3), origin=np.zeros(3))
    mhd = write_scan(scan, tmp_path / "ct.mhd")
    with pytest.raises(InputError, match="CT scan, not a chest radiograph"):
        read_cxr_image(mhd)
    write_dicom_series(scan, tmp_path / "series")
    one = sorted((tmp_path / "series").iterdir())[0]
    with pytest.raises(InputError, match="CT slice, not a chest radiograph"):
        read_cxr_image(one)


def test_blank_image(tmp_path: Path) -> None:
    p = write_png(np.zeros((16, 16)), tmp_path / "z.png")
    with pytest.raises(InputError, match="constant"):
        read_cxr_image(p)
