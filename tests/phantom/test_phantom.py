"""Tests of the phantom cohort: formats, truth, readers, determinism and radiographs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from activecad.io import read_scan, read_table, world_to_voxel
from activecad.phantom import consensus, generate_cohort, generate_patient
from activecad.phantom.acquisition import DIRECTIONS, reorient
from activecad.phantom.anatomy import Tissue
from activecad.phantom.nodules import DOUBTFUL_CONTRAST, Nodule, draw_nodule
from activecad.phantom.radiograph import world_to_pixel
from activecad.phantom.raster import Grid
from activecad.phantom.readers import draw_doubtful, read_nodules


@pytest.fixture(scope="module")
def patients() -> list:
    # Same (seed, index) as the session tiny_cohort, so these are its patients in memory.
    return [generate_patient(i, seed=0) for i in range(4)]


def test_layout_and_every_scan_opens(tiny_cohort: Path) -> None:
    for name in (
        "manifest.json",
        "annotations.csv",
        "annotations_excluded.csv",
        "candidates.csv",
        "readers.csv",
        "patients.csv",
        "lesions.csv",
        "lesions_full.csv",
        "cxr/boxes.csv",
        "cxr/labels.csv",
    ):
        assert (tiny_cohort / name).is_file(), name
    series = pd.read_csv(tiny_cohort / "patients.csv")["seriesuid"]
    for uid in series:
        path = tiny_cohort / "ct" / f"{uid}.mhd"
        image = sitk.ReadImage(str(path))
        scan = read_scan(path)
        assert scan.seriesuid == uid
        assert sitk.GetArrayFromImage(image).shape == scan.shape
        np.testing.assert_allclose(image.GetOrigin(), scan.origin)
    cxr = pd.read_csv(tiny_cohort / "cxr" / "labels.csv")
    for image_id in cxr["image_id"]:
        for sub in ("images", "masks", "lungs"):
            assert (tiny_cohort / "cxr" / sub / f"{image_id}.png").is_file()
    for kind, name in (
        ("annotations", "annotations.csv"),
        ("readers", "readers.csv"),
        ("candidates", "candidates.csv"),
        ("lesions", "lesions.csv"),
    ):
        read_table(tiny_cohort / name, kind)


def test_nodule_centres_in_lungs_with_hu_of_their_kind(patients: list) -> None:
    checked = 0
    for patient in patients:
        for case in patient.studies:
            centers = case.nodules[["coordX", "coordY", "coordZ"]].to_numpy()
            if len(centers) == 0:
                continue
            body = centers - case.acquisition.body_center
            tissue = patient.anatomy.labels(body[:, 0], body[:, 1], body[:, 2])
            assert np.all(tissue == Tissue.LUNG)
            vox = np.rint(
                world_to_voxel(
                    centers,
                    origin=case.scan.origin,
                    spacing=case.scan.spacing,
                    direction=case.scan.direction,
                )
            ).astype(int)
            for (k, j, i), (_, row) in zip(vox, case.nodules.iterrows(), strict=True):
                # Only nodules several voxels wide keep their HU after partial volume.
                if row["diameter_mm"] < 3.0 * case.scan.spacing.max():
                    continue
                hu = float(case.scan.array[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean())
                # Ranges from the drawing: solid -10..60 HU, ground glass -750..-300,
                # calcified 250..900, part-solid core 0..60; lung around -860.
                low, high = {
                    "solid": (-400, 200),
                    "part-solid": (-600, 200),
                    "ground-glass": (-850, -150),
                    "calcified": (0, 1500),
                }[row["kind"]]
                if row["doubtful"]:
                    # Drawn faint, the same share of the way up from lung; on a vessel or the
                    # pleura the faint blend keeps their density, so the top stays.
                    low = -860 + DOUBTFUL_CONTRAST * (low + 860)
                assert low < hu < high, (row["kind"], row["doubtful"], hu)
                checked += 1
    assert checked > 0


def test_class0_candidates_outside_every_nodule(patients: list) -> None:
    for patient in patients:
        for case in patient.studies:
            neg = case.candidates[case.candidates["class"] == 0]
            assert len(neg) > 20
            pts = neg[["coordX", "coordY", "coordZ"]].to_numpy()
            for _, nod in case.nodules.iterrows():
                c = nod[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
                assert np.all(np.linalg.norm(pts - c, axis=1) > nod["extent_mm"])


def _nodules(diameter: float, n: int) -> list[Nodule]:
    return [
        Nodule(
            i,
            np.zeros(3),
            diameter,
            "solid",
            "smooth",
            "parenchymal",
            30.0,
            30.0,
            3.0,
            np.zeros((0, 4)),
            np.zeros((0, 4)),
            np.ones(3),
        )
        for i in range(n)
    ]


def test_doubtful_nodule_drawn_faint() -> None:
    # A 10 mm solid nodule of 30 HU in uniform lung of -850 HU, 1 mm voxels: fully inside,
    # the plain one replaces the lung (30 HU); the doubtful one goes 0.4 of the way there,
    # -850 + 0.4 * (30 + 850) = -498 HU (DOUBTFUL_CONTRAST), by hand.
    grid = Grid((21, 21, 21), np.ones(3), np.full(3, -10.0))
    centres = []
    for doubtful in (False, True):
        hu = np.full(grid.shape, -850.0, dtype=np.float32)
        nodule = replace(_nodules(10.0, 1)[0], doubtful=doubtful)
        # A quarter voxel off the grid: no voxel centre sits on the nodule centre itself.
        draw_nodule(hu, nodule, grid, np.full(3, 0.25), 0, np.random.default_rng(0))
        centres.append(float(hu[10, 10, 10]))
    assert centres == pytest.approx([30.0, -498.0], abs=0.5)


def test_doubtful_share_drawn_once_per_nodule_by_size() -> None:
    # readers.py's mixture: 0.96 of 4 mm nodules are doubtful, 0.09 of 15.5 mm ones.
    rng = np.random.default_rng(0)
    small = np.mean([n.doubtful for n in draw_doubtful(_nodules(4.0, 2000), rng)])
    large = np.mean([n.doubtful for n in draw_doubtful(_nodules(15.5, 2000), rng)])
    assert small == pytest.approx(0.96, abs=0.02)
    assert large == pytest.approx(0.09, abs=0.02)


def test_small_nodules_missed_more_often_than_large() -> None:
    rng = np.random.default_rng(0)
    small = read_nodules(draw_doubtful(_nodules(4.0, 400), rng), rng)
    large = read_nodules(draw_doubtful(_nodules(15.0, 400), rng), rng)
    p_small, p_large = len(small) / 1600, len(large) / 1600
    # LIDC (lidc_stats.json): 74 % of 3-5 mm nodules are marked by a single reader but only
    # 10 % of 12-20 mm ones; a two-proportion z-test must separate the two rates clearly.
    pooled = (len(small) + len(large)) / 3200
    z = (p_large - p_small) / np.sqrt(pooled * (1 - pooled) * 2 / 1600)
    assert z > 10


def test_consensus_follows_luna16_rule() -> None:
    # Hand-made marks: n0 by 3 readers (kept), n1 by 2 (excluded), n2 by 4 but 2.5 mm mean.
    rows = [
        ("s", "n0", "r1", 10.0),
        ("s", "n0", "r2", 12.0),
        ("s", "n0", "r3", 14.0),
        ("s", "n1", "r1", 8.0),
        ("s", "n1", "r2", 8.0),
        ("s", "n2", "r1", 2.0),
        ("s", "n2", "r2", 3.0),
        ("s", "n2", "r3", 2.0),
        ("s", "n2", "r4", 3.0),
    ]
    df = pd.DataFrame(rows, columns=["seriesuid", "nodule_id", "reader", "diameter_mm"])
    df["coordX"] = df["coordY"] = df["coordZ"] = 0.0
    ann, exc = consensus(df)
    assert ann["nodule_id"].tolist() == ["n0"]
    assert ann["diameter_mm"].tolist() == [12.0]  # mean of 10, 12, 14
    assert sorted(exc["nodule_id"]) == ["n1", "n2"]


@pytest.mark.parametrize("direction", [d for d, _ in DIRECTIONS])
def test_reorient_keeps_world_positions(direction: np.ndarray) -> None:
    grid = Grid((3, 4, 5), np.array([0.5, 0.7, 2.0]), np.array([-10.0, 20.0, -300.0]))
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    stored, origin, spacing = reorient(array, grid, direction)
    idx = np.argwhere(np.ones(stored.shape, dtype=bool))
    from activecad.io import voxel_to_world

    world = voxel_to_world(idx, origin=origin, spacing=spacing, direction=direction)
    back = grid.to_index(world)
    np.testing.assert_array_equal(stored[tuple(idx.T)], array[tuple(back.T)])


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", patients=1, seed=5)
    b = generate_cohort(tmp_path / "b", patients=1, seed=5)
    assert a["files"] == b["files"]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == a


def test_radiograph_masks_lie_on_projected_nodules(patients: list) -> None:
    seen = 0
    for patient in patients:
        for case in patient.studies:
            cxr = case.radiograph
            size = cxr.mask.shape[0]
            centers = case.nodules[["coordX", "coordY", "coordZ"]].to_numpy().reshape(-1, 3)
            px, _ = world_to_pixel(centers, case.acquisition.grid, size)
            yy, xx = np.mgrid[0:size, 0:size]
            footprint = np.zeros((size, size), dtype=bool)
            for n in np.flatnonzero(cxr.visible):
                r = max(cxr.radius_px[n], 1.0)
                footprint |= (xx - px[n, 0]) ** 2 + (yy - px[n, 1]) ** 2 <= r**2 + 1e-6
            assert not np.any((cxr.mask > 0) & ~footprint)
            for (x1, y1, x2, y2), n in zip(cxr.boxes, np.flatnonzero(cxr.visible), strict=True):
                assert x1 <= px[n, 0] <= x2 and y1 <= px[n, 1] <= y2
                seen += 1
    assert seen > 0


def test_cli_writes_cohort_and_rejects_bad_format(run_cli, tmp_path: Path) -> None:
    ok = run_cli("phantom", tmp_path / "c", "--patients", "1", "--seed", "3", "--json", "--preview")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["counts"]["patients"] == 1
    previews = {p.name.rsplit("_", 1)[1] for p in (tmp_path / "c" / "preview").iterdir()}
    assert previews == {"axial.png", "coronal.png", "radiograph.png"}
    bad = run_cli("phantom", tmp_path / "d", "--patients", "1", "--formats", "png")
    assert bad.exit_code == 2  # a wrong option value is a usage error
    assert "format" in bad.stderr


def test_nodule_counts_calibrated_to_lidc() -> None:
    from activecad.phantom.nodules import (
        KIND_WEIGHTS,
        KINDS,
        sample_diameters,
        sample_nodule_count,
    )

    rng = np.random.default_rng(0)
    per_scan = []
    for _ in range(1500):
        nodules = []
        for i, d in enumerate(sample_diameters(rng, sample_nodule_count(rng))):
            kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
            nodules.append(_nodules(float(min(d, 30.0)), 1)[0])
            nodules[-1].nodule_id, nodules[-1].kind = i, kind
        marks = read_nodules(draw_doubtful(nodules, rng), rng)
        if marks.empty:
            per_scan.append(0)
            continue
        marks["seriesuid"] = "s"
        marks["coordX"] = marks["coordY"] = marks["coordZ"] = 0.0
        per_scan.append(len(consensus(marks)[0]))
    counts = np.asarray(per_scan)
    # LIDC thin scans (lidc_stats.json): 1.328 qualifying nodules per scan, 32.3 % with none;
    # 1500 simulated scans give a standard error of about 0.03 on the mean.
    assert abs(counts.mean() - 1.328) < 0.12
    assert abs((counts == 0).mean() - 0.323) < 0.05


def test_dicom_and_nifti_formats_read_back(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "c", patients=1, seed=2, formats=("dicom", "nifti"))
    uid = pd.read_csv(tmp_path / "c" / "patients.csv")["seriesuid"].iloc[0]
    from_dicom = read_scan(tmp_path / "c" / "ct_dicom" / uid)
    from_nifti = read_scan(tmp_path / "c" / "ct_nifti" / f"{uid}.nii.gz")
    assert from_dicom.seriesuid == uid
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    assert not (tmp_path / "c" / "ct").exists()


def _acquisitions(preset: str, n: int, seed: int = 0) -> list:
    """``n`` studies' acquisitions drawn for ``preset`` (apices 110 mm up, recesses 180 down)."""
    from activecad.phantom.acquisition import sample_acquisition, sample_scanners
    from activecad.phantom.config import PRESETS

    rng = np.random.default_rng(seed)
    scanners = sample_scanners(rng)
    return [sample_acquisition(rng, PRESETS[preset], 110.0, -180.0, scanners) for _ in range(n)]


