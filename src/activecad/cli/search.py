"""``activecad index build`` and ``activecad search``: similar-nodule search.

``index build DATA_DIR --out INDEX`` embeds every nodule of a LUNA16-style folder (the
readers' consensus of ``readers.csv``, with their mean malignancy) and writes an exact faiss
index folder; ``search --index INDEX --scan UID --x X --y Y --z Z`` embeds that world point of
that scan the same way and prints the k most similar indexed nodules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from activecad.cli._common import atomic_output, output_file, output_folder
from activecad.errors import InputError

index_app = typer.Typer(
    help="Build a similar-nodule index from a data folder.",
    no_args_is_help=True,
    add_completion=False,
)


@index_app.command("build")
def build_command(
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA_DIR", help="LUNA16-style data folder.", show_default=False),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="The index folder to write.", show_default=False)
    ],
    size: Annotated[
        int, typer.Option("--size", min=2, max=32, help="Grid points per axis of the embedding.")
    ] = 8,
    span: Annotated[
        float, typer.Option("--span", min=4.0, max=200.0, help="Edge of the embedded cube, mm.")
    ] = 32.0,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Embed with this FP-reduction model's mid-level feature ('activecad train "
            "fpr'); default: the raw-intensity baseline (--size, --span).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a summary as JSON.")] = False,
) -> None:
    """Embed every nodule of DATA_DIR and write an index folder.

    With --model the embedding is the FP-reduction classifier's mid-level feature (Park et
    al., "How transferable are the deep features from false positive reduction network for
    lung nodule detection in CT to malignancy prediction?", 2017); without it,
    the raw-intensity baseline.
    """
    from activecad.models.fpr import load_fpr
    from activecad.retrieval.build import Embedder, FprEmbedder, IntensityEmbedder, build_index

    if not data.is_dir():
        raise InputError("no such folder", path=data, fix="give a data folder with ct/")
    output_folder(out, writes="index.faiss, metadata.csv and index.json")
    embedder: Embedder = IntensityEmbedder(size, span)
    if model is not None:
        load_fpr(model)  # checked before any scan is read
        embedder = FprEmbedder(str(model.resolve()))
    index = build_index(data, embedder=embedder, progress=not as_json)
    with atomic_output(out, folder=True) as tmp:
        index.save(tmp)
    summary = {"index": str(out), "nodules": len(index), "dimension": index.dimension,
               "model_version": index.model_version}  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"indexed {len(index)} nodules ({index.dimension}-d) in {out}")


def search_command(
    index: Annotated[
        Path, typer.Option("--index", help="Index folder (index build).", show_default=False)
    ],
    scan: Annotated[
        str, typer.Option("--scan", help="Series UID of the query scan.", show_default=False)
    ],
    x: Annotated[float, typer.Option("--x", help="World x of the query, mm.", show_default=False)],
    y: Annotated[float, typer.Option("--y", help="World y of the query, mm.", show_default=False)],
    z: Annotated[float, typer.Option("--z", help="World z of the query, mm.", show_default=False)],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=100, help="Neighbours to return.")] = 4,
    montage: Annotated[
        Path | None,
        typer.Option(
            "--montage",
            help="PNG to write: the query and its neighbours, three orthogonal views each.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the neighbours as JSON.")] = False,
) -> None:
    """The k indexed nodules most similar to the world point (x, y, z) of a scan."""
    from dataclasses import asdict

    import numpy as np

    from activecad.active.loop import scan_uid
    from activecad.data.folders import read_luna_folder
    from activecad.io import read_scan
    from activecad.retrieval import NoduleIndex
    from activecad.retrieval.build import embedder_of

    if montage is not None:
        montage = output_file(montage, option="--montage")
    opened = NoduleIndex.load(index)
    embedder = embedder_of(opened)
    data = str(opened.extra.get("data", ""))
    paths = {scan_uid(p): p for p in read_luna_folder(data).scans}
    if scan not in paths:
        raise InputError(
            f"scan {scan!r} is not in the index's data folder",
            path=Path(data) / "ct",
            fix="give the series UID of a scan in that folder",
        )
    query = embedder.embed(read_scan(paths[scan]), np.array([[x, y, z]]))
    (found,) = opened.search(query, k=k)
    if montage is not None:
        from activecad.retrieval.plots import orthogonal_views, save_montage

        rows = [
            (f"query\n{scan[-8:]}", orthogonal_views(read_scan(paths[scan]), np.array([x, y, z])))
        ]
        for n in found:
            views = orthogonal_views(read_scan(paths[n.seriesuid]), np.array([n.x, n.y, n.z]))
            title = f"{n.rank}. {n.seriesuid[-8:]}\nmalignancy {n.malignancy:.1f}"
            rows.append((f"{title}\nd {n.distance:.3f}", views))
        with atomic_output(montage, folder=False) as tmp:
            save_montage(rows, tmp)
    if as_json:
        typer.echo(json.dumps([asdict(n) for n in found]))
        return
    for n in found:
        typer.echo(
            f"{n.rank}. {n.seriesuid} ({n.x:.1f}, {n.y:.1f}, {n.z:.1f}) mm, "
            f"{n.diameter_mm:.1f} mm, malignancy {n.malignancy:.2f}, distance {n.distance:.3f}"
        )


def register(app: typer.Typer) -> None:
    """Add ``index build`` and ``search`` to ``app``."""
    app.add_typer(index_app, name="index")
    app.command("search")(search_command)
