"""Evaluation metrics: arrays in, numbers out (no file formats).

Names follow scikit-learn's contract: ``*_score`` is higher-is-better, ``*_curve`` returns
arrays and thresholds; options after ``*`` are keyword-only.
"""

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

__all__ = [
    "LUNA16_FP_RATES",
    "LUNA16_MAX_MARKS",
    "AucComparison",
    "AucInterval",
    "BootstrapComparison",
    "FrocBootstrap",
    "FrocMatch",
    "cpm_score",
    "delong_interval",
    "delong_test",
    "froc_bootstrap",
    "froc_curve",
    "luna16_summary",
    "match_luna16",
    "paired_bootstrap_auc_test",
    "roc_auc_score",
    "roc_curve",
    "sensitivity_at_fp_rates",
    "sensitivity_specificity_score",
    "youden_threshold",
]