def test_acquisitions_vary_like_real_scanners() -> None:
    acqs = _acquisitions("full", 300)
    spacing = np.array([a.grid.spacing for a in acqs])
    # The ranges: in-plane 0.5-0.9 mm, slices 0.6-2.5 mm; 512 x 512 in-plane.
    assert spacing[:, 0].min() >= 0.5 and spacing[:, 0].max() <= 0.9
    assert spacing[:, 2].min() >= 0.6 and spacing[:, 2].max() <= 2.5
    assert all(a.grid.shape[1:] == (512, 512) for a in acqs)
    directions = {tuple(a.direction.reshape(-1)) for a in acqs}
    assert len(directions) == len(DIRECTIONS)
    assert len({a.scanner.hu_offset for a in acqs}) > 1
    assert {a.dose for a in acqs} == {"standard", "low"}
    assert np.ptp([a.grid.origin for a in acqs], axis=0).min() > 10.0


def test_medium_preset_has_finer_voxels_over_the_same_field_of_view() -> None:
    acqs = _acquisitions("medium", 200)
    spacing = np.array([a.grid.spacing for a in acqs])
    # LIDC-like 0.5-0.9 mm pixels doubled (the small preset quadruples them), 1.25-2 mm slices.
    assert spacing[:, 0].min() >= 1.0 and spacing[:, 0].max() <= 1.8
    assert set(spacing[:, 2]) == {1.25, 1.5, 2.0}
    assert all(a.grid.shape[1:] == (256, 256) for a in acqs)
    # The same draws give the small preset's field of view: 128 pixels of twice the size.
    small, medium = _acquisitions("small", 1, seed=1)[0], _acquisitions("medium", 1, seed=1)[0]
    assert medium.grid.spacing[0] * 256 == pytest.approx(small.grid.spacing[0] * 128, abs=0.05)
    assert np.allclose(medium.body_center, small.body_center)


