"""Clustering readers' marks into nodules and LUNA16's selection, on crafted marks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from activecad.consensus import (
    SeriesGeometry,
    build_lidc_tables,
    check_series,
    cluster_marks,
    readers_table,
    summarize_mark,
)
from activecad.io.lidc import LidcMark, LidcRoi, LidcScan


def _square(x: float, y: float, half: float) -> np.ndarray:
    return np.array(
        [[x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half]]
    )


def _nodule(
    reader: str, x: float, y: float, z: float, half: float = 5.0, **ratings: int
) -> LidcMark:
    return LidcMark(reader, f"{reader}-{x}", "nodule", (LidcRoi(z, _square(x, y, half)),), ratings)


GEOMETRY = SeriesGeometry(
    pixel_spacing=(1.0, 1.0),
    origin=np.array([-100.0, -50.0, 0.0]),
    slice_z=np.arange(0.0, 100.0, 1.0),
    slice_thickness=1.0,
)


def test_two_readers_2mm_apart_are_one_nodule_30mm_apart_two() -> None:
    radii = np.array([2.5, 2.5])
    near = cluster_marks(np.array([[0.0, 0, 0], [2.0, 0, 0]]), radii, ["a", "b"])
    far = cluster_marks(np.array([[0.0, 0, 0], [30.0, 0, 0]]), radii, ["a", "b"])
    assert near.tolist() == [0, 0]
    assert far.tolist() == [0, 1]


def test_points_count_as_3mm_spheres() -> None:
    # Two point marks (radius 1.5 mm each) touch up to 3 mm apart, not at 3.5 mm.
    radii = np.array([1.5, 1.5])
    assert cluster_marks(np.array([[0.0, 0, 0], [0, 0, 2.9]]), radii, "ab").tolist() == [0, 0]
    assert cluster_marks(np.array([[0.0, 0, 0], [0, 0, 3.5]]), radii, "ab").tolist() == [0, 1]


def test_more_readers_than_four_shrinks_the_linking_distance() -> None:
    # A chain of 6 marks 4 mm apart with 5 mm radii links all into one group of 6 readers;
    # LIDC has 4 readers, so (as pylidc does) the distance shrinks until groups hold <= 4.
    centres = np.column_stack([np.arange(6) * 4.0, np.zeros(6), np.zeros(6)])
    labels = cluster_marks(centres, np.full(6, 5.0), ["a", "b", "c", "d", "e", "f"])
    sizes = np.bincount(labels)
    assert len(sizes) > 1 and sizes.max() <= 4


def test_reader_with_two_marks_on_one_nodule_counts_once() -> None:
    scan = LidcScan(
        seriesuid="s",
        marks=[
            _nodule("a", 50, 50, 10, malignancy=4),
            _nodule("a", 51, 50, 10, malignancy=4),  # the same reader again, 1 mm away
            _nodule("b", 50, 51, 10, malignancy=2),
            _nodule("c", 90, 90, 40),
        ],
    )
    tables = build_lidc_tables([scan], {"s": GEOMETRY})
    readers = tables.readers
    assert readers["nodule_id"].tolist() == ["n1", "n1", "n1", "n2"]
    first = tables.nodules.set_index("nodule_id").loc["n1"]
    # Three marks but two readers: not enough for LUNA16's >= 3.
    assert first["readers"] == 2 and first["luna16"] == "excluded"
    # Mean of the readers' ratings: reader a (4, 4) -> 4, reader b -> 2.
    assert first["malignancy"] == pytest.approx((4 + 2) / 2)
    assert tables.annotations.empty and len(tables.excluded) == 2


def test_three_readers_make_an_annotation_with_world_centre_and_mean_diameter() -> None:
    scan = LidcScan(
        seriesuid="s",
        marks=[_nodule(r, 50 + k, 50, 10, half=5.0 + k) for k, r in enumerate("abc")],
    )
    tables = build_lidc_tables([scan], {"s": GEOMETRY})
    (row,) = tables.annotations.itertuples()
    # Centre: mean of pixel x 50, 51, 52 -> 51 px -> -100 + 51 mm; y -50 + 50.
    assert (row.coordX, row.coordY, row.coordZ) == (-49.0, 0.0, 10.0)
    # One slice (1 mm) of a square outline of side 10, 12, 14 px (1 mm pixels); the area
    # inside it, outline pixels left out, is s^2 - 2 s + pi / 4 (half a pixel in, Steiner);
    # volume-equivalent diameters (6 V / pi)^(1/3), averaged over the three readers.
    want = np.mean(
        [(6 * (s**2 - 2 * s + np.pi / 4) / np.pi) ** (1 / 3) for s in (10.0, 12.0, 14.0)]
    )
    assert row.diameter_mm == pytest.approx(want, abs=1e-3)
    assert row.readers == 3


def test_equivalent_diameter_subtracts_exclusion_outlines() -> None:
    # 10 x 10 px outline (1 mm pixels) on two slices 1 mm apart, a 4 x 4 px cavity outline
    # in one: inside the outline 100 - 20 + pi/4, the cavity grows by half a pixel to
    # 16 + 8 + pi/4; V = 2 (80 + pi/4) - (24 + pi/4) = 136 + pi/4 mm^3.
    rois = (
        LidcRoi(0.0, _square(20, 20, 5)),
        LidcRoi(1.0, _square(20, 20, 5)),
        LidcRoi(1.0, _square(20, 20, 2), inclusion=False),
    )
    summary = summarize_mark(LidcMark("a", "1", "nodule", rois), GEOMETRY)
    assert summary["diameter_mm"] == pytest.approx((6 * (136 + np.pi / 4) / np.pi) ** (1 / 3))
    assert summary["coordZ"] == 0.5  # the cavity's points do not move the centre


def test_small_nodules_and_non_nodules_are_excluded_with_diameter_minus_one() -> None:
    point = (LidcRoi(30.0, np.array([[10.0, 10.0]])),)
    scan = LidcScan(
        seriesuid="s",
        marks=[LidcMark(r, "p", "small", point) for r in "abcd"]
        + [LidcMark("a", "q", "non-nodule", (LidcRoi(60.0, np.array([[80.0, 80.0]])),))],
    )
    tables = build_lidc_tables([scan], {"s": GEOMETRY})
    assert tables.annotations.empty
    assert tables.excluded["diameter_mm"].tolist() == [-1.0, -1.0]
    # Four readers marked the small nodule, none outlined it.
    assert tables.nodules["readers"].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("geometry", "reason"),
    [
        (SeriesGeometry(slice_thickness=2.5, slice_z=np.arange(10) * 2.5), ""),
        (SeriesGeometry(slice_thickness=3.0), "slice thickness 3 mm > 2.5 mm"),
        (
            SeriesGeometry(slice_thickness=1.25, slice_z=np.r_[np.arange(10) * 1.25, 20.0]),
            "inconsistent slice spacing",
        ),
    ],
)
def test_luna16_keeps_thin_evenly_spaced_series(geometry: SeriesGeometry, reason: str) -> None:
    assert check_series(geometry).startswith(reason)
    if not reason:
        assert check_series(geometry) == ""


def test_findings_of_thick_series_are_neither_annotation_nor_excluded() -> None:
    scan = LidcScan(seriesuid="thick", marks=[_nodule(r, 50, 50, 10) for r in "abc"])
    thick = SeriesGeometry(pixel_spacing=(1.0, 1.0), slice_thickness=5.0)
    tables = build_lidc_tables([scan], {"thick": thick})
    assert tables.annotations.empty and tables.excluded.empty
    assert tables.nodules["luna16"].tolist() == ["series left out"]
    assert tables.series["reason"].iloc[0].startswith("slice thickness")


def test_world_xy_follows_the_direction_matrix() -> None:
    flipped = SeriesGeometry(
        pixel_spacing=(0.5, 0.5),
        origin=np.array([10.0, 20.0, 0.0]),
        direction=np.diag([-1.0, -1, 1]),
    )
    world = flipped.pixels_to_world_xy(np.array([[4.0, 2.0]]))
    assert world is not None
    np.testing.assert_allclose(world, [[10.0 - 2.0, 20.0 - 1.0]])
    np.testing.assert_allclose(flipped.world_xy_to_pixels(world), [[4.0, 2.0]])


def test_readers_table_of_a_series_without_marks_is_empty() -> None:
    table = readers_table(LidcScan(seriesuid="s", marks=[]))
    assert table.empty and "nodule_id" in table.columns
    tables = build_lidc_tables([LidcScan(seriesuid="s", marks=[])])
    assert tables.counts()["annotations"] == 0
    assert isinstance(tables.series, pd.DataFrame) and len(tables.series) == 1
