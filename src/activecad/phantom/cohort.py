"""Virtual patients and whole cohorts: draw every study, read it, and write the real formats.

Each patient is a pure function of ``(seed, patient index)``: patient 7 of a 10-patient
cohort is the same as patient 7 of a 50-patient cohort, and the same seed gives
byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress
from scipy import ndimage

import activecad
from activecad.consensus import SeriesGeometry, readers_table, select_luna16
from activecad.errors import InputError
from activecad.io.ct import make_uid, write_dicom_series, write_scan
from activecad.io.geometry import world_to_voxel
from activecad.io.lidc import RATINGS, LidcMark, LidcRoi, LidcScan, write_lidc_xml
from activecad.io.radiograph import write_png
from activecad.io.scan import Scan
from activecad.io.tables import write_table
from activecad.phantom.acquisition import (
    Acquisition,
    Scanner,
    acquire,
    reorient,
    sample_acquisition,
    sample_scanners,
)
from activecad.phantom.anatomy import (
    TISSUE_HU,
    Anatomy,
    Tissue,
    draw_anatomy,
    iter_slabs,
    sample_anatomy,
)
from activecad.phantom.config import Preset, get_preset
from activecad.phantom.lesions import (
    DATASET,
    LESION_TYPE,
    LIVER_ENHANCEMENT_HU,
    PHASES,
    Lesion,
    draw_lesion,
    sample_lesions,
)
from activecad.phantom.nodules import (
    Nodule,
    draw_nodule,
    draw_pleural_bump,
    sample_nodules,
    sample_pleural_bumps,
)
from activecad.phantom.radiograph import LUNG_HU, Radiograph2D, project_radiograph
from activecad.phantom.raster import Grid
from activecad.phantom.readers import draw_doubtful, read_nodules
from activecad.phantom.vessels import VesselTree, draw_bronchi, draw_vessels, grow_vessels

FORMATS = ("mhd", "dicom", "nifti")
# Raised when the same seed starts drawing different patients, so that results can say
# which phantom they were measured on: 2 draws doubtful nodules faint (1 drew them plain).
PHANTOM_REVISION = 2
REPORT_MISS_SMALL = 0.5  # report-mined labels miss half of visible nodules under 8 mm
LABEL_NOISE = 0.05  # share of report-mined radiograph labels that are simply wrong
PARTIAL_LABEL_RATE = 0.5  # share of lesions a DeepLesion-style key-slice label marks
OUTLINE_POINTS = 32  # points of a simulated reader's outline (polygon area 0.6 % short)


@dataclass
class StudyCase:
    """One generated study (a CT series) and everything known about it.

    Attributes:
        patient_id, study_id, seriesuid, date: identifiers; ``study_index`` 0-based.
        scan: the CT as stored (its own direction), HU.
        acquisition: how it was scanned; ``grid`` the identity-direction drawing grid.
        labels: (Z, Y, X) tissue labels on the drawing grid (not the stored array).
        nodules: truth, one row per nodule (world mm).
        readers: one row per reader mark (world mm, LIDC ratings), clustered into nodules
            by :func:`activecad.consensus.readers_table` (``reader_mark_id`` is the true
            nodule the reader marked).
        candidates: LUNA16-style candidates (world mm, class).
        lesions: every lesion, nodules included, with DeepLesion key-slice columns.
        radiograph: the projected chest radiograph and its labels.
        cxr_id: identifier of the radiograph.
        lidc: the readers' marks as LIDC outlines (pixels of ``scan``), written as XML.
    """

    patient_id: str
    study_index: int
    study_id: str
    seriesuid: str
    date: str
    scan: Scan
    acquisition: Acquisition
    labels: np.ndarray
    nodules: pd.DataFrame
    readers: pd.DataFrame
    candidates: pd.DataFrame
    lesions: pd.DataFrame
    radiograph: Radiograph2D
    cxr_id: str
    lidc: LidcScan


@dataclass
class PatientCase:
    """A virtual patient: the body, its vessels, nodules, lesions and studies."""

    patient_id: str
    index: int
    anatomy: Anatomy
    vessels: VesselTree
    nodules: list[Nodule]
    lesions: list[Lesion]
    bumps: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    studies: list[StudyCase] = field(default_factory=list)
    phase: str = "unenhanced"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def cohort_scanners(seed: int) -> list[Scanner]:
    """The scanners (and their HU offsets) of the cohort made with ``seed``."""
    return sample_scanners(_rng(seed, 7919))


def patient_id_for(index: int) -> str:
    """Identifier of patient ``index`` (0-based), LIDC style."""
    return f"PHANTOM-{index + 1:04d}"


def generate_patient(
    index: int,
    *,
    seed: int,
    preset: str = "small",
    n_studies: int | None = None,
    phase: str = "unenhanced",
) -> PatientCase:
    """Generate one virtual patient with all its studies, in memory.

    Args:
        index: 0-based patient number in the cohort.
        seed: cohort seed; the patient depends only on ``(seed, index)``.
        preset: ``"small"`` (about 128 x 128 x 100), ``"medium"`` (256 x 256 x ~220) or
            ``"full"`` (512 x 512 x ~300).
        n_studies: force the number of studies (1-3); drawn (70/20/10 %) when None.
        phase: contrast phase of every study (``PHASES``): ``"unenhanced"`` (screening
            chest CT, the cohort's default) or ``"portal_venous"`` (diagnostic CT: the
            liver enhanced, standard dose only, abdominal nodes in fat; see
            :func:`activecad.phantom.lesions.draw_lesion`). The anatomy, nodules and
            lesions are the same in both.

    Returns:
        The patient; each study holds its stored :class:`~activecad.io.scan.Scan` and truth.
    """
    spec = get_preset(preset)
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    rng = _rng(seed, index, 1)
    if n_studies is None:
        n_studies = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    if not 1 <= n_studies <= 3:
        raise ValueError(f"n_studies must be 1, 2 or 3, got {n_studies}")
    anatomy = sample_anatomy(rng)
    vessels = grow_vessels(
        anatomy,
        _rng(seed, index, 2),
        min_radius=spec.min_vessel_radius_mm,
        max_segments_per_tree=spec.max_segments_per_tree,
    )
    nodules = sample_nodules(anatomy, vessels, _rng(seed, index, 3), n_studies)
    nodules = draw_doubtful(nodules, _rng(seed, index, 6))
    lesions = sample_lesions(anatomy, _rng(seed, index, 4), n_studies)
    bumps = sample_pleural_bumps(anatomy, _rng(seed, index, 5), nodules)
    patient = PatientCase(
        patient_id_for(index), index, anatomy, vessels, nodules, lesions, bumps=bumps, phase=phase
    )
    scanners = cohort_scanners(seed)
    first_day = dt.date(2001, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    day = first_day
    for study in range(n_studies):
        if study:
            day = day + dt.timedelta(days=int(rng.integers(90, 400)))
        patient.studies.append(
            _generate_study(patient, study, spec, seed, scanners, day.isoformat())
        )
    return patient


def generate_scan(*, seed: int, preset: str = "small", index: int = 0) -> StudyCase:
    """The first study of patient ``index``: its scan and truth, without writing anything."""
    return generate_patient(index, seed=seed, preset=preset, n_studies=1).studies[0]


def _tissue_hu(
    labels: np.ndarray,
    grid: Grid,
    anatomy: Anatomy,
    center: np.ndarray,
    rng: np.random.Generator,
    border_blur: bool = False,
) -> np.ndarray:
    """HU of the tissues with their texture (about 2 mm grain), slab by slab.

    With ``border_blur`` the organ means are softened in-plane by one voxel first, as
    partial volume softens the borders of coarse voxels.

    Returns:
        (Z, Y, X) float32 HU on ``grid``.
    """
    amp = np.array([TISSUE_HU[t][1] for t in Tissue], dtype=np.float32)
    table = anatomy.hu_table()
    sigma = (0.0, 2.0 / grid.spacing[1], 2.0 / grid.spacing[0])
    delta = np.zeros((1, 41, 41), dtype=np.float32)
    delta[0, 20, 20] = 1.0
    gain = np.float32(1.0 / np.sqrt(float((ndimage.gaussian_filter(delta, sigma) ** 2).sum())))
    # Lungs are denser towards the back (gravity-dependent perfusion), as patients lie supine.
    _, y, _ = grid.axes()
    cb = anatomy.cavity_half_axes[1]
    back = np.clip((y - np.float32(center[1]) + cb) / (2 * cb), 0.0, 1.0) ** 2
    gradient = (np.float32(anatomy.lung_gradient) * back).astype(np.float32)
    hu = np.empty(labels.shape, dtype=np.float32)
    for sl in iter_slabs(grid):
        lab = labels[sl]
        tex = rng.standard_normal(lab.shape, dtype=np.float32)
        ndimage.gaussian_filter(tex, sigma, output=tex, truncate=2.5)
        tex *= gain * amp[lab]
        base = table[lab]
        if border_blur:
            for axis in (1, 2):
                ndimage.correlate1d(base, [0.25, 0.5, 0.25], axis=axis, output=base)
        tex += base
        tex += (lab == Tissue.LUNG) * gradient
        hu[sl] = tex
    return hu


def _generate_study(
    patient: PatientCase,
    study: int,
    spec: Preset,
    seed: int,
    scanners: list[Scanner],
    date: str,
) -> StudyCase:
    rng = _rng(seed, patient.index, 100 + study)
    anatomy = patient.anatomy
    lowest = min(anatomy.dome_right, anatomy.dome_left) - 45.0
    acq = sample_acquisition(rng, spec, anatomy.apex_w, lowest, scanners)
    if patient.phase == "portal_venous" and acq.dose == "low":
        # Diagnostic contrast CT is not low dose: the drawn 35-70 HU noise maps onto the
        # standard range, 12-30 HU (the random stream stays that of the unenhanced study).
        noise = 12.0 + (acq.noise_sd - 35.0) * 18.0 / 35.0
        acq = replace(acq, noise_sd=float(noise), dose="standard")
    grid, center = acq.grid, acq.body_center
    labels = draw_anatomy(anatomy, grid, center)

    hu = _tissue_hu(labels, grid, anatomy, center, rng, spec.border_blur)
    if patient.phase == "portal_venous":
        hu[labels == Tissue.LIVER] += np.float32(LIVER_ENHANCEMENT_HU)

    draw_bronchi(hu, patient.vessels, grid, center, wall_hu=40.0)
    draw_vessels(hu, patient.vessels, grid, center, blood_hu=42.0)
    for nodule in patient.nodules:
        draw_nodule(hu, nodule, grid, center, study, rng)
    for lesion in patient.lesions:
        draw_lesion(hu, lesion, grid, center, study, patient.phase)
    for bump in patient.bumps:
        draw_pleural_bump(hu, bump, grid, center, density=35.0)

    nodule_centers = np.array([n.center + center for n in patient.nodules]).reshape(-1, 3)
    diameters = np.array([n.diameter_at(study) for n in patient.nodules])
    # A doubtful nodule was drawn faint; the radiograph judges its visibility as drawn.
    densities = np.array([LUNG_HU + n.contrast * (n.core_hu - LUNG_HU) for n in patient.nodules])
    radiograph = project_radiograph(
        hu, labels, grid, nodule_centers, diameters, densities, spec.cxr_size, rng
    )
    volume = acquire(hu, acq, rng)
    stored, origin, spacing = reorient(volume, grid, acq.direction)
    del volume
    study_id = f"{patient.patient_id}-S{study + 1}"
    seriesuid = make_uid(f"activecad-phantom:{seed}:{patient.patient_id}:{study}")
    scan = Scan(
        array=stored,
        spacing=spacing,
        origin=origin,
        direction=acq.direction,
        seriesuid=seriesuid,
        patient_id=patient.patient_id,
        study_id=study_id,
        meta={
            "scanner": acq.scanner.name,
            "dose": acq.dose,
            "noise_sd": acq.noise_sd,
            "phase": patient.phase,
        },
    )
    nodules = _nodule_table(patient, study, center, seriesuid)
    lidc, geometry = _reader_marks(patient, study, center, scan, rng)
    readers = readers_table(lidc, geometry)
    candidates = _candidate_table(patient, study, center, seriesuid, readers, rng, spec)
    lesions = _lesion_table(patient, study, center, scan)
    return StudyCase(
        patient_id=patient.patient_id,
        study_index=study,
        study_id=study_id,
        seriesuid=seriesuid,
        date=date,
        scan=scan,
        acquisition=acq,
        labels=labels,
        nodules=nodules,
        readers=readers,
        candidates=candidates,
        lesions=lesions,
        radiograph=radiograph,
        cxr_id=f"{patient.patient_id}-S{study + 1}-PA",
        lidc=lidc,
    )


def _nodule_table(patient: PatientCase, study: int, center: np.ndarray, uid: str) -> pd.DataFrame:
    rows = []
    for n in patient.nodules:
        x, y, z = n.center + center
        rows.append(
            {
                "seriesuid": uid,
                "nodule_id": f"n{n.nodule_id}",
                "coordX": x,
                "coordY": y,
                "coordZ": z,
                "diameter_mm": n.diameter_at(study),
                "kind": n.kind,
                "shape": n.shape,
                "place": n.place,
                "hu": n.hu,
                "core_hu": n.core_hu,
                "doubtful": n.doubtful,
                "malignancy": n.malignancy,
                "extent_mm": n.extent(study),
            }
        )
    cols = [
        "seriesuid",
        "nodule_id",
        "coordX",
        "coordY",
        "coordZ",
        "diameter_mm",
        "kind",
        "shape",
        "place",
        "hu",
        "core_hu",
        "doubtful",
        "malignancy",
        "extent_mm",
    ]
    return pd.DataFrame(rows, columns=cols)


def _outline(centre: np.ndarray, diameter: float, geometry: SeriesGeometry) -> tuple[LidcRoi, ...]:
    """A reader's outline of a sphere: one circle per slice it crosses (pixel column/row).

    Slices cut the sphere of ``diameter`` (world mm) centred at ``centre`` (world mm, x-y-z);
    when none does (a small sphere between thick slices) the nearest slice gets the circle
    of the sphere's own radius, as a reader outlines it where it shows best. As LIDC readers
    do, the outline runs through the first pixels outside the nodule: half a pixel out.
    """
    slice_z = np.asarray(geometry.slice_z, dtype=np.float64)  # from_scan always fills it
    radius = diameter / 2.0
    gaps = slice_z - centre[2]
    crossing = np.flatnonzero(np.abs(gaps) < radius)
    if len(crossing) == 0:
        crossing = np.array([int(np.argmin(np.abs(gaps)))])
    half_pixel = 0.5 * float(np.mean(geometry.pixel_spacing or (0.0, 0.0)))
    angles = np.linspace(0.0, 2.0 * np.pi, OUTLINE_POINTS, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    rois = []
    for k in crossing:
        rho = np.sqrt(max(radius**2 - gaps[k] ** 2, 0.0)) or radius
        world = centre[:2] + (rho + half_pixel) * circle
        pixels = np.round(geometry.world_xy_to_pixels(world), 2)
        rois.append(LidcRoi(float(slice_z[k]), pixels))
    return tuple(rois)


def _reader_marks(
    patient: PatientCase,
    study: int,
    center: np.ndarray,
    scan: Scan,
    rng: np.random.Generator,
) -> tuple[LidcScan, SeriesGeometry]:
    """The readers' marks of one study as LIDC marks (outlines in the scan's pixels)."""
    marks = read_nodules(patient.nodules, rng, study=study)
    by_id = {n.nodule_id: n for n in patient.nodules}
    # A reader's centre is the true centre give or take a millimetre (contour centroids).
    pos = np.array([by_id[i].center + center for i in marks["nodule_id"]]).reshape(-1, 3)
    pos = pos + rng.normal(0.0, 0.6, pos.shape)
    # One reading session per reader, as in an LIDC file (and so in readers.csv).
    order = np.argsort(marks["reader"].to_numpy(), kind="stable")
    marks, pos = marks.iloc[order].reset_index(drop=True), pos[order]
    geometry = SeriesGeometry.from_scan(scan)
    slice_z = np.asarray(geometry.slice_z, dtype=np.float64)
    lidc_marks = []
    for row, centre in zip(marks.itertuples(index=False), pos, strict=True):
        if row.mark == "small":
            k = int(np.argmin(np.abs(slice_z - centre[2])))
            point = np.round(geometry.world_xy_to_pixels(centre[None, :2]), 2)
            rois: tuple[LidcRoi, ...] = (LidcRoi(float(slice_z[k]), point),)
            ratings = {}
        else:
            rois = _outline(centre, float(row.diameter_mm), geometry)
            ratings = {key: int(getattr(row, key)) for key in RATINGS}
        lidc_marks.append(
            LidcMark(f"reader{row.reader + 1}", f"n{row.nodule_id}", row.mark, rois, ratings)
        )
    study_uid = make_uid(f"activecad-phantom-study:{scan.seriesuid}")
    lidc = LidcScan(
        seriesuid=scan.seriesuid,
        marks=lidc_marks,
        study_uid=study_uid,
        patient_id=scan.patient_id,
        pixel_spacing=float(scan.spacing[0]),
        slice_thickness=float(scan.spacing[2]),
        slice_z=geometry.slice_z,
    )
    return lidc, geometry


def consensus(readers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split clustered reader marks into LUNA16 annotations and excluded findings.

    The shared rule of :func:`activecad.consensus.select_luna16` (>= 3 readers outlined
    it, mean diameter >= 3 mm). Every phantom series counts: the full preset draws LIDC's
    thin-slice thicknesses, and the small preset's 2.5-3.5 mm slices stand in for them to
    keep it fast (``activecad import lidc`` on its XML applies the 2.5 mm rule and keeps
    only the 2.5 mm series).

    Args:
        readers: one row per mark (``seriesuid, nodule_id, reader, coord*, diameter_mm``;
            ``mark`` and ``malignancy`` when known).

    Returns:
        (annotations, excluded): ``seriesuid, coordX, coordY, coordZ, diameter_mm`` plus
        ``nodule_id``, ``readers`` (how many outlined it) and ``malignancy`` (mean); world mm.
    """
    series = pd.DataFrame({"seriesuid": readers["seriesuid"].unique(), "luna16": True})
    _, annotations, excluded = select_luna16(readers, series)
    return annotations, excluded


