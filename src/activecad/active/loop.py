"""The active-learning loop of ``activecad al run CONFIG --out RUN_DIR [--resume]``.

Layout of ``RUN_DIR``::

    loop.yaml            the resolved loop configuration
    split.json           the fixed pool / test split (series ids)
    selections.csv       every query of every (strategy, seed) in config order, then cycle and
                         rank; strategy and seed are the run's (the store keeps each cycle's
                         derived seed and cycle 0's random choice)
    metrics.jsonl        one line per (strategy, seed, cycle)
    runs/<strategy>-seed<seed>/   one run folder (store, queries, labels) per (strategy, seed)
        cycles/<r>/model/         the model of cycle r (written by the learner)
        cycles/<r>/metrics.json   cycle r finished (labelled count and test metrics)
        cycles/<r>/scores.csv     the pool scores that chose cycle r's query (scoring strategies)
        cycles/<r>/detections.csv the detections of the scored pool (shown by the annotation
                                  service's viewer beside the query)

Each cycle r is: query (cycle 0 random, later the strategy on the learner's pool scores),
labels (the simulated oracle, all or nothing), training, evaluation. Every step leaves its
result in the store or in a file written atomically, so a killed run continues with
``--resume`` at the first unfinished step; seeds are derived from (seed, r), so the resumed
run makes the same selections.

The model side is a :class:`Learner` (train, score the pool, evaluate on the test split).
Without a learner only ``random`` can select and the metrics hold the labelled counts only.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import yaml

from activecad.active.acft import LEARNING_STRATEGIES
from activecad.active.config import LoopConfig
from activecad.active.items import ItemScores
from activecad.active.oracles import AnnotationCost, SimulatedOracle
from activecad.active.run import (
    SELECTION_COLUMNS,
    Run,
    _write_atomic,
    _write_selections,
    create_run,
    current_query,
    open_run,
    propose_query,
)
from activecad.errors import InputError

__all__ = ["Learner", "LoopResult", "cycle_seed", "run_loop", "scan_uid"]

_SUFFIXES = (".nii.gz", ".mhd", ".mha", ".nii")


class Learner(Protocol):
    """The model side of the loop (detector training, pool scoring, test evaluation)."""

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        """Train for ``steps`` steps on the labelled items; write the model into ``model_dir``.

        ``labels`` maps each labelled item's key to its answer as the store holds it,
        whoever gave it (the simulated oracle, ``al label`` or the annotation service):
        (N, 4) world mm x, y, z and diameter mm; N = 0 is a labelled negative.
        """

    def score(self, model_dir: Path, items: Sequence[str], seed: int) -> list[ItemScores]:
        """Score pool items (series ids) with the model in ``model_dir``."""

    def evaluate(self, model_dir: Path, test: Sequence[str]) -> dict[str, float]:
        """Test metrics of the model, e.g. ``{"cpm": ..., "sens_at_4": ...}``."""


@dataclass(frozen=True)
class LoopResult:
    """What a call of :func:`run_loop` ended with."""

    finished: bool
    waiting: list[str]
    cycles: dict[str, int]


def scan_uid(path: Path) -> str:
    """The series id of a scan file or DICOM folder (its name without the image suffix)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def cycle_seed(seed: int, cycle: int) -> int:
    """The seed of cycle ``cycle`` of a run seeded ``seed`` (same on every machine)."""
    return int(np.random.SeedSequence([seed, cycle]).generate_state(1)[0])


def _sizes(config: LoopConfig, pool_size: int) -> tuple[int, int]:
    initial = max(1, round(pool_size * config.initial_fraction))
    query = config.query_size or max(1, round(pool_size * config.query_fraction))
    return initial, query


def _split(config: LoopConfig, uids: list[str]) -> tuple[list[str], list[str]]:
    from activecad.data.folders import split_by_patient

    split = split_by_patient(uids, val_fraction=0.0, test_fraction=config.test_fraction)
    return sorted(split.train + split.val), sorted(split.test)


