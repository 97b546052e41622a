"""The scan-level active-learning experiment of Liu, Cao & Tian (MICCAI 2020) on the phantom.

Random against learning loss, the paper's combination (l_scan + L_RoI) and core-set, from
10 % to 60 % of the pool labelled (10 % more per cycle), fine-tuning the cpu-preset detector
from the last cycle (cycle 0 trains from scratch), evaluated every cycle on a fixed held-out
test split (CPM and sensitivity at 4 FPs per scan). Seeds 0 and 1 run all four strategies,
seed 2 random and combined; a reference run trains on the whole pool for the same number of
steps as the 60 % point had in total, for the "full-data" CPM.

Every part is a loop folder of ``activecad al run`` under ``--work`` (models, stores), run one
after the other; killed at any moment, the same command continues where it stopped (the loop
is resumable and ends with the same selections and metrics). The committed results are the
report of what has finished: ``benchmarks/results/active/`` (report.json, report.md, curves,
scatter, and each part's metrics.jsonl and selections.csv).

    python benchmarks/active.py run --work /work/exp/active     # hours; resumable
    python benchmarks/active.py report --work /work/exp/active  # anytime, from what finished
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
import yaml

from _al_parts import keep_results, part_folder, run_part

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "active"
PHANTOM = {"patients": 130, "seed": 7, "preset": "small"}
# Cycle 0 trains from scratch on 10 % of the pool; it is the same for every strategy of a
# seed, so it is trained once per seed. 200 steps a cycle from the start left the CPM at
# 0.00, 0.00, 0.02 after cycles 0-2 (random, seed 0): curves near zero cannot tell strategies
# apart, so cycle 0 gets a longer budget.
INITIAL_STEPS = 1200
STEPS_PER_CYCLE = 250
CYCLES = 6  # 10 %, 20 %, ..., 60 % labelled
# The detector of the quality run in the README (2 mm voxels, batch 4) on 64 x 64 x 32 patches
# (128 x 128 x 64 mm, room for a 30 mm nodule; half the cost of 64^3, so ten runs fit), with
# a score threshold low enough that an early, under-confident model still marks scans.
DETECTOR = {
    "preset": "cpu",
    "preprocess": {"spacing": [2.0, 2.0, 2.0]},
    "patch_size": [64, 64, 32],
    "batch_size": 4,
    "score_thresh": 0.01,
}
LOOP = {
    "initial_fraction": 0.1,
    "query_fraction": 0.1,
    "cycles": CYCLES,
    "test_fraction": 0.35,
    "mode": "finetune",
    "initial_steps": INITIAL_STEPS,
    "steps_per_cycle": STEPS_PER_CYCLE,
    "oracle": "simulated",
    "detector": DETECTOR,
}
PARTS = {
    "seed0": {"strategies": ["random", "combined", "learning_loss", "coreset"], "seeds": [0]},
    "seed1": {"strategies": ["random", "combined", "learning_loss", "coreset"], "seeds": [1]},
    "seed2": {"strategies": ["random", "combined"], "seeds": [2]},
    # the whole pool at once, for as many steps as the 60 % point trained in total
    "full": {
        "strategies": ["random"],
        "seeds": [0],
        "initial_fraction": 1.0,
        "cycles": 1,
        "initial_steps": INITIAL_STEPS + STEPS_PER_CYCLE * (CYCLES - 1),
    },
}

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _phantom(work: Path) -> Path:
    data = work / "phantom"
    if not (data / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "activecad", "phantom", "--out", str(data),
             "--patients", str(PHANTOM["patients"]), "--seed", str(PHANTOM["seed"]),
             "--preset", PHANTOM["preset"]],
            check=True,
        )  # fmt: skip
    return data


def _config(work: Path, part: str) -> Path:
    config = {"data": str(_phantom(work)), **LOOP, **PARTS[part]}
    path = work / f"{part}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    return path


@app.command()
def run(
    work: Path = typer.Option(..., help="Folder for the phantom, configs and loop folders."),
    parts: list[str] = typer.Option(list(PARTS), "--part", help="Parts to run, in order."),
) -> None:
    """Run (or continue) every part; each finished cycle is kept."""
    work.mkdir(parents=True, exist_ok=True)
    for part in parts:
        run_part(work, part, _config(work, part), RESULTS)
        report(work)


def _full_reference(work: Path) -> dict | None:
    """The full-pool model's test FROC with 95 % scan-bootstrap intervals (1,000 resamples),
    computed once from the work folder's model and kept in the results folder."""
    kept = RESULTS / "full_reference.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    model = work / "full" / "runs" / "random-seed0" / "cycles" / "0" / "model"
    if not model.is_dir():
        return None
    import pandas as pd

    from activecad.active.loop import scan_uid
    from activecad.data.folders import froc_summary, read_luna_folder
    from activecad.data.preprocess import PreprocessCache
    from activecad.models.detector3d import load_bundle
    from activecad.models.detector3d.inference import detect_files

    folder = read_luna_folder(work / "phantom")
    test = sorted(json.loads((work / "full" / "split.json").read_text())["test"])
    paths = {scan_uid(p): p for p in folder.scans}
    detections, _ = detect_files(
        load_bundle(model), [paths[u] for u in test], cache=PreprocessCache(work / "cache")
    )
    detections = pd.DataFrame(detections)
    summary, _ = froc_summary(
        detections, folder.annotations, folder.excluded, test, n_bootstrap=1000
    )
    summary = {"what": "full-pool model on the test split, LUNA16 FROC", **summary}
    kept.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


@app.command()
def report(
    work: Path = typer.Option(..., help="The folder given to 'run'."),
) -> None:
    """Write the report of what has finished into benchmarks/results/active/."""
    from activecad.active.report import write_report

    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        names = ("metrics.jsonl", "selections.csv", "split.json", "loop.yaml")
        keep_results(work, RESULTS, part, names)
    found = {part: part_folder(work, RESULTS, part) for part in PARTS}
    folders = [folder for part, folder in found.items() if part != "full" and folder is not None]
    full_cpm = None
    if found["full"] is not None:
        last = (found["full"] / "metrics.jsonl").read_text().splitlines()[-1]
        full_cpm = json.loads(last).get("cpm")
    if folders:
        summary = write_report(folders, RESULTS, full_cpm=full_cpm)
        steps = INITIAL_STEPS + STEPS_PER_CYCLE * (CYCLES - 1)
        summary["full_data"] = {"cpm": full_cpm, "part": "full", "steps": steps}
        reference = _full_reference(work)
        if reference is not None:
            summary["full_data"]["test_froc"] = reference
        (RESULTS / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
        typer.echo(f"report of {len(folders)} parts in {RESULTS}")


if __name__ == "__main__":
    app()
