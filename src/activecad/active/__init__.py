"""Active learning: the pool, the heuristics, the oracles and the run folder.

Scan-level (Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule
Detection", MICCAI 2020) and candidate-level (Zhou et al., ACFT, Medical Image Analysis
2021) items go through the same pool, heuristics and queries.
"""

from activecad.active import acft as acft  # registers the "acft" heuristic
from activecad.active.config import LoopConfig
from activecad.active.heuristics import (
    HEURISTICS,
    Heuristic,
    Selection,
    get_heuristic,
    register_heuristic,
)
from activecad.active.items import Detections, ItemScores, candidate_key
from activecad.active.loop import Learner, LoopResult, run_loop
from activecad.active.oracles import AnnotationCost, HumanOracle, SimulatedOracle
from activecad.active.pool import LabelRecord, Pool, PoolItem, RecordedLabels
from activecad.active.run import (
    QueryView,
    Run,
    create_run,
    current_query,
    open_run,
    propose_query,
)

__all__ = [
    "HEURISTICS",
    "AnnotationCost",
    "Detections",
    "Heuristic",
    "HumanOracle",
    "ItemScores",
    "LabelRecord",
    "Learner",
    "LoopConfig",
    "LoopResult",
    "Pool",
    "PoolItem",
    "QueryView",
    "RecordedLabels",
    "Run",
    "Selection",
    "SimulatedOracle",
    "candidate_key",
    "create_run",
    "current_query",
    "get_heuristic",
    "open_run",
    "propose_query",
    "register_heuristic",
    "run_loop",
]
