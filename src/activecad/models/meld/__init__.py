"""MELD: the 2.5D multi-expert universal lesion detector (Yan et al. 2020).

A Faster R-CNN on 9-slice samples with 3D context fusion, one RPN and box regressor per
dataset, four organ classification heads fused by an organ-gating head (Eq. 1), and a
lesion embedding for missing-annotation matching. See :mod:`.network` for the model and
:mod:`.train` for training, inference and model folders.
"""

from activecad.models.meld.config import PRESETS, MeldConfig, MeldPreprocessing, preset_config
from activecad.models.meld.network import HEADS, MeldBatch, MeldNet, SliceDetections, make_batch
from activecad.models.meld.train import (
    Augment,
    MeldFitTask,
    SampleSource,
    embed_boxes,
    initial_weights,
    load_meld,
    load_meld_preprocessing,
    predict,
    save_meld,
    train_meld,
    validation_metrics,
)

__all__ = [
    "HEADS",
    "PRESETS",
    "Augment",
    "MeldBatch",
    "MeldConfig",
    "MeldFitTask",
    "MeldNet",
    "MeldPreprocessing",
    "SampleSource",
    "SliceDetections",
    "embed_boxes",
    "initial_weights",
    "load_meld",
    "load_meld_preprocessing",
    "make_batch",
    "predict",
    "preset_config",
    "save_meld",
    "train_meld",
    "validation_metrics",
]