def run_loop(
    config: LoopConfig,
    out: str | Path,
    *,
    resume: bool = False,
    learner: Learner | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoopResult:
    """Run (or continue) the loop for every (strategy, seed) of ``config`` in ``out``.

    Returns:
        finished: every (strategy, seed) reached its end; waiting: run folders whose query
        waits for human labels; cycles: finished cycles per run folder.

    Raises:
        InputError: ``out`` holds a run and ``resume`` is False (or the reverse), a strategy
            needs scores but no learner is given, or the data folder is unreadable.
    """
    from activecad.data.folders import read_luna_folder

    out = Path(out)
    say = progress or (lambda _msg: None)
    marker = out / "loop.yaml"
    resolved = config.model_dump(mode="json")
    if marker.exists() and not resume:
        raise InputError(
            "this folder already holds a loop", path=out, fix="add --resume to continue it"
        )
    if resume and not marker.exists():
        raise InputError("no loop to resume here (no loop.yaml)", path=out, fix="drop --resume")
    if learner is None and any(s != "random" for s in config.strategies):
        raise InputError(
            f"strategies {config.strategies} need a detector's pool scores",
            fix="use strategy random, or give the loop a learner",
        )
    folder = read_luna_folder(config.data)
    if resume:
        # Read the saved config through the model, so options added by a later activecad
        # (present now at their defaults, absent from the file) do not block a resume.
        saved = type(config).model_validate(yaml.safe_load(marker.read_text(encoding="utf-8")))
        if saved.model_dump(mode="json") != resolved:
            raise InputError(
                "the config differs from the one this loop was started with",
                path=marker,
                fix="resume with the same config (see loop.yaml)",
            )
        split = json.loads((out / "split.json").read_text(encoding="utf-8"))
        pool_uids, test_uids = split["pool"], split["test"]
    else:
        pool_uids, test_uids = _split(config, [scan_uid(p) for p in folder.scans])
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "split.json", json.dumps({"pool": pool_uids, "test": test_uids}) + "\n")
        _write_atomic(marker, yaml.safe_dump(resolved, sort_keys=True))
    truth = folder.annotations
    pool_items = pool_uids
    if config.items == "candidate":
        keys_of_scans = getattr(learner, "keys_of_scans", None)
        if keys_of_scans is None:
            raise InputError(
                "items: candidate needs a candidate learner (the FP-reduction classifier)",
                fix="run it with 'activecad al run', which builds one",
            )
        # Items are the candidates of the pool scans; the split stays by patient.
        pool_items = keys_of_scans(pool_uids)
        truth = learner.answers()  # type: ignore[union-attr]
    oracle = None
    if config.oracle == "simulated":
        cost = AnnotationCost(**config.annotation_cost.model_dump())
        oracle = SimulatedOracle(truth, cost=cost)
    waiting: list[str] = []
    cycles: dict[str, int] = {}
    for strategy in config.strategies:
        for seed in config.seeds:
            name = f"{strategy}-seed{seed}"
            sub = out / "runs" / name
            if (sub / "run.json").exists():
                run = open_run(sub)
            else:
                run = create_run(
                    sub,
                    pool_items,
                    config={**resolved, "strategy": strategy, "seed": seed},
                    seeds={"seed": seed},
                    project=name,
                )
            with run:
                # cycle 0 is the same random query and training for every strategy of a seed
                first = out / "runs" / f"{config.strategies[0]}-seed{seed}"
                shared = first if strategy != config.strategies[0] else None
                done, wait = _one_run(
                    run, config, strategy, seed, oracle, learner, test_uids, say, shared
                )
            cycles[name] = done
            if wait:
                waiting.append(name)
            _merge_outputs(out, config)
    return LoopResult(finished=not waiting, waiting=waiting, cycles=cycles)


