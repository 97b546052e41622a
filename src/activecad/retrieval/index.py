"""An index of nodule embeddings for similar-nodule search, saved with its metadata.

Each indexed nodule has an embedding (the FP-reduction classifier's mid-level feature, or any
(D,) vector) and a row of metadata: seriesuid, world mm x-y-z, diameter and the readers' mean
malignancy. Search is exact (faiss ``IndexFlatL2`` or ``IndexFlatIP`` on L2-normalised
vectors for cosine), so a query at an indexed nodule finds itself first.

On disk, one folder per index::

    index.faiss     the faiss index
    metadata.csv    one row per indexed nodule, in index order
    index.json      format, metric, dimension, count and the model version it was built by

Opening an index checks all three against each other, and against the model version a
caller expects, so an index built by another model is an error, not silently wrong answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from activecad.errors import InputError

__all__ = ["INDEX_FORMAT", "METADATA_COLUMNS", "Neighbour", "NoduleIndex"]

INDEX_FORMAT = 1
METADATA_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy")
Metric = Literal["l2", "cosine"]


@dataclass(frozen=True)
class Neighbour:
    """One search result: the indexed nodule, its distance and its rank (1 = nearest).

    ``distance`` is the Euclidean distance for ``l2`` and 1 - cosine similarity for
    ``cosine``; coordinates are world mm, x-y-z.
    """

    rank: int
    distance: float
    seriesuid: str
    x: float
    y: float
    z: float
    diameter_mm: float
    malignancy: float


class NoduleIndex:
    """Exact nearest-neighbour search over nodule embeddings.

    Args:
        embeddings: (N, D) float vectors.
        metadata: N rows with :data:`METADATA_COLUMNS` (``malignancy`` may be NaN).
        metric: ``l2`` or ``cosine``.
        model_version: what made the embeddings (e.g. the model folder's weights hash);
            stored, and checked by :meth:`load`.

    Attributes:
        extra: JSON-ready values saved with the index (e.g. the data folder and embedder
            settings a query needs to be embedded the same way).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        metadata: pd.DataFrame,
        *,
        metric: Metric = "l2",
        model_version: str = "",
    ):
        import faiss

        x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if x.ndim != 2 or len(x) == 0:
            raise InputError(f"embeddings must be (N, D) with N >= 1, got {x.shape}")
        if not np.isfinite(x).all():
            raise InputError("an embedding is not finite", fix="check the model's outputs")
        missing = [c for c in METADATA_COLUMNS if c not in metadata.columns]
        if missing or len(metadata) != len(x):
            raise InputError(
                f"metadata must have {len(x)} rows with {', '.join(METADATA_COLUMNS)}"
                + (f" (missing {', '.join(missing)})" if missing else f", got {len(metadata)}"),
                fix="give one metadata row per embedding",
            )
        if metric not in ("l2", "cosine"):
            raise InputError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            if np.any(norms == 0):
                raise InputError("cosine search needs non-zero embeddings", fix="use l2")
            x = x / norms
            self._index = faiss.IndexFlatIP(x.shape[1])
        else:
            self._index = faiss.IndexFlatL2(x.shape[1])
        self._index.add(x)
        self.metadata = metadata[list(METADATA_COLUMNS)].reset_index(drop=True)
        self.metric: Metric = metric
        self.model_version = model_version
        self.extra: dict[str, object] = {}

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, query: np.ndarray, k: int = 4) -> list[list[Neighbour]]:
        """The ``k`` nearest indexed nodules of each query, nearest first.

        Args:
            query: (D,) or (Q, D) embeddings from the same model.
            k: neighbours per query (at most the index size).
        """
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(query, dtype=np.float32)))
        if q.shape[1] != self.dimension:
            raise InputError(
                f"the query has {q.shape[1]} dimensions, the index {self.dimension}",
                fix="embed the query with the model the index was built by",
            )
        if self.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = max(1, min(int(k), len(self)))
        scores, rows = self._index.search(q, k)
        # faiss gives squared L2 distances, or inner products (similarities) for cosine
        if self.metric == "l2":
            distances = np.sqrt(np.maximum(scores, 0.0))
        else:
            distances = np.maximum(1.0 - scores, 0.0)
        results = []
        for dist_row, index_row in zip(distances, rows, strict=True):
            found = []
            for rank, (d, i) in enumerate(zip(dist_row, index_row, strict=True), start=1):
                m = self.metadata.iloc[int(i)]
                found.append(
                    Neighbour(
                        rank, float(d), str(m.seriesuid), float(m.coordX), float(m.coordY),
                        float(m.coordZ), float(m.diameter_mm), float(m.malignancy),
                    )
                )  # fmt: skip
            results.append(found)
        return results

    def save(self, folder: str | Path) -> Path:
        """Write the index folder (see the module docs); returns it."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(folder / "index.faiss"))
        self.metadata.to_csv(folder / "metadata.csv", index=False)
        info = {
            "format": INDEX_FORMAT,
            "metric": self.metric,
            "dimension": self.dimension,
            "count": len(self),
            "model_version": self.model_version,
            "extra": self.extra,
        }
        (folder / "index.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, model_version: str | None = None) -> NoduleIndex:
        """Open an index folder.

        Args:
            folder: written by :meth:`save`.
            model_version: when given, the version the index must have been built by.

        Raises:
            InputError: a file is missing, unreadable or inconsistent with the others, or the
                index was built by another model version.
        """
        import faiss

        folder = Path(folder)
        fix = "rebuild it with 'activecad index build'"
        if not folder.exists():
            raise InputError("no such index folder", path=folder, fix="check the path")
        try:
            info = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            metadata = pd.read_csv(folder / "metadata.csv", dtype={"seriesuid": str})
        except (OSError, ValueError) as exc:
            raise InputError(f"not a readable nodule index ({exc})", path=folder, fix=fix) from exc
        if info.get("format") != INDEX_FORMAT:
            raise InputError(
                f"index format {info.get('format')!r}, this activecad reads {INDEX_FORMAT}",
                path=folder,
                fix=fix,
            )
        if model_version is not None and info.get("model_version") != model_version:
            raise InputError(
                f"the index was built by model version {info.get('model_version')!r}, not "
                f"{model_version!r}",
                path=folder,
                fix="search with the model that built it, or rebuild the index",
            )
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as exc:
            raise InputError("the faiss index file is unreadable", path=folder, fix=fix) from exc
        if index.ntotal != info.get("count") or index.d != info.get("dimension"):
            raise InputError(
                f"index.faiss holds {index.ntotal} x {index.d}, index.json says "
                f"{info.get('count')} x {info.get('dimension')}",
                path=folder,
                fix=fix,
            )
        if len(metadata) != index.ntotal:
            raise InputError(
                f"metadata.csv has {len(metadata)} rows for {index.ntotal} embeddings",
                path=folder,
                fix=fix,
            )
        loaded = cls.__new__(cls)
        loaded._index = index
        loaded.metadata = metadata[list(METADATA_COLUMNS)]
        loaded.metric = info["metric"]
        loaded.model_version = str(info.get("model_version", ""))
        loaded.extra = dict(info.get("extra", {}))
        return loaded
