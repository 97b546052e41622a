"""Excluded findings: every anchor centred in one is neither a positive nor a sampled negative."""

from __future__ import annotations

import torch

from activecad.models.detector3d import DetectorConfig, NoduleDetector
from activecad.models.detector3d.network import IGNORED, anchors_in_spheres


def test_anchor_centres_inside_a_sphere_hand_worked() -> None:
    # A finding of diameter 6 voxels centred at (10, 10, 10); anchors of size 4 centred at
    # (10, 10, 12.9) (distance 2.9 < 3: inside), (12, 12, 10) (2.83: inside),
    # (12.2, 12.2, 10) (3.11: outside) and (20, 20, 20) (outside).
    box = torch.tensor([[7.0, 7.0, 7.0, 13.0, 13.0, 13.0]])
    centres = torch.tensor([[10, 10, 12.9], [12, 12, 10], [12.2, 12.2, 10], [20, 20, 20]])
    anchors = torch.cat([centres - 2, centres + 2], dim=1)
    assert anchors_in_spheres(anchors, box).tolist() == [True, True, False, False]
    # On an anisotropic grid the sphere is the ellipsoid inscribed in the box: half-axes
    # (3, 3, 1.5) voxels, so (10, 10, 11.4) is inside and (10, 10, 11.6) is not.
    flat = torch.tensor([[7.0, 7.0, 8.5, 13.0, 13.0, 11.5]])
    near = torch.tensor([[10, 10, 11.4], [10, 10, 11.6]])
    assert anchors_in_spheres(torch.cat([near - 1, near + 1], 1), flat).tolist() == [True, False]
    assert not anchors_in_spheres(anchors, torch.zeros(0, 6)).any()


def test_every_anchor_centred_in_an_excluded_finding_is_left_out(
    tiny_config: DetectorConfig,
) -> None:
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config)
    images = torch.zeros(2, 1, 32, 32, 32)
    images[0, 0, 4:10, 4:10, 4:10] = 1.0
    nodule = torch.tensor([[4.0, 4.0, 4.0, 10.0, 10.0, 10.0]])
    excluded = torch.tensor([[14.0, 14.0, 14.0, 26.0, 26.0, 26.0]])  # a 12-voxel finding
    targets = [
        {"boxes": nodule, "labels": torch.zeros(1, dtype=torch.long), "ignore_boxes": excluded},
        {"boxes": nodule, "labels": torch.zeros(1, dtype=torch.long), "ignore_boxes": excluded},
    ]
    out = detector.network(images)
    anchors, num_locs, _ = detector._head_outputs(images, out)
    matched = detector.match_anchors(anchors, targets, num_locs)
    inside = anchors_in_spheres(anchors[0], excluded)
    # The ATSS matcher alone would mark only a handful (its top candidates per level).
    as_nodule = [{"boxes": excluded, "labels": torch.zeros(1, dtype=torch.long)}]
    would_be = detector._retina.compute_anchor_matched_idxs(anchors[:1], as_nodule, num_locs)
    assert int(inside.sum()) > int((would_be[0] >= 0).sum())
    for m in matched:
        assert (m[inside] == IGNORED).all()  # not positives, not background
        # Adversarial scores: the ignored anchors score highest, so a hard-negative
        # sampler that could see them would pick them first.
        logits = torch.where(m == IGNORED, 10.0, 0.0) + torch.rand(len(m)) * 0.1
        positives, negatives = detector._sampler([m + 1], logits)
        assert negatives[0].any() and positives[0].any()
        assert not (negatives[0] & inside).any()
        assert not (positives[0] & inside).any()
    # The nodule's own positives are untouched.
    plain = detector._retina.compute_anchor_matched_idxs(anchors, targets, num_locs)
    torch.testing.assert_close(matched[0] >= 0, plain[0] >= 0)


def test_excluded_anchors_do_not_change_the_focal_classification_loss(
    tiny_config: DetectorConfig,
) -> None:
    # The focal loss multiplies the terms of ignored anchors by zero, so the detector loss
    # sends no gradient to their classification logits.
    torch.manual_seed(0)
    detector = NoduleDetector(tiny_config)
    images = torch.rand(2, 1, 32, 32, 32)
    empty = {"boxes": torch.zeros(0, 6), "labels": torch.zeros(0, dtype=torch.long)}
    excluded = torch.tensor([[8.0, 8.0, 8.0, 24.0, 24.0, 24.0]])
    targets = [{**empty, "ignore_boxes": excluded}, {**empty, "ignore_boxes": excluded}]
    out = detector.network(images)
    anchors, _, _ = detector._head_outputs(images, out)
    inside = anchors_in_spheres(anchors[0], excluded)
    assert inside.any()
    # Keep the flattened logits (the first map MONAI's reshaping sees) to read their grad.
    flat_logits: list[torch.Tensor] = []
    real_reshape = detector._retina._reshape_maps

    def keep(maps: list[torch.Tensor]) -> torch.Tensor:
        result = real_reshape(maps)
        if result.shape[-1] == 1 and not flat_logits:
            result.retain_grad()
            flat_logits.append(result)
        return result

    detector._retina._reshape_maps = keep  # type: ignore[method-assign]
    losses = detector.compute_losses(images, targets, generator=torch.Generator().manual_seed(0))
    losses.target.backward()
    grad = flat_logits[0].grad
    assert grad is not None
    assert torch.all(grad[0, inside, 0] == 0)
    assert torch.any(grad[0, ~inside, 0] != 0)