def _one_run(
    run: Run,
    config: LoopConfig,
    strategy: str,
    seed: int,
    oracle: SimulatedOracle | None,
    learner: Learner | None,
    test_uids: list[str],
    say: Callable[[str], None],
    shared: Path | None = None,
) -> tuple[int, bool]:
    """Cycles of one (strategy, seed) until its end; returns (finished cycles, waiting?).

    ``shared`` is the run folder of the seed's first strategy: its finished cycle 0 (same
    random query, same seed, same training from scratch) is copied instead of trained again.
    """
    # a kill between recording a query and rewriting selections.csv leaves it stale
    _write_selections(run)
    pool_size = len(run.pool.items())
    initial, query_size = _sizes(config, pool_size)
    budget = min(config.label_budget or pool_size, pool_size)
    cycle = 0
    while True:
        if config.cycles is not None and cycle >= config.cycles:
            return cycle, False
        cycle_dir = run.folder / "cycles" / str(cycle)
        metrics_path = cycle_dir / "metrics.json"
        if metrics_path.exists():
            cycle += 1
            continue
        tag = f"{strategy} seed {seed} cycle {cycle}"
        query = current_query(run)
        if query is None or query.cycle < cycle:
            labelled = len(run.pool.labelled())
            size = min(initial if cycle == 0 else query_size, budget - labelled)
            if size <= 0:
                return cycle, False
            scores = None
            # an ACFT learning strategy (RFT, AFT, ...) names the heuristic that selects
            selector = LEARNING_STRATEGIES.get(strategy, strategy)
            if selector != "random" and cycle > 0 and learner is not None:
                say(f"{tag}: scoring the pool")
                prev_model = run.folder / "cycles" / str(cycle - 1) / "model"
                scores = learner.score(
                    prev_model, sorted(run.pool.unlabelled()), cycle_seed(seed, cycle)
                )
                _write_atomic(cycle_dir / "scores.csv", scores_csv(scores))
                tables = [s.detections for s in scores if s.detections is not None]
                if tables:
                    # what the annotation service shows the readers beside the query
                    found = pd.concat(tables, ignore_index=True)
                    _write_atomic(cycle_dir / "detections.csv", found.to_csv(index=False))
            say(f"{tag}: selecting {size} items")
            query = propose_query(
                run,
                scores,
                heuristic="random" if cycle == 0 else selector,
                budget=size,
                seed=cycle_seed(seed, cycle),
            )
            if query is None:
                return cycle, False
        if not query.answered:
            if oracle is None:
                say(f"{tag}: waiting for labels (activecad al label {run.folder})")
                return cycle, True
            say(f"{tag}: labelling {len(query.pending)} items")
            run.pool.record_labels(
                oracle.answer(query.pending),
                annotator=oracle.annotator,
                cycle=query.cycle,
                source=oracle.source,
            )
        labels = run.pool.labels()
        metrics: dict[str, object] = {
            "strategy": strategy,
            "seed": seed,
            "cycle": cycle,
            "labelled": len(labels),
            "minutes": run.pool.annotation_minutes(),
        }
        if learner is not None and cycle == 0 and _same_first_cycle(shared, run):
            assert shared is not None
            say(f"{tag}: the same as {shared.name} (same query, seed and training): copied")
            model_dir = cycle_dir / "model"
            if model_dir.exists():  # half-copied before a kill
                shutil.rmtree(model_dir)
            shutil.copytree(shared / "cycles" / "0" / "model", model_dir)
            done = json.loads((shared / "cycles" / "0" / "metrics.json").read_text("utf-8"))
            metrics.update({k: v for k, v in done.items() if k not in metrics})
        elif learner is not None:
            model_dir = cycle_dir / "model"
            init = run.folder / "cycles" / str(cycle - 1) / "model"
            init_from = init if (config.mode == "finetune" and cycle > 0) else None
            if strategy in LEARNING_STRATEGIES and cycle > 0:
                labels, continual = _learning_step(
                    strategy, labels, [r.item for r in query.rows], learner, init
                )
                init_from = init if continual else None
                metrics["trained_on"] = len(labels)
            steps = config.steps_per_cycle
            if cycle == 0 and config.initial_steps is not None:
                steps = config.initial_steps
            say(f"{tag}: training on {len(labels)} items for {steps} steps")
            learner.train(labels, model_dir, init_from, cycle_seed(seed, cycle), steps)
            say(f"{tag}: evaluating on {len(test_uids)} test scans")
            metrics.update(learner.evaluate(model_dir, test_uids))
        _write_atomic(metrics_path, json.dumps(metrics, sort_keys=True) + "\n")
        cycle += 1
        if not run.pool.unlabelled():
            return cycle, False


