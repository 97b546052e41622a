"""``activecad demo``: the whole pipeline on a generated cohort, through the real file formats.

The demo runs the same code a user's commands run: it writes a phantom cohort to disk,
reads a scan back with ``activecad.io``, trains the cpu-preset detector on most scans,
runs ``activecad detect`` on the held-out scans, scores the detections with
``activecad eval froc``, and runs a short active-learning loop (``activecad al run`` with
the settings of ``examples/al-quick.yaml``) and its report (``activecad al report``).
Everything it writes lands in one folder (default ``demo_out``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from activecad.cli._common import output_folder


@dataclass(frozen=True)
class DemoSize:
    """How much work each step of the demo does."""

    patients: int
    epochs: int
    steps_per_epoch: int
    bootstrap: int
    al_steps_per_cycle: int = 4


QUICK = DemoSize(patients=6, epochs=2, steps_per_epoch=8, bootstrap=200)
FULL = DemoSize(patients=30, epochs=12, steps_per_epoch=40, bootstrap=1000, al_steps_per_cycle=40)

# The loop of examples/al-quick.yaml (without its data folder; a test keeps the two equal):
# random against learning loss, two seeds, two cycles, a tiny detector.
AL_QUICK: dict[str, object] = {
    "strategies": ["random", "learning_loss"],
    "seeds": [0, 1],
    "initial_fraction": 0.25,
    "query_size": 1,
    "cycles": 2,
    "test_fraction": 0.25,
    "mode": "finetune",
    "steps_per_cycle": 4,
    "oracle": "simulated",
    "detector": {
        "preset": "cpu",
        "preprocess": {"spacing": [4.0, 4.0, 4.0], "lung_crop": False},
        "backbone_widths": [4, 8, 8, 8],
        "fpn_channels": 8,
        "loss_hidden": 4,
        "patch_size": [32, 32, 32],
        "batch_size": 2,
        "base_anchor_shapes": [[4.0, 4.0, 4.0], [8.0, 8.0, 8.0]],
        "score_thresh": 0.0,
        "sw_roi_size": [32, 32, 32],
    },
}

# Sub-folders the demo owns inside OUT; only these are ever deleted on a re-run.
_OWNED = (
    "cohort",
    "model",
    "detections.csv",
    "uncertainty.csv",
    "heldout.csv",
    "froc",
    "al-quick.yaml",
    "al",
    "al_report",
)
_WRITES = (
    "cohort/, model/, detections.csv, uncertainty.csv, heldout.csv, froc/, al-quick.yaml, al/ "
    "and al_report/"
)


def demo_command(
    quick: bool = typer.Option(False, "--quick", help="A few minutes on 2 CPU cores."),
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for everything written."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort and of training."),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
) -> None:
    """Generate a phantom cohort, train a detector, detect on held-out scans and score FROC."""
    size = QUICK if quick else FULL
    out = output_folder(out, writes=_WRITES)
    console = Console(stderr=True)
    # The steps print their own tables; with --json only the final summary goes to stdout.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        summary = _run_demo(size, out, seed, console)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.rule("[bold]done")
        console.print(
            f"CPM on held-out scans: {summary['cpm']:.3f} "
            f"({'quick demo: a few training steps, expect a low number' if quick else 'demo'}). "
            f"FROC plot: {out / 'froc' / 'froc.png'}",
            highlight=False,
        )


def _run_demo(size: DemoSize, out: Path, seed: int, console: Console) -> dict[str, object]:
    from activecad.cli.detect import detect_command
    from activecad.cli.eval import froc
    from activecad.cli.info import scan_info
    from activecad.io import read_scan
    from activecad.models.detector3d import preset_config, split_series, train_detector
    from activecad.phantom import generate_cohort

    out = output_folder(out, writes=_WRITES)
    out.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    timings: dict[str, float] = {}

    def step(title: str) -> float:
        console.rule(f"[bold]{title}")
        return time.monotonic()

    start = step(f"1/5 phantom cohort: {size.patients} patients (small preset, seed {seed})")
    cohort = out / "cohort"
    manifest = generate_cohort(
        cohort, patients=size.patients, seed=seed, preset="small", preview=True, progress=True
    )
    timings["phantom_s"] = time.monotonic() - start
    scans = sorted((cohort / "ct").glob("*.mhd"))
    first = scan_info(read_scan(scans[0]))
    console.print(
        f"{len(scans)} CT scans in {cohort / 'ct'}; first: {first['size_xyz']} voxels (x, y, z), "
        f"spacing {[round(s, 2) for s in first['spacing_xyz_mm']]} mm (x, y, z); "
        f"previews in {cohort / 'preview'}",
        highlight=False,
    )

    start = step(f"2/5 train the cpu-preset detector ({size.epochs} epochs)")
    uids = [p.stem for p in scans]
    # Follow-up studies of one patient must not straddle the split (that would leak).
    patients = pd.read_csv(cohort / "patients.csv", dtype=str)
    train_uids, heldout_uids = split_series(
        uids, 0.25, seed, groups=dict(zip(patients["seriesuid"], patients["patient"], strict=True))
    )
    config = preset_config(
        "cpu",
        epochs=size.epochs,
        steps_per_epoch=size.steps_per_epoch,
        val_fraction=0.0,
        seed=seed,
    )
    train_detector(
        cohort, out / "model", config, train_uids=train_uids, val_uids=[], console=console
    )
    timings["train_s"] = time.monotonic() - start

    start = step(f"3/5 detect nodules in the {len(heldout_uids)} held-out scans")
    heldout = [cohort / "ct" / f"{uid}.mhd" for uid in heldout_uids]
    detect_command(
        scans=heldout,
        models=[out / "model"],
        out=out / "detections.csv",
        uncertainty=out / "uncertainty.csv",
        as_json=False,
    )
    timings["detect_s"] = time.monotonic() - start

    start = step("4/5 FROC / CPM with the LUNA16 rules")
    (out / "heldout.csv").write_text("seriesuid\n" + "".join(f"{u}\n" for u in heldout_uids))
    froc(
        annotations=cohort / "annotations.csv",
        predictions=out / "detections.csv",
        excluded=cohort / "annotations_excluded.csv",
        seriesuids=out / "heldout.csv",
        max_marks=100,
        bootstrap=size.bootstrap,
        seed=seed,
        out=out / "froc",
        as_json=False,
    )
    timings["eval_s"] = time.monotonic() - start

    start = step("5/5 active learning: random against learning loss (examples/al-quick.yaml)")
    loop = _active_learning(cohort, out, size, console)
    timings["active_learning_s"] = time.monotonic() - start

    return {
        "out": str(out),
        "patients": size.patients,
        "scans": len(scans),
        "heldout_scans": len(heldout_uids),
        "cohort_counts": manifest.get("counts"),
        "cpm": json.loads((out / "froc" / "froc.json").read_text())["cpm"],
        "active_learning": loop,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def _active_learning(
    cohort: Path, out: Path, size: DemoSize, console: Console
) -> dict[str, object]:
    """``al run`` with the al-quick settings on the demo cohort, then ``al report``."""
    import yaml

    from activecad.active.config import LoopConfig
    from activecad.active.detector_learner import DetectorLearner
    from activecad.active.loop import run_loop
    from activecad.active.report import write_report
    from activecad.config import load_config

    settings = {**AL_QUICK, "data": str(cohort), "steps_per_cycle": size.al_steps_per_cycle}
    path = out / "al-quick.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    config = load_config(LoopConfig, path)
    learner = DetectorLearner(config.data, detector=config.detector)
    run_loop(config, out / "al", learner=learner, progress=console.log)
    summary = write_report([out / "al"], out / "al_report")
    console.print(
        f"selections: {out / 'al' / 'selections.csv'}; curves and report: "
        f"{out / 'al_report' / 'report.md'} (a barely trained detector: this checks the "
        "pipeline, not the strategies)",
        highlight=False,
    )
    return {
        "folder": str(out / "al"),
        "report": str(out / "al_report" / "report.md"),
        "labelled": summary["labelled"],
    }


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo_command)
