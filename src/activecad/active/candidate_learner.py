"""The FP-reduction classifier as the learner of candidate-level active learning.

With ``items: candidate`` every candidate of a pool scan is an item of the loop, keyed
``<seriesuid>#<n>`` (its n-th row, 0-based, among that scan's rows of the candidates
table). Candidates inside an excluded finding are left out of the pool and of the test set
(the LUNA16 evaluation ignores them too). An answer is the candidate's nodule (one row:
centre and diameter) or nothing (a non-nodule). Each cycle the learner

* ``train``: fits the classifier on the candidates the cycle's learning strategy chooses
  (the loop passes them; see :func:`activecad.active.acft.training_set`), from the previous
  cycle's model or from scratch;
* ``score``: predicts every augmented patch of every unlabelled candidate; ACFT's entropy
  and diversity read these ``m`` probabilities, diversity heuristics the embedding;
* ``evaluate``: the AUC of the candidates of the test scans (mean over the patches) against
  the LUNA16 hit rule, and the same on the candidates the detector scored highest.

Zhou et al., "Active, continual fine tuning of convolutional neural networks for reducing
annotation efforts", Medical Image Analysis 2021, start from a pre-trained model; with no
pre-trained 3D nodule classifier to hand, cycle 0 here trains from scratch on a random
first query (the loop's ``initial_fraction``), and every later cycle follows Alg. 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from activecad.active.items import ItemScores, candidate_key

__all__ = ["CandidateLearner", "candidate_pool"]

logger = logging.getLogger("activecad")


def candidate_pool(data: str | Path, candidates: str | Path | None = None) -> pd.DataFrame:
    """The candidates of a data folder with their item ``key``, ``label`` and ``diameter_mm``.

    ``label`` (1 nodule / 0 non-nodule, LUNA16 hit rule) is the ground truth the simulated
    oracle and the evaluation use; candidates inside excluded findings are dropped.
    """
    from activecad.data.candidates import label_candidates, read_candidates
    from activecad.data.folders import read_luna_folder

    folder = read_luna_folder(data)
    table = read_candidates(candidates or Path(data) / "candidates.csv")
    table = table.reset_index(drop=True)
    order = table.groupby("seriesuid", sort=False).cumcount().to_numpy()
    table["key"] = [
        candidate_key(u, int(n)) for u, n in zip(table["seriesuid"], order, strict=True)
    ]
    table = label_candidates(table, folder.annotations, folder.excluded)
    table = table[table["label"] >= 0].reset_index(drop=True)
    hit = table["nodule_index"].to_numpy()
    diameters = folder.annotations["diameter_mm"].to_numpy(float)
    table["diameter_mm"] = np.where(hit >= 0, diameters[np.maximum(hit, 0)], np.nan)
    return table


class CandidateLearner:
    """Trains, scores and evaluates the FP-reduction classifier for the loop.

    Args:
        data: the LUNA16-style data folder.
        candidates: the candidates CSV (default ``DATA/candidates.csv``).
        fpr: ``{"preset": name, **overrides}`` of the classifier (default preset ``cpu``).
        cache: the preprocessing cache folder.
        device: torch device (default CUDA when available).
    """

    status = None

    def __init__(
        self,
        data: str | Path,
        *,
        candidates: str | Path | None = None,
        fpr: Mapping[str, Any] | None = None,
        cache: str | Path | None = None,
        device: str | None = None,
    ):
        from activecad.data.folders import read_luna_folder
        from activecad.data.preprocess import PreprocessCache
        from activecad.models.fpr import preset_config

        settings = dict(fpr or {})
        self.config = preset_config(str(settings.pop("preset", "cpu")), **settings)
        self.table = candidate_pool(data, candidates)
        self.by_key = pd.Series(np.arange(len(self.table)), index=self.table["key"])
        self.folder = read_luna_folder(data)
        self.cache = PreprocessCache(cache)
        self.device = device or "cpu"
        self._scans: dict[str, Any] = {}

    def keys_of_scans(self, uids: Sequence[str]) -> list[str]:
        """The candidate keys of these scans (the loop's pool items)."""
        return sorted(self.table.loc[self.table["seriesuid"].isin(set(uids)), "key"])

    def answers(self) -> pd.DataFrame:
        """Ground truth as the simulated oracle reads it: one row per nodule candidate, its
        key as ``seriesuid`` and the hit nodule's diameter."""
        nodules = self.table[self.table["label"] == 1]
        return pd.DataFrame(
            {
                "seriesuid": nodules["key"],
                "coordX": nodules["coordX"],
                "coordY": nodules["coordY"],
                "coordZ": nodules["coordZ"],
                "diameter_mm": nodules["diameter_mm"],
            }
        )

    def _set(self, keys: Sequence[str], labels: np.ndarray | None = None) -> Any:
        from activecad.models.fpr import candidate_set, prepare_scans

        rows = self.table.iloc[self.by_key[list(keys)].to_numpy()].copy()
        if labels is not None:
            rows["label"] = labels
        needed = sorted(set(rows["seriesuid"]) - set(self._scans))
        if needed:
            paths = {_uid(p): p for p in self.folder.scans}
            self._scans.update(prepare_scans([paths[u] for u in needed], self.config, self.cache))
        return candidate_set(rows, self._scans)

    def train(
        self,
        labels: Mapping[str, np.ndarray],
        model_dir: Path,
        init_from: Path | None,
        seed: int,
        steps: int,
    ) -> None:
        """Fit on the labelled candidates (an answer with a row is a nodule); write the model.

        A training set without both classes cannot train a classifier: the start model (or
        a fresh one) is written unchanged, with a warning.
        """
        from activecad.models.fpr import build_net, load_fpr, save_fpr, train_fpr

        keys = sorted(labels)
        y = np.array([1 if len(np.asarray(labels[k]).reshape(-1, 4)) else 0 for k in keys])
        config = self.config.model_copy(update={"seed": int(seed) % 2**31})
        if y.min(initial=1) == y.max(initial=0):
            kind = "nodules" if y.max(initial=0) else "non-nodules"
            logger.warning(
                "%d labelled candidates, all %s: the classifier is kept as it was", len(keys), kind
            )
            net = load_fpr(init_from)[0] if init_from is not None else build_net(config)
            save_fpr(model_dir, net, config, [])
            return
        train_fpr(
            self._set(keys, y), None, config, out_dir=model_dir, init_from=init_from,
            steps=steps, device=self.device,
        )  # fmt: skip

    def _predict(self, model_dir: Path, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        from activecad.models.fpr import load_fpr, predict

        net, config = load_fpr(model_dir)
        out = predict(
            net.to(self.device), self._set(keys), config, device=self.device, with_embeddings=True
        )
        return out  # type: ignore[return-value]

    def score(self, model_dir: Path, items: Sequence[str], seed: int) -> list[ItemScores]:
        """Each candidate's patch probabilities and embedding."""
        probs, embeddings = self._predict(model_dir, items)
        return [
            ItemScores(key, kind="candidate", probabilities=probs[i], embedding=embeddings[i])
            for i, key in enumerate(items)
        ]

    def misclassified(self, model_dir: Path, labels: Mapping[str, np.ndarray]) -> list[str]:
        """H of Alg. 1: labelled candidates the model in ``model_dir`` gets wrong."""
        from activecad.active.acft import misclassified_candidates

        keys = sorted(labels)
        if not keys:
            return []
        probs, _ = self._predict(model_dir, keys)
        truth = {k: int(len(np.asarray(labels[k]).reshape(-1, 4)) > 0) for k in keys}
        return misclassified_candidates(truth, dict(zip(keys, probs, strict=True)))

    def evaluate(self, model_dir: Path, test: Sequence[str]) -> dict[str, float]:
        """``{"auc"}`` of the test scans' candidates (mean patch probability, hit rule)."""
        from activecad.metrics import roc_auc_score

        keys = self.keys_of_scans(test)
        if not keys:
            return {}
        probs, _ = self._predict(model_dir, keys)
        truth = self.table.iloc[self.by_key[keys].to_numpy()]["label"].to_numpy()
        if truth.min() == truth.max():
            return {}
        return {"auc": roc_auc_score(truth, probs.mean(axis=1))}


def _uid(path: Path) -> str:
    from activecad.active.loop import scan_uid

    return scan_uid(path)
