"""``activecad phantom --out DIR``: generate a seeded virtual patient cohort in the real formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.table import Table

from activecad.cli._common import atomic_output, output_folder, usage_error
from activecad.errors import InputError

_WRITES = "ct/, annotations.csv, readers.csv, cxr/ and the other cohort files"
_WRITES_LESION_SETS = "deeplesion/, luna/, lits/, nih_ln/ and manifest.json"


def _check_preset(value: str) -> str:
    from activecad.phantom.config import PRESETS

    if value not in PRESETS:
        raise usage_error(f"choose {' or '.join(PRESETS)}, got {value!r}", option="--preset")
    return value


def _check_formats(value: str) -> str:
    from activecad.phantom.cohort import FORMATS

    chosen = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise usage_error(
            f"unknown CT format {', '.join(unknown) or repr(value)}; choose from "
            f"{', '.join(FORMATS)} (comma-separated)",
            option="--formats",
        )
    return ",".join(chosen)


def register(app: typer.Typer) -> None:
    """Add the ``phantom`` command to ``app``."""

    @app.command("phantom")
    def phantom(
        out_arg: Path | None = typer.Argument(
            None, metavar="OUT", help="Same as --out (kept for older scripts)."
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Folder to write the cohort into (created; an earlier cohort there is "
            "replaced, any other non-empty folder refused).",
        ),
        patients: int = typer.Option(
            10,
            "--patients",
            "-n",
            min=1,
            help="Number of patients; with --lesion-sets, patients in each of the four sets.",
        ),
        seed: int = typer.Option(
            0, "--seed", "-s", min=0, help="Seed; the same seed, the same bytes."
        ),
        preset: str = typer.Option(
            "small",
            "--preset",
            callback=_check_preset,
            help="small (128^2 CT), medium (256^2) or full (512^2).",
        ),
        formats: str = typer.Option(
            "mhd",
            "--formats",
            callback=_check_formats,
            help="CT formats, comma-separated: mhd, dicom, nifti.",
        ),
        preview: bool = typer.Option(False, "--preview", help="Also write preview PNGs."),
        lesion_sets: bool = typer.Option(
            False,
            "--lesion-sets",
            help="Write instead four lesion datasets on different patients, in their real "
            "layouts: deeplesion/ (partly labelled key slices), luna/, lits/ and nih_ln/ "
            "(each marking one lesion type), for 'activecad train meld'.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    ) -> None:
        """Generate virtual chest-CT patients with nodules, reader marks, lesions and radiographs.

        The files are LUNA16-, LIDC- and DeepLesion-style, so every other command reads them
        as it reads real data. With --lesion-sets: the universal and single-type lesion sets
        that MELD trains on (Yan et al., "Universal Lesion Detection by Learning from Multiple
        Heterogeneously Labeled Datasets", 2020).
        """
        if out is not None and out_arg is not None and out != out_arg:
            raise usage_error(f"given twice ({out_arg} and {out}); pass only --out", option="--out")
        target = out if out is not None else out_arg
        if target is None:
            raise usage_error(
                "missing; pass the folder to write, e.g. --out cohort", option="--out"
            )
        if lesion_sets and (formats != "mhd" or preview):
            option = "--preview" if preview else "--formats"
            raise usage_error(
                "applies to the patient cohort; the lesion sets are written in their "
                "datasets' own formats, without previews",
                option=option,
            )
        target = output_folder(target, writes=_WRITES_LESION_SETS if lesion_sets else _WRITES)
        if target.is_dir() and any(target.iterdir()) and not (target / "manifest.json").is_file():
            raise InputError(
                "folder is not empty and holds no phantom cohort",
                path=target,
                fix="Choose an empty or new folder (a previous cohort is replaced)",
            )
        # Imported here so that `activecad --help` does not pay for numpy/scipy set-up.
        from activecad.phantom import generate_cohort
        from activecad.phantom.cohort import _clear_previous
        from activecad.phantom.lesion_sets import LESION_SETS, write_lesion_sets

        # Generated beside the target and moved in at the end: an interrupted run leaves
        # the earlier cohort (or nothing) in place, never half a cohort.
        with atomic_output(target, folder=True) as tmp:
            if lesion_sets:
                manifest = write_lesion_sets(
                    tmp,
                    patients_per_set=patients,
                    seed=seed,
                    preset=preset,
                    progress=not as_json,
                )
            else:
                manifest = generate_cohort(
                    tmp,
                    patients=patients,
                    seed=seed,
                    preset=preset,
                    formats=formats.split(","),
                    preview=preview,
                    progress=not as_json,
                )
            if target.is_dir():  # whichever kind of phantom folder was there before
                _clear_previous(target)
                for name in LESION_SETS:
                    shutil.rmtree(target / name, ignore_errors=True)
        if lesion_sets:
            _print_lesion_sets(target, seed, preset, manifest, as_json)
            return
        counts = cast(dict[str, int], manifest["counts"])
        if as_json:
            typer.echo(
                json.dumps(
                    {"out_dir": str(target), "seed": seed, "preset": preset, "counts": counts}
                )
            )
            return
        table = Table(title=f"phantom cohort in {target}")
        table.add_column("what")
        table.add_column("count", justify="right")
        for key, value in counts.items():
            table.add_row(key, str(value))
        Console().print(table)


def _print_lesion_sets(
    target: Path, seed: int, preset: str, manifest: dict[str, object], as_json: bool
) -> None:
    counts = cast(dict[str, dict[str, int]], manifest["counts"])
    if as_json:
        typer.echo(
            json.dumps({"out_dir": str(target), "seed": seed, "preset": preset, "counts": counts})
        )
        return
    table = Table(title=f"phantom lesion sets in {target}")
    table.add_column("set")
    table.add_column("counts")
    for name, values in counts.items():
        table.add_row(name, ", ".join(f"{k} {v}" for k, v in values.items()))
    Console().print(table)
