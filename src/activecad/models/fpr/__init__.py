"""FP-reduction classifier: a 3D encoder-decoder CNN that tells nodules from mimics among
a detector's candidates; its mid-level feature is the nodule embedding used for
similar-nodule search."""

from activecad.models.fpr.config import PRESETS, FprConfig, preset_config
from activecad.models.fpr.network import FprNet
from activecad.models.fpr.train import (
    CandidateSet,
    FprFitTask,
    apply_fpr,
    average_classifiers,
    build_net,
    candidate_set,
    combine_probabilities,
    is_fpr_model,
    load_fpr,
    predict,
    prepare_scans,
    recombine,
    save_fpr,
    train_fpr,
    train_fpr_on_folder,
)

__all__ = [
    "PRESETS",
    "CandidateSet",
    "FprConfig",
    "FprFitTask",
    "FprNet",
    "apply_fpr",
    "average_classifiers",
    "build_net",
    "candidate_set",
    "combine_probabilities",
    "is_fpr_model",
    "load_fpr",
    "predict",
    "prepare_scans",
    "preset_config",
    "recombine",
    "save_fpr",
    "train_fpr",
    "train_fpr_on_folder",
]
