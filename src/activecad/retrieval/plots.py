"""Pictures of similar-nodule search: a montage of a query and its neighbours, and a t-SNE map
of nodule embeddings coloured by malignancy (Park et al. 2017, Figs. 2 and 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

__all__ = ["orthogonal_views", "save_montage", "save_tsne"]


def orthogonal_views(
    scan: object, centre_xyz: np.ndarray, span_mm: float = 40.0, size: int = 64
) -> list[np.ndarray]:
    """Axial, coronal and sagittal (size, size) HU slices through a world point (mm, x-y-z),
    sampled in world millimetres (so spacing and direction do not matter)."""
    from activecad.io.geometry import scan_world_to_voxel

    offsets = (np.arange(size) - (size - 1) / 2) * (span_mm / size)
    a, b = np.meshgrid(offsets, offsets, indexing="ij")
    zeros = np.zeros_like(a)
    planes = {
        # (row, column) axes: axial y, x; coronal -z, x; sagittal -z, y (head at the top)
        "axial": np.stack([b, a, zeros], -1),
        "coronal": np.stack([b, zeros, -a], -1),
        "sagittal": np.stack([zeros, b, -a], -1),
    }
    array = np.asarray(scan.array, dtype=np.float32)  # type: ignore[attr-defined]
    views = []
    for grid in planes.values():
        points = grid.reshape(-1, 3) + np.asarray(centre_xyz, float)
        voxels = scan_world_to_voxel(scan, points)  # type: ignore[arg-type]
        values = map_coordinates(array, voxels.T, order=1, mode="constant", cval=-1000.0)
        views.append(values.reshape(size, size))
    return views


def save_montage(
    rows: Sequence[tuple[str, list[np.ndarray]]],
    out: str | Path,
    *,
    window: tuple[float, float] = (-1000.0, 400.0),
) -> Path:
    """One row per nodule (title, its three views), first the query: a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.3 * len(rows)), squeeze=False)
    for r, (title, views) in enumerate(rows):
        for c, (view, name) in enumerate(zip(views, ("axial", "coronal", "sagittal"), strict=True)):
            ax = axes[r, c]
            ax.imshow(view, cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        axes[r, 0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def save_tsne(
    embeddings: np.ndarray,
    malignancy: np.ndarray,
    out: str | Path,
    *,
    seed: int = 0,
    title: str = "",
) -> Path:
    """A 2D t-SNE map of (N, D) embeddings coloured by the readers' mean malignancy (1-5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    points = TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    shown = ax.scatter(
        points[:, 0], points[:, 1], c=malignancy, cmap="coolwarm", vmin=1, vmax=5, s=18
    )
    fig.colorbar(shown, ax=ax, label="readers' mean malignancy")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(x)} nodule embeddings", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
