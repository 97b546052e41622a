"""MONAI's own LUNA16 RetinaNet recipe, trained and scored beside activecad's detector.

The recipe is Project-MONAI/tutorials ``detection/luna16_training.py`` with
``config_train_luna16_16g.json``: a 3D ResNet-50 (bottleneck blocks 3-4-6-3, MONAI's
widths), an FPN over its layers 1 and 2, three anchor shapes (6 x 8 x 4, 8 x 6 x 5 and
10 x 10 x 6 voxels at 0.703 x 0.703 x 1.25 mm), ATSS matching with 4 candidates, a
hard-negative sampler (64 anchors per image, 30 % positive, pool 20, at least 16
negatives), SGD with Nesterov momentum 0.9, lr 1e-2, weight decay 3e-5, a linear warm-up
over 10 of 300 epochs and a tenfold drop after 150, score threshold 0.02, NMS IoU 0.22,
100 detections per scan. Its losses are MONAI's ``RetinaNetDetector`` defaults, which the
recipe keeps.

What the CPU and the shared comparison change (each written into the results file by
:data:`CHANGES`): the grid, patches, batch and augmentation are activecad's (the same
scans and patch draws as the detector it is compared with), the anchors keep their size in
mm on that grid, the schedule is scaled to the run's step budget, and checkpoints are
picked by validation CPM instead of the recipe's COCO mAP at IoU 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from activecad.data.augment import AugmentConfig
from activecad.data.folders import froc_summary
from activecad.data.patches import LabelledScan, PatchSampler
from activecad.data.preprocess import PreparedScan
from activecad.models.detector3d.inference import detections_to_world
from activecad.models.detector3d.network import Detections
from activecad.training import FitPlan

RECIPE_SPACING_MM = (0.703125, 0.703125, 1.25)
RECIPE_ANCHORS = ((6, 8, 4), (8, 6, 5), (10, 10, 6))  # voxels at RECIPE_SPACING_MM
RECIPE_EPOCHS = 300
CHANGES = (
    "grid: activecad's resampling (the compared detector's), not 0.703 x 0.703 x 1.25 mm; "
    "the phantom's own voxels are coarser than either",
    "anchors: the recipe's three shapes kept in mm on that grid; MONAI rounds anchor "
    "corners to whole voxels, so at 2 mm the finest level's are 2 x 2 x 2, 2 x 2 x 4 and "
    "4 x 4 x 4 voxels (the recipe's own grid rounds 8 x 6 x 5 to 8 x 6 x 4 too)",
    "conv1 stride 2 x 2 x 2, not 2 x 2 x 1: the recipe's 1 in z evens out its anisotropic "
    "voxels; on an isotropic grid it would only double the cost",
    "patches and batch: activecad's (same size, same nodule-centred share 0.5 as the "
    "recipe's RandCropByPosNegLabeld pos=1 neg=1), not 4 crops of 192 x 192 x 80 per scan",
    "augmentation: activecad's flips, rotations and intensity changes, not the recipe's "
    "transform chain",
    "excluded findings: background in training (MONAI's detector has no ignore regions), "
    "neither hits nor false positives in the FROC, as for every row",
    "schedule: warm-up over the first 10/300 and the tenfold drop half-way through the "
    "steps this run can afford, not through 300 epochs",
    "checkpoint: the best validation CPM, not COCO mAP at IoU 0.1; no mixed precision",
)


def recipe_detector(spacing_mm: Sequence[float]) -> nn.Module:
    """MONAI's RetinaNetDetector as the recipe builds it, anchors scaled to ``spacing_mm``."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import (
        RetinaNet,
        resnet_fpn_feature_extractor,
    )
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    returned_layers = [1, 2]
    scale = np.asarray(RECIPE_SPACING_MM) / np.asarray(spacing_mm, dtype=float)
    anchors = [tuple(float(v) for v in np.asarray(shape) * scale) for shape in RECIPE_ANCHORS]
    anchor_generator = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(returned_layers) + 1)],
        base_anchor_shapes=anchors,
    )
    conv1_stride = [2, 2, 2]
    backbone = resnet.ResNet(
        block=resnet.ResNetBottleneck,
        layers=[3, 4, 6, 3],
        block_inplanes=resnet.get_inplanes(),
        n_input_channels=1,
        conv1_t_stride=conv1_stride,
        conv1_t_size=[max(7, 2 * s + 1) for s in conv1_stride],
    )
    features = resnet_fpn_feature_extractor(
        backbone=backbone,
        spatial_dims=3,
        pretrained_backbone=False,
        trainable_backbone_layers=None,
        returned_layers=returned_layers,
    )
    network = RetinaNet(
        spatial_dims=3,
        num_classes=1,
        num_anchors=anchor_generator.num_anchors_per_location()[0],
        feature_extractor=features,
        size_divisible=[s * 2 * 2 ** max(returned_layers) for s in conv1_stride],
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchor_generator)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=100
    )
    return detector