def _candidate_table(
    patient: PatientCase,
    study: int,
    center: np.ndarray,
    uid: str,
    readers: pd.DataFrame,
    rng: np.random.Generator,
    spec: Preset,
) -> pd.DataFrame:
    """Class 1 at annotated nodules, class 0 at nodule-like places outside every nodule."""
    tree, anatomy = patient.vessels, patient.anatomy
    found: list[tuple[np.ndarray, str]] = []
    big = tree.branch_radius >= 1.0
    found += [(p, "vessel_branch") for p in tree.branch_points[big]]
    found += [(b[:3], "pleural_bump") for b in patient.bumps]
    seg = tree.p1 - tree.p0
    length = np.linalg.norm(seg, axis=1) + 1e-9
    # Vessels running head-to-feet are round bright spots in axial slices.
    upright = (np.abs(seg[:, 2]) / length > 0.6) & (tree.r0 >= 1.0)
    found += [(p, "vessel_cross_section") for p in (tree.p0 + 0.5 * seg)[upright]]
    for _ in range(40):
        # Walk out from a hilum to the last lung point: a spot on the pleura.
        start = anatomy.hila()["artery_right" if rng.random() < 0.5 else "artery_left"][0]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        steps = start + np.arange(10, 200, 1.0)[:, None] * d
        inside = anatomy.in_lung(steps)
        if inside.any() and not inside[-1]:
            last = np.flatnonzero(inside)[-1]
            found.append((steps[last] - 2.0 * d, "pleura"))
    found += [
        (les.center, "lymph_node")
        for les in patient.lesions
        if les.organ == "lymph_node_mediastinal" and not les.enlarged
    ]
    points = np.array([p for p, _ in found]).reshape(-1, 3) + center
    sources = np.array([s for _, s in found])
    if patient.nodules:
        nc = np.array([n.center for n in patient.nodules]) + center
        ext = np.array([n.extent(study) for n in patient.nodules])
        dist = np.linalg.norm(points[:, None, :] - nc[None], axis=2)
        outside = np.all(dist > ext[None] + 2.0, axis=1)
        points, sources = points[outside], sources[outside]
    limit = 150 if spec.name == "small" else 500
    common = np.flatnonzero(np.isin(sources, ["vessel_branch", "vessel_cross_section", "pleura"]))
    room = max(limit - (len(points) - len(common)), 0)
    if len(common) > room:
        # Thin out the plentiful vessel and pleura points; the rarer mimics are all kept.
        drop = rng.choice(common, len(common) - room, replace=False)
        keep = np.setdiff1d(np.arange(len(points)), drop)
        points, sources = points[keep], sources[keep]
    negatives = pd.DataFrame(
        {
            "seriesuid": uid,
            "coordX": points[:, 0].round(3),
            "coordY": points[:, 1].round(3),
            "coordZ": points[:, 2].round(3),
            "class": 0,
            "source": sources,
        }
    )
    annotations, _ = consensus(readers)
    positives = pd.DataFrame(
        {
            "seriesuid": uid,
            "coordX": annotations["coordX"],
            "coordY": annotations["coordY"],
            "coordZ": annotations["coordZ"],
            "class": 1,
            "source": "nodule",
        }
    )
    frames = [f for f in (positives, negatives) if not f.empty]
    if not frames:
        return negatives
    return pd.concat(frames, ignore_index=True)


