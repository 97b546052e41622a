"""``activecad cache info|clear``: the preprocessing cache in the user's cache folder.

``detect``, ``train`` and pool scoring keep preprocessed scans (resampled, windowed,
lung-cropped arrays) there, so a scan is preprocessed once. The folder is
``$ACTIVECAD_CACHE`` when set, else the platform's user cache folder
(``~/.cache/activecad/preprocess`` on Linux); ``--cache`` points a command elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activecad.errors import InputError

if TYPE_CHECKING:
    from activecad.data.preprocess import PreprocessCache

cache_app = typer.Typer(
    help="Show or empty the preprocessing cache (preprocessed scans kept between runs).",
    no_args_is_help=True,
    add_completion=False,
)

_CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Cache folder (default: $ACTIVECAD_CACHE, else the user's cache folder).",
        show_default=False,
    ),
]
_JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _open(cache: Path | None) -> PreprocessCache:
    from activecad.data.preprocess import PreprocessCache

    store = PreprocessCache(cache)
    if store.root.exists() and not store.root.is_dir():
        raise InputError(
            "the cache must be a folder, but this is a file",
            path=store.root,
            fix="pass another --cache folder",
        )
    return store


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@cache_app.command("info")
def info_command(cache: _CacheOption = None, as_json: _JsonOption = False) -> None:
    """Where the cache is, how many scans it holds and its size."""
    found = _open(cache).info()
    summary = {
        "folder": str(found.root),
        "entries": found.entries,
        "bytes": found.bytes,
        "partial": found.partial,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"folder:  {found.root}")
    typer.echo(f"scans:   {found.entries}")
    typer.echo(f"size:    {_size(found.bytes)}")
    if found.partial:
        typer.echo(f"partial: {found.partial} leftover files of interrupted runs ('cache clear')")


@cache_app.command("clear")
def clear_command(cache: _CacheOption = None, as_json: _JsonOption = False) -> None:
    """Delete every cached scan (they are recomputed when next needed)."""
    before = _open(cache).clear()
    summary = {"folder": str(before.root), "removed": before.entries, "freed_bytes": before.bytes}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"removed {before.entries} scans ({_size(before.bytes)}) from {before.root}")


def register(app: typer.Typer) -> None:
    """Add ``cache`` (with ``info`` and ``clear``) to ``app``."""
    app.add_typer(cache_app, name="cache")
