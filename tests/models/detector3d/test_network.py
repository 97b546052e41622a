"""Training steps of the tiny detector on synthetic tensors."""

from __future__ import annotations

import numpy as np
import torch

from activecad.models.detector3d import DetectorConfig, NoduleDetector
from activecad.models.detector3d.network import IGNORED


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    # A bright 6-voxel cube in the first patch, nothing in the second.
    images = torch.zeros(2, 1, 32, 32, 32)
    images[0, 0, 10:16, 12:18, 14:20] = 1.0
    boxes = torch.tensor([[10.0, 12.0, 14.0, 16.0, 18.0, 20.0]])
    targets = [
        {"boxes": boxes, "labels": torch.zeros(1, dtype=torch.long)},
        {"boxes": torch.zeros(0, 6), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


def test_a_few_training_steps_lower_the_loss(tiny_config: DetectorConfig) -> None:
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config)
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=3e-3)
    images, targets = _batch()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        step = detector.compute_losses(images, targets, generator=generator)
        optimizer.zero_grad()
        step.total.backward()
        optimizer.step()
        losses.append(float(step.target.detach()))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert step.per_sample.shape == (2,)
    assert step.predicted.shape == (2,)


def test_anchors_on_an_excluded_finding_are_neither_positive_nor_negative(
    tiny_config: DetectorConfig,
) -> None:
    detector = NoduleDetector(tiny_config)
    images, targets = _batch()
    # The second patch holds only an excluded finding (LUNA16's annotations_excluded).
    targets[1]["ignore_boxes"] = torch.tensor([[20.0, 20.0, 20.0, 26.0, 26.0, 26.0]])
    targets[0]["ignore_boxes"] = torch.zeros(0, 6)
    out = detector.network(images)
    anchors, num_locs, _ = detector._head_outputs(images, out)
    plain = detector._retina.compute_anchor_matched_idxs(anchors, targets, num_locs)
    matched = detector.match_anchors(anchors, targets, num_locs)
    torch.testing.assert_close(matched[0], plain[0])  # nothing to ignore in patch 0
    ignored = matched[1] == IGNORED
    assert ignored.any() and not (matched[1] >= 0).any()
    # Every anchor the matcher would make positive for that box is ignored (and more: the
    # anchors centred inside its sphere, see test_excluded.py).
    as_nodule = [{"boxes": targets[1]["ignore_boxes"], "labels": torch.zeros(1).long()}]
    would_be = detector._retina.compute_anchor_matched_idxs(anchors[1:], as_nodule, num_locs)
    assert ignored[would_be[0] >= 0].all()
    # MONAI's hard-negative sampler never draws them as negatives.
    _, negatives = detector._sampler([matched[1] + 1], torch.ones(len(matched[1])))
    assert not (negatives[0] & ignored).any()


def test_both_classification_losses_train(tiny_config: DetectorConfig) -> None:
    images, targets = _batch()
    for cls_loss in ("focal", "sampled_bce"):
        torch.manual_seed(0)
        config = tiny_config.model_copy(update={"cls_loss": cls_loss})
        detector = NoduleDetector(config)
        step = detector.compute_losses(images, targets, generator=torch.Generator())
        step.total.backward()
        assert torch.isfinite(step.total)
        head = detector.network.classification_head.cls_logits.weight
        assert head.grad is not None and head.grad.any()


def test_stopping_the_gradient_keeps_loss_prediction_out_of_the_backbone(
    tiny_config: DetectorConfig,
) -> None:
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config)
    images, targets = _batch()
    detector.network.detach_loss_features = True
    step = detector.compute_losses(images, targets, generator=torch.Generator().manual_seed(0))
    (step.scan + step.roi).backward()
    backbone = detector.network.feature_extractor
    assert all(p.grad is None or not p.grad.any() for p in backbone.parameters())
    assert any(p.grad is not None and p.grad.any() for p in detector.network.scan_loss.parameters())


def test_detect_returns_sorted_boxes_inside_the_volume(tiny_config: DetectorConfig) -> None:
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config).eval()
    found = detector.detect(torch.rand(1, 1, 64, 32, 32))
    assert found.boxes.shape[1] == 6
    assert len(found.boxes) <= tiny_config.detections_per_scan
    assert torch.all(found.scores[:-1] >= found.scores[1:])
    assert torch.all(found.boxes[:, 3:] <= torch.tensor([64.0, 32.0, 32.0]))
    assert np.isfinite(found.l_scan) and found.l_roi >= 0


def test_group_and_instance_norm_make_a_patch_independent_of_its_batch(
    tiny_config: DetectorConfig,
) -> None:
    # In training mode BatchNorm normalises with the batch's statistics, so one patch's
    # features change with the other patches; GroupNorm and InstanceNorm use the patch's own.
    # 64^3: InstanceNorm needs more than one voxel at the deepest stage (stride 32).
    images = torch.zeros(2, 1, 64, 64, 64)
    images[0, 0, 10:16, 12:18, 14:20] = 1.0
    other = images.clone()
    other[1] = torch.rand_like(other[1])
    for norm, independent in (("batch", False), ("group", True), ("instance", True)):
        torch.manual_seed(0)
        config = tiny_config.model_copy(
            update={"backbone_widths": (8, 8, 8, 8), "patch_size": (64, 64, 64)}
        )
        network = NoduleDetector(config.model_copy(update={"backbone_norm": norm})).network
        network.train()
        first = network.feature_extractor(images)[0][0]
        second = network.feature_extractor(other)[0][0]
        assert torch.allclose(first, second, atol=1e-6) is independent, norm
