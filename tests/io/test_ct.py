"""CT readers and writers: round trips, DICOM ordering, series choice and gap reports."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

from activecad.errors import InputError
from activecad.io import (
    is_valid_uid,
    list_dicom_series,
    make_uid,
    read_scan,
    scan_voxel_to_world,
    scan_world_to_voxel,
    write_dicom_series,
    write_scan,
)
from activecad.io.scan import Scan
from tests.io.helpers import make_scan


def _write(scan: Scan, tmp_path: Path, fmt: str) -> Path:
    if fmt == "dicom":
        write_dicom_series(scan, tmp_path / "series")
        return tmp_path / "series"
    # NIfTI has no id fields: the reader takes the seriesuid from the file name.
    return write_scan(scan, tmp_path / f"{scan.seriesuid}.{fmt}")


@pytest.mark.parametrize("fmt", ["dicom", "mhd", "nii", "nii.gz"])
def test_round_trip_keeps_array_and_geometry(tmp_path: Path, fmt: str) -> None:
    scan = make_scan()
    back = read_scan(_write(scan, tmp_path, fmt))
    np.testing.assert_array_equal(back.array, scan.array)
    assert back.array.dtype == np.float32
    # NIfTI stores spacing and the orientation quaternion as float32 (~1e-7 relative).
    np.testing.assert_allclose(back.spacing, scan.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, scan.origin, atol=1e-6)
    np.testing.assert_allclose(back.direction, scan.direction, atol=1e-6)
    assert back.seriesuid == scan.seriesuid
    assert back.meta["warnings"] == []


@pytest.mark.parametrize("fmt", ["dicom", "mhd"])
def test_round_trip_keeps_ids(tmp_path: Path, fmt: str) -> None:
    scan = make_scan()
    back = read_scan(_write(scan, tmp_path, fmt))
    assert (back.patient_id, back.study_id) == (scan.patient_id, scan.study_id)
    assert back.modality == "CT"


def test_round_trip_preserves_world_position_of_a_finding(tmp_path: Path) -> None:
    scan = make_scan()
    back = read_scan(_write(scan, tmp_path, "dicom"))
    point = np.array([-118.0, 40.0, -300.0])
    np.testing.assert_allclose(
        scan_world_to_voxel(back, point), scan_world_to_voxel(scan, point), atol=1e-6
    )


def test_mhd_raw_is_uncompressed(tmp_path: Path) -> None:
    scan = make_scan()
    write_scan(scan, tmp_path / "vol.mhd")
    raw = (tmp_path / "vol.raw").read_bytes()
    # 6 * 8 * 10 float32 voxels, x fastest, as LUNA16 tools memory-map them.
    assert len(raw) == 6 * 8 * 10 * 4
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(6, 8, 10), scan.array)
    header = (tmp_path / "vol.mhd").read_text()
    assert "CompressedData = False" in header
    assert f"SeriesInstanceUID = {scan.seriesuid}" in header


def test_mhd_without_id_keys_takes_seriesuid_from_file_name(tmp_path: Path) -> None:
    scan = make_scan(seriesuid="")
    write_scan(scan, tmp_path / "1.3.6.1.4.1.14519.5.2.1.6279.6001.1.mhd")
    assert read_scan(tmp_path / "1.3.6.1.4.1.14519.5.2.1.6279.6001.1.mhd").seriesuid == (
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"
    )


def test_dicom_files_are_real_ct_and_deterministic(tmp_path: Path) -> None:
    scan = make_scan()
    first = write_dicom_series(scan, tmp_path / "a")
    second = write_dicom_series(scan, tmp_path / "b")
    assert len(first) == scan.shape[0]
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in second]
    ds = pydicom.dcmread(first[2])
    assert ds.Modality == "CT"
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.SeriesInstanceUID == scan.seriesuid
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]  # (row, column) = (y, x)
    assert float(ds.SliceThickness) == 2.5
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in first}) == len(first)


def test_non_uid_ids_become_deterministic_uids(tmp_path: Path) -> None:
    scan = make_scan(seriesuid="phantom-0003")
    write_dicom_series(scan, tmp_path / "s")
    back = read_scan(tmp_path / "s")
    assert is_valid_uid(back.seriesuid)
    assert back.seriesuid == make_uid("series:phantom-0003")
    assert make_uid("x") == make_uid("x") != make_uid("y")


def test_shuffled_file_names_and_instance_numbers_read_in_position_order(tmp_path: Path) -> None:
    scan = make_scan(shape=(7, 4, 5))
    files = write_dicom_series(scan, tmp_path / "s")
    order = list(range(len(files)))
    random.Random(3).shuffle(order)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        # InstanceNumber is often wrong or reversed in the wild; it must not decide the order.
        ds.InstanceNumber = len(files) - order[k]
        ds.save_as(tmp_path / "s" / f"IMG{order[k]:03d}", enforce_file_format=True)
        path.unlink()
    back = read_scan(tmp_path / "s")
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.origin, scan.origin, atol=1e-6)


def test_missing_slice_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scan = make_scan()
    files = write_dicom_series(scan, tmp_path / "s")
    files[3].unlink()
    back = read_scan(tmp_path / "s")
    assert back.shape[0] == 5
    assert back.spacing[2] == pytest.approx(2.5)
    assert any("1 missing slice" in w for w in back.meta["warnings"])
    assert "missing slice" in caplog.text


def test_uneven_spacing_is_reported(tmp_path: Path) -> None:
    scan = make_scan(direction=np.eye(3))
    files = write_dicom_series(scan, tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
        float(ds.ImagePositionPatient[2]) + 0.4
    ]
    ds.save_as(files[2], enforce_file_format=True)
    back = read_scan(tmp_path / "s")
    assert any("uneven slice spacing" in w for w in back.meta["warnings"])


def test_several_series_default_to_the_largest_and_can_be_chosen(tmp_path: Path) -> None:
    big = make_scan(shape=(6, 4, 5), seriesuid="1.2.3.100")
    small = make_scan(shape=(3, 4, 5), seriesuid="1.2.3.200", seed=1)
    write_dicom_series(big, tmp_path / "study" / "big")
    write_dicom_series(small, tmp_path / "study" / "small")
    (tmp_path / "study" / "notes.xml").write_text("<LidcReadMessage/>")
    assert list(list_dicom_series(tmp_path / "study")) == ["1.2.3.100", "1.2.3.200"]

    default = read_scan(tmp_path / "study")
    assert default.seriesuid == "1.2.3.100"
    assert any("2 series" in w and "--series" in w for w in default.meta["warnings"])

    chosen = read_scan(tmp_path / "study", series="1.2.3.200")
    np.testing.assert_array_equal(chosen.array, small.array)
    assert chosen.meta["warnings"] == []

    with pytest.raises(InputError, match=r"series '9\.9' is not in this folder.*1\.2\.3\.200"):
        read_scan(tmp_path / "study", series="9.9")


def test_single_slice_dicom_matches_pydicom_rescale() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_scan(path)
    # Reference implementation: pydicom's own modality LUT (RescaleSlope/Intercept).
    np.testing.assert_array_equal(scan.array[0], apply_rescale(ds.pixel_array, ds))
    # PixelSpacing 0.661468 (row = column) and SliceThickness 5 from the file's header.
    np.testing.assert_allclose(scan.spacing, [0.661468, 0.661468, 5.0])
    np.testing.assert_allclose(scan.origin, [float(v) for v in ds.ImagePositionPatient])
    assert scan.seriesuid == ds.SeriesInstanceUID
    assert scan.patient_id == "1CT1"


def test_rescale_slope_and_intercept_give_hu(tmp_path: Path) -> None:
    scan = make_scan(shape=(2, 3, 4))
    files = write_dicom_series(scan, tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        # Store (HU + 1024) / 2 unsigned-looking values; HU = 2 * stored - 1024.
        stored = ds.pixel_array.astype(np.float64)
        ds.PixelData = np.rint((stored + 1024) / 2).astype("<i2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
        ds.save_as(path, enforce_file_format=True)
    back = read_scan(tmp_path / "s")
    expected = 2 * np.rint((scan.array + 1024) / 2) - 1024
    np.testing.assert_array_equal(back.array, expected)


def test_write_dicom_rejects_hu_outside_int16(tmp_path: Path) -> None:
    scan = make_scan(shape=(1, 2, 2))
    scan.array[0, 0, 0] = 40000
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(scan, tmp_path / "s")


def test_unknown_suffix_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "volume.vtk"
    path.write_text("not a CT")
    with pytest.raises(InputError, match=r"unknown CT file type '\.vtk'"):
        read_scan(path)
    with pytest.raises(InputError, match=r"cannot write CT as '\.vtk'"):
        write_scan(make_scan(), path)


def test_folder_without_dicom_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM image files"):
        read_scan(tmp_path)


def test_simpleitk_reads_our_dicom_series_with_the_same_geometry(tmp_path: Path) -> None:
    # Reference implementation: GDCM via SimpleITK's series reader, which orders slices
    # itself; agreement shows the files carry standard geometry, not only what we read back.
    scan = make_scan()
    write_dicom_series(scan, tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), scan.array)
    np.testing.assert_allclose(image.GetSpacing(), scan.spacing, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), scan.origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), scan.direction, atol=1e-6)


def test_tilted_gantry_direction_survives_dicom(tmp_path: Path) -> None:
    # Slices stacked along a direction 15 degrees off the slice normal, as on a tilted gantry.
    tilt = np.deg2rad(15.0)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(tilt)], [0.0, 0.0, np.cos(tilt)]])
    scan = make_scan(direction=direction)
    write_dicom_series(scan, tmp_path / "s")
    back = read_scan(tmp_path / "s")
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.direction, direction, atol=1e-9)
    # The gap along the slice normal is 2.5 * cos(15 deg); the spacing along the stack is 2.5.
    assert back.spacing[2] == pytest.approx(2.5)


def test_left_handed_volume_comes_back_flipped_but_in_the_same_place(tmp_path: Path) -> None:
    # DICOM orders slices along row x column; a left-handed stack is read in that order,
    # so z is reversed but every voxel keeps its world position.
    direction = np.diag([1.0, 1.0, -1.0])
    scan = make_scan(direction=direction)
    write_dicom_series(scan, tmp_path / "s")
    back = read_scan(tmp_path / "s")
    np.testing.assert_array_equal(back.array, scan.array[::-1])
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-9)
    last_slice_world = scan_voxel_to_world(scan, [scan.shape[0] - 1, 0, 0])
    np.testing.assert_allclose(back.origin, last_slice_world, atol=1e-6)


def test_jpeg_lossless_dicom_is_decoded_without_pydicom_plugins(tmp_path: Path) -> None:
    # JPEG Lossless (common in archives) needs plugins pydicom lacks here; GDCM decodes it.
    hu = (np.arange(16 * 16).reshape(1, 16, 16) % 2000 - 1000).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp_path / "jpeg.dcm"))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(hu))
    assert (
        "JPEG Lossless" in pydicom.dcmread(tmp_path / "jpeg.dcm").file_meta.TransferSyntaxUID.name
    )
    np.testing.assert_array_equal(read_scan(tmp_path / "jpeg.dcm").array, hu)


def _add_scout(folder: Path, shape: tuple[int, int, int], name: str) -> None:
    """Write a one-slice image filed under the same series, as scanners do with scouts."""
    scout = pydicom.dcmread(write_dicom_series(make_scan(shape=shape), folder.parent / name)[0])
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, like a localizer
    scout.save_as(folder / f"{name}.dcm", enforce_file_format=True)


def test_scouts_in_the_series_are_skipped_and_reported(tmp_path: Path) -> None:
    scan = make_scan(shape=(3, 4, 5))
    write_dicom_series(scan, tmp_path / "s")
    _add_scout(tmp_path / "s", (1, 4, 5), "scout")
    back = read_scan(tmp_path / "s")
    np.testing.assert_array_equal(back.array, scan.array)
    assert any("skipped 1 files" in w and "scouts" in w for w in back.meta["warnings"])


def test_series_without_a_majority_geometry_is_an_input_error(tmp_path: Path) -> None:
    write_dicom_series(make_scan(shape=(1, 4, 5)), tmp_path / "s")
    _add_scout(tmp_path / "s", (1, 6, 6), "scout")
    with pytest.raises(InputError, match="differ in size or orientation"):
        read_scan(tmp_path / "s")


def test_slices_without_position_are_an_input_error(tmp_path: Path) -> None:
    files = write_dicom_series(make_scan(shape=(3, 4, 5)), tmp_path / "s")
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(InputError, match="no ImagePositionPatient"):
        read_scan(tmp_path / "s")


def test_list_dicom_series_ranks_by_size(tmp_path: Path) -> None:
    write_dicom_series(make_scan(shape=(2, 3, 3), seriesuid="1.2.9"), tmp_path / "a")
    write_dicom_series(make_scan(shape=(3, 3, 3), seriesuid="1.2.8"), tmp_path / "b")
    found = list_dicom_series(tmp_path)
    assert list(found) == ["1.2.8", "1.2.9"]
    assert [p.name for p in found["1.2.9"]] == ["slice_0000.dcm", "slice_0001.dcm"]


def test_rewriting_a_shorter_series_leaves_no_stale_slices(tmp_path: Path) -> None:
    write_dicom_series(make_scan(shape=(6, 4, 5)), tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("kept")
    shorter = make_scan(shape=(3, 4, 5), seed=2)
    write_dicom_series(shorter, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "notes.txt",
        "slice_0000.dcm",
        "slice_0001.dcm",
        "slice_0002.dcm",
    ]
    np.testing.assert_array_equal(read_scan(tmp_path / "s").array, shorter.array)


def test_writing_under_a_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(InputError, match="cannot write"):
        write_scan(make_scan(), tmp_path / "taken" / "vol.mhd")
    with pytest.raises(InputError, match="cannot write"):
        write_dicom_series(make_scan(), tmp_path / "taken" / "series")


def test_a_folder_of_mhd_files_suggests_the_files(tmp_path: Path) -> None:
    # `activecad detect data/ct/` on LUNA16's layout used to say "no DICOM image files found".
    write_scan(make_scan(), tmp_path / "1.2.3.mhd")
    write_scan(make_scan(), tmp_path / "1.2.4.mhd")
    with pytest.raises(InputError) as error:
        read_scan(tmp_path)
    message = str(error.value)
    assert "holds 2 scan file(s) such as 1.2.3.mhd" in message
    assert f"Pass the files themselves, e.g. {tmp_path / '1.2.3.mhd'}" in message
    assert f"{tmp_path}/*.mhd" in message
