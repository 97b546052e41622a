"""Every kind of bad input gives one line naming the file and the problem, and exit code 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activecad.io import write_dicom_series, write_png, write_scan
from tests.io.helpers import make_scan


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _nonexistent(tmp_path: Path) -> Path:
    return tmp_path / "no_such_scan.mhd"


def _random_bytes_dcm(tmp_path: Path) -> Path:
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).bytes(600))
    return path


def _truncated_dicom_file(tmp_path: Path) -> Path:
    files = write_dicom_series(make_scan(shape=(1, 8, 10)), tmp_path / "s")
    _truncate(files[0], -50)
    return files[0]


def _truncated_slice_in_series(tmp_path: Path) -> Path:
    files = write_dicom_series(make_scan(), tmp_path / "s")
    _truncate(files[3], -50)
    return tmp_path / "s"


def _mhd_without_raw(tmp_path: Path) -> Path:
    write_scan(make_scan(), tmp_path / "vol.mhd")
    (tmp_path / "vol.raw").unlink()
    return tmp_path / "vol.mhd"


def _truncated_raw(tmp_path: Path) -> Path:
    write_scan(make_scan(), tmp_path / "vol.mhd")
    _truncate(tmp_path / "vol.raw", 100)
    return tmp_path / "vol.mhd"


def _truncated_nifti_gz(tmp_path: Path) -> Path:
    path = write_scan(make_scan(), tmp_path / "vol.nii.gz")
    _truncate(path, path.stat().st_size // 2)
    return path


def _nan_mhd(tmp_path: Path) -> Path:
    scan = make_scan()
    scan.array[1, 2, 3] = np.nan
    return write_scan(scan, tmp_path / "nan.mhd")


def _nan_nifti(tmp_path: Path) -> Path:
    scan = make_scan()
    scan.array[1, 2, 3] = np.nan
    return write_scan(scan, tmp_path / "nan.nii.gz")


def _empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _truncated_png(tmp_path: Path) -> Path:
    path = write_png(np.arange(64).reshape(8, 8), tmp_path / "cxr.png", bits=8)
    _truncate(path, path.stat().st_size // 2)
    return path


def _csv_missing_column(tmp_path: Path) -> Path:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,diameter_mm\n1.2.3,1,2,4\n")
    return path


def _csv_non_numeric(tmp_path: Path) -> Path:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,2,3,4\n1.2.3,x1,2,3,4\n")
    return path


def _csv_nan_coordinate(tmp_path: Path) -> Path:
    path = tmp_path / "candidates.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,NaN,3,0\n")
    return path


def _empty_csv(tmp_path: Path) -> Path:
    path = tmp_path / "table.csv"
    path.write_text("")
    return path


CASES = [
    (_nonexistent, "no such file or folder"),
    (_random_bytes_dcm, "not a DICOM file"),
    (_truncated_dicom_file, "corrupt or truncated pixel data"),
    (_truncated_slice_in_series, "slice_0003.dcm: corrupt or truncated pixel data"),
    (_mhd_without_raw, "its data file 'vol.raw' is missing"),
    (_truncated_raw, "holds 100 bytes but DimSize 10 8 6 of MET_FLOAT needs 1920"),
    (_truncated_nifti_gz, "the file is truncated or corrupt"),
    (_nan_mhd, "1 voxels are NaN or infinite (first at z,y,x=(1, 2, 3))"),
    (_nan_nifti, "1 voxels are NaN or infinite (first at z,y,x=(1, 2, 3))"),
    (_empty_folder, "no DICOM image files found"),
    (_truncated_png, "corrupt or truncated PNG"),
    (_csv_missing_column, "annotations table is missing column 'coordZ'"),
    (_csv_non_numeric, "column 'coordX' is not numeric: 'x1' at line 3"),
    # A literal NaN is a value, not an empty cell (it used to be reported as "is empty").
    (_csv_nan_coordinate, "column 'coordY' is not numeric: 'NaN' at line 2"),
    (_empty_csv, "the file is empty"),
]


@pytest.mark.parametrize(("make", "message"), CASES, ids=[c[0].__name__[1:] for c in CASES])
def test_bad_input_is_one_line_and_exit_1(run_cli, tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    result = run_cli("info", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    error = result.stderr.strip()
    assert "\n" not in error
    assert error.startswith("error:")
    assert message in error
    # The message names the file (or, for a slice, the file inside the folder).
    assert str(path) in error
    assert "Traceback" not in error
    # ... and names the fix: a second sentence after the problem.
    _, _, fix = error.removeprefix(f"error: {path}").partition(". ")
    assert fix.strip(), f"no fix in: {error}"


def test_unknown_series_lists_the_ones_there(run_cli, tmp_path: Path) -> None:
    write_dicom_series(make_scan(seriesuid="1.2.3.4"), tmp_path / "s")
    result = run_cli("info", tmp_path / "s", "--series", "9.9.9")
    assert result.exit_code == 1
    assert "series '9.9.9' is not in this folder" in result.stderr
    assert "1.2.3.4 (6 files)" in result.stderr


def test_verbose_adds_the_traceback(run_cli, tmp_path: Path) -> None:
    result = run_cli("-v", "info", _mhd_without_raw(tmp_path))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "its data file 'vol.raw' is missing" in result.stderr


def test_missing_argument_is_a_usage_error(run_cli) -> None:
    assert run_cli("info").exit_code == 2
