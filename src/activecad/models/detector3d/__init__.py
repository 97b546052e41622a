"""The 3D nodule detector with loss prediction.

After Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule Detection"
(MICCAI 2020), §2.

ResNet-18 + FPN (P2..P5) with MONAI RetinaNet heads, anchors, ATSS matching, hard-negative
sampling and sliding-window inference; the scan-level loss predictor of Eq. 1, the RoI-level
uncertainty of Eq. 2 and the joint objective of Eq. 3.
"""

from activecad.models.detector3d.bundle import load_bundle, read_bundle_info, save_bundle
from activecad.models.detector3d.config import PRESETS, DetectorConfig, preset_config
from activecad.models.detector3d.inference import (
    SUBMISSION_COLUMNS,
    UNCERTAINTY_COLUMNS,
    ScanResult,
    detect_files,
    detect_prepared,
    detect_scan,
    detections_to_world,
    min_shape_zyx,
    network_input,
)
from activecad.models.detector3d.loss_prediction import (
    ROI_VARIANTS,
    RoILossHead,
    ScanLossPredictor,
    ranking_loss,
    roi_uncertainties,
    roi_uncertainty,
)
from activecad.models.detector3d.network import (
    Detections,
    DetectorNetwork,
    NoduleDetector,
    StepLosses,
)
from activecad.models.detector3d.scoring import (
    PoolScore,
    pool_table,
    resolve_series,
    score_pool,
    score_pool_sharded,
)
from activecad.models.detector3d.train import (
    DetectorTask,
    LunaFolder,
    TrainResult,
    fit_detector,
    read_luna_folder,
    resolve_config,
    split_series,
    train_detector,
)

__all__ = [
    "PRESETS",
    "ROI_VARIANTS",
    "SUBMISSION_COLUMNS",
    "UNCERTAINTY_COLUMNS",
    "Detections",
    "DetectorConfig",
    "DetectorNetwork",
    "DetectorTask",
    "LunaFolder",
    "NoduleDetector",
    "PoolScore",
    "RoILossHead",
    "ScanLossPredictor",
    "ScanResult",
    "StepLosses",
    "TrainResult",
    "detect_files",
    "detect_prepared",
    "detect_scan",
    "detections_to_world",
    "fit_detector",
    "load_bundle",
    "min_shape_zyx",
    "network_input",
    "pool_table",
    "preset_config",
    "ranking_loss",
    "read_bundle_info",
    "read_luna_folder",
    "resolve_config",
    "resolve_series",
    "roi_uncertainties",
    "roi_uncertainty",
    "save_bundle",
    "score_pool",
    "score_pool_sharded",
    "split_series",
    "train_detector",
]
