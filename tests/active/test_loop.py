"""The active-learning loop: query sizes, pool exhaustion, determinism and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from activecad.active.config import LoopConfig
from activecad.active.items import ItemScores
from activecad.active.loop import run_loop
from activecad.errors import InputError


def _folder(root: Path, n: int = 20) -> Path:
    """A LUNA16-style folder listing n scans (the loop only lists them; no learner reads
    them) and one nodule in every other scan."""
    (root / "ct").mkdir(parents=True)
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for i in range(n):
        (root / "ct" / f"uid{i:02d}.mhd").write_text("")
        if i % 2 == 0:
            rows.append(f"uid{i:02d},1.0,2.0,3.0,6.0")
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    return root


class FakeLearner:
    """Deterministic stand-in for the detector: the model is a file naming what it saw;
    scores are a CRC of (item, model), so a heuristic ranks the same way on every run."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.trained: list[tuple[int, bool]] = []
        self.steps: list[int] = []

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        if self.fail_at is not None and len(self.trained) == self.fail_at:
            raise KeyboardInterrupt  # a kill during training
        self.trained.append((len(labels), init_from is not None))
        self.steps.append(steps)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.txt").write_text(",".join(sorted(labels)) + f"|{seed}")

    def score(self, model_dir: Path, items: Sequence[str], seed: int) -> list[ItemScores]:
        model = (model_dir / "model.txt").read_text()
        return [ItemScores(k, l_scan=zlib.crc32(f"{k}{model}".encode()) / 2**32) for k in items]

    def evaluate(self, model_dir: Path, test: Sequence[str]) -> dict[str, float]:
        n = len((model_dir / "model.txt").read_text().split("|")[0].split(","))
        return {"cpm": n / 100, "sens_at_4": n / 50}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_query_sizes_unlabelled_only_and_clean_end(tmp_path: Path) -> None:
    # pool 20 (no test split): cycle 0 is 10 % = 2 at random, then 4 per cycle:
    # 2 + 4 + 4 + 4 + 4 = 18, and a last, smaller query of 2 ends the run (no error).
    config = LoopConfig(
        data=_folder(tmp_path / "data"), query_size=4, test_fraction=0.0, strategies=["random"]
    )
    result = run_loop(config, tmp_path / "run")
    assert result.finished and result.cycles == {"random-seed0": 6}
    rows = _rows(tmp_path / "run" / "selections.csv")
    sizes = [sum(r["cycle"] == str(c) for r in rows) for c in range(6)]
    assert sizes == [2, 4, 4, 4, 4, 2]
    items = [r["item"] for r in rows]
    assert len(set(items)) == 20 == len(items)  # never a labelled item again
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["labelled"] for m in metrics] == [2, 6, 10, 14, 18, 20]


def test_label_budget_and_cycles_stop(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    config = LoopConfig(data=data, query_size=4, test_fraction=0.0, label_budget=9)
    run_loop(config, tmp_path / "a")
    metrics = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["labelled"] for m in metrics] == [2, 6, 9]
    config = LoopConfig(data=data, query_size=4, test_fraction=0.0, cycles=2)
    run_loop(config, tmp_path / "b")
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def _config(data: Path) -> LoopConfig:
    return LoopConfig(
        data=data,
        strategies=["learning_loss", "random"],
        seeds=[0, 1],
        query_size=3,
        cycles=3,
        test_fraction=0.2,
    )


