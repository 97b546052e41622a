"""Query heuristics: each scores pool items; ranking lives once, in :class:`Heuristic`.

A heuristic is one class with one :meth:`Heuristic.compute_score` (higher = ask sooner),
registered by name::

    from activecad.active.heuristics import Heuristic, register_heuristic

    @register_heuristic("max_probability")
    class MaxProbability(Heuristic):
        needs = ("probabilities",)

        def compute_score(self, items, *, seed=0):
            return np.array([p.max(initial=0.0) for p in (i.probabilities for i in items)])

The base class puts items in a fixed order (by key) before scoring, ranks by score, breaks
ties by key, puts non-finite scores (NaN, +-inf) after every finite one (with a warning), and
cuts the batch. Batch-mode heuristics (core-set, uncertainty-then-diversity) override
:meth:`Heuristic.select` instead, because their picks depend on earlier picks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from activecad.active.items import Detections, ItemScores
from activecad.errors import InputError
from activecad.registry import Registry

__all__ = [
    "HEURISTICS",
    "Heuristic",
    "Selection",
    "binary_entropy",
    "get_heuristic",
    "k_center_greedy",
    "kmeans_pp",
    "rank_scores",
    "register_heuristic",
    "tta_disagreement",
]

logger = logging.getLogger("activecad")

HEURISTICS: Registry[type[Heuristic]] = Registry("heuristic")


@dataclass(frozen=True)
class Selection:
    """The items a heuristic asks for, best first.

    Attributes:
        items: keys of the chosen items; ``items[0]`` has rank 1.
        scores: (len(items),) the score each was chosen by (NaN where it had none).
        strategy: the heuristic's name.
    """

    items: tuple[str, ...]
    scores: tuple[float, ...]
    strategy: str

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.items) + 1))


class Heuristic:
    """Base of every heuristic.

    Subclasses set ``needs`` (the :class:`ItemScores` fields they read, checked before
    scoring) and implement :meth:`compute_score`. Options are keyword arguments of
    ``__init__``; an unknown option is an error naming the valid ones.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        if options:
            raise InputError(
                f"heuristic {self.name or type(self).__name__!r} takes no options, got "
                f"{', '.join(sorted(options))}",
                fix="remove them from the configuration",
            )

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        """(len(items),) scores, higher = more informative. Items come sorted by key."""
        raise NotImplementedError

    def select(
        self,
        items: Sequence[ItemScores],
        budget: int,
        *,
        labelled: Sequence[ItemScores] = (),
        seed: int = 0,
    ) -> Selection:
        """The ``budget`` items to ask for next (fewer when the pool holds fewer).

        Args:
            items: the unlabelled pool.
            budget: how many items to choose (>= 0).
            labelled: the labelled items (used by diversity heuristics only).
            seed: seed of every random choice.
        """
        pool = self._prepare(items, budget)
        scores = np.asarray(self.compute_score(pool, seed=seed), dtype=float).reshape(-1)
        if len(scores) != len(pool):
            raise ValueError(
                f"{type(self).__name__}.compute_score returned {len(scores)} scores for "
                f"{len(pool)} items"
            )
        order = rank_scores(scores, [i.item for i in pool], self.name)
        chosen = order[:budget]
        return Selection(
            tuple(pool[k].item for k in chosen), tuple(float(scores[k]) for k in chosen), self.name
        )

    def _prepare(self, items: Sequence[ItemScores], budget: int) -> list[ItemScores]:
        if budget < 0:
            raise InputError(f"the budget must be >= 0, got {budget}", fix="pass a budget >= 0")
        pool = sorted(items, key=lambda i: i.item)
        keys = [i.item for i in pool]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise InputError(f"the pool holds item {dup!r} twice", fix="score each item once")
        for field_name in self.needs:
            missing = [i.item for i in pool if not _has(i, field_name)]
            if missing:
                raise InputError(
                    f"heuristic {self.name!r} needs {field_name!r} for every item, but "
                    f"{len(missing)} of {len(pool)} items lack it (e.g. {missing[0]!r})",
                    fix="score the pool with the detector first, or choose another heuristic",
                )
        return pool


def _has(item: ItemScores, field_name: str) -> bool:
    value = getattr(item, field_name)
    # A NaN l_scan is a score, ranked last by rank_scores, not a missing field.
    if field_name == "embedding":
        return value is not None and value.size > 0
    if field_name == "tta":
        return len(value) >= 2
    return True


