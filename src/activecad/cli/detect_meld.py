"""``activecad detect`` on a MELD model folder (bundle.json "model": "meld").

``cli/detect.py`` calls :func:`is_meld_model` and, when true, :func:`detect_meld` instead
of the CT nodule detector. Inputs are DeepLesion-style folders (``DL_info.csv`` and
``Images_png/``) or CT volumes; every stored slice is a sample's centre slice, prepared as
the model was trained (its ``preprocess.json``), and the universal expert's detections are
written in the ``lesion_predictions`` table that ``activecad eval boxes`` reads.

Frames: boxes are ``x1, y1, x2, y2`` in pixel-centre coordinates of the stored slice (pixel
``i`` centred at ``i``), as DeepLesion's ``Bounding_boxes``. A CT volume's stored slice is
the file's own array (slices flipped into standard orientation for the network are flipped
back); a volume stored along another axis than z is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import Progress

from activecad.cli._common import atomic_output, output_file, warn
from activecad.errors import InputError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from activecad.data.lesion_samples import PreparedVolume
    from activecad.io.lesion_sets import DeepLesionSet
    from activecad.models.meld import MeldNet, MeldPreprocessing

    ToStored = Callable[[NDArray[np.float64], NDArray[np.int64]], tuple[NDArray, NDArray]]

BOX = ["x1", "y1", "x2", "y2"]
_CHUNK = 16  # slices prepared at a time (each sample is 9 slices of float32)


def is_meld_model(model_dir: Path) -> bool:
    """Whether ``model_dir/bundle.json`` names a ``meld`` model (False when unreadable)."""
    try:
        return json.loads((Path(model_dir) / "bundle.json").read_text()).get("model") == "meld"
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class _Volume:
    """Stored slices of one series, read and prepared on demand.

    Attributes:
        volume_id: the name of its 3D boxes' volume (DeepLesion: ``<series>:<first>-<last>``,
            as ``activecad eval boxes`` names sub-volumes; a CT volume: its file name).
        series: the ``File_name`` prefix of its slices; ``suffix`` their ending.
        n_slices: its number of slices.
        prepare: reads and prepares the slices; returns the prepared volume and a function
            taking (N, 4) boxes of the prepared slices and (N,) prepared slice indices to
            pixel-centre boxes and indices of the stored slices.
    """

    volume_id: str
    series: str
    suffix: str
    n_slices: int
    prepare: Callable[[], tuple[PreparedVolume, ToStored]]


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Runs ``(first, last)`` of consecutive numbers in sorted ``indices``."""
    out: list[tuple[int, int]] = []
    for k in indices:
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def _spacing_by_series(folder: Path) -> dict[str, tuple[float, float, float]]:
    """(x, y, z) mm of every series the folder's tables list."""
    from activecad.io.lesion_sets import read_deeplesion

    tables = ["DL_info.csv"]
    # A phantom folder's evaluation-only table lists every shipped series; only the pixel
    # spacing is taken from it, for series none of whose lesions DL_info.csv labels.
    if (folder / "DL_info_full.csv").is_file():
        tables.insert(0, "DL_info_full.csv")
    spacing: dict[str, tuple[float, float, float]] = {}
    for table in tables:
        info = read_deeplesion(folder, table=table).info
        for series, value in zip(info["series"], info["Spacing_mm_px_"], strict=True):
            x, y, z = (float(v) for v in value)
            spacing[str(series)] = (x, y, z)
    return spacing


def _deeplesion_volumes(folder: Path, prep: MeldPreprocessing) -> list[_Volume]:
    """The runs of consecutive slices in ``Images_png/`` of every series with a spacing."""
    from activecad.io.lesion_sets import read_deeplesion

    spacing = _spacing_by_series(folder)
    images = read_deeplesion(folder)
    unknown = sorted(s for s, files in images.slices.items() if files and s not in spacing)
    if unknown:
        warn(
            "%d series of %s have no row in DL_info.csv (no pixel spacing) and are skipped, "
            "e.g. %s",
            len(unknown),
            folder / "Images_png",
            unknown[0],
        )
    volumes = []
    for series, files in images.slices.items():
        if series in spacing:
            for first, last in _runs(sorted(files)):
                prepare = _deeplesion_preparer(images, series, first, last, spacing[series], prep)
                volumes.append(
                    _Volume(f"{series}:{first}-{last}", series, ".png", last - first + 1, prepare)
                )
    return volumes


