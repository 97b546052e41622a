"""A loop in its own process that stops dead at a chosen stage, for the SIGKILL tests.

    python -m tests.active.killable_loop CONFIG.json OUT [STAGE N MARKER]

Runs :func:`activecad.active.loop.run_loop` with the fake learner of ``test_loop.py``
(resuming when ``OUT`` holds a loop). With ``STAGE N MARKER``, the N-th time the loop enters
``STAGE`` (``train``, ``score``, ``evaluate`` or ``label``: between recording a query and
recording its answers) the process writes ``MARKER`` and sleeps, so the test can SIGKILL it
exactly there.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from activecad.active.config import LoopConfig
from activecad.active.items import ItemScores
from activecad.active.loop import run_loop
from tests.active.test_loop import FakeLearner


class _Stopper:
    def __init__(self, stage: str, n: int, marker: Path):
        self.stage, self.n, self.marker, self.seen = stage, n, marker, 0

    def __call__(self, stage: str) -> None:
        if stage != self.stage:
            return
        self.seen += 1
        if self.seen == self.n:
            self.marker.write_text(stage)
            time.sleep(120)  # killed here


class StoppingLearner(FakeLearner):
    def __init__(self, stop: _Stopper | None):
        super().__init__()
        self.stop = stop or (lambda _stage: None)

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "partial").write_text("half-written model")
        self.stop("train")
        super().train(labels, model_dir, init_from, seed, steps)

    def score(self, model_dir: Path, items: Sequence[str], seed: int) -> list[ItemScores]:
        self.stop("score")
        return super().score(model_dir, items, seed)

    def evaluate(self, model_dir: Path, test: Sequence[str]) -> dict[str, float]:
        self.stop("evaluate")
        return super().evaluate(model_dir, test)


def main(argv: list[str]) -> None:
    config = LoopConfig(**json.loads(Path(argv[0]).read_text()))
    out = Path(argv[1])
    stop = _Stopper(argv[2], int(argv[3]), Path(argv[4])) if len(argv) > 2 else None

    def progress(message: str) -> None:
        if stop is not None and ": labelling " in message:
            stop("label")

    run_loop(
        config,
        out,
        resume=(out / "loop.yaml").exists(),
        learner=StoppingLearner(stop),
        progress=progress,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
