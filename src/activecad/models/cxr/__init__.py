"""Chest-radiograph nodule classification and localisation (Kim et al.'s Networks 1 and 2).

:mod:`~activecad.models.cxr.network` (SE-DenseNet, Networks 1 and 2, the losses),
:mod:`~activecad.models.cxr.preprocess` (lung crop, resize, CLAHE, augmentation),
:mod:`~activecad.models.cxr.data` (data folders, checked image reading),
:mod:`~activecad.models.cxr.train` (presets, training, the model folder),
:mod:`~activecad.models.cxr.inference` (probability, heat map, boxes).
"""

from activecad.models.cxr.network import CxrNet, CxrOutput, SEBlock, cxr_loss
from activecad.models.cxr.train import (
    MODEL_NAME,
    CxrConfig,
    load_cxr_bundle,
    preset_cxr_config,
    save_cxr_bundle,
    train_cxr,
)

__all__ = [
    "MODEL_NAME",
    "CxrConfig",
    "CxrNet",
    "CxrOutput",
    "SEBlock",
    "cxr_loss",
    "load_cxr_bundle",
    "preset_cxr_config",
    "save_cxr_bundle",
    "train_cxr",
]