def _lesion_rows(
    scan: Scan, world: np.ndarray, half_axes: np.ndarray, kind: int
) -> dict[str, object]:
    """DeepLesion key-slice columns of an ellipsoid lesion on the stored scan."""
    ex, ey = np.array([half_axes[0], 0.0, 0.0]), np.array([0.0, half_axes[1], 0.0])
    ends = np.array([world - ex, world + ex, world - ey, world + ey])
    if half_axes[1] > half_axes[0]:
        ends = ends[[2, 3, 0, 1]]
    vox = world_to_voxel(
        np.vstack([world, ends]), origin=scan.origin, spacing=scan.spacing, direction=scan.direction
    )
    key = int(np.clip(np.rint(vox[0, 0]), 0, scan.shape[0] - 1))
    xy = vox[1:, [2, 1]].round(2)
    long_px = float(np.linalg.norm(xy[1] - xy[0]))
    short_px = float(np.linalg.norm(xy[3] - xy[2]))
    reach = int(np.ceil(30.0 / scan.spacing[2]))
    norm = np.clip(vox[0, ::-1] / (np.asarray(scan.shape[::-1]) - 1), 0.0, 1.0)
    window = (-1350.0, 150.0) if kind == LESION_TYPE["lung"] else (-175.0, 275.0)
    return {
        "Key_slice_index": key,
        "Measurement_coordinates": tuple(float(v) for v in xy.reshape(-1)),
        "Bounding_boxes": (
            float(xy[:, 0].min()),
            float(xy[:, 1].min()),
            float(xy[:, 0].max()),
            float(xy[:, 1].max()),
        ),
        "Lesion_diameters_Pixel_": (round(long_px, 2), round(short_px, 2)),
        "Normalized_lesion_location": tuple(round(float(v), 4) for v in norm),
        "Coarse_lesion_type": kind,
        "Slice_range": (max(key - reach, 0), min(key + reach, scan.shape[0] - 1)),
        "Spacing_mm_px_": tuple(float(v) for v in scan.spacing),
        "Image_size": (scan.shape[2], scan.shape[1]),
        "DICOM_windows": window,
    }