def _deeplesion_preparer(
    images: DeepLesionSet,
    series: str,
    first: int,
    last: int,
    spacing: tuple[float, float, float],
    prep: MeldPreprocessing,
) -> Callable[[], tuple[PreparedVolume, ToStored]]:
    def prepare() -> tuple[PreparedVolume, ToStored]:
        from activecad.data.lesion_samples import prepare_volume

        volume = prepare_volume(
            images.read_slices(series, first, last),
            pixel_spacing=(spacing[1], spacing[0]),
            spacing_z=spacing[2],
            pixel_mm=prep.pixel_mm,
            crop_borders=prep.crop_borders,
            hu_window=prep.hu_window,
            name=series,
            patient=series.split("_")[0],
        )

        def to_stored(boxes: NDArray[np.float64], z: NDArray[np.int64]) -> tuple[NDArray, NDArray]:
            return volume.boxes_to_stored(boxes) - 0.5, first + z

        return volume, to_stored

    return prepare


def _scan_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mhd", ".mha", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _ct_volume(path: Path, prep: MeldPreprocessing) -> _Volume:
    """A CT volume: its header is checked now, its voxels are read when prepared."""
    from activecad.cli.detect import check_scan

    check_scan(path)
    name = _scan_name(path)

    def prepare() -> tuple[PreparedVolume, ToStored]:
        from activecad.data.lesion_samples import prepare_volume, to_standard_orientation
        from activecad.io.ct import read_scan

        scan = read_scan(path)
        axes = np.argmax(np.abs(scan.direction), axis=0)
        if axes.tolist() != [0, 1, 2]:
            raise InputError(
                f"the volume's array axes run along world axes {axes.tolist()}, not x, y, z: "
                "its stored slices are not axial",
                path=path,
                fix="resample it to axial slices first",
            )
        flip_x, flip_y, flip_z = (bool(v < 0) for v in np.diag(scan.direction))
        depth, height, width = scan.shape
        standard = to_standard_orientation(scan)
        volume = prepare_volume(
            standard.array,
            pixel_spacing=(float(standard.spacing[1]), float(standard.spacing[0])),
            spacing_z=float(standard.spacing[2]),
            pixel_mm=prep.pixel_mm,
            crop_borders=prep.crop_borders,
            hu_window=prep.hu_window,
            name=name,
            patient=standard.patient_id or name,
        )

        def to_stored(boxes: NDArray[np.float64], z: NDArray[np.int64]) -> tuple[NDArray, NDArray]:
            out = volume.boxes_to_stored(boxes)
            if flip_x:
                out[:, [0, 2]] = width - out[:, [2, 0]]
            if flip_y:
                out[:, [1, 3]] = height - out[:, [3, 1]]
            return out - 0.5, (depth - 1 - z if flip_z else z)

        return volume, to_stored

    return _Volume(name, name, "", _slice_count(path), prepare)


def _slice_count(path: Path) -> int:
    """Slices of a scan, from its header (a DICOM folder: its files)."""
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.is_file())  # a progress estimate only
    import SimpleITK

    reader = SimpleITK.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    return int(size[2]) if len(size) > 2 else 1


def _volumes(inputs: Sequence[Path], prep: MeldPreprocessing) -> list[_Volume]:
    volumes: list[_Volume] = []
    for path in inputs:
        if path.is_dir() and (path / "DL_info.csv").is_file():
            volumes += _deeplesion_volumes(path, prep)
        elif path.is_dir() and (path / "Images_png").is_dir():
            raise InputError(
                "a DeepLesion folder without DL_info.csv (it gives the slices' pixel spacing)",
                path=path,
                fix="add DL_info.csv next to Images_png/",
            )
        else:
            volumes.append(_ct_volume(path, prep))
    scans = [v.series for v in volumes if not v.suffix]
    series = {v.series for v in volumes if v.suffix}
    ids = [v.volume_id for v in volumes if v.suffix]
    repeated = sorted(
        {n for n in scans if scans.count(n) > 1}
        | (set(scans) & series)
        | {i.split(":")[0] for i in ids if ids.count(i) > 1}
    )
    if repeated:
        raise InputError(
            f"two inputs are named {repeated[0]!r}; their slices could not be told apart",
            fix="rename one of them, or detect them in separate runs",
        )
    return volumes


