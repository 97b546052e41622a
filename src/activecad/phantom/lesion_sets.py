"""Four lesion datasets on different virtual patients, in the layouts MELD trains on.

Yan et al. (2020, "Universal lesion detection by learning from multiple heterogeneously
labeled datasets") train one detector on a universal, partially labelled set (DeepLesion)
and three fully labelled single-type sets (LUNA, LiTS, NIH-LN), each of which marks only
its own lesion type although its patients have others. :func:`write_lesion_sets` writes
that situation from the phantom, one folder per dataset, each in the real set's layout:

``deeplesion/``
    ``DL_info.csv`` (the ``lesions`` table kind: DeepLesion's columns plus the organ targets
    ``organ_lung, organ_liver, organ_lymph_node`` that stand in for LesaNet's tags, key-slice
    RECIST boxes of about ``PARTIAL_LABEL_RATE`` of all lesions, drawn per lesion and
    study, so a lesion marked in one study may be unmarked in the next), of the lesions
    with a long axis of at least ``measurable_mm`` (RECIST's measurable lesions; smaller
    lung nodules are in the images but in no table);
    ``Images_png/<patient>_<study>_<series>/<slice:03d>.png`` (16-bit, HU + 32768, as
    DeepLesion ships them), the slices of every lesion's ``Slice_range``, overlapping or
    touching ranges of a series merged into one sub-volume; every patient has 2-3 studies.
    ``DL_info_full.csv`` is the *evaluation-only* truth: every measurable lesion in the
    shipped sub-volumes, DeepLesion columns plus ``labelled`` (1 when in ``DL_info.csv``) and the
    phantom's own (``lesion_id`` names one lesion across studies, ``organ``, world mm).
    Train on ``DL_info.csv`` only. ``Train_Val_Test`` is 1/2/3 per patient (70/15/15 %,
    at least one validation and one test patient from three patients on).
``luna/``
    LUNA16: ``ct/<seriesuid>.mhd`` (+ ``.raw``), ``annotations.csv`` and
    ``annotations_excluded.csv`` from the simulated readers' consensus. Lung nodules only,
    although liver tumours and enlarged lymph nodes are in the images.
``lits/``
    LiTS: ``volume-<i>.nii`` and ``segmentation-<i>.nii`` (0 background, 1 liver, 2 tumour);
    patients are chosen to have at least one liver tumour in the field of view.
``nih_ln/``
    NIH CT Lymph Nodes (TCIA): one CT per patient, ``ct/MED_LYMPH_<k>.mhd`` (TCIA ships
    DICOM; the reader takes either), and the centre lists as TCIA's
    ``MED_ABD_LYMPH_ANNOTATIONS/<patient>/<patient>_lymphnodes_physicalPoints.txt`` (world
    mm, ``x y z`` per line), ``..._indices.txt`` (0-based voxel ``x y z`` of the stored
    array) and ``..._sizes.txt`` (``short long`` axis mm per line; TCIA's mediastinal files
    give the short axis only, its abdominal ones both). Only enlarged nodes (short axis
    >= 10 mm) are listed; normal nodes are in the images but are not lesions.

Contrast phase (``SET_PHASE``): the DeepLesion, LiTS and NIH-LN studies are diagnostic CTs in
the portal venous phase (the liver enhanced, so its tumours stand out by 35-75 HU; standard
dose; abdominal nodes in fat), as most of the real sets' scans are; the LUNA set stays the
unenhanced chest CT of the screening cohort. Unenhanced, the phantom's liver tumours differ
from the liver by 23-72 HU under up to 70 HU of low-dose noise and its abdominal nodes have
the density of the abdomen around them: they could not be seen, so a detector learnt noise
from their boxes.

Phantom chest CTs end about 45 mm below the diaphragm, so only lesions whose centre lies
inside a scan count: abdominal nodes and low liver tumours outside it are left out of every
table. Each patient is ``generate_patient(index, seed=seed, n_studies=...)`` and the four
sets draw from interleaved patient indices (set ``k`` from ``k, k + 4, k + 8, ...``), so
no patient is in two sets and the same seed gives byte-identical files.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

import activecad
from activecad.errors import InputError
from activecad.io.ct import write_scan
from activecad.io.geometry import world_to_voxel
from activecad.io.radiograph import write_png
from activecad.io.scan import Scan
from activecad.io.tables import TABLE_SCHEMAS, write_table
from activecad.phantom.acquisition import reorient
from activecad.phantom.anatomy import Tissue, sample_anatomy
from activecad.phantom.cohort import (
    PARTIAL_LABEL_RATE,
    PatientCase,
    StudyCase,
    _check_args,
    consensus,
    generate_patient,
    write_manifest,
)
from activecad.phantom.config import get_preset
from activecad.phantom.lesions import Lesion, sample_lesions

__all__ = ["LESION_SETS", "write_lesion_sets"]

LESION_SETS = ("deeplesion", "luna", "lits", "nih_ln")
"""The dataset folders, in the order of ``activecad.data.lesion_slices.DATASETS``."""
# The contrast phase each set's studies are acquired in (module docstring).
SET_PHASE = {
    "deeplesion": "portal_venous",
    "luna": "unenhanced",
    "lits": "portal_venous",
    "nih_ln": "portal_venous",
}

HU_OFFSET = 32768  # DeepLesion's PNGs store HU + 32768 as uint16
ENLARGED_NODE_MM = 10.0  # a lymph node is a lesion from this short axis on (RECIST)
# DeepLesion's marks are the RECIST measurements radiologists made in their reports, drawn
# on measurable lesions: RECIST 1.1 measures a lesion from a 10 mm long axis on. Without
# this floor, sub-centimetre lung nodules were 80 % of the phantom's DeepLesion lesions
# (median long axis 7.5 mm, 3 px of a 2.6 mm slice), which no lesion detector could learn
# from key slices and which DeepLesion itself rarely holds.
MEASURABLE_MM = 10.0
_MAX_TRIES = 60  # patient indices a set may look through per patient it needs
_DL_COLUMNS = list(TABLE_SCHEMAS["lesions"].columns)
# MELD trains its organ gate on the organs LesaNet predicts from report-mined tags (soft
# 0-1 targets). The phantom knows each lesion's organ and writes it as one-hot targets in
# the columns the sample loader reads. DeepLesion's coarse type cannot stand in: its
# "abdomen" (2) holds the abdominal lymph nodes, which would teach the gate "not a lymph
# node" where NIH-LN's abdominal nodes teach "lymph node".
_ORGAN_TARGETS = {"organ_lung": "lung", "organ_liver": "liver", "organ_lymph_node": "lymph_node"}


def _patient_counts(patients_per_set: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(patients_per_set, Mapping):
        unknown = sorted(set(patients_per_set) - set(LESION_SETS))
        if unknown:
            raise InputError(
                f"unknown lesion set(s) {unknown}", fix=f"use keys from {', '.join(LESION_SETS)}"
            )
        counts = {name: patients_per_set.get(name, 0) for name in LESION_SETS}
    else:
        counts = dict.fromkeys(LESION_SETS, patients_per_set)
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(
                f"patients for {name} must be a non-negative integer, got {n!r}",
                fix="pass e.g. patients_per_set=4",
            )
    if sum(counts.values()) == 0:
        raise InputError("no patients asked for", fix="pass e.g. patients_per_set=4")
    return counts


def _predicted_lesions(index: int, seed: int, n_studies: int) -> list[Lesion]:
    """The liver tumours and lymph nodes :func:`generate_patient` will draw, cheaply.

    Mirrors its first draws (``n_studies`` given) so that patients without the set's lesion
    type are skipped before the costly drawing. A kept patient is checked again on its real
    lesions, so if the generator changes this costs time, never correctness.
    """
    anatomy = sample_anatomy(np.random.default_rng([seed, index, 1]))
    return sample_lesions(anatomy, np.random.default_rng([seed, index, 4]), n_studies)


def _in_view(case: StudyCase, world: np.ndarray) -> np.ndarray:
    """(N,) whether each world point (N, 3) lies inside the stored volume."""
    scan = case.scan
    vox = world_to_voxel(
        world.reshape(-1, 3), origin=scan.origin, spacing=scan.spacing, direction=scan.direction
    )
    upper = np.asarray(scan.shape, dtype=np.float64) - 0.5
    return np.all((vox >= -0.5) & (vox <= upper), axis=1)


def _visible_lesions(case: StudyCase) -> pd.DataFrame:
    """The study's lesion rows (full truth) whose centre lies inside the scan."""
    rows = case.lesions
    if rows.empty:
        return rows
    world = rows[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
    return rows[_in_view(case, world)].reset_index(drop=True)


def _merged_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive slice ranges; overlapping or touching ones become one."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(a, b) for a, b in merged]


def _assign_splits(n: int, rng: np.random.Generator) -> np.ndarray:
    """DeepLesion's 70/15/15 % train/val/test codes (1/2/3) for ``n`` patients."""
    n_test = max(1, round(0.15 * n)) if n >= 2 else 0
    n_val = max(1, round(0.15 * n)) if n >= 3 else 0
    codes = np.ones(n, dtype=int)
    order = rng.permutation(n)
    codes[order[:n_test]] = 3
    codes[order[n_test : n_test + n_val]] = 2
    return codes


def _measurable(rows: pd.DataFrame, measurable_mm: float) -> pd.DataFrame:
    """The rows of lesions with a long axis of at least ``measurable_mm``."""
    if rows.empty:
        return rows
    return rows[rows["long_axis_mm"] >= measurable_mm].reset_index(drop=True)


def _write_deeplesion(
    out: Path, patients: list[PatientCase], seed: int, measurable_mm: float
) -> dict[str, int]:
    folder = out / "deeplesion"
    codes = _assign_splits(len(patients), np.random.default_rng([seed, 8190]))
    frames = []
    n_slices = 0
    for patient, code in zip(patients, codes, strict=True):
        for case in patient.studies:
            rows = _measurable(_visible_lesions(case), measurable_mm)
            if rows.empty:
                continue
            rows["Train_Val_Test"] = int(code)
            frames.append(rows)
            series = rows["File_name"].iloc[0].rsplit("_", 1)[0]
            ranges = [(int(a), int(b)) for a, b in rows["Slice_range"]]
            for first, last in _merged_ranges(ranges):
                for k in range(first, last + 1):
                    png = folder / "Images_png" / series / f"{k:03d}.png"
                    write_png(case.scan.array[k] + HU_OFFSET, png, bits=16)
                    n_slices += 1
    full = pd.concat(frames, ignore_index=True)
    labelled = np.random.default_rng([seed, 8191]).random(len(full)) < PARTIAL_LABEL_RATE
    full["labelled"] = labelled.astype(int)
    for column, organ in _ORGAN_TARGETS.items():
        full[column] = full["organ"].str.startswith(organ).astype(float)
    write_table(full, folder / "DL_info_full.csv", "lesions")
    dl_info = full.loc[labelled, [c for c in (*_DL_COLUMNS, *_ORGAN_TARGETS) if c in full.columns]]
    write_table(dl_info, folder / "DL_info.csv", "lesions")
    return {
        "patients": len(patients),
        "studies": int(full["File_name"].str.rsplit("_", n=1).str[0].nunique()),
        "slices": n_slices,
        "lesions_full": len(full),
        "lesions_labelled": int(labelled.sum()),
    }


def _other_lesions(case: StudyCase, organ_prefix: str) -> int:
    rows = _visible_lesions(case)
    return int((~rows["organ"].str.startswith(organ_prefix)).sum()) if len(rows) else 0


def _write_luna(out: Path, patients: list[PatientCase]) -> dict[str, int]:
    folder = out / "luna"
    readers, others = [], 0
    for patient in patients:
        case = patient.studies[0]
        write_scan(case.scan, folder / "ct" / f"{case.seriesuid}.mhd")
        readers.append(case.readers)
        others += _other_lesions(case, "lung")
    marks = pd.concat([r for r in readers if not r.empty], ignore_index=True)
    annotations, excluded = consensus(marks)
    write_table(annotations, folder / "annotations.csv", "annotations")
    write_table(excluded, folder / "annotations_excluded.csv", "excluded")
    return {
        "patients": len(patients),
        "lesions": len(annotations),
        "excluded": len(excluded),
        "other_lesions_unlabelled": others,
    }


def _ellipsoid_mask(case: StudyCase, lesion: Lesion) -> np.ndarray:
    """(Z, Y, X) bool voxels of the drawing grid whose centre lies inside the lesion."""
    grid = case.acquisition.grid
    centre = lesion.center + case.acquisition.body_center
    axes = lesion.axes_at(case.study_index)
    z, y, x = grid.axes()
    inside = (
        ((x - centre[0]) / axes[0]) ** 2
        + ((y - centre[1]) / axes[1]) ** 2
        + ((z - centre[2]) / axes[2]) ** 2
    ) <= 1.0
    return np.broadcast_to(inside, grid.shape)


def _lits_labels(case: StudyCase, tumours: list[Lesion]) -> np.ndarray:
    """LiTS label volume of the stored scan: 0 background, 1 liver, 2 tumour."""
    grid = case.acquisition.grid
    labels = (case.labels == Tissue.LIVER).astype(np.uint8)
    for lesion in tumours:
        labels[_ellipsoid_mask(case, lesion)] = 2
    stored, _, _ = reorient(labels, grid, case.acquisition.direction)
    return stored


def _visible_of_kind(case: StudyCase, patient: PatientCase, organ_prefix: str) -> list[Lesion]:
    """The patient's lesions of one organ that the study's truth lists inside the scan."""
    rows = _visible_lesions(case)
    ids = (
        set(rows.loc[rows["organ"].str.startswith(organ_prefix), "lesion_id"])
        if len(rows)
        else set()
    )
    return [les for les in patient.lesions if f"l{les.lesion_id}" in ids]


def _write_lits(out: Path, patients: list[PatientCase]) -> dict[str, int]:
    folder = out / "lits"
    tumours_total, others = 0, 0
    for i, patient in enumerate(patients):
        case = patient.studies[0]
        tumours = [les for les in patient.lesions if les.organ == "liver"]
        labels = _lits_labels(case, tumours)
        write_scan(case.scan, folder / f"volume-{i}.nii")
        scan = case.scan
        label_scan = Scan(labels, scan.spacing, scan.origin, scan.direction, scan.seriesuid)
        write_scan(label_scan, folder / f"segmentation-{i}.nii")
        tumours_total += len(_visible_of_kind(case, patient, "liver"))
        others += _other_lesions(case, "liver")
    return {"patients": len(patients), "lesions": tumours_total, "other_lesions_unlabelled": others}


def _node_lines(values: np.ndarray, decimals: int) -> str:
    return "".join(" ".join(f"{v:.{decimals}f}" for v in row) + "\n" for row in values)


def _write_nih_ln(out: Path, patients: list[PatientCase]) -> dict[str, int]:
    folder = out / "nih_ln"
    nodes_total, others = 0, 0
    for k, patient in enumerate(patients):
        case = patient.studies[0]
        name = f"MED_LYMPH_{k + 1:03d}"
        scan = case.scan
        write_scan(
            Scan(scan.array, scan.spacing, scan.origin, scan.direction, scan.seriesuid, name),
            folder / "ct" / f"{name}.mhd",
        )
        rows = _visible_lesions(case)
        nodes = rows[rows["organ"].str.startswith("lymph_node")] if len(rows) else rows
        nodes = nodes[nodes["short_axis_mm"] >= ENLARGED_NODE_MM]
        world = nodes[["coordX", "coordY", "coordZ"]].to_numpy(np.float64).reshape(-1, 3)
        zyx = world_to_voxel(
            world, origin=scan.origin, spacing=scan.spacing, direction=scan.direction
        ).reshape(-1, 3)
        notes = folder / "MED_ABD_LYMPH_ANNOTATIONS" / name
        notes.mkdir(parents=True, exist_ok=True)
        (notes / f"{name}_lymphnodes_physicalPoints.txt").write_text(_node_lines(world, 3))
        (notes / f"{name}_lymphnodes_indices.txt").write_text(_node_lines(np.rint(zyx[:, ::-1]), 0))
        sizes = nodes[["short_axis_mm", "long_axis_mm"]].to_numpy(np.float64).reshape(-1, 2)
        (notes / f"{name}_lymphnodes_sizes.txt").write_text(_node_lines(sizes, 2))
        nodes_total += len(nodes)
        others += _other_lesions(case, "lymph_node")
    return {"patients": len(patients), "lesions": nodes_total, "other_lesions_unlabelled": others}


def _wanted(name: str, lesions: list[Lesion]) -> bool:
    """Whether a patient's predicted lesions can serve the set (before drawing it)."""
    if name == "lits":
        return any(les.organ == "liver" for les in lesions)
    if name == "nih_ln":
        return any(les.organ.startswith("lymph_node") and les.enlarged for les in lesions)
    return True


def _usable(name: str, patient: PatientCase, measurable_mm: float) -> bool:
    """Whether the drawn patient has a lesion of the set's kind inside its scans."""
    cases = patient.studies
    if name == "deeplesion":
        return any(len(_measurable(_visible_lesions(c), measurable_mm)) for c in cases)
    if name == "lits":
        return bool(_visible_of_kind(cases[0], patient, "liver"))
    if name == "nih_ln":
        rows = _visible_lesions(cases[0])
        return bool(
            len(rows)
            and (
                rows["organ"].str.startswith("lymph_node")
                & (rows["short_axis_mm"] >= ENLARGED_NODE_MM)
            ).any()
        )
    return True


def _n_studies(name: str, index: int, seed: int) -> int:
    if name != "deeplesion":
        return 1
    # DeepLesion patients have several studies; missing-annotation matching needs them.
    return 3 if np.random.default_rng([seed, index, 9001]).random() < 1 / 3 else 2


def write_lesion_sets(
    out_dir: str | Path,
    *,
    patients_per_set: int | Mapping[str, int] = 4,
    seed: int = 0,
    preset: str = "small",
    measurable_mm: float = MEASURABLE_MM,
    progress: bool = False,
) -> dict[str, object]:
    """Write the four lesion datasets (module docstring) on different phantom patients.

    Args:
        out_dir: target folder (created; an earlier lesion-set folder in it is replaced).
        patients_per_set: patients in each set, or a mapping from set name
            (``LESION_SETS``) to its number of patients (missing names get none).
        seed: the seed; the same seed gives byte-identical files.
        preset: phantom preset, ``"small"`` (128 x 128 slices, a test cohort in seconds)
            or ``"full"``.
        measurable_mm: the universal set's tables hold the lesions with at least this long
            axis (mm); 0 keeps every lesion.
        progress: show a progress bar.

    Returns:
        The manifest (also ``manifest.json``): per set its counts (patients, lesions, and for
        single-type sets ``other_lesions_unlabelled``, the lesions of other types in its
        images), the phantom patient ids of each set and every file's SHA-256.

    Raises:
        InputError: bad arguments, ``out_dir`` holds something that is not a phantom
            folder, or the phantom has too few patients with the lesions a set needs.
    """
    out = Path(out_dir)
    counts = _patient_counts(patients_per_set)
    if not measurable_mm >= 0:
        raise InputError(f"measurable_mm must be >= 0, got {measurable_mm}")
    _check_args(out, max(sum(counts.values()), 1), seed, ("mhd",))
    spec = get_preset(preset)
    if out.is_dir():
        for name in LESION_SETS:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    chosen: dict[str, list[PatientCase]] = {name: [] for name in LESION_SETS}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"lesion sets {spec.name}", total=sum(counts.values()))
        for k, name in enumerate(LESION_SETS):
            tries = 0
            while len(chosen[name]) < counts[name]:
                if tries >= _MAX_TRIES * counts[name]:
                    raise InputError(
                        f"found only {len(chosen[name])} of {counts[name]} patients for "
                        f"{name} in {tries} phantom patients",
                        fix="ask for fewer patients or another seed",
                    )
                index = k + len(LESION_SETS) * tries
                tries += 1
                n_studies = _n_studies(name, index, seed)
                if not _wanted(name, _predicted_lesions(index, seed, n_studies)):
                    continue
                patient = generate_patient(
                    index, seed=seed, preset=spec.name, n_studies=n_studies, phase=SET_PHASE[name]
                )
                if _usable(name, patient, measurable_mm):
                    chosen[name].append(patient)
                    bar.advance(task)

    sets: dict[str, dict[str, int]] = {}
    writers = {"luna": _write_luna, "lits": _write_lits, "nih_ln": _write_nih_ln}
    for name in LESION_SETS:
        if not chosen[name]:
            continue
        if name == "deeplesion":
            sets[name] = _write_deeplesion(out, chosen[name], seed, measurable_mm)
        else:
            sets[name] = writers[name](out, chosen[name])
    info = {
        "generator": "activecad.phantom.lesion_sets",
        "version": activecad.__version__,
        "seed": seed,
        "preset": spec.name,
        "measurable_mm": measurable_mm,
        "counts": sets,
        "patients": {name: [p.patient_id for p in chosen[name]] for name in LESION_SETS},
        "evaluation_only": ["deeplesion/DL_info_full.csv"],
    }
    return write_manifest(out, info)