def test_phantom_lidc_xml_reads_back_to_the_same_readers_table(
    patients: list, tmp_path: Path
) -> None:
    from activecad.consensus import SeriesGeometry, readers_table
    from activecad.io import read_lidc_xml, write_lidc_xml

    checked = 0
    for patient in patients:
        for case in patient.studies:
            if case.readers.empty:
                continue
            back = read_lidc_xml(write_lidc_xml(case.lidc, tmp_path / f"{case.seriesuid}.xml"))
            table = readers_table(back, SeriesGeometry.from_scan(case.scan))
            # Equal up to the last written decimal (means are rounded to 0.001).
            pd.testing.assert_frame_equal(
                table, case.readers, check_dtype=False, check_exact=False, atol=1.5e-3
            )
            checked += 1
    assert checked > 0


def test_cohort_writes_one_lidc_xml_per_series(tiny_cohort: Path) -> None:
    from activecad.io import read_lidc_xml

    series = pd.read_csv(tiny_cohort / "patients.csv")["seriesuid"].astype(str)
    readers = read_table(tiny_cohort / "readers.csv", "readers")
    for uid in series:
        scan = read_lidc_xml(tiny_cohort / "lidc_xml" / f"{uid}.xml")
        assert scan.seriesuid == uid
        assert len(scan.marks) == int((readers["seriesuid"] == uid).sum())


