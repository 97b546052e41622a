"""``activecad phantom OUT_DIR``: generate a seeded virtual patient cohort in the real formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``phantom`` command to ``app``."""

    @app.command("phantom")
    def phantom(
        out_dir: Path = typer.Argument(..., help="Folder to write the cohort into."),
        patients: int = typer.Option(10, "--patients", "-n", help="Number of patients."),
        seed: int = typer.Option(0, "--seed", "-s", help="Seed; the same seed, the same bytes."),
        preset: str = typer.Option("small", "--preset", help="small (128^2 CT) or full (512^2)."),
        formats: str = typer.Option(
            "mhd", "--formats", help="CT formats, comma-separated: mhd, dicom, nifti."
        ),
        preview: bool = typer.Option(False, "--preview", help="Also write preview PNGs."),
        as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    ) -> None:
        """Generate virtual chest-CT patients with nodules, reader marks, lesions and
        radiographs, written as LUNA16/LIDC/DeepLesion-style files."""
        # Imported here so that `activecad --help` does not pay for numpy/scipy set-up.
        from activecad.phantom import generate_cohort

        manifest = generate_cohort(
            out_dir,
            patients=patients,
            seed=seed,
            preset=preset,
            formats=formats.split(","),
            preview=preview,
            progress=not as_json,
        )
        counts = cast(dict[str, int], manifest["counts"])
        if as_json:
            typer.echo(
                json.dumps(
                    {"out_dir": str(out_dir), "seed": seed, "preset": preset, "counts": counts}
                )
            )
            return
        table = Table(title=f"phantom cohort in {out_dir}")
        table.add_column("what")
        table.add_column("count", justify="right")
        for key, value in counts.items():
            table.add_row(key, str(value))
        Console().print(table)