def _lesion_table(patient: PatientCase, study: int, center: np.ndarray, scan: Scan) -> pd.DataFrame:
    """Every lesion of the study (nodules, liver tumours, enlarged nodes), full truth."""
    rows = []
    items: list[tuple[str, str, np.ndarray, np.ndarray, str]] = []
    for n in patient.nodules:
        r = 0.5 * n.diameter_at(study)
        items.append((f"n{n.nodule_id}", "lung", n.center, np.array([r, r, r]), n.kind))
    for les in patient.lesions:
        if les.enlarged:
            kind = (
                "hypodense"
                if les.organ == "liver" and les.hu < 60
                else ("hyperdense" if les.organ == "liver" else "enlarged")
            )
            items.append((f"l{les.lesion_id}", les.organ, les.center, les.axes_at(study), kind))
    pnum = patient.index + 1
    split = (
        1
        + int(hashlib.sha256(patient.patient_id.encode()).digest()[0] % 20 >= 14)
        + int(hashlib.sha256(patient.patient_id.encode()).digest()[0] % 20 >= 17)
    )
    for lesion_id, organ, body, axes, kind in items:
        world = body + center
        dl = _lesion_rows(scan, world, axes, LESION_TYPE[organ])
        rows.append(
            {
                "File_name": f"{pnum:06d}_{study + 1:02d}_01_{dl['Key_slice_index']:03d}.png",
                "Patient_index": pnum,
                "Study_index": study + 1,
                "Series_ID": 1,
                **dl,
                "Possibly_noisy": 0,
                "Train_Val_Test": split,
                "seriesuid": scan.seriesuid,
                "lesion_id": lesion_id,
                "dataset": DATASET[organ],
                "organ": organ,
                "kind": kind,
                "coordX": round(float(world[0]), 3),
                "coordY": round(float(world[1]), 3),
                "coordZ": round(float(world[2]), 3),
                "long_axis_mm": round(2.0 * float(max(axes[0], axes[1])), 2),
                "short_axis_mm": round(2.0 * float(min(axes[0], axes[1])), 2),
            }
        )
    return pd.DataFrame(rows)


