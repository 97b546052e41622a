"""The detector as the loop's learner: trains, scores the pool, selects, evaluates (tiny net)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from activecad.active.config import LoopConfig
from activecad.active.detector_learner import DetectorLearner, needs_tta
from activecad.active.loop import run_loop

# 4 mm voxels and 32^3 patches: a phantom scan is a few patches, a step takes well under 1 s.
TINY_DETECTOR = {
    "preset": "cpu",
    "preprocess": {"spacing": (4.0, 4.0, 4.0), "lung_crop": False},
    "backbone_widths": (4, 8, 8, 8),
    "fpn_channels": 8,
    "loss_hidden": 4,
    "patch_size": (32, 32, 32),
    "batch_size": 2,
    "base_anchor_shapes": ((4.0, 4.0, 4.0), (8.0, 8.0, 8.0)),
    "score_thresh": 0.0,
    "sw_roi_size": (32, 32, 32),
}


def _two_cycles(cohort: Path, strategy: str) -> LoopConfig:
    return LoopConfig(
        data=cohort,
        strategies=[strategy],
        seeds=[0],
        initial_fraction=0.25,
        query_size=1,
        cycles=2,
        test_fraction=0.25,
        steps_per_cycle=2,
    )


def _run(cohort: Path, out: Path, cache: Path) -> tuple[list[dict[str, str]], list[dict]]:
    learner = DetectorLearner(cohort, detector=TINY_DETECTOR, cache=cache, device="cpu")
    result = run_loop(_two_cycles(cohort, "learning_loss"), out, learner=learner)
    assert result.finished
    with (out / "selections.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, metrics


def test_two_cycles_train_score_select_evaluate(tiny_cohort: Path, tmp_path: Path) -> None:
    rows, metrics = _run(tiny_cohort, tmp_path / "a", tmp_path / "cache")
    split = json.loads((tmp_path / "a" / "split.json").read_text())
    by_cycle = {c: [r["item"] for r in rows if r["cycle"] == str(c)] for c in (0, 1)}
    # cycle 1 asks for exactly query_size scans, none labelled in cycle 0, all from the pool
    assert len(by_cycle[1]) == 1
    assert not set(by_cycle[1]) & set(by_cycle[0])
    assert set(by_cycle[0] + by_cycle[1]) <= set(split["pool"])
    assert [m["cycle"] for m in metrics] == [0, 1]
    for m in metrics:
        assert 0.0 <= m["cpm"] <= 1.0 and 0.0 <= m["sens_at_4"] <= 1.0
    runs = tmp_path / "a" / "runs" / "learning_loss-seed0" / "cycles"
    assert all((runs / str(c) / "model").is_dir() for c in (0, 1))
    # cycle 1 scored the unlabelled pool: its scores and detections (for the viewer) are kept
    scores = pd.read_csv(runs / "1" / "scores.csv")
    assert set(scores["item"]) == set(split["pool"]) - set(by_cycle[0])
    detections = pd.read_csv(runs / "1" / "detections.csv")
    assert set(detections["seriesuid"]) <= set(scores["item"])
    assert {"coordX", "coordY", "coordZ", "probability", "diameter_mm"} <= set(detections.columns)
    # same seed, same selections (the cache is warm now, so the second run is quicker)
    again, _ = _run(tiny_cohort, tmp_path / "b", tmp_path / "cache")
    assert [r["item"] for r in again] == [r["item"] for r in rows]


def test_the_tta_heuristic_ranks_the_pool_by_its_mirrored_passes(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    assert needs_tta(["random", "tta"]) and not needs_tta(["random", "learning_loss"])
    # One sliding window a scan (not 32^3 ones): eight passes a scan stay quick.
    detector = {**TINY_DETECTOR, "sw_roi_size": (128, 128, 128)}
    learner = DetectorLearner(
        tiny_cohort, detector=detector, cache=tmp_path / "cache", device="cpu", tta=True
    )
    out = tmp_path / "a"
    assert run_loop(_two_cycles(tiny_cohort, "tta"), out, learner=learner).finished
    with (out / "selections.csv").open(newline="") as handle:
        picked = [r for r in csv.DictReader(handle) if r["cycle"] == "1"]
    assert len(picked) == 1 and float(picked[0]["score"]) >= 0
    # Each scored item carries the plain pass and its seven mirrorings, in world mm.
    pool = json.loads((out / "split.json").read_text())["pool"]
    scored = learner.score(next(out.glob("**/cycles/0/model")), pool[:1], seed=0)
    assert len(scored[0].tta) == 8
    assert all(p.centers.shape[1] == 3 for p in scored[0].tta)
