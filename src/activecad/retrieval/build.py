"""Building a nodule index from a LUNA16-style data folder, and embedding a query point.

The nodules are the readers' consensus of ``readers.csv`` (LIDC-style rows, one per reader per
nodule, as ``activecad phantom`` and ``activecad import lidc`` write them): the mean world
centre, diameter and malignancy over the readers who marked the nodule. Without
``readers.csv`` the rows of ``annotations.csv`` are indexed with no malignancy.

The embedder here is the raw-intensity baseline: the HU values of a cube of ``span_mm`` around
the nodule, sampled on a ``size``^3 grid in world mm (so spacing and direction do not matter),
clipped to [-1000, 400] HU, centred and L2-normalised. It is the baseline the FP-reduction
classifier's embedding must beat on Recall@K.

:class:`FprEmbedder` embeds with an FP-reduction model (``activecad train fpr``): the mean
over the candidate's augmented patches of the classifier's mid-level feature, L2-normalised
(Park, Lee, Park & Jung, "How transferable are the deep features from false positive
reduction network for lung nodule detection in CT to malignancy prediction?", 2017). Its
version is the SHA-256 of the model's weights, so an index is only ever searched with
the model that built it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from activecad.errors import InputError
from activecad.retrieval.index import METADATA_COLUMNS, NoduleIndex

__all__ = [
    "Embedder",
    "FprEmbedder",
    "IntensityEmbedder",
    "build_index",
    "embedder_of",
    "folder_nodules",
]


@dataclass(frozen=True)
class IntensityEmbedder:
    """Raw-intensity embedding of a world point (see the module docs).

    Attributes:
        size: grid points per axis (the embedding has size^3 values).
        span_mm: edge of the cube, mm.
    """

    size: int = 8
    span_mm: float = 32.0

    @property
    def version(self) -> str:
        """What the index records as the model version."""
        return f"intensity-size{self.size}-span{self.span_mm:g}"

    def embed(self, scan: object, centres_xyz: np.ndarray) -> np.ndarray:
        """(N, size^3) embeddings of N world points (mm, x-y-z) of one scan."""
        from activecad.io.geometry import scan_world_to_voxel

        offsets = (np.arange(self.size) - (self.size - 1) / 2) * (self.span_mm / self.size)
        grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
        array = np.asarray(scan.array, dtype=np.float32)  # type: ignore[attr-defined]
        out = []
        for centre in np.atleast_2d(np.asarray(centres_xyz, dtype=float)):
            voxels = scan_world_to_voxel(scan, grid + centre)  # type: ignore[arg-type]
            values = map_coordinates(array, voxels.T, order=1, mode="constant", cval=-1000.0)
            values = np.clip(values, -1000.0, 400.0)
            values = values - values.mean()
            out.append(values / max(float(np.linalg.norm(values)), 1e-6))
        return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class FprEmbedder:
    """Embedding by an FP-reduction model's mid-level feature (see the module docs).

    Attributes:
        model: the FP-reduction model folder.
    """

    model: str

    @property
    def version(self) -> str:
        """``fpr-`` and the first 16 hex digits of the SHA-256 of the model's weights."""
        import hashlib

        weights = Path(self.model) / "weights.pt"
        if not weights.is_file():
            raise InputError(
                "the FP-reduction model is missing", path=self.model, fix="give its model folder"
            )
        return "fpr-" + hashlib.sha256(weights.read_bytes()).hexdigest()[:16]

    def embed(self, scan: object, centres_xyz: np.ndarray) -> np.ndarray:
        """(N, D) embeddings of N world points (mm, x-y-z) of one raw scan."""
        from activecad.data.preprocess import preprocess_scan
        from activecad.models.fpr import candidate_set, predict

        net, config = _load_fpr_cached(self.model, self.version)
        prepared = preprocess_scan(scan, config.preprocess)  # type: ignore[arg-type]
        centres = np.atleast_2d(np.asarray(centres_xyz, dtype=float))
        table = pd.DataFrame(centres, columns=["coordX", "coordY", "coordZ"])
        table.insert(0, "seriesuid", prepared.seriesuid)
        candidates = candidate_set(table, {prepared.seriesuid: prepared})
        _, embeddings = predict(net, candidates, config, with_embeddings=True)
        return np.asarray(embeddings, dtype=np.float32)