def _drawn_hu(organ: str, hu: float, phase: str, background: float) -> tuple[float, float]:
    """HU at a lesion's centre and 2 mm outside its surface, drawn on a flat background."""
    from activecad.phantom.lesions import Lesion, draw_lesion

    grid = Grid((41, 41, 41), np.array([1.0, 1.0, 1.0]), np.array([-20.0, -20.0, -20.0]))
    volume = np.full(grid.shape, background, dtype=np.float32)
    # Off the voxel grid a little: a centre exactly on a voxel has no direction to it.
    lesion = Lesion(0, organ, np.full(3, 0.3), np.array([6.0, 6.0, 6.0]), hu)
    draw_lesion(volume, lesion, grid, np.zeros(3), 0, phase)
    return float(volume[20, 20, 20]), float(volume[20, 20, 28])


def test_portal_venous_phase_makes_abdominal_nodes_and_liver_tumours_visible() -> None:
    # Unenhanced, an abdominal node (40 HU) in the 38 HU abdomen has no contrast; in the
    # portal venous phase it lies in fat (NODE_FAT_SHEATH_MM = 4 mm of -100 HU around it).
    centre, outside = _drawn_hu("lymph_node_abdominal", 40.0, "unenhanced", 38.0)
    assert (centre, outside) == pytest.approx((40.0, 38.0), abs=0.5)
    centre, outside = _drawn_hu("lymph_node_abdominal", 40.0, "portal_venous", 38.0)
    assert (centre, outside) == pytest.approx((40.0, -100.0), abs=0.5)
    # Liver tumours enhance by 25 HU (hypodense) or 50 HU (hyperdense): 20 -> 45, 110 -> 160
    # HU, against a liver the study enhances from 58 to 105 HU.
    assert _drawn_hu("liver", 20.0, "portal_venous", 105.0)[0] == pytest.approx(45.0, abs=0.5)
    assert _drawn_hu("liver", 110.0, "portal_venous", 105.0)[0] == pytest.approx(160.0, abs=0.5)
    # Mediastinal nodes already lie in mediastinal fat: drawn as they are.
    assert _drawn_hu("lymph_node_mediastinal", 40.0, "portal_venous", -85.0) == pytest.approx(
        (40.0, -85.0), abs=0.5
    )


def test_portal_venous_patient_keeps_anatomy_and_enhances_the_liver() -> None:
    plain = generate_patient(2, seed=3, n_studies=1)
    enhanced = generate_patient(2, seed=3, n_studies=1, phase="portal_venous")
    a, b = plain.studies[0], enhanced.studies[0]
    assert np.array_equal(a.labels, b.labels)
    assert b.acquisition.dose == "standard" and b.scan.meta["phase"] == "portal_venous"
    liver = a.labels == Tissue.LIVER
    assert liver.sum() > 1000  # the chest CT reaches 45 mm below the diaphragm
    # Stored arrays are reoriented: carry the drawing grid's liver mask along.
    acq = a.acquisition
    stored_liver, _, _ = reorient(liver.astype(np.uint8), acq.grid, acq.direction)
    gain = b.scan.array[stored_liver > 0].mean() - a.scan.array[stored_liver > 0].mean()
    assert gain == pytest.approx(47.0, abs=10.0)  # LIVER_ENHANCEMENT_HU, less partial volume
    with pytest.raises(ValueError, match="phase must be one of"):
        generate_patient(2, seed=3, n_studies=1, phase="arterial")
