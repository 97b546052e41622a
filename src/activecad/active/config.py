"""Typed configuration of ``activecad al run`` (one YAML file, unknown keys refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from activecad.config import StrictConfig

__all__ = ["CostConfig", "LoopConfig"]


class CostConfig(StrictConfig):
    """Simulated annotation minutes of a scan: ``base + per_nodule * n + per_10mm * sum(d) / 10``.

    Placeholders (no paper gives per-scan reading times for this task): set them from your
    own readers' times. See :class:`activecad.active.oracles.AnnotationCost`.
    """

    base_minutes: float = Field(3.0, ge=0)
    per_nodule_minutes: float = Field(1.0, ge=0)
    per_10mm_minutes: float = Field(0.5, ge=0)


class LoopConfig(StrictConfig):
    """The active-learning loop of one run folder.

    Attributes:
        data: LUNA16-style data folder (``ct/``, ``annotations.csv``).
        strategies: heuristic names (see ``activecad.active.HEURISTICS``); each is run for
            every seed in its own store project.
        seeds: run seeds; the seed of cycle r is derived from (seed, r).
        initial_fraction: share of the pool labelled at random in cycle 0.
        query_fraction: share of the pool asked for per later cycle (``query_size`` wins).
        query_size: items per later cycle; None: ``query_fraction`` of the pool.
        cycles: most cycles (cycle 0 included); None: until the label budget or the pool
            runs out.
        label_budget: most labelled items; None: the whole pool.
        test_fraction: share of the patients held out as the fixed test split.
        mode: ``finetune`` starts cycle r from cycle r-1's model (Liu, Cao & Tian, MICCAI
            2020); ``retrain`` starts from scratch each cycle.
        steps_per_cycle: training steps per cycle.
        initial_steps: training steps of cycle 0 (from scratch); None: ``steps_per_cycle``.
            Cycle 0 is the same for every strategy of a seed (a random query, training from
            scratch), so it is trained once per seed and copied to the other strategies.
        oracle: ``simulated`` answers from ``annotations.csv``; ``human`` stops after each
            query until ``activecad al label`` has recorded the answers.
        annotation_cost: minutes the simulated oracle charges per scan, so learning curves
            can be drawn against annotation time as well as against counts.
        detector: the 3D detector of the loop's learner: ``{preset: name, **overrides}``
            (see ``activecad.models.detector3d.preset_config``); None: preset ``cpu`` when a
            strategy needs scores, otherwise no detector (selection only).
        items: ``scan`` (scan-level active learning, the detector learns) or ``candidate``
            (candidate-level: every candidate of a pool scan is an item, the FP-reduction
            classifier learns; Zhou et al., "Active, continual fine tuning of convolutional
            neural networks for reducing annotation efforts", Medical Image Analysis 2021).
            With candidates a strategy may also be one of that paper's learning strategies
            (``RFT``, ``AFT``, ``ACFT(Q)``, ``ACFT(LQ)``, ``ACFT(HQ)``), which fix both the
            selection and what each step trains on.
        candidates: the candidates CSV (``activecad detect`` output or a LUNA16
            ``candidates.csv``); default ``DATA/candidates.csv``. Candidates only.
        fpr: the FP-reduction classifier: ``{preset: name, **overrides}`` (see
            ``activecad.models.fpr.preset_config``). Candidates only.
    """

    data: Path
    strategies: list[str] = Field(default_factory=lambda: ["random"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    initial_fraction: float = Field(0.1, gt=0, le=1)
    query_fraction: float = Field(0.1, gt=0, le=1)
    query_size: int | None = Field(None, ge=1)
    cycles: int | None = Field(None, ge=1)
    label_budget: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    mode: Literal["finetune", "retrain"] = "finetune"
    steps_per_cycle: int = Field(100, ge=1)
    initial_steps: int | None = Field(None, ge=1)
    oracle: Literal["simulated", "human"] = "simulated"
    annotation_cost: CostConfig = Field(default_factory=CostConfig)
    detector: dict[str, Any] | None = None
    items: Literal["scan", "candidate"] = "scan"
    candidates: Path | None = None
    fpr: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _known_strategies(self) -> LoopConfig:
        from activecad.active.acft import LEARNING_STRATEGIES
        from activecad.active.heuristics import HEURISTICS

        known = set(HEURISTICS) | (set(LEARNING_STRATEGIES) if self.items == "candidate" else set())
        unknown = [s for s in self.strategies if s not in known]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {sorted(known)}")
        if self.items == "scan" and (self.candidates is not None or self.fpr is not None):
            raise ValueError("candidates and fpr apply to items: candidate")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("a strategy is listed twice")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("a seed is listed twice")
        return self