@functools.cache
def _load_fpr_cached(model: str, version: str) -> tuple[object, object]:
    """The model, loaded once per weights version (a served index embeds many queries)."""
    from activecad.models.fpr import load_fpr

    return load_fpr(model)


Embedder = IntensityEmbedder | FprEmbedder


def folder_nodules(data_dir: str | Path) -> pd.DataFrame:
    """The nodules of a data folder with :data:`METADATA_COLUMNS` (see the module docs)."""
    from activecad.data.folders import read_luna_folder

    folder = read_luna_folder(data_dir)
    readers = Path(data_dir) / "readers.csv"
    if not readers.is_file():
        table = folder.annotations.copy()
        table["malignancy"] = np.nan
        return table[list(METADATA_COLUMNS)].reset_index(drop=True)
    rows = pd.read_csv(readers, dtype={"seriesuid": str, "nodule_id": str})
    rows = rows.dropna(subset=["coordX", "coordY", "coordZ"])
    grouped = rows.groupby(["seriesuid", "nodule_id"], sort=True)
    table = grouped[["coordX", "coordY", "coordZ", "diameter_mm", "malignancy"]].mean()
    table["readers"] = grouped.size()
    return table.reset_index()[[*METADATA_COLUMNS, "readers"]]


def build_index(
    data_dir: str | Path,
    *,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> NoduleIndex:
    """Embed every nodule of ``data_dir`` and index them (cosine search).

    Raises:
        InputError: the folder has no nodules, or a nodule's scan is not in ``ct/``.
    """
    from activecad.active.loop import scan_uid
    from activecad.data.folders import read_luna_folder
    from activecad.io import read_scan

    embedder = embedder or IntensityEmbedder()
    nodules = folder_nodules(data_dir)
    if nodules.empty:
        raise InputError("no nodules to index", path=data_dir, fix="give a folder with nodules")
    paths = {scan_uid(p): p for p in read_luna_folder(data_dir).scans}
    missing = sorted(set(nodules.seriesuid) - set(paths))
    if missing:
        raise InputError(
            f"{len(missing)} scans with nodules are not in ct/ (e.g. {missing[0]})",
            path=data_dir,
            fix="index a folder whose ct/ holds every annotated scan",
        )
    parts: list[np.ndarray] = []
    order: list[int] = []
    for uid, group in _by_scan(nodules, progress):
        scan = read_scan(paths[uid])
        parts.append(embedder.embed(scan, group[["coordX", "coordY", "coordZ"]].to_numpy()))
        order.extend(group.index)
    embeddings = np.concatenate(parts)
    metadata = nodules.loc[order].reset_index(drop=True)
    index = NoduleIndex(embeddings, metadata, metric="cosine", model_version=embedder.version)
    index.extra = {"data": str(Path(data_dir).resolve()), "embedder": asdict(embedder)}
    return index


def _by_scan(nodules: pd.DataFrame, progress: bool) -> Iterable[tuple[str, pd.DataFrame]]:
    groups = list(nodules.groupby("seriesuid", sort=True))
    if not progress:
        return groups
    from rich.progress import track

    return track(groups, description="embedding nodules", transient=True)


def embedder_of(index: NoduleIndex) -> Embedder:
    """The embedder an index was built with, to embed queries the same way.

    Raises:
        InputError: the index does not record its embedder, or records another version.
    """
    settings = index.extra.get("embedder")
    if not isinstance(settings, dict):
        raise InputError(
            "the index does not say how its nodules were embedded",
            fix="rebuild it with 'activecad index build'",
        )
    embedder: Embedder = (
        FprEmbedder(**settings) if "model" in settings else IntensityEmbedder(**settings)
    )
    if embedder.version != index.model_version:
        raise InputError(
            f"the index was built by {index.model_version!r}, but its embedder is now "
            f"{embedder.version!r} (another model's weights?)",
            fix="rebuild it with 'activecad index build'",
        )
    return embedder