def _learning_step(
    strategy: str,
    labels: dict[str, np.ndarray],
    queried: Sequence[str],
    learner: Learner,
    previous_model: Path,
) -> tuple[dict[str, np.ndarray], bool]:
    """What a cycle of an ACFT learning strategy trains on, and whether it continues from
    the previous model (Zhou et al., Medical Image Analysis 2021, Table 2 and Alg. 1)."""
    from activecad.active.acft import training_set

    new = set(queried)
    earlier = {k: v for k, v in labels.items() if k not in new}
    wrong: list[str] = []
    if strategy == "ACFT(HQ)":
        wrong = learner.misclassified(previous_model, earlier)  # type: ignore[attr-defined]
    keys, continual = training_set(strategy, sorted(earlier), sorted(new), misclassified=wrong)  # type: ignore[arg-type]
    return {k: labels[k] for k in keys}, continual


def _same_first_cycle(shared: Path | None, run: Run) -> bool:
    """Whether ``shared`` finished a cycle 0 that asked for exactly this run's cycle 0."""
    if shared is None or not (shared / "cycles" / "0" / "metrics.json").is_file():
        return False

    def first_query(folder: Path) -> list[str]:
        with (folder / "selections.csv").open(newline="", encoding="utf-8") as handle:
            return sorted(r["item"] for r in csv.DictReader(handle) if r["cycle"] == "0")

    return first_query(shared) == first_query(run.folder)


SCORE_COLUMNS = ("item", "l_scan", "l_roi", "n_detections", "max_probability")


def scores_csv(scores: Sequence[ItemScores]) -> str:
    """The pool scores of a cycle as CSV text (one row per scored item, by key).

    ``l_roi`` is the default reading (``loss_of_confident``); the report's scatter of
    predicted loss against nodule size (Liu, Cao & Tian, MICCAI 2020, Fig. 4) reads it.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    for s in sorted(scores, key=lambda s: s.item):
        probabilities = s.probabilities
        writer.writerow(
            [
                s.item,
                repr(float(s.l_scan)),
                repr(float(s.l_roi.get("loss_of_confident", float("nan")))),
                len(probabilities),
                repr(float(probabilities.max())) if len(probabilities) else "nan",
            ]
        )
    return buffer.getvalue()


def _merge_outputs(out: Path, config: LoopConfig) -> None:
    """Rewrite ``selections.csv`` and ``metrics.jsonl`` from the run folders (config order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SELECTION_COLUMNS)
    lines = []
    for strategy in config.strategies:
        for seed in config.seeds:
            sub = out / "runs" / f"{strategy}-seed{seed}"
            path = sub / "selections.csv"
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as handle:
                    rows = list(csv.reader(handle))[1:]
                for row in rows:
                    row = dict(zip(SELECTION_COLUMNS, row, strict=True))
                    row["strategy"], row["seed"] = strategy, str(seed)
                    writer.writerow([row[c] for c in SELECTION_COLUMNS])
            cycles = sorted(
                (int(p.parent.name), p) for p in (sub / "cycles").glob("*/metrics.json")
            )
            lines.extend(p.read_text(encoding="utf-8").strip() for _, p in cycles)
    _write_atomic(out / "selections.csv", buffer.getvalue())
    _write_atomic(out / "metrics.jsonl", "".join(f"{line}\n" for line in lines))
