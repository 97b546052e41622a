"""Evaluation metrics: arrays in, numbers out (no file formats).

Names follow scikit-learn's contract: ``*_score`` is higher-is-better, ``*_curve`` returns
arrays and thresholds; options after ``*`` are keyword-only. Bad arguments raise
``ValueError`` quoting what was received.
"""

from activecad.metrics._box_matching import (
    KEY_SLICE_FP_RATES,
    IouConvention,
    box_iou,
    match_boxes,
)
from activecad.metrics._dice import dice_score
from activecad.metrics._froc import (
    LUNA16_FP_RATES,
    LUNA16_MAX_MARKS,
    FrocBootstrap,
    FrocMatch,
    cpm_score,
    froc_bootstrap,
    froc_curve,
    luna16_summary,
    match_luna16,
    sensitivity_at_fp_rates,
)
from activecad.metrics._learning_curve import (
    AnnotationSaved,
    SeedSummary,
    annotation_saved,
    area_under_learning_curve,
    labels_to_reach,
    summarize_over_seeds,
)
from activecad.metrics._retrieval import recall_at_k
from activecad.metrics._roc import (
    AucComparison,
    AucInterval,
    BootstrapComparison,
    delong_interval,
    delong_test,
    paired_bootstrap_auc_test,
    roc_auc_score,
    roc_curve,
    sensitivity_specificity_score,
    youden_threshold,
)
from activecad.metrics._stacking import StackedBoxes, match_stacked_boxes, stack_slice_boxes

__all__ = [
    "KEY_SLICE_FP_RATES",
    "LUNA16_FP_RATES",
    "LUNA16_MAX_MARKS",
    "AnnotationSaved",
    "AucComparison",
    "AucInterval",
    "BootstrapComparison",
    "FrocBootstrap",
    "FrocMatch",
    "IouConvention",
    "SeedSummary",
    "StackedBoxes",
    "annotation_saved",
    "area_under_learning_curve",
    "box_iou",
    "cpm_score",
    "delong_interval",
    "delong_test",
    "dice_score",
    "froc_bootstrap",
    "froc_curve",
    "labels_to_reach",
    "luna16_summary",
    "match_boxes",
    "match_luna16",
    "match_stacked_boxes",
    "paired_bootstrap_auc_test",
    "recall_at_k",
    "roc_auc_score",
    "roc_curve",
    "sensitivity_at_fp_rates",
    "sensitivity_specificity_score",
    "stack_slice_boxes",
    "summarize_over_seeds",
    "youden_threshold",
]
