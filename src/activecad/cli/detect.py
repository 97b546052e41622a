"""``activecad detect``: run a trained 3D nodule detector on CT scans."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def detect_command(
    scans: list[Path] = typer.Argument(..., help="CT scans (.mhd, .nii.gz, DICOM folder)."),
    model: Path = typer.Option(..., "--model", help="Model folder from 'train detector'."),
    out: Path = typer.Option(
        ..., "--out", help="Detections CSV (LUNA16 submission + diameter_mm)."
    ),
    uncertainty: Path | None = typer.Option(
        None, "--uncertainty", help="CSV of l_scan and L_roi per scan."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON."),
) -> None:
    """Detect nodules in CT scans with a trained detector."""
    from activecad.io.tables import write_table
    from activecad.models.detector3d import detect_files, load_bundle

    detector = load_bundle(model)
    detections, uncertainties = detect_files(detector, scans, progress=not as_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(detections, out, "submission")
    if uncertainty is not None:
        uncertainty.parent.mkdir(parents=True, exist_ok=True)
        uncertainties.to_csv(uncertainty, index=False)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "detections": len(detections),
                    "scans": uncertainties.to_dict(orient="records"),
                    "out": str(out),
                }
            )
        )
    else:
        Console(stderr=True).print(f"{len(detections)} detections in {len(scans)} scans -> {out}")


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect_command)