def rank_scores(scores: np.ndarray, keys: Sequence[str], name: str = "") -> np.ndarray:
    """Indices of ``scores`` from highest to lowest; ties by key; non-finite scores last.

    Args:
        scores: (N,) float.
        keys: (N,) the items' keys, used to break ties (ascending).
        name: the heuristic's name, used in the warning about non-finite scores.
    """
    scores = np.asarray(scores, dtype=float)
    finite = np.isfinite(scores)
    if not finite.all():
        logger.warning(
            "heuristic %s gave %d of %d items a non-finite score (NaN or infinite); they are "
            "ranked after every other item",
            name or "?",
            int((~finite).sum()),
            len(scores),
        )
    key_rank = np.argsort(np.argsort(np.asarray(keys, dtype=object), kind="stable"))
    # lexsort sorts by the last key first: finite before non-finite, then score, then key.
    return np.lexsort((key_rank, -np.where(finite, scores, 0.0), ~finite))


def get_heuristic(name: str, **options: Any) -> Heuristic:
    """The heuristic registered as ``name``, built with ``options``.

    Raises:
        InputError: unknown name (the message lists the valid ones and the nearest) or
            unknown option.
    """
    return HEURISTICS.get(name)(**options)


def register_heuristic(name: str) -> Any:
    """Register a :class:`Heuristic` subclass as ``name`` (and set its ``name``)."""

    def decorator(cls: type[Heuristic]) -> type[Heuristic]:
        cls.name = name
        return HEURISTICS.register(name)(cls)

    return decorator


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """-p ln p - (1 - p) ln(1 - p), elementwise, in nats (0 at p = 0 and p = 1)."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    return np.nan_to_num(h, nan=0.0)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min-max over the pool, to [0, 1]; a constant column becomes 0. NaN stays NaN."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return values
    low, high = finite.min(), finite.max()
    if high == low:
        return np.where(np.isfinite(values), 0.0, values)
    return (values - low) / (high - low)


ROI_READINGS = ("loss_of_confident", "loss_above_tau", "score_above_tau")


def _roi_values(items: Sequence[ItemScores], reading: str, name: str) -> np.ndarray:
    missing = [i.item for i in items if reading not in i.l_roi]
    if missing:
        raise InputError(
            f"heuristic {name!r} needs L_RoI in the reading {reading!r}, but {len(missing)} "
            f"items lack it (e.g. {missing[0]!r})",
            fix="score the pool with a detector that has the loss-prediction head",
        )
    return np.array([float(i.l_roi[reading]) for i in items])


def _check_reading(reading: str) -> str:
    if reading not in ROI_READINGS:
        from activecad.registry import unknown_name_message

        raise InputError(unknown_name_message("L_RoI reading", reading, ROI_READINGS))
    return reading


@register_heuristic("random")
class RandomHeuristic(Heuristic):
    """Uniform random scores from the seed (items in key order, so the pool's order is moot)."""

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).random(len(items))


@register_heuristic("learning_loss")
class LearningLoss(Heuristic):
    """l_scan, the predicted scan-level loss (Liu et al. Eq. 1; Yoo & Kweon, CVPR 2019)."""

    needs = ("l_scan",)

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        return np.array([i.l_scan for i in items], dtype=float)


@register_heuristic("roi")
class RoIUncertainty(Heuristic):
    """L_RoI (Liu et al. Eq. 2) in one reading: ``loss_of_confident`` (sum of predicted RoI
    losses of detections with probability > tau), ``loss_above_tau`` or ``score_above_tau``."""

    def __init__(self, *, reading: str = "loss_of_confident"):
        self.reading = _check_reading(reading)

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        return _roi_values(items, self.reading, self.name)


@register_heuristic("combined")
class Combined(Heuristic):
    """w_scan * norm(l_scan) + w_roi * norm(L_RoI), each min-max normalised over the pool
    (Liu et al.: the scan-level and RoI-level uncertainties together)."""

    needs = ("l_scan",)

    def __init__(
        self, *, w_scan: float = 1.0, w_roi: float = 1.0, reading: str = "loss_of_confident"
    ):
        if w_scan < 0 or w_roi < 0 or w_scan + w_roi == 0:
            raise InputError(
                f"combined weights must be >= 0 and not both 0, got w_scan={w_scan}, w_roi={w_roi}",
                fix="e.g. w_scan: 1.0, w_roi: 1.0",
            )
        self.w_scan, self.w_roi, self.reading = w_scan, w_roi, _check_reading(reading)

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        l_scan = _normalise(np.array([i.l_scan for i in items], dtype=float))
        l_roi = _normalise(_roi_values(items, self.reading, self.name))
        return self.w_scan * l_scan + self.w_roi * l_roi


