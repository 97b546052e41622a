"""``activecad info`` on CT, radiographs and annotation tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

from activecad.io import (
    Radiograph,
    write_dicom_series,
    write_png,
    write_radiograph_dicom,
    write_scan,
)
from tests.io.helpers import make_scan


def test_info_on_pydicom_ct_small_matches_pydicom_rescale(run_cli) -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    # Reference implementation: pydicom's own modality LUT; gives -896 .. 1167 HU.
    hu = apply_rescale(ds.pixel_array, ds)
    result = run_cli("info", path, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["hu"]["min"] == float(hu.min()) == -896.0
    assert info["hu"]["max"] == float(hu.max()) == 1167.0
    assert np.isclose(info["hu"]["mean"], float(hu.mean()))
    # PixelSpacing is (row, column) = (y, x) in DICOM; both 0.661468 here, slices 5 mm.
    assert info["spacing_xyz_mm"] == [
        float(ds.PixelSpacing[1]),
        float(ds.PixelSpacing[0]),
        float(ds.SliceThickness),
    ]
    assert info["size_xyz"] == [128, 128, 1]
    assert info["modality"] == "CT"
    assert info["patient_id"] == "1CT1"
    assert info["seriesuid"] == ds.SeriesInstanceUID


def test_info_human_output_names_the_fields(run_cli) -> None:
    result = run_cli("info", get_testdata_file("CT_small.dcm"))
    assert result.exit_code == 0, result.stderr
    for text in ("spacing (x, y, z mm)", "0.661468, 0.661468, 5", "-896 / 1167", "1CT1"):
        assert text in result.stdout


def test_info_reports_geometry_of_written_volumes(run_cli, tmp_path: Path) -> None:
    scan = make_scan()
    write_scan(scan, tmp_path / "vol.mhd")
    write_dicom_series(scan, tmp_path / "dicom")
    for path in (tmp_path / "vol.mhd", tmp_path / "dicom"):
        info = json.loads(run_cli("info", path, "--json").stdout)
        assert info["size_xyz"] == [10, 8, 6]
        np.testing.assert_allclose(info["spacing_xyz_mm"], scan.spacing)
        np.testing.assert_allclose(info["origin_xyz_mm"], scan.origin, atol=1e-6)
        np.testing.assert_allclose(info["direction"], scan.direction, atol=1e-6)
        assert info["hu"]["min"] == float(scan.array.min())
        assert info["patient_id"] == "PATIENT-007"


def test_info_series_option_picks_a_series(run_cli, tmp_path: Path) -> None:
    write_dicom_series(make_scan(shape=(4, 3, 3), seriesuid="1.2.3.1"), tmp_path / "a")
    write_dicom_series(make_scan(shape=(2, 3, 3), seriesuid="1.2.3.2"), tmp_path / "b")
    default = json.loads(run_cli("info", tmp_path, "--json").stdout)
    assert default["seriesuid"] == "1.2.3.1"
    assert "--series" in default["warnings"][0]
    chosen = json.loads(run_cli("info", tmp_path, "--json", "--series", "1.2.3.2").stdout)
    assert chosen["size_xyz"] == [3, 3, 2]


def test_info_on_radiographs(run_cli, tmp_path: Path) -> None:
    write_png(np.array([[0, 1000], [2000, 65535]]), tmp_path / "cxr.png", bits=16)
    info = json.loads(run_cli("info", tmp_path / "cxr.png", "--json").stdout)
    assert info["kind"] == "radiograph"
    assert info["size_xy"] == [2, 2]
    assert info["bits"] == 16
    assert (info["intensity"]["min"], info["intensity"]["max"]) == (0.0, 65535.0)

    radiograph = Radiograph(np.array([[0.0, 10.0, 20.0]]), spacing=[0.2, 0.3], image_id="dx")
    write_radiograph_dicom(radiograph, tmp_path / "dx.dcm", photometric="MONOCHROME1")
    info = json.loads(run_cli("info", tmp_path / "dx.dcm", "--json").stdout)
    assert info["kind"] == "radiograph"
    assert info["spacing_xy_mm"] == [0.2, 0.3]
    assert (info["intensity"]["min"], info["intensity"]["max"]) == (0.0, 20.0)
    human = run_cli("info", tmp_path / "dx.dcm")
    assert "intensity min / max / mean" in human.stdout


def test_info_on_annotation_table(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,2,3,4\n1.2.4,1,2,3,5\n")
    info = json.loads(run_cli("info", path, "--json").stdout)
    assert (info["table_kind"], info["rows"], info["distinct_seriesuid"]) == (
        "annotations",
        2,
        2,
    )
    as_excluded = json.loads(run_cli("info", path, "--json", "--kind", "excluded").stdout)
    assert as_excluded["table_kind"] == "excluded"


def test_info_on_a_csv_of_no_known_kind_counts_it(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "patients.csv"
    path.write_text("patient,study,seriesuid\nP1,S1,1.2.3\nP1,S2,1.2.4\n")
    info = json.loads(run_cli("info", path, "--json").stdout)
    assert (info["table_kind"], info["rows"], info["distinct_seriesuid"]) == (None, 2, 2)
    human = run_cli("info", path)
    assert "unknown (not validated; pass --kind)" in human.stdout


def test_info_does_not_cut_long_uids(run_cli, tmp_path: Path) -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    write_scan(make_scan(seriesuid=uid), tmp_path / "vol.mhd")
    assert uid in run_cli("info", tmp_path / "vol.mhd").stdout