def _check_args(out_dir: Path, patients: int, seed: int, formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise InputError(
            f"patients must be a positive integer, got {patients!r}", fix="pass e.g. --patients 10"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(
            f"seed must be a non-negative integer, got {seed!r}", fix="pass e.g. --seed 0"
        )
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise InputError(
            f"unknown CT format(s) {unknown or list(formats)}",
            fix=f"choose from {', '.join(FORMATS)}",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(
            "exists and is not a folder", path=out_dir, fix="choose a new folder for the cohort"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise InputError(
            "folder is not empty and holds no phantom cohort",
            path=out_dir,
            fix="choose an empty or new folder (a previous cohort is replaced)",
        )
    return chosen


def _clear_previous(out_dir: Path) -> None:
    """Remove what an earlier cohort wrote here, so no stale file survives."""
    for name in ("ct", "ct_dicom", "ct_nifti", "cxr", "preview", "lidc_xml"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for f in out_dir.glob("*.csv"):
        f.unlink()
    (out_dir / "manifest.json").unlink(missing_ok=True)


def _write_study(out_dir: Path, case: StudyCase, formats: tuple[str, ...]) -> None:
    uid = case.seriesuid
    if "mhd" in formats:
        write_scan(case.scan, out_dir / "ct" / f"{uid}.mhd")
    if "nifti" in formats:
        write_scan(case.scan, out_dir / "ct_nifti" / f"{uid}.nii.gz")
    if "dicom" in formats:
        write_dicom_series(case.scan, out_dir / "ct_dicom" / uid)
    write_lidc_xml(case.lidc, out_dir / "lidc_xml" / f"{uid}.xml")
    cxr = case.radiograph
    write_png(cxr.image, out_dir / "cxr" / "images" / f"{case.cxr_id}.png", bits=16)
    write_png(cxr.mask, out_dir / "cxr" / "masks" / f"{case.cxr_id}.png", bits=8)
    write_png(cxr.lungs, out_dir / "cxr" / "lungs" / f"{case.cxr_id}.png", bits=8)


def _radiograph_tables(case: StudyCase, rng: np.random.Generator) -> tuple[list[dict], dict]:
    cxr = case.radiograph
    boxes = []
    visible = np.flatnonzero(cxr.visible)
    for box, n in zip(cxr.boxes, visible, strict=True):
        row = case.nodules.iloc[n]
        boxes.append(
            {
                "image_id": case.cxr_id,
                "x1": int(box[0]),
                "y1": int(box[1]),
                "x2": int(box[2]),
                "y2": int(box[3]),
                "label": "nodule",
                "nodule_id": row["nodule_id"],
                "diameter_mm": round(float(row["diameter_mm"]), 2),
                "kind": row["kind"],
                "seriesuid": case.seriesuid,
            }
        )
    clean = int(len(visible) > 0)
    # A report-mined label misses small and faint nodules and is sometimes simply wrong.
    reported = False
    for n in visible:
        row = case.nodules.iloc[n]
        miss = REPORT_MISS_SMALL if row["diameter_mm"] < 8.0 else 0.1
        miss = max(miss, 0.4) if row["kind"] == "ground-glass" else miss
        reported |= bool(rng.random() >= miss)
    noisy = int(reported)
    if rng.random() < LABEL_NOISE:
        noisy = 1 - noisy
    label = {
        "image_id": case.cxr_id,
        "label": clean,
        "label_noisy": noisy,
        "patient_id": case.patient_id,
        "seriesuid": case.seriesuid,
        "nodules_visible": len(visible),
        "pixel_mm": round(cxr.pixel_mm, 4),
    }
    return boxes, label


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(out_dir: Path, info: dict[str, object]) -> dict[str, object]:
    """Hash every file of the cohort (previews aside) and write ``manifest.json``."""
    files = sorted(
        p
        for p in out_dir.rglob("*")
        if p.is_file()
        and p.name != "manifest.json"
        and "preview" not in p.relative_to(out_dir).parts
    )
    manifest = {**info, "files": {p.relative_to(out_dir).as_posix(): _sha256(p) for p in files}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_patients_table(out_dir: Path, rows: list[dict[str, str]]) -> None:
    """``patients.csv``: one row per study (patient, study, seriesuid, date)."""
    pd.DataFrame(rows, columns=["patient", "study", "seriesuid", "date"]).to_csv(
        out_dir / "patients.csv", index=False
    )


def _concat(frames: list[pd.DataFrame], columns: list[str] | None = None) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns or [])
    return pd.concat(frames, ignore_index=True)


def generate_cohort(
    out_dir: str | Path,
    *,
    patients: int,
    seed: int,
    preset: str = "small",
    formats: Sequence[str] = ("mhd",),
    preview: bool = False,
    progress: bool = False,
) -> dict[str, object]:
    """Generate a cohort of virtual patients and write it in the real formats.

    Layout: ``manifest.json``, ``ct/<seriesuid>.mhd`` (+ ``.raw``; ``ct_dicom/<seriesuid>/``
    and ``ct_nifti/<seriesuid>.nii.gz`` when asked), ``annotations.csv``,
    ``annotations_excluded.csv``, ``candidates.csv``, ``readers.csv`` (and the same marks
    as LIDC-IDRI XML, ``lidc_xml/<seriesuid>.xml``), ``patients.csv``,
    ``lesions.csv`` (partial key-slice labels), ``lesions_full.csv`` (full truth),
    ``cxr/images|masks|lungs/<id>.png``, ``cxr/boxes.csv``, ``cxr/labels.csv``; with
    ``preview`` also ``preview/*.png``.

    Args:
        out_dir: target folder (created; an earlier cohort in it is replaced).
        patients: number of patients (each has 1-3 studies).
        seed: the cohort seed; the same seed gives byte-identical files.
        preset: ``"small"``, ``"medium"`` or ``"full"`` (:data:`.config.PRESETS`).
        formats: CT formats among ``"mhd"``, ``"dicom"``, ``"nifti"``.
        preview: also write preview PNGs of the first few studies.
        progress: show a progress bar.

    Returns:
        The manifest (also written to ``manifest.json``).

    Raises:
        InputError: bad arguments, or ``out_dir`` holds something that is not a cohort.
    """
    out = Path(out_dir)
    chosen = _check_args(out, patients, seed, formats)
    spec = get_preset(preset)
    if out.is_dir():
        _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[pd.DataFrame]] = {k: [] for k in ("readers", "candidates", "lesions")}
    patient_rows: list[dict[str, str]] = []
    boxes: list[dict] = []
    labels: list[dict] = []
    previews = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"phantom {spec.name}", total=patients)
        for index in range(patients):
            patient = generate_patient(index, seed=seed, preset=spec.name)
            for case in patient.studies:
                _write_study(out, case, chosen)
                tables["readers"].append(case.readers)
                tables["candidates"].append(case.candidates)
                tables["lesions"].append(case.lesions)
                patient_rows.append(
                    {
                        "patient": case.patient_id,
                        "study": case.study_id,
                        "seriesuid": case.seriesuid,
                        "date": case.date,
                    }
                )
                b, lab = _radiograph_tables(case, _rng(seed, index, 200 + case.study_index))
                boxes += b
                labels.append(lab)
                if preview and previews < 3:
                    from activecad.phantom.preview import write_previews

                    write_previews(case, out / "preview")
                    previews += 1
            bar.advance(task)

    readers = _concat(tables["readers"])
    annotations, excluded = consensus(readers)
    write_table(readers, out / "readers.csv", "readers")
    write_table(annotations, out / "annotations.csv", "annotations")
    write_table(excluded, out / "annotations_excluded.csv", "excluded")
    write_table(_concat(tables["candidates"]), out / "candidates.csv", "candidates")
    lesions_full = _concat(tables["lesions"])
    partial = _rng(seed, 8191).random(len(lesions_full)) < PARTIAL_LABEL_RATE
    lesions_full["labelled"] = partial.astype(int)
    write_table(lesions_full, out / "lesions_full.csv", "lesions")
    write_table(lesions_full[partial].drop(columns="labelled"), out / "lesions.csv", "lesions")
    write_patients_table(out, patient_rows)
    box_cols = [
        "image_id",
        "x1",
        "y1",
        "x2",
        "y2",
        "label",
        "nodule_id",
        "diameter_mm",
        "kind",
        "seriesuid",
    ]
    write_table(pd.DataFrame(boxes, columns=box_cols), out / "cxr" / "boxes.csv", "cxr_boxes")
    write_table(pd.DataFrame(labels), out / "cxr" / "labels.csv", "cxr_labels")

    info = {
        "generator": "activecad.phantom",
        "version": activecad.__version__,
        "revision": PHANTOM_REVISION,
        "seed": seed,
        "preset": spec.name,
        "formats": list(chosen),
        "counts": {
            "patients": patients,
            "series": len(patient_rows),
            "annotations": len(annotations),
            "excluded": len(excluded),
            "reader_marks": len(readers),
            "candidates": int(sum(len(c) for c in tables["candidates"])),
            "lesions_full": len(lesions_full),
            "lesions_labelled": int(partial.sum()),
            "radiographs": len(labels),
            "radiograph_boxes": len(boxes),
        },
    }
    return write_manifest(out, info)