@register_heuristic("entropy")
class MeanEntropy(Heuristic):
    """Mean binary entropy of the item's detection probabilities (0 without detections)."""

    needs = ("probabilities",)

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        return np.array(
            [binary_entropy(i.probabilities).mean() if i.probabilities.size else 0.0 for i in items]
        )


def tta_disagreement(passes: Sequence[Detections], *, radius_mm: float = 5.0) -> float:
    """How much flipped passes disagree with the plain one (MONAI Label's TTA idea, for boxes).

    Each flipped pass is matched to the plain pass greedily (highest probabilities first;
    a pair is a match when the centres are at most ``radius_mm`` apart). A pass's
    disagreement is the sum of |p - q| over matched pairs plus the probability of every
    unmatched detection of either pass; the score is the mean over flipped passes.

    Args:
        passes: the plain pass first, then each flipped pass (centres in the plain frame).
        radius_mm: the matching distance in mm.
    """
    if len(passes) < 2:
        raise ValueError("tta_disagreement needs the plain pass and at least one flipped pass")
    plain = passes[0]
    totals = []
    for flipped in passes[1:]:
        used_plain = np.zeros(len(plain.probabilities), bool)
        total = 0.0
        for j in np.argsort(-flipped.probabilities, kind="stable"):
            q = flipped.probabilities[j]
            best = -1
            if len(plain.probabilities):
                dist = np.linalg.norm(plain.centers - flipped.centers[j], axis=1)
                candidates = np.flatnonzero((dist <= radius_mm) & ~used_plain)
                if candidates.size:
                    best = int(candidates[np.argmax(plain.probabilities[candidates])])
            if best >= 0:
                used_plain[best] = True
                total += abs(plain.probabilities[best] - q)
            else:
                total += q
        total += float(plain.probabilities[~used_plain].sum())
        totals.append(total)
    return float(np.mean(totals))


@register_heuristic("tta")
class TTADisagreement(Heuristic):
    """:func:`tta_disagreement` of the item's plain and flipped passes."""

    needs = ("tta",)

    def __init__(self, *, radius_mm: float = 5.0):
        if radius_mm <= 0:
            raise InputError(f"radius_mm must be > 0, got {radius_mm}", fix="e.g. radius_mm: 5")
        self.radius_mm = radius_mm

    def compute_score(self, items: Sequence[ItemScores], *, seed: int = 0) -> np.ndarray:
        return np.array([tta_disagreement(i.tta, radius_mm=self.radius_mm) for i in items])