def _slice_detections(
    net: MeldNet, volume: _Volume, prep: MeldPreprocessing, advance: Callable[[int], None]
) -> pd.DataFrame:
    """The universal expert's detections on every stored slice of ``volume``.

    Returns:
        ``volume``, ``slice`` (stored index), ``File_name``, the box (pixel-centre
        coordinates of the stored slice), ``score`` and ``score_<dataset>``.
    """
    from activecad.data.lesion_slices import SliceSample
    from activecad.models.meld import predict

    prepared, to_stored = volume.prepare()
    depth = prepared.array.shape[0]
    parts = []
    for start in range(0, depth, _CHUNK):
        samples = [
            SliceSample(
                image=prepared.stack(float(z), prep.slice_mm),
                boxes=np.zeros((0, 4)),
                organs=np.zeros((0, 3), np.float32),
                dataset="universal",
                image_id=str(z),
                patient=prepared.patient,
                spacing=(prep.pixel_mm, prep.pixel_mm),
            )
            for z in range(start, min(start + _CHUNK, depth))
        ]
        parts.append(predict(net, samples, dataset="universal")[0])
        advance(len(samples))
    table = pd.concat(parts, ignore_index=True)
    boxes, stored = to_stored(
        table[BOX].to_numpy(np.float64), table["image_id"].astype(int).to_numpy()
    )
    scores = [c for c in table.columns if c == "score" or c.startswith("score_")]
    return pd.DataFrame(
        {
            "volume": volume.volume_id,
            "slice": np.asarray(stored, dtype=np.int64),
            "File_name": [f"{volume.series}_{k:03d}{volume.suffix}" for k in stored],
            **{c: boxes[:, i] for i, c in enumerate(BOX)},
            **{c: table[c].to_numpy(np.float64) for c in scores},
        }
    )


def stack_detections(table: pd.DataFrame) -> pd.DataFrame:
    """3D boxes of 2D detections on consecutive slices (IoU > 0.5), per volume.

    Args:
        table: ``volume``, ``slice`` (stored index), the box and ``score`` of each detection.

    Returns:
        ``volume, first_slice, last_slice, x1, y1, x2, y2, score`` (the stacked table of
        ``activecad eval boxes --out``; the box spans the 2D boxes, the score is the best).
    """
    from activecad.metrics import stack_slice_boxes

    stacked = stack_slice_boxes(
        table["volume"].to_numpy(str),
        table["slice"].to_numpy(np.int64),
        table[BOX].to_numpy(np.float64),
        table["score"].to_numpy(np.float64),
    )
    return stacked.to_frame()


def detect_meld(
    inputs: list[Path], model: Path, out: Path, stacked: Path | None, as_json: bool
) -> None:
    """Write the universal lesion detections of every stored slice of ``inputs``.

    Every input is checked and the model loaded before the first slice is read; ``out``
    (and ``stacked``) are written atomically.
    """
    from activecad.io.tables import write_table
    from activecad.models.meld import load_meld, load_meld_preprocessing

    out = output_file(out)
    if stacked is not None:
        stacked = output_file(stacked, option="--stacked")
        if stacked.resolve() == out.resolve():
            raise InputError(
                "--stacked and --out name the same file",
                path=out,
                fix="give --stacked another name, e.g. stacked.csv",
            )
    net = load_meld(model)
    prep = load_meld_preprocessing(model)
    volumes = _volumes(inputs, prep)
    if not volumes:
        raise InputError(
            "no slice to detect on", fix="give a DeepLesion folder with slices, or CT volumes"
        )
    parts = []
    console = Console(stderr=True)
    with Progress(console=console, disable=as_json, transient=True) as bar:
        task = bar.add_task("MELD detection", total=sum(v.n_slices for v in volumes))
        for volume in volumes:
            parts.append(_slice_detections(net, volume, prep, lambda n: bar.advance(task, n)))
    table = pd.concat(parts, ignore_index=True)
    with atomic_output(out, folder=False) as tmp:
        write_table(table.drop(columns=["volume", "slice"]), tmp, "lesion_predictions")
    boxes_3d = None
    if stacked is not None:
        boxes_3d = stack_detections(table)
        with atomic_output(stacked, folder=False) as tmp:
            boxes_3d.to_csv(tmp, index=False)
    summary = {
        "volumes": len(volumes),
        "slices": int(sum(v.n_slices for v in volumes)),
        "detections": len(table),
        "boxes_3d": None if boxes_3d is None else len(boxes_3d),
        "out": str(out),
        "stacked": None if stacked is None else str(stacked),
        "pixel_mm": prep.pixel_mm,
        "slice_mm": prep.slice_mm,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console.print(
            f"{len(table)} detections on {summary['slices']} slices of {len(volumes)} volumes "
            f"-> {out}" + ("" if stacked is None else f" (3D boxes -> {stacked})"),
            highlight=False,
        )
