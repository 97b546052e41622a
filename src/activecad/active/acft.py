"""Candidate selection of active, continual fine-tuning (ACFT).

Zhou, Shin, Gurudu, Gotway, Liang, "Active, continual fine tuning of convolutional neural
networks for reducing annotation efforts", Medical Image Analysis 2021 (Alg. 1, Eq. 1-4).

A candidate is seen through m augmented patches; the current model predicts each patch,
giving an (m, K) matrix of class probabilities (for a nodule classifier, K = 2 from the
patch's nodule probability p: ``(1 - p, p)``). From it:

* **Majority selection** (Eq. 3): the candidate's dominant class is the argmax of the mean
  prediction; the patches are sorted by their probability of that class and only the top
  ``ceil(alpha * m)`` are kept (alpha = 1/4), so that augmented patches that lost the object
  (noisy labels) do not dominate the score.
* **The score** (Eq. 1-2) of the kept patches is the sum of an alpha*m x alpha*m matrix:
  ``lambda1`` times each patch's entropy on the diagonal, and ``lambda2`` times the diversity
  ``sum_k (p_j^k - p_l^k) log(p_j^k / p_l^k)`` of every pair (j, l) off it (both orders),
  with every probability offset by 2.2e-16 before the logarithm, as the authors' code does.
  On the paper's Table 1 this ranks pattern A (every patch near 0.5) first by entropy, and
  majority selection makes the diversity of patterns A, C, D and E zero.
* **Randomised selection** (Eq. 4): the candidates are sorted by score, the top ``omega * b``
  form the pool, their scores are rescaled to ``(a - a_[omega b]) / (a_1 - a_[omega b])`` and
  normalised to sampling probabilities, and b candidates are drawn from the pool without
  replacement (omega = 5), balancing exploitation with exploration.

The learning strategies of the paper's Table 2 (which labelled candidates each step trains
on, and from which weights) are :func:`training_set`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from activecad.active.heuristics import Heuristic, Selection, register_heuristic
from activecad.active.items import ItemScores
from activecad.errors import InputError

__all__ = [
    "EPSILON",
    "ACFTHeuristic",
    "acft_score",
    "class_matrix",
    "majority_patches",
    "misclassified_candidates",
    "randomised_selection",
    "training_set",
]

# The offset of the authors' code (MATLAB's eps is 2.2204e-16).
EPSILON = 2.2e-16


def class_matrix(probabilities: np.ndarray) -> np.ndarray:
    """(m, K) class probabilities of a candidate's m patches; (m,) nodule probabilities
    p become ``(1 - p, p)``."""
    p = np.asarray(probabilities, dtype=float)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InputError(
            f"a candidate needs (m,) or (m, K) patch probabilities, got shape {p.shape}",
            fix="give each candidate the predictions of its augmented patches",
        )
    return p


def majority_patches(probabilities: np.ndarray, alpha: float = 0.25) -> np.ndarray:
    """The top ``ceil(alpha * m)`` patches by their probability of the dominant class (Eq. 3).

    Ties keep the patches' order (a stable sort), so the result is deterministic.
    """
    if not 0 < alpha <= 1:
        raise InputError(f"alpha must be in (0, 1], got {alpha}", fix="use e.g. 0.25")
    p = class_matrix(probabilities)
    dominant = int(np.argmax(p.mean(axis=0)))
    keep = max(1, math.ceil(alpha * len(p)))
    order = np.argsort(-p[:, dominant], kind="stable")
    return p[order[:keep]]


def acft_score(
    probabilities: np.ndarray,
    *,
    alpha: float | None = 0.25,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
) -> float:
    """Eq. 2 of one candidate: the sum of its score matrix over the majority patches.

    Args:
        probabilities: (m,) nodule probabilities or (m, K) class probabilities of its patches.
        alpha: majority-selection ratio; None uses every patch (no majority selection).
        lambda1: weight of entropy (the diagonal).
        lambda2: weight of diversity (the off-diagonal pairs).
    """
    p = majority_patches(probabilities, alpha) if alpha is not None else class_matrix(probabilities)
    q = p + EPSILON
    entropy = float(-(q * np.log(q)).sum())
    # (p_j - p_l) log(p_j / p_l) for every ordered pair, summed over classes; zero on the
    # diagonal, so the whole matrix's sum is the sum over j != l.
    difference = q[:, None, :] - q[None, :, :]
    ratio = np.log(q[:, None, :]) - np.log(q[None, :, :])
    diversity = float((difference * ratio).sum())
    return lambda1 * entropy + lambda2 * diversity


def randomised_selection(
    scores: np.ndarray, budget: int, *, omega: float = 5.0, seed: int = 0
) -> np.ndarray:
    """Indices of ``budget`` candidates drawn by Eq. 4 (best first by score).

    The pool is the top ``ceil(omega * budget)`` scores (ties broken by index); each gets
    ``(a - a_last) / (a_first - a_last)`` normalised to sum to 1, and ``budget`` are drawn
    without replacement. The last of the pool has probability 0, so when the pool has too
    few positive probabilities (or all scores are equal) the rest are filled in pool order.
    """
    a = np.asarray(scores, dtype=float)
    if budget < 0 or omega < 1:
        raise InputError(
            f"need budget >= 0 and omega >= 1, got {budget} and {omega}", fix="use omega = 5"
        )
    a = np.where(np.isfinite(a), a, -np.inf)
    order = np.lexsort((np.arange(len(a)), -a))
    pool = order[: min(len(a), math.ceil(omega * budget))]
    budget = min(budget, len(pool))
    if budget == 0:
        return np.zeros(0, dtype=int)
    top, last = a[pool[0]], a[pool[-1]]
    weights = np.zeros(len(pool))
    if np.isfinite(top) and np.isfinite(last) and top > last:
        weights = (a[pool] - last) / (top - last)
    drawn: list[int] = []
    positive = int((weights > 0).sum())
    if positive:
        rng = np.random.default_rng(seed)
        take = min(budget, positive)
        drawn = list(rng.choice(len(pool), size=take, replace=False, p=weights / weights.sum()))
    rest = [k for k in range(len(pool)) if k not in set(drawn)]
    picks = drawn + rest[: budget - len(drawn)]
    return pool[np.array(sorted(picks))]


@register_heuristic("acft")
class ACFTHeuristic(Heuristic):
    """ACFT's selection (Zhou et al., Medical Image Analysis 2021): entropy and diversity of a
    candidate's patch predictions under majority selection, then randomised selection.

    Options: ``alpha`` (majority ratio, default 1/4; None: all patches), ``lambda1`` and
    ``lambda2`` (entropy and diversity weights, default 1 and 1; set one to 0 for the
    paper's entropy-only or diversity-only criteria), ``omega`` (random extension, default
    5; None: the top ``budget`` by score, no randomness).
    """

    needs = ("probabilities",)

    def __init__(
        self,
        *,
        alpha: float | None = 0.25,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        omega: float | None = 5.0,
    ):
        self.alpha, self.lambda1, self.lambda2, self.omega = alpha, lambda1, lambda2, omega

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        """Eq. 2 of each candidate from its patches' nodule probabilities."""
        return np.array(
            [
                acft_score(i.probabilities, alpha=self.alpha, lambda1=self.lambda1,
                           lambda2=self.lambda2)
                for i in items
            ]
        )  # fmt: skip

    def select(
        self,
        items: Sequence[ItemScores],
        budget: int,
        *,
        labelled: Sequence[ItemScores] = (),
        seed: int = 0,
    ) -> Selection:
        if self.omega is None:
            return super().select(items, budget, labelled=labelled, seed=seed)
        pool = self._prepare(items, budget)
        scores = self.compute_score(pool, seed=seed)
        picks = randomised_selection(scores, budget, omega=self.omega, seed=seed)
        picks = sorted(picks, key=lambda k: (-scores[k], pool[k].item))
        return Selection(
            tuple(pool[k].item for k in picks), tuple(float(scores[k]) for k in picks), self.name
        )