def recipe_plan(epochs: int, steps_per_epoch: int, *, seed: int, time_budget_s: float | None):
    """The recipe's optimiser and schedule over this run's steps."""
    return FitPlan(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=1e-2,
        optimizer="nesterov",
        weight_decay=3e-5,
        schedule="drops",
        lr_drops=(150 / RECIPE_EPOCHS,),
        warmup=10 / RECIPE_EPOCHS,
        val_every=max(1, epochs // 10),
        best_metric="cpm",
        seed=seed,
        time_budget_s=time_budget_s,
        amp=False,
    )


def detect_recipe(detector: nn.Module, prepared: PreparedScan) -> pd.DataFrame:
    """Detections of one preprocessed scan as LUNA16 rows (world mm), whole scan in one pass."""
    volume = torch.from_numpy(np.ascontiguousarray(np.asarray(prepared.array).transpose(2, 1, 0)))
    detector.eval()
    with torch.no_grad():
        found = detector([volume[None].float()], use_inferer=False)[0]
    scores = found["label_scores"].float()
    order = torch.argsort(scores, descending=True)
    boxes = found["box"].float()[order]
    none = torch.zeros(len(order))
    return detections_to_world(Detections(boxes, scores[order], none, 0.0, 0.0), prepared)


class _RecipeLoss(nn.Module):
    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]]) -> dict:
        images, targets = batch
        losses = self.detector(list(images), targets)
        cls, box = losses[self.detector.cls_key], losses[self.detector.box_reg_key]
        return {"total": cls + box, "cls": cls, "box": box}


class RecipeTask:
    """The recipe's detector as a :class:`activecad.training.FitTask` on activecad's patches.

    Args:
        detector: from :func:`recipe_detector`.
        train: labelled training scans (voxel boxes on the shared grid).
        val: validation scans; annotations / excluded: their findings (world mm).
        patch_size: x-y-z voxels; batch_size: patches a step.
    """

    def __init__(
        self,
        detector: nn.Module,
        train: Sequence[LabelledScan],
        val: Sequence[PreparedScan],
        annotations: pd.DataFrame,
        excluded: pd.DataFrame | None,
        *,
        patch_size: tuple[int, int, int],
        batch_size: int,
        augment: AugmentConfig | None,
        seed: int,
    ):
        self.model = detector
        self.loss_module = _RecipeLoss(detector)
        self.sampler = PatchSampler(
            list(train), patch_size, positive_fraction=0.5, augment=augment, seed=seed
        )
        self.batch_size = batch_size
        self.val, self.annotations, self.excluded = list(val), annotations, excluded

    def reseed(self, seed: int) -> None:
        self.sampler.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs."""

    def next_batch(self, device: str) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        patches, boxes, _ignored = self.sampler.batch(self.batch_size)
        targets = [
            {
                "box": torch.from_numpy(b).float().to(device),
                "label": torch.zeros(len(b), dtype=torch.long, device=device),
            }
            for b in boxes
        ]
        return torch.from_numpy(patches).float().to(device), targets

    def validate(self) -> dict[str, float]:
        if not self.val:
            return {}
        tables = [detect_recipe(self.model, scan) for scan in self.val]
        summary, _ = froc_summary(
            pd.concat(tables, ignore_index=True),
            self.annotations,
            self.excluded,
            [s.seriesuid for s in self.val],
        )
        return {"cpm": float(summary["cpm"])}  # type: ignore[arg-type]
