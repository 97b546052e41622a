"""Radiograph-only phantom cohorts for Kim et al.'s design: noisy, clean and external sets.

Each radiograph is the projection of a virtual patient's CT (the same anatomy, vessels and
nodules as the CT phantom, no CT written), so its nodule mask is CT-referenced. A "normal"
radiograph is drawn from a patient's CT with the nodules left out; a "nodule" radiograph
has at least one nodule that shows on the projection. Sets are balanced 1:1 normal vs
nodule, as the paper samples them, and patients are never shared between sets.

Sets (``write_cxr_sets``), one folder each in the layout the ``train cxr`` command reads
(``images/``, ``masks/``, ``lungs/``, ``labels.csv``, ``boxes.csv``):

* ``noisy``: the large set with report-mined labels (``label_noisy``), calibrated to what
  NIH ChestX-ray14's report-mined Nodule/Mass labels get right against Google's expert
  labels on the same 4,376 images (measured with :mod:`activecad.io.cxr_tables`):
  sensitivity ``REPORT_SENSITIVITY`` = 0.42, specificity ``REPORT_SPECIFICITY`` = 0.947.
  A larger nodule is more often reported (the rate scales with the diameter, averaging
  0.42 over this phantom's visible nodules).
* ``clean``: the smaller CT-referenced set (``label`` = a nodule shows; masks).
* ``external_a`` and ``external_b``: another simulated site (``SITES``). Site A: the
  internal acquisition. External sites differ in dose (detector noise), exposure and
  processing (window and grey-level curve), detector blur and image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.io.radiograph import write_png
from activecad.phantom.acquisition import sample_acquisition
from activecad.phantom.anatomy import draw_anatomy, sample_anatomy
from activecad.phantom.cohort import _rng, _tissue_hu, cohort_scanners
from activecad.phantom.config import get_preset
from activecad.phantom.nodules import draw_nodule, sample_nodules
from activecad.phantom.radiograph import LUNG_HU, WINDOW, Radiograph2D, project_radiograph
from activecad.phantom.vessels import draw_bronchi, draw_vessels, grow_vessels

__all__ = [
    "MEAN_LARGEST_VISIBLE_MM",
    "REPORT_SENSITIVITY",
    "REPORT_SPECIFICITY",
    "SITES",
    "Site",
    "generate_cxr",
    "write_cxr_set",
    "write_cxr_sets",
]

#: Report-mined Nodule/Mass labels of NIH ChestX-ray14 against Google's 2019 expert labels
#: (4,376 images; sensitivity 0.423, specificity 0.947, PPV 0.563).
REPORT_SENSITIVITY = 0.42
REPORT_SPECIFICITY = 0.947
#: Mean over nodule radiographs of the largest visible nodule's diameter (mm; internal site,
#: 80 patients, seed 0; ``python benchmarks/cxr.py labels``): a report's sensitivity scales
#: with an image's largest visible nodule over this, so it averages REPORT_SENSITIVITY.
MEAN_LARGEST_VISIBLE_MM = 17.0


@dataclass(frozen=True)
class Site:
    """How a site's radiographs are made.

    Attributes:
        name: site name.
        size: radiograph side, pixels.
        noise_sd: detector noise (line-integral units; lower dose = more noise).
        blur_px: detector blur (Gaussian sigma, pixels).
        window: line integral shown white (exposure / processing).
        gamma: grey-level curve exponent.
    """

    name: str
    size: int = 256
    noise_sd: float = 0.02
    blur_px: float = 0.8
    window: float = WINDOW
    gamma: float = 0.9


SITES = {
    "internal": Site("internal"),
    # External A: lower dose (2x noise), harder exposure, a flatter grey curve, larger matrix.
    "external_a": Site("external_a", size=320, noise_sd=0.04, blur_px=1.0, window=8.5, gamma=0.8),
    # External B: sharper detector, softer exposure, steeper curve, smaller matrix.
    "external_b": Site("external_b", size=224, noise_sd=0.03, blur_px=0.5, window=6.5, gamma=1.1),
}


def generate_cxr(
    index: int, seed: int, site: Site, with_nodules: bool, *, nodule_gain: float = 1.0
) -> Radiograph2D:
    """One radiograph of patient ``index`` (the patient depends on ``seed`` and ``index``).

    Args:
        index: patient number.
        seed: cohort seed.
        site: acquisition site.
        with_nodules: draw the patient's nodules (else a normal radiograph of the same CT).
        nodule_gain: the nodules' attenuation above the tissue they replace, times this
            (1: as the CT has them). A deliberate departure from physics for small training
            budgets: a 16 mm solid nodule adds about 4 % of the grey range at gain 1, too
            faint for a network to pick out of the anatomy from a few hundred images.
    """
    if nodule_gain <= 0:
        raise ValueError(f"nodule_gain must be positive, got {nodule_gain}")
    spec = get_preset("small")
    anatomy = sample_anatomy(_rng(seed, index, 1))
    vessels = grow_vessels(
        anatomy,
        _rng(seed, index, 2),
        min_radius=spec.min_vessel_radius_mm,
        max_segments_per_tree=spec.max_segments_per_tree,
    )
    nodules = sample_nodules(anatomy, vessels, _rng(seed, index, 3), 1) if with_nodules else []
    rng = _rng(seed, index, 100)
    lowest = min(anatomy.dome_right, anatomy.dome_left) - 45.0
    acq = sample_acquisition(rng, spec, anatomy.apex_w, lowest, cohort_scanners(seed))
    grid, center = acq.grid, acq.body_center
    labels = draw_anatomy(anatomy, grid, center)
    hu = _tissue_hu(labels, grid, anatomy, center, rng, spec.border_blur)
    draw_bronchi(hu, vessels, grid, center, wall_hu=40.0)
    draw_vessels(hu, vessels, grid, center, blood_hu=42.0)
    without = hu.copy() if nodule_gain != 1.0 and nodules else None
    for nodule in nodules:
        draw_nodule(hu, nodule, grid, center, 0, rng)
    if without is not None:
        hu = without + np.float32(nodule_gain) * (hu - without)
    centers = np.array([n.center + center for n in nodules]).reshape(-1, 3)
    diameters = np.array([n.diameter_at(0) for n in nodules])
    # What the visibility rule sees: the core's excess over lung, scaled as drawn.
    densities = LUNG_HU + nodule_gain * (np.array([n.core_hu for n in nodules]) - LUNG_HU)
    return project_radiograph(
        hu,
        labels,
        grid,
        centers,
        diameters,
        densities,
        site.size,
        rng,
        noise_sd=site.noise_sd,
        blur_px=site.blur_px,
        window=site.window,
        gamma=site.gamma,
    )


def _report_label(
    clean: int,
    diameters: np.ndarray,
    rng: np.random.Generator,
    mean_diameter: float = MEAN_LARGEST_VISIBLE_MM,
) -> int:
    """Report-mined label calibrated to NIH vs Google: Se 0.42 (more for larger), Sp 0.947."""
    if clean:
        rate = REPORT_SENSITIVITY * float(np.max(diameters)) / mean_diameter
        return int(rng.random() < min(rate, 0.95))
    return int(rng.random() >= REPORT_SPECIFICITY)


def write_cxr_set(
    out_dir: str | Path,
    n_per_class: int,
    seed: int,
    site: Site,
    first_patient: int,
    *,
    nodule_gain: float = 1.0,
) -> dict[str, object]:
    """Write ``n_per_class`` normal and ``n_per_class`` nodule radiographs of one site
    (``nodule_gain``: see :func:`generate_cxr`).

    Patients ``first_patient, first_patient + 1, ...`` are used in turn; a patient whose
    nodules do not show on the projection is skipped for the nodule class. Normal
    radiographs come from other patients than the nodule ones.

    Returns:
        Counts: ``normal``, ``nodule``, ``patients_used``, ``next_patient``, ``report_se``,
        ``report_sp`` (of the written noisy labels).
    """
    out = Path(out_dir)
    rows, boxes = [], []
    rng = np.random.default_rng([seed, 4242, first_patient])
    patient = first_patient
    counts = {"normal": 0, "nodule": 0}
    while min(counts.values()) < n_per_class:
        want_nodule = counts["nodule"] < n_per_class and (
            counts["normal"] >= n_per_class or patient % 2 == 0
        )
        cxr = generate_cxr(patient, seed, site, with_nodules=want_nodule, nodule_gain=nodule_gain)
        image_id = f"{site.name}-P{patient:05d}"
        patient += 1
        visible = np.flatnonzero(cxr.visible)
        if want_nodule and len(visible) == 0:
            continue
        clean = int(want_nodule)
        counts["nodule" if clean else "normal"] += 1
        write_png(cxr.image, out / "images" / f"{image_id}.png", bits=16)
        write_png(cxr.mask, out / "masks" / f"{image_id}.png", bits=8)
        write_png(cxr.lungs, out / "lungs" / f"{image_id}.png", bits=8)
        diam_mm = 2 * cxr.radius_px[visible] * cxr.pixel_mm
        rows.append(
            {
                "image_id": image_id,
                "label": clean,
                "label_noisy": _report_label(clean, diam_mm, rng),
                "patient_id": f"P{patient - 1:05d}",
                "site": site.name,
                "nodules_visible": len(visible),
                "pixel_mm": round(cxr.pixel_mm, 4),
            }
        )
        for b in cxr.boxes:
            boxes.append(
                {
                    "image_id": image_id,
                    "x1": b[0],
                    "y1": b[1],
                    "x2": b[2],
                    "y2": b[3],
                    "label": "nodule",
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(out / "labels.csv", index=False)
    pd.DataFrame(boxes, columns=["image_id", "x1", "y1", "x2", "y2", "label"]).to_csv(
        out / "boxes.csv", index=False
    )
    pos = table["label"] == 1
    return {
        **counts,
        "patients_used": patient - first_patient,
        "next_patient": patient,
        "report_se": float(table.loc[pos, "label_noisy"].mean()),
        "report_sp": float(1 - table.loc[~pos, "label_noisy"].mean()),
    }


def write_cxr_sets(
    out_dir: str | Path,
    seed: int = 0,
    n_noisy: int = 200,
    n_clean: int = 60,
    n_external: int = 40,
    *,
    nodule_gain: float = 1.0,
) -> dict[str, dict[str, object]]:
    """Write Kim et al.'s four sets (per class counts; patients never shared between sets).

    ``noisy`` and ``clean`` come from the internal site, the two external sets from the
    sites ``external_a`` and ``external_b``; ``nodule_gain``: see :func:`generate_cxr`.
    """
    out = Path(out_dir)
    summary: dict[str, dict[str, object]] = {}
    patient = 0
    for name, n, site in (
        ("noisy", n_noisy, SITES["internal"]),
        ("clean", n_clean, SITES["internal"]),
        ("external_a", n_external, SITES["external_a"]),
        ("external_b", n_external, SITES["external_b"]),
    ):
        summary[name] = write_cxr_set(out / name, n, seed, site, patient, nodule_gain=nodule_gain)
        patient = int(summary[name]["next_patient"])  # type: ignore[call-overload]
    return summary