Strategy = Literal["RFT", "AFT", "ACFT(Q)", "ACFT(LQ)", "ACFT(HQ)"]

LEARNING_STRATEGIES: dict[str, str] = {
    "RFT": "random",
    "AFT": "acft",
    "ACFT(Q)": "acft",
    "ACFT(LQ)": "acft",
    "ACFT(HQ)": "acft",
}
"""Each learning strategy of Zhou et al. (Table 2) and the heuristic that selects its queries."""


def training_set(
    strategy: Strategy,
    labelled: Sequence[str],
    queried: Sequence[str],
    *,
    misclassified: Sequence[str] = (),
) -> tuple[list[str], bool]:
    """Which candidates a step trains on, and whether it continues from the last model.

    The learning strategies of Zhou et al. (Medical Image Analysis 2021, Table 2), with L the
    candidates labelled before this step, Q the newly queried ones and H the members of L the
    current model misclassifies (Alg. 1, line 13):

    * ``RFT``: random selection, fine-tuned from the last model on L and Q;
    * ``AFT``: active selection, trained from the pre-trained model on L and Q;
    * ``ACFT(Q)``: continual fine-tuning from the last model on Q only;
    * ``ACFT(LQ)``: continual fine-tuning on L and Q;
    * ``ACFT(HQ)``: continual fine-tuning on H and Q (the paper's choice: it keeps the
      model from forgetting what it got wrong at a fraction of L's cost).

    Returns:
        (sorted candidate keys, True when the step starts from the last model).
    """
    known = set(labelled)
    wrong = set(misclassified)
    if not wrong <= known:
        raise InputError(
            "misclassified candidates must be labelled ones",
            fix="pass the labelled candidates the current model gets wrong",
        )
    plans: dict[str, tuple[set[str], bool]] = {
        "RFT": (known | set(queried), True),
        "AFT": (known | set(queried), False),
        "ACFT(Q)": (set(queried), True),
        "ACFT(LQ)": (known | set(queried), True),
        "ACFT(HQ)": (wrong | set(queried), True),
    }
    if strategy not in plans:
        raise InputError(
            f"unknown learning strategy {strategy!r}", fix=f"use one of {', '.join(plans)}"
        )
    chosen, continual = plans[strategy]
    return sorted(chosen), continual


def misclassified_candidates(labels: dict[str, int], probabilities: dict[str, Any]) -> list[str]:
    """H of Alg. 1: labelled candidates whose mean patch prediction (threshold 0.5) differs
    from their label."""
    wrong = [
        key
        for key, label in labels.items()
        if int(float(np.mean(np.asarray(probabilities[key], dtype=float))) >= 0.5) != int(label)
    ]
    return sorted(wrong)