def k_center_greedy(
    embeddings: np.ndarray, budget: int, *, centers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sener & Savarese's k-center greedy (ICLR 2018): repeatedly take the farthest point.

    Args:
        embeddings: (N, D) the candidates.
        budget: how many to pick.
        centers: (M, D) points already covered (the labelled set); when empty, the first
            pick is the candidate farthest from the candidates' mean.

    Returns:
        (indices, distances): the picks in order, and each pick's distance to the nearest
        center at the time it was picked (Euclidean). Ties go to the lower index.
    """
    x = np.asarray(embeddings, dtype=float)
    budget = min(budget, len(x))
    if budget <= 0:
        return np.zeros(0, int), np.zeros(0)
    if centers is not None and len(centers):
        c = np.asarray(centers, dtype=float)
        nearest = np.min(np.linalg.norm(x[:, None, :] - c[None, :, :], axis=2), axis=1)
        first = None
    else:
        # The mean only chooses the first pick; it is not a center afterwards.
        first = int(np.argmax(np.linalg.norm(x - x.mean(axis=0), axis=1)))
        nearest = np.full(len(x), np.inf)
        nearest[first] = float(np.linalg.norm(x[first] - x.mean(axis=0)))
    picks: list[int] = []
    distances: list[float] = []
    for _ in range(budget):
        k = int(np.argmax(nearest)) if first is None or picks else first
        picks.append(k)
        distances.append(float(nearest[k]))
        nearest = np.minimum(nearest, np.linalg.norm(x - x[k], axis=1))
        nearest[picks] = -np.inf
    return np.array(picks), np.array(distances)


def kmeans_pp(embeddings: np.ndarray, budget: int, *, seed: int = 0) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): indices of ``budget`` picks.

    Each pick is drawn with probability proportional to the squared distance to the
    nearest earlier pick (the first uniformly), with ``np.random.default_rng(seed)``.
    """
    x = np.asarray(embeddings, dtype=float)
    budget = min(budget, len(x))
    rng = np.random.default_rng(seed)
    if budget <= 0:
        return np.zeros(0, int)
    picks = [int(rng.integers(len(x)))]
    d2 = np.sum((x - x[picks[0]]) ** 2, axis=1)
    while len(picks) < budget:
        weights = d2.copy()
        weights[picks] = 0.0
        if weights.sum() <= 0:  # the rest coincide with picks: take them in order
            rest = [k for k in range(len(x)) if k not in picks]
            picks.extend(rest[: budget - len(picks)])
            break
        k = int(rng.choice(len(x), p=weights / weights.sum()))
        picks.append(k)
        d2 = np.minimum(d2, np.sum((x - x[k]) ** 2, axis=1))
    return np.array(picks)


def _embeddings(items: Sequence[ItemScores], name: str) -> np.ndarray:
    widths = {i.embedding.size for i in items if i.embedding is not None}
    if len(widths) > 1:
        raise InputError(
            f"heuristic {name!r}: embeddings of different lengths {sorted(widths)}",
            fix="score every item with the same detector",
        )
    return np.stack([np.asarray(i.embedding) for i in items]) if items else np.zeros((0, 0))


@register_heuristic("coreset")
class CoreSet(Heuristic):
    """Core-set by k-center greedy on embeddings (Sener & Savarese, ICLR 2018); the labelled
    items are the initial centers. Score: distance to the nearest center when picked."""

    needs = ("embedding",)

    def select(
        self,
        items: Sequence[ItemScores],
        budget: int,
        *,
        labelled: Sequence[ItemScores] = (),
        seed: int = 0,
    ) -> Selection:
        pool = self._prepare(items, budget)
        if not pool:
            return Selection((), (), self.name)
        x = _embeddings(pool, self.name)
        known = [i for i in labelled if i.embedding is not None and i.embedding.size]
        centers = _embeddings(known, self.name) if known else None
        picks, dist = k_center_greedy(x, budget, centers=centers)
        return Selection(tuple(pool[k].item for k in picks), tuple(map(float, dist)), self.name)


@register_heuristic("uncertainty_then_diversity")
class UncertaintyThenDiversity(Heuristic):
    """Top ``omega`` x budget items by an uncertainty heuristic, then ``budget`` diverse ones
    among them by k-center greedy or k-means++ on embeddings (the two-step selection of Yang
    et al., "Plug and Play Active Learning for Object Detection", CVPR 2024). The score is
    the item's uncertainty."""

    needs = ("embedding",)

    def __init__(
        self,
        *,
        uncertainty: str = "combined",
        omega: float = 3.0,
        diversity: str = "k_center",
        uncertainty_options: Mapping[str, Any] | None = None,
    ):
        if omega < 1:
            raise InputError(f"omega must be >= 1, got {omega}", fix="e.g. omega: 3")
        if diversity not in ("k_center", "kmeans++"):
            from activecad.registry import unknown_name_message

            raise InputError(unknown_name_message("diversity", diversity, ("k_center", "kmeans++")))
        if uncertainty == self.name:
            raise InputError(f"uncertainty cannot be {self.name!r}", fix="e.g. combined")
        self.uncertainty = get_heuristic(uncertainty, **dict(uncertainty_options or {}))
        self.omega, self.diversity = omega, diversity

    def select(
        self,
        items: Sequence[ItemScores],
        budget: int,
        *,
        labelled: Sequence[ItemScores] = (),
        seed: int = 0,
    ) -> Selection:
        pool = self._prepare(items, budget)
        shortlist = self.uncertainty.select(
            pool, math.ceil(self.omega * budget), labelled=labelled, seed=seed
        )
        by_key = {i.item: i for i in pool}
        chosen = [by_key[k] for k in shortlist.items]
        x = _embeddings(chosen, self.name)
        if self.diversity == "k_center":
            known = [i for i in labelled if i.embedding is not None and i.embedding.size]
            centers = _embeddings(known, self.name) if known else None
            picks, _ = k_center_greedy(x, budget, centers=centers)
        else:
            picks = kmeans_pp(x, budget, seed=seed)
        return Selection(
            tuple(shortlist.items[k] for k in picks),
            tuple(shortlist.scores[k] for k in picks),
            self.name,
        )
