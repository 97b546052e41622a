"""Our per-patch losses against MONAI's own batch loss on the same outputs.

The loss-prediction module of Liu, Cao & Tian (MICCAI 2020) needs a loss per patch, so
``compute_losses`` computes the detection loss patch by patch instead of calling MONAI's
``RetinaNetDetector.compute_loss`` once for the batch. The reference here is MONAI's
implementation itself: with sampled BCE, patches with equal numbers of sampled anchors and of
positives (two copies of one patch), the mean of our per-patch losses must equal MONAI's
classification + box-regression loss of the batch.
"""

from __future__ import annotations

import pytest
import torch

from activecad.models.detector3d import DetectorConfig, NoduleDetector
from activecad.models.detector3d.network import BOX, CLS


def test_per_patch_losses_average_to_monais_batch_loss(tiny_config: DetectorConfig) -> None:
    config = tiny_config.model_copy(update={"cls_loss": "sampled_bce"})
    torch.manual_seed(0)
    detector = NoduleDetector(config)
    detector.network.eval()  # the same outputs on both forward passes (no BN batch updates)
    grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"))
    sphere = ((grid - 16.0) ** 2).sum(0) <= 16.0  # radius 4 voxels at the patch centre
    image = 0.1 * torch.randn(1, 1, 32, 32, 32) + sphere.float()
    images = torch.cat([image, image])
    box = torch.tensor([[12.0, 12.0, 12.0, 20.0, 20.0, 20.0]])
    targets = [{"boxes": box, "labels": torch.zeros(1, dtype=torch.long)} for _ in range(2)]

    torch.manual_seed(1)  # the hard-negative sampler's draws
    ours = detector.compute_losses(images, targets, generator=torch.Generator().manual_seed(0))

    retina = detector._retina
    retina.set_cls_loss(torch.nn.BCEWithLogitsLoss(reduction="mean"))
    with torch.no_grad():
        anchors, num_locs, flat = detector._head_outputs(images, detector.network(images))
        torch.manual_seed(1)
        monai = retina.compute_loss({CLS: flat[CLS], BOX: flat[BOX]}, targets, anchors, num_locs)
    expected = float(monai[CLS] + monai[BOX])
    assert float(ours.per_sample[0]) == pytest.approx(float(ours.per_sample[1]), rel=1e-5)
    assert float(ours.per_sample.mean()) == pytest.approx(expected, rel=1e-5)
    assert float(ours.target.detach()) == pytest.approx(expected, rel=1e-5)
