"""Evaluation metrics: arrays in, numbers out (no file formats)."""

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

__all__ = [
    "LUNA16_FP_RATES",
    "LUNA16_MAX_MARKS",
    "FrocBootstrap",
    "FrocMatch",
    "cpm_score",
    "froc_bootstrap",
    "froc_curve",
    "luna16_summary",
    "match_luna16",
    "sensitivity_at_fp_rates",
]
