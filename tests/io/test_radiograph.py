"""Radiograph readers and writers: PNG bit depths, DICOM rescale, window and MONOCHROME1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from activecad.errors import InputError
from activecad.io import Radiograph, read_radiograph, write_png, write_radiograph_dicom


@pytest.mark.parametrize(("bits", "high"), [(8, 255), (16, 65535)])
def test_png_round_trip(tmp_path: Path, bits: int, high: int) -> None:
    array = np.array([[0, 1, 2], [high - 1, high, 7]])
    write_png(array, tmp_path / "img.png", bits=bits)
    image = read_radiograph(tmp_path / "img.png")
    np.testing.assert_array_equal(image.array, array)
    assert image.bits == bits
    assert image.image_id == "img"
    assert image.array.dtype == np.float32


def test_png_is_written_with_the_requested_depth(tmp_path: Path) -> None:
    write_png(np.zeros((2, 2)), tmp_path / "mask.png", bits=8)
    write_png(np.zeros((2, 2)), tmp_path / "cxr.png", bits=16)
    with Image.open(tmp_path / "mask.png") as mask, Image.open(tmp_path / "cxr.png") as cxr:
        assert mask.mode == "L"
        assert cxr.mode.startswith("I")


def test_png_rejects_values_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        write_png(np.array([[0, 256]]), tmp_path / "x.png", bits=8)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        write_png(np.zeros((2, 2)), tmp_path / "x.png", bits=12)


def test_colour_png_is_an_input_error(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="expected a grayscale image"):
        read_radiograph(tmp_path / "colour.png")


def test_grey_rgb_png_is_read_as_grayscale(tmp_path: Path) -> None:
    grey = np.stack([np.array([[10, 20], [30, 40]], np.uint8)] * 3, axis=-1)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "grey.png").array, grey[..., 0])


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_round_trip_keeps_brighter_is_larger(tmp_path: Path, photometric: str) -> None:
    array = np.array([[0, 100, 4095], [65535, 7, 8]], np.float32)
    radiograph = Radiograph(array, spacing=[0.14, 0.15], image_id="cxr-1", patient_id="P9")
    write_radiograph_dicom(radiograph, tmp_path / "cxr.dcm", photometric=photometric)
    assert pydicom.dcmread(tmp_path / "cxr.dcm").PhotometricInterpretation == photometric
    back = read_radiograph(tmp_path / "cxr.dcm")
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, [0.14, 0.15])
    assert (back.image_id, back.patient_id, back.bits) == ("cxr", "P9", 16)


def test_monochrome1_stored_values_are_inverted(tmp_path: Path) -> None:
    radiograph = Radiograph(np.array([[0.0, 65535.0]]), image_id="a")
    write_radiograph_dicom(radiograph, tmp_path / "a.dcm", photometric="MONOCHROME1")
    # Stored white (air, dark on screen in MONOCHROME1) is 65535 - 0; inverted back to 0.
    np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "a.dcm").pixel_array, [[65535, 0]])


def test_dicom_window_is_applied(tmp_path: Path) -> None:
    radiograph = Radiograph(np.array([[0.0, 1024.0], [2048.0, 5000.0]]), image_id="w")
    write_radiograph_dicom(radiograph, tmp_path / "w.dcm", window=(2048, 4096))
    back = read_radiograph(tmp_path / "w.dcm")
    # Hand computation, DICOM PS3.3 C.11.2.1.2.1 LINEAR window with c = 2048, w = 4096 into
    # 0..65535: y = ((x - 2047.5) / 4095 + 0.5) * 65535 = x * 65535 / 4095 inside the
    # window, 0 at or below x = 0, 65535 above x = 4095.
    expected = [[0.0, 1024 * 65535 / 4095], [2048 * 65535 / 4095, 65535.0]]
    np.testing.assert_allclose(back.array, expected, rtol=1e-6)
    assert back.meta["voi_applied"] is True


def test_dicom_window_then_monochrome1_inversion(tmp_path: Path) -> None:
    radiograph = Radiograph(np.array([[0.0, 1024.0]]), image_id="w")
    write_radiograph_dicom(
        radiograph, tmp_path / "w.dcm", photometric="MONOCHROME1", window=(63488, 4096)
    )
    back = read_radiograph(tmp_path / "w.dcm")
    # Hand computation: stored s = 65535 - x = (65535, 64511); LINEAR window c = 63488,
    # w = 4096: y = ((s - 63487.5) / 4095 + 0.5) * 65535 = (s - 61440) * 65535 / 4095
    # = (65535, 3071 * 65535 / 4095); inverted within 0..65535: (0, 1024 * 65535 / 4095).
    np.testing.assert_allclose(back.array, [[0.0, 1024 * 65535 / 4095]], rtol=1e-6)


def test_8_bit_dicom(tmp_path: Path) -> None:
    radiograph = Radiograph(np.array([[0.0, 255.0]]), image_id="e", bits=8)
    write_radiograph_dicom(radiograph, tmp_path / "e.dcm")
    back = read_radiograph(tmp_path / "e.dcm")
    assert back.bits == 8
    np.testing.assert_array_equal(back.array, [[0, 255]])


def test_corrupt_png_is_an_input_error(tmp_path: Path) -> None:
    write_png(np.arange(64).reshape(8, 8), tmp_path / "ok.png", bits=8)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated PNG"):
        read_radiograph(tmp_path / "cut.png")
