"""Preview PNGs of a generated study: axial and coronal CT slices, and the radiograph."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Circle, Rectangle

from activecad.phantom.acquisition import reorient

if TYPE_CHECKING:
    from activecad.phantom.cohort import StudyCase

LUNG_WINDOW = (-1350.0, 150.0)


def _canonical(case: StudyCase) -> np.ndarray:
    """The stored array laid back on the identity-direction drawing grid (z, y, x)."""
    inverse = case.acquisition.direction.T
    grid = case.acquisition.grid
    stored_grid = type(grid)(case.scan.shape, case.scan.spacing, case.scan.origin)
    array, _, _ = reorient(case.scan.array, stored_grid, inverse)
    return array


def write_previews(case: StudyCase, folder: str | Path, *, dpi: int = 80) -> list[Path]:
    """Write ``<cxr_id>_axial.png``, ``_coronal.png`` and ``_radiograph.png``.

    The CT is shown as radiologists view it (patient's right on the image left, front up,
    head up); annotated nodules are circled in red, excluded ones in yellow, and nodules no
    reader marked in cyan. The radiograph shows the boxes of the visible nodules.

    Returns:
        The written files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid = case.acquisition.grid
    volume = _canonical(case)
    nod = case.nodules
    # reader_mark_id is the true nodule a reader marked; count the readers who outlined it.
    outlined = case.readers[case.readers["mark"] == "nodule"]
    marks = outlined.groupby("reader_mark_id")["reader"].nunique() if len(outlined) else {}
    colour = []
    for nid, d in zip(nod["nodule_id"], nod["diameter_mm"], strict=True):
        k = int(marks.get(nid, 0)) if len(marks) else 0
        colour.append("red" if k >= 3 and d >= 3 else ("yellow" if k else "cyan"))
    idx = np.rint((nod[["coordX", "coordY", "coordZ"]].to_numpy() - grid.origin) / grid.spacing)
    biggest = int(np.argmax(nod["diameter_mm"].to_numpy())) if len(nod) else None
    kz = int(idx[biggest, 2]) if biggest is not None else grid.shape[0] // 2
    ky = int(idx[biggest, 1]) if biggest is not None else grid.shape[1] // 2
    sx, sy, sz = grid.spacing
    written = []

    for view in ("axial", "coronal"):
        fig, ax = plt.subplots(figsize=(5, 5))
        if view == "axial":
            ax.imshow(
                volume[kz],
                cmap="gray",
                vmin=LUNG_WINDOW[0],
                vmax=LUNG_WINDOW[1],
                aspect=sy / sx,
                interpolation="nearest",
            )
            for (i, j, k), d, c in zip(idx, nod["diameter_mm"], colour, strict=True):
                if abs(k - kz) * sz <= d / 2:
                    ax.add_patch(Circle((i, j), d / sx * 0.8 + 2, fill=False, color=c, lw=1.2))
            ax.set_title(f"{case.study_id} axial z={kz}")
        else:
            ax.imshow(
                volume[:, ky],
                cmap="gray",
                vmin=LUNG_WINDOW[0],
                vmax=LUNG_WINDOW[1],
                aspect=sz / sx,
                origin="lower",
                interpolation="nearest",
            )
            for (i, j, k), d, c in zip(idx, nod["diameter_mm"], colour, strict=True):
                if abs(j - ky) * sy <= d / 2:
                    ax.add_patch(Circle((i, k), d / sx * 0.8 + 2, fill=False, color=c, lw=1.2))
            ax.set_title(f"{case.study_id} coronal y={ky}")
        ax.axis("off")
        path = folder / f"{case.cxr_id}_{view}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(case.radiograph.image, cmap="gray", interpolation="nearest")
    for x1, y1, x2, y2 in case.radiograph.boxes:
        ax.add_patch(
            Rectangle(
                (x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, color="red", lw=1.2
            )
        )
    ax.set_title(f"{case.cxr_id} ({len(case.radiograph.boxes)} visible nodules)")
    ax.axis("off")
    path = folder / f"{case.cxr_id}_radiograph.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
