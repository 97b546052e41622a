"""Scoring a pool of unlabelled scans for active learning, one scan at a time.

For each scan the detector gives what the scan-level heuristics of Liu, Cao & Tian,
"Deep Active Learning for Effective Pulmonary Nodule Detection" (MICCAI 2020) and the
diversity heuristics need: the detections (world mm, x-y-z), l_scan (Eq. 1), L_RoI (Eq. 2)
in every reading (see :data:`~.loss_prediction.ROI_VARIANTS`) and a scan embedding (P2..P5,
each averaged over the scan's valid region, concatenated). Scans are read through the
preprocessing cache and streamed: only one scan's arrays are in memory at a time.

Example (the call the active-learning loop makes)::

    from activecad.data import PreprocessCache
    from activecad.models.detector3d import load_bundle
    from activecad.models.detector3d.scoring import score_pool

    detector = load_bundle("runs/cycle0/model")
    for s in score_pool(detector, ["1.3.6.1.4...", "ct/other.mhd"], folder="pool/",
                        cache=PreprocessCache()):
        s.seriesuid, s.l_scan, s.l_roi_variants["loss_of_confident"], s.embedding.shape
        s.detections  # seriesuid, coordX, coordY, coordZ, probability, diameter_mm
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.data.preprocess import PreprocessCache
from activecad.errors import InputError
from activecad.models.detector3d.inference import (
    UNCERTAINTY_COLUMNS,
    ScanResult,
    detect_prepared,
    min_shape_zyx,
)
from activecad.models.detector3d.network import NoduleDetector

__all__ = ["PoolScore", "pool_table", "resolve_series", "score_pool", "score_pool_sharded"]

_SCAN_SUFFIXES = (".mhd", ".nii.gz", ".nii", ".nrrd")


@dataclass
class PoolScore(ScanResult):
    """One scored scan of the pool (a :class:`~.inference.ScanResult` with its identity).

    Attributes:
        seriesuid: the scan's series identifier (as read from the file).
        path: the file or DICOM folder it was read from.
    """

    seriesuid: str = ""
    path: Path = Path()


def resolve_series(
    series: Sequence[str | Path], folder: str | Path | Mapping[str, str | Path] | None = None
) -> list[Path]:
    """Paths of the scans named by ``series``: paths, or series UIDs looked up in ``folder``.

    Args:
        series: scan files / DICOM folders, or series UIDs.
        folder: where UIDs are found: a mapping UID -> path, or a data folder holding
            ``<uid>.mhd`` (or ``.nii.gz``, ``.nii``, ``.nrrd``, a DICOM folder ``<uid>/``)
            directly or in ``ct/`` or ``ct_dicom/``.

    Returns:
        one path per item, in order.

    Raises:
        InputError: an item is neither an existing path nor a UID found in ``folder``
            (every missing item is checked before any scan is processed).
    """
    paths, missing = [], []
    for item in series:
        path = _locate(str(item), folder)
        if path is None:
            missing.append(str(item))
        else:
            paths.append(path)
    if missing:
        where = f" or a series in {folder}" if isinstance(folder, (str, Path)) else ""
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"{missing[0]}{more} is not a scan file, a DICOM folder{where}",
            fix="check the paths, or pass the data folder that holds these series",
        )
    return paths


def _locate(item: str, folder: str | Path | Mapping[str, str | Path] | None) -> Path | None:
    if Path(item).exists():
        return Path(item)
    if isinstance(folder, Mapping):
        found = folder.get(item)
        return Path(found) if found is not None and Path(found).exists() else None
    if folder is None:
        return None
    root = Path(folder)
    for sub in (root, root / "ct", root / "ct_dicom"):
        for suffix in _SCAN_SUFFIXES:
            if (sub / f"{item}{suffix}").is_file():
                return sub / f"{item}{suffix}"
        if (sub / item).is_dir():
            return sub / item
    return None


def score_pool(
    detector: NoduleDetector,
    series: Sequence[str | Path],
    *,
    folder: str | Path | Mapping[str, str | Path] | None = None,
    cache: PreprocessCache | str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> Iterator[PoolScore]:
    """Score scans one at a time: detections, l_scan, L_RoI (every reading), embedding.

    Every item is located before the first scan is processed. A scan is read from the
    preprocessing cache when it is there (the key does not read the file, see
    :class:`~activecad.data.preprocess.PreprocessCache`), otherwise preprocessed once and
    added to it.

    Args:
        detector: a trained detector (:func:`~.bundle.load_bundle`).
        series: scan paths or series UIDs (see :func:`resolve_series`).
        folder: where UIDs are looked up.
        cache: the preprocessing cache, or its folder; default the user's cache folder
            (``$ACTIVECAD_CACHE`` overrides it).
        use_cache: False to preprocess in memory and write nothing.
        progress: show a progress bar on stderr.

    Yields:
        one :class:`PoolScore` per scan, in the order given.

    Raises:
        InputError: an item cannot be found or read, or a scan is smaller than the patch.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    paths = resolve_series(series, folder)
    if use_cache and not isinstance(cache, PreprocessCache):
        cache = PreprocessCache(cache)
    config, min_shape = detector.config.preprocess, min_shape_zyx(detector)
    columns = (
        TextColumn("scoring {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("", total=len(paths))
        for path in paths:
            bar.update(task, description=path.name)
            if use_cache:
                assert isinstance(cache, PreprocessCache)
                prepared = cache.load(path, config, min_shape_zyx=min_shape)
            else:
                from activecad.data.preprocess import preprocess_scan
                from activecad.io.ct import read_scan

                prepared = preprocess_scan(read_scan(path), config, min_shape_zyx=min_shape)
            result = detect_prepared(detector, prepared)
            bar.advance(task)
            yield PoolScore(
                detections=result.detections,
                l_scan=result.l_scan,
                l_roi=result.l_roi,
                l_roi_variants=result.l_roi_variants,
                embedding=result.embedding,
                passes=result.passes,
                seriesuid=prepared.seriesuid,
                path=path,
            )


def score_pool_sharded(
    detector: NoduleDetector,
    series: Sequence[str | Path],
    *,
    folder: str | Path | Mapping[str, str | Path] | None = None,
    cache: PreprocessCache | str | Path | None = None,
    progress: bool = True,
) -> list[PoolScore]:
    """Score a pool across the processes of a ``torchrun`` job and merge the results.

    Rank r of N scores scans r, r + N, r + 2N, ... (the same sharding as training's
    patches); the scores are gathered so that every rank returns the whole pool in the
    order given, as :func:`score_pool` would. Each rank writes only its own scans to the
    preprocessing cache. Outside torchrun this is ``list(score_pool(...))``.

    Args:
        detector: the trained detector, the same weights on every rank.
        series, folder, cache: as :func:`score_pool`.
        progress: a progress bar on rank 0 (its share of the pool).
    """
    from activecad.training.distributed import context

    ctx = context()
    paths = resolve_series(series, folder)
    mine = list(
        score_pool(
            detector,
            paths[ctx.rank :: ctx.world_size],
            cache=cache,
            progress=progress and ctx.is_main,
        )
    )
    if not ctx.distributed:
        return mine
    import torch.distributed as dist

    shards: list[list[PoolScore] | None] = [None] * ctx.world_size
    dist.all_gather_object(shards, mine)
    merged: list[PoolScore | None] = [None] * len(paths)
    for rank, shard in enumerate(shards):
        for k, score in enumerate(shard or []):
            merged[rank + k * ctx.world_size] = score
    return [s for s in merged if s is not None]


def pool_table(scores: Sequence[PoolScore]) -> tuple[pd.DataFrame, np.ndarray]:
    """The uncertainties of scored scans as a table, and their embeddings as a matrix.

    Returns:
        rows of :data:`~.inference.UNCERTAINTY_COLUMNS` (plus ``path``), and (N, 4C)
        float32 embeddings in the same order.
    """
    table = pd.DataFrame(
        [s.uncertainty_row(s.seriesuid) for s in scores], columns=UNCERTAINTY_COLUMNS
    )
    table["path"] = [str(s.path) for s in scores]
    width = len(scores[0].embedding) if scores else 0
    embeddings = np.stack([s.embedding for s in scores]) if scores else np.zeros((0, width))
    return table, embeddings.astype(np.float32)