def test_learner_finetunes_test_split_fixed_and_runs_repeat(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    learner = FakeLearner()
    run_loop(_config(data), tmp_path / "a", learner=learner)
    # 4 runs x 3 cycles; fine-tuning starts every cycle but the first from the last model
    assert [t[1] for t in learner.trained[:3]] == [False, True, True]
    split = json.loads((tmp_path / "a" / "split.json").read_text())
    assert len(split["test"]) == 4 and not set(split["test"]) & set(split["pool"])
    rows = _rows(tmp_path / "a" / "selections.csv")
    assert not {r["item"] for r in rows} & set(split["test"])
    run_loop(_config(data), tmp_path / "b", learner=FakeLearner())
    for name in ("selections.csv", "metrics.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    metrics = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 12 and {"cpm", "sens_at_4"} <= set(metrics[0])
    # cycle 0 (the same random query and training for every strategy of a seed) is trained
    # once per seed: learning_loss 2 seeds x 3 cycles, random 2 seeds x cycles 1-2
    assert len(learner.trained) == 6 + 4
    by_key = {(m["strategy"], m["seed"], m["cycle"]): m for m in metrics}
    for seed in (0, 1):
        copied, trained = by_key[("random", seed, 0)], by_key[("learning_loss", seed, 0)]
        assert copied["cpm"] == trained["cpm"] and copied["strategy"] == "random"
    runs = tmp_path / "a" / "runs"
    copied_model = (runs / "random-seed0" / "cycles" / "0" / "model" / "model.txt").read_text()
    assert copied_model == (runs / "learning_loss-seed0" / "cycles/0/model/model.txt").read_text()


def test_initial_steps_for_cycle_0_then_steps_per_cycle(tmp_path: Path) -> None:
    config = _config(_folder(tmp_path / "data")).model_copy(
        update={"initial_steps": 7, "steps_per_cycle": 3, "strategies": ["random"], "seeds": [0]}
    )
    learner = FakeLearner()
    run_loop(config, tmp_path / "run", learner=learner)
    assert learner.steps == [7, 3, 3]


@pytest.mark.parametrize("fail_at", [0, 1, 4])
def test_killed_during_training_resumes_identically(tmp_path: Path, fail_at: int) -> None:
    data = _folder(tmp_path / "data")
    run_loop(_config(data), tmp_path / "whole", learner=FakeLearner())
    with pytest.raises(KeyboardInterrupt):
        run_loop(_config(data), tmp_path / "killed", learner=FakeLearner(fail_at=fail_at))
    with pytest.raises(InputError, match="--resume"):
        run_loop(_config(data), tmp_path / "killed", learner=FakeLearner())
    run_loop(_config(data), tmp_path / "killed", resume=True, learner=FakeLearner())
    for name in ("selections.csv", "metrics.jsonl"):
        whole = (tmp_path / "whole" / name).read_bytes()
        assert (tmp_path / "killed" / name).read_bytes() == whole


def test_killed_between_selection_and_labelling(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    run_loop(_config(data), tmp_path / "whole", learner=FakeLearner())
    # a human oracle stops right after proposing: the state a kill between selection and
    # labelling leaves; the resumed simulated loop labels that query once and goes on
    human = _config(data).model_copy(update={"oracle": "human"})
    result = run_loop(human, tmp_path / "cut", learner=FakeLearner())
    assert not result.finished and len(result.waiting) == 4
    (tmp_path / "cut" / "loop.yaml").write_text(
        (tmp_path / "cut" / "loop.yaml").read_text().replace("oracle: human", "oracle: simulated")
    )
    run_loop(_config(data), tmp_path / "cut", resume=True, learner=FakeLearner())
    for name in ("selections.csv", "metrics.jsonl"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_resume_accepts_a_config_saved_before_an_option_existed(tmp_path: Path) -> None:
    # loop.yaml written by an older activecad lacks options added since; at their defaults
    # they change nothing, so the run resumes. A changed value still refuses.
    import yaml

    data = _folder(tmp_path / "data")
    config = _config(data).model_copy(update={"cycles": 1})
    run_loop(config, tmp_path / "run", learner=FakeLearner())
    marker = tmp_path / "run" / "loop.yaml"
    saved = yaml.safe_load(marker.read_text())
    del saved["annotation_cost"], saved["label_budget"]
    marker.write_text(yaml.safe_dump(saved))
    run_loop(config, tmp_path / "run", resume=True, learner=FakeLearner())
    with pytest.raises(InputError, match="differs"):
        run_loop(
            config.model_copy(update={"query_size": 5}),
            tmp_path / "run",
            resume=True,
            learner=FakeLearner(),
        )


class RecordingLearner(FakeLearner):
    """Remembers the answers each training call was given."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[dict[str, np.ndarray]] = []

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        self.answers.append(dict(labels))
        super().train(labels, model_dir, init_from, seed, steps)


def test_learner_trains_on_the_human_answers_not_the_annotation_table(tmp_path: Path) -> None:
    from activecad.active.pool import LabelRecord
    from activecad.active.run import current_query, open_run

    data = _folder(tmp_path / "data")
    config = LoopConfig(
        data=data, oracle="human", query_size=2, cycles=1, test_fraction=0.0, initial_fraction=0.2
    )
    learner = RecordingLearner()
    assert not run_loop(config, tmp_path / "run", learner=learner).finished
    with open_run(tmp_path / "run" / "runs" / "random-seed0") as run:
        asked = [row.item for row in current_query(run).rows]
        # the reader disagrees with annotations.csv: every scan gets one nodule at (9, 9, 9)
        run.pool.record_labels(
            [LabelRecord(uid, np.array([[9.0, 9.0, 9.0, 4.0]])) for uid in asked],
            annotator="reader",
            cycle=0,
        )
    run_loop(config, tmp_path / "run", resume=True, learner=learner)
    (answers,) = learner.answers
    assert sorted(answers) == sorted(asked)
    for findings in answers.values():
        np.testing.assert_array_equal(findings, [[9.0, 9.0, 9.0, 4.0]])


def test_scored_strategy_without_learner_is_an_input_error(tmp_path: Path) -> None:
    config = LoopConfig(data=_folder(tmp_path / "data"), strategies=["learning_loss"])
    with pytest.raises(InputError, match="learner"):
        run_loop(config, tmp_path / "run")


def _killable(*args: object) -> subprocess.Popen[bytes]:
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "tests.active.killable_loop", *map(str, args)]
    return subprocess.Popen(command, cwd=root, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The config (as JSON) of a loop and the folder of its uninterrupted run."""
    root = tmp_path_factory.mktemp("uninterrupted")
    config = root / "config.json"
    config.write_text(_config(_folder(root / "data")).model_dump_json())
    assert _killable(config, root / "whole").wait() == 0
    return config, root / "whole"


@pytest.mark.parametrize(
    ("stage", "n"), [("train", 3), ("score", 2), ("label", 2), ("evaluate", 4)]
)
def test_sigkill_at_any_stage_then_resume_gives_identical_files(
    tmp_path: Path, uninterrupted: tuple[Path, Path], stage: str, n: int
) -> None:
    # A real process, killed with SIGKILL (no cleanup, no exception handler runs) while it
    # trains, scores, waits between recording a query and its answers, or evaluates.
    config, whole = uninterrupted
    marker, killed = tmp_path / "marker", tmp_path / "killed"
    process = _killable(config, killed, stage, n, marker)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, "the loop ended before reaching the stage"
        assert time.monotonic() < deadline, "the stage was never reached"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert _killable(config, killed).wait() == 0
    for name in ("selections.csv", "metrics.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
