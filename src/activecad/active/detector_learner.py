"""The 3D nodule detector as the learner of ``activecad al run``.

Each cycle of the loop (:mod:`activecad.active.loop`) asks the learner to

* ``train``: fine-tune the previous cycle's model (``mode: finetune``, Liu, Cao & Tian,
  "Deep Active Learning for Effective Pulmonary Nodule Detection", MICCAI 2020) or train
  from scratch (``mode: retrain``, and always in cycle 0) for the cycle's steps on
  the labelled scans. A scan whose simulated or human answer is "no nodule" trains as a scan
  without nodules (all its patches are background); its excluded findings are ignored.
* ``score``: run the detector over the unlabelled pool (through the preprocessing cache) and
  hand the heuristics l_scan, L_RoI, detection probabilities and the embedding.
* ``evaluate``: detect on the fixed test split and report the LUNA16 CPM and the
  sensitivity at 4 false positives per scan, with the excluded findings counting neither
  as hits nor as false positives.

Training reads the nodules of each labelled scan from the answers recorded in the run's
store, whoever gave them: the simulated oracle (the data folder's ``annotations.csv`` rows;
a scan without rows is the negative answer), a reader through ``activecad al label``, or
the annotation service. Test evaluation uses ``annotations.csv``, the reference standard.
The folder's ``excluded.csv`` (findings that count neither way) applies in both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from activecad.active.items import ItemScores, item_scores_from_pool
from activecad.training.engine import Callback, FitState

__all__ = ["DetectorLearner", "answers_table"]


def needs_tta(strategies: Sequence[str]) -> bool:
    """Whether any of a loop's strategies ranks items by their test-time-augmentation
    passes (the ``tta`` heuristic), so the pool must be scored with them."""
    from activecad.active.acft import LEARNING_STRATEGIES
    from activecad.active.heuristics import HEURISTICS

    names = [LEARNING_STRATEGIES.get(s, s) for s in strategies]
    return any("tta" in HEURISTICS.get(n).needs for n in names if n in HEURISTICS)


class DetectorLearner:
    """Trains, scores and evaluates the 3D detector for the loop (see the module docs).

    Args:
        data: the LUNA16-style data folder of the loop (``ct/``, ``annotations.csv``).
        detector: ``{"preset": name, **overrides}`` of the detector configuration (see
            :func:`activecad.models.detector3d.preset_config`); default preset ``cpu``.
        cache: the preprocessing cache folder (default: the user's cache,
            ``$ACTIVECAD_CACHE`` overrides it).
        device: torch device (default CUDA when available).
        tta: score the pool with mirrored test-time augmentation (``mirror_tta``: eight
            passes, fused), so each item carries its passes for the ``tta`` heuristic;
            scoring takes eight times as long.

    Attributes:
        status: called with a short line (training step and loss) every few steps, e.g. a
            terminal status line; None says nothing.
    """

    status: Callable[[str], None] | None = None

    def __init__(
        self,
        data: str | Path,
        *,
        detector: Mapping[str, Any] | None = None,
        cache: str | Path | None = None,
        device: str | None = None,
        tta: bool = False,
    ):
        from activecad.data.folders import read_luna_folder
        from activecad.data.preprocess import PreprocessCache
        from activecad.models.detector3d import preset_config

        settings = dict(detector or {})
        preset = str(settings.pop("preset", "cpu"))
        self.config = preset_config(preset, **settings)
        self.folder = read_luna_folder(data)
        self.cache = PreprocessCache(cache)
        self.device = device
        self.tta = tta
        self._paths = {_uid(p): p for p in self.folder.scans}

    def _prepared(self, uid: str) -> Any:
        patch = self.config.patch_size
        return self.cache.load(
            self._paths[uid], self.config.preprocess, min_shape_zyx=(patch[2], patch[1], patch[0])
        )

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        """Train ``steps`` steps (one epoch) on the labelled scans; write the model bundle.

        Args:
            labels: series id -> its recorded nodules, (N, 4) world mm x, y, z and
                diameter mm (N = 0: the scan was answered "no nodule").
            seed: seeds the initial weights (from scratch), patch sampling, augmentation.
        """
        from activecad.data.folders import labelled as attach
        from activecad.models.detector3d import NoduleDetector, fit_detector, save_bundle

        config = self.config.model_copy(update={"seed": int(seed) % 2**31})
        answers = answers_table(labels)
        items = [attach(self._prepared(u), answers, self.folder.excluded) for u in sorted(labels)]
        result = fit_detector(
            config,
            items,
            init_from=init_from,
            epochs=1,
            steps_per_epoch=steps,
            callbacks=[_StatusCallback(self.status, steps)] if self.status else (),
            device=self.device,
        )
        detector = NoduleDetector(self.config)
        detector.network.load_state_dict(result.model.state_dict())
        save_bundle(model_dir, detector)

    def score(self, model_dir: Path, items: Sequence[str], seed: int) -> list[ItemScores]:
        """Score pool items (series ids) with the model in ``model_dir`` (one record each)."""
        from activecad.models.detector3d import load_bundle
        from activecad.models.detector3d.scoring import score_pool

        detector = load_bundle(model_dir)
        if self.tta:
            detector.config = detector.config.model_copy(update={"mirror_tta": True})
        paths = [self._paths[u] for u in items]
        return [
            item_scores_from_pool(s)
            for s in score_pool(detector, paths, cache=self.cache, progress=False)
        ]

    def evaluate(self, model_dir: Path, test: Sequence[str]) -> dict[str, float]:
        """``{"cpm", "sens_at_4"}`` of the model on the test series (LUNA16 FROC)."""
        from activecad.models.detector3d import load_bundle
        from activecad.models.detector3d.train import validate

        if not test:
            return {}
        detector = load_bundle(model_dir)
        scans = [self._prepared(u) for u in test]
        metrics = validate(detector, scans, self.folder.annotations, self.folder.excluded)
        return {"cpm": metrics["cpm"], "sens_at_4": metrics["sens@4"]}


class _StatusCallback(Callback):
    """Reports the training step and the mean loss of the last steps every 10 steps."""

    def __init__(self, say: Callable[[str], None], steps: int):
        self.say, self.steps = say, steps
        self.losses: list[float] = []

    def on_step_end(self, state: FitState, losses: dict[str, float]) -> None:
        self.losses.append(float(sum(losses.values())))
        if len(self.losses) % 10 == 0 or len(self.losses) == self.steps:
            recent = self.losses[-10:]
            self.say(
                f"training step {len(self.losses)}/{self.steps}, "
                f"loss {sum(recent) / len(recent):.3f}"
            )


def answers_table(labels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The recorded answers as a LUNA16 annotations table (one row per nodule)."""
    rows = [
        (uid, *map(float, finding))
        for uid, findings in sorted(labels.items())
        for finding in np.asarray(findings, dtype=float).reshape(-1, 4)
    ]
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


def _uid(path: Path) -> str:
    from activecad.active.loop import scan_uid

    return scan_uid(path)
