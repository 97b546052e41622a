"""MELD: shapes, Eq. 1 at inference, ignore regions, per-dataset learning, training, folders."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from activecad.data.lesion_slices import DATASETS, ORGANS, SliceSample
from activecad.errors import InputError
from activecad.lesions import fuse_head_scores
from activecad.metrics import box_iou
from activecad.models.meld import (
    HEADS,
    MeldNet,
    embed_boxes,
    initial_weights,
    load_meld,
    make_batch,
    predict,
    preset_config,
    save_meld,
    train_meld,
)

# A network small enough to train in seconds on 64 x 64 slices.
TINY = {
    "image_size": None,
    "widths": (8, 8, 16, 16),
    "fpn_channels": 16,
    "anchor_sizes": (8, 16, 32, 64),
    "rpn_batch_per_image": 64,
    "rpn_post_nms_train": 100,
    "rpn_post_nms_test": 50,
    "roi_batch_per_image": 32,
    "representation": 32,
    "cls_width": 16,
    "gate_width": 8,
    "detections_per_image": 10,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: two threads on cores shared with other jobs stall each other
    (a training step of the tiny network took 1 s instead of 0.05 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blob_sample(
    rng: np.random.Generator, dataset: str = "universal", index: int = 0, size: int = 64
) -> SliceSample:
    """Noise and one bright disc on every slice (fainter away from the centre); its box."""
    image = rng.random((9, size, size), dtype=np.float32) * 0.3
    radius = rng.uniform(5, 9)
    cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) <= radius**2
    for z in range(9):
        image[z][disc] += 0.7 - 0.1 * abs(z - 4)
    box = np.array([[cx - radius, cy - radius, cx + radius, cy + radius]])
    organs = np.array([[1.0, 0.0, 0.0]], np.float32)
    return SliceSample(image.clip(0, 1), box, organs, dataset, f"p{index}_1_1_{index}", f"p{index}")


def test_shapes_of_pyramid_losses_and_detections() -> None:
    config = preset_config("cpu", **TINY)
    net = MeldNet(config)
    rng = np.random.default_rng(0)
    samples = [blob_sample(rng, "universal"), blob_sample(rng, "liver_tumours", 1, size=48)]
    batch = make_batch(samples, image_size=None)
    # Padded to a multiple of 32; the 48 px image keeps its own size for clipping.
    assert batch.images.shape == (2, 9, 64, 64) and batch.image_sizes == [(64, 64), (48, 48)]
    pyramid = net.features(batch.images)
    assert [tuple(v.shape) for v in pyramid.values()] == [
        (2, 16, 16, 16),
        (2, 16, 8, 8),
        (2, 16, 4, 4),
        (2, 16, 2, 2),
    ]
    losses = net.train()(batch)
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box", "gate", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    found = net.eval().detect(batch, "lung_nodules")
    assert len(found) == 2
    n = len(found[0].boxes)
    assert found[0].dataset_scores.shape == (n, len(DATASETS))
    assert found[0].head_scores.shape == (n, len(HEADS)) and found[0].gates.shape == (n, 3)
    assert found[0].embeddings.shape == (n, 32)
    assert (found[1].boxes[:, 2:] <= 48).all()


def test_resizing_scales_detections_back_to_sample_pixels() -> None:
    net = MeldNet(preset_config("cpu", **{**TINY, "image_size": 32})).eval()
    sample = blob_sample(np.random.default_rng(1))
    batch = make_batch([sample], image_size=32)
    assert batch.images.shape[-2:] == (32, 32) and batch.scales == [0.5]
    torch.testing.assert_close(batch.targets[0]["boxes"].double(), torch.tensor(sample.boxes) / 2)
    table, _ = predict(net, [sample])
    assert table[["x1", "y1", "x2", "y2"]].to_numpy().max() <= 64.0 + 1e-4


def test_fused_score_is_eq1_of_the_head_scores() -> None:
    torch.manual_seed(0)
    net = MeldNet(preset_config("cpu", **TINY)).eval()
    samples = [blob_sample(np.random.default_rng(k), index=k) for k in range(2)]
    for expert in ("universal", "liver_tumours"):
        table, embeddings = predict(net, samples, dataset=expert)
        assert len(table) > 0 and embeddings.shape == (len(table), 32)
        heads = table[[f"head_{h}" for h in HEADS]].to_numpy()
        gates = table[[f"gate_{o}" for o in ORGANS]].to_numpy()
        np.testing.assert_allclose(table["score"], fuse_head_scores(heads, gates), rtol=1e-6)
        np.testing.assert_allclose(table["score"], table[f"score_{expert}"])
        # Highest score first within each slice; embeddings are unit vectors.
        for _, part in table.groupby("image_id"):
            assert part["score"].is_monotonic_decreasing
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def _pyramid(seed: int) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = {"0": 16, "1": 8, "2": 4, "pool": 2}
    return OrderedDict((k, torch.randn(1, 16, s, s, generator=g)) for k, s in sizes.items())


def _target(ignore: list[list[float]]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([[10.0, 10.0, 26.0, 26.0]]),
        "organs": torch.tensor([[0.0, 1.0, 0.0]]),
        "ignore_boxes": torch.tensor(ignore).reshape(-1, 4),
    }


def test_ignored_proposals_add_nothing_to_the_roi_losses() -> None:
    torch.manual_seed(0)
    heads = MeldNet(preset_config("cpu", **TINY)).roi_heads
    heads.sampler.batch_size_per_image = 10_000  # take every proposal: no random draw
    features = _pyramid(0)
    on_lesion, background, suspicious = [11.0, 9.0, 27.0, 25.0], [40, 40, 56, 56], [40, 4, 60, 24]
    datasets = torch.tensor([0])
    with_ignored = heads.loss(
        features,
        [torch.tensor([on_lesion, background, suspicious])],
        (64, 64),
        datasets,
        [_target([[42.0, 6.0, 58.0, 22.0]])],
    )
    without = heads.loss(
        features, [torch.tensor([on_lesion, background])], (64, 64), datasets, [_target([])]
    )
    for name in ("roi_cls", "roi_box", "gate"):
        torch.testing.assert_close(with_ignored[name], without[name])
    # Without the ignore box the suspicious proposal is a negative and changes the loss.
    as_negative = heads.loss(
        features,
        [torch.tensor([on_lesion, background, suspicious])],
        (64, 64),
        datasets,
        [_target([])],
    )
    assert not torch.isclose(as_negative["roi_cls"], without["roi_cls"])
    # An ignore box over an annotated lesion does not unmake its positives.
    labels, _ = heads.label_proposals(
        torch.tensor([on_lesion, background, suspicious]), _target([[0.0, 0.0, 64.0, 64.0]])
    )
    assert labels.tolist() == [1, -1, -1]


def test_ignored_anchors_get_no_gradient_in_the_rpn_loss() -> None:
    torch.manual_seed(0)
    net = MeldNet(preset_config("cpu", **TINY))
    rpn = net.rpn
    rpn.fg_bg_sampler.batch_size_per_image = 100_000  # every labelled anchor is drawn
    batch = make_batch([blob_sample(np.random.default_rng(2))], image_size=None)
    features = list(net.features(batch.images).values())
    anchors = rpn.anchor_generator(ImageList(batch.images, batch.image_sizes), features)
    target = dict(batch.targets[0])
    target["ignore_boxes"] = torch.tensor([[2.0, 2.0, 14.0, 14.0]])
    plain_labels, _ = rpn.assign_targets_to_anchors(anchors, batch.targets)
    labels, matched = rpn.assign_targets_to_anchors(anchors, [target])
    ignored = (labels[0] == -1) & (plain_labels[0] == 0)
    assert ignored.sum() > 0
    # Matched anchors keep their labels; only negatives become ignored.
    assert torch.equal(labels[0][plain_labels[0] != 0], plain_labels[0][plain_labels[0] != 0])
    objectness = torch.zeros(len(anchors[0]), 1, requires_grad=True)
    deltas = torch.zeros(len(anchors[0]), 4, requires_grad=True)
    loss, _ = rpn.compute_loss(objectness, deltas, labels, rpn.box_coder.encode(matched, anchors))
    loss.backward()
    assert objectness.grad is not None
    assert (objectness.grad[ignored] == 0).all()
    assert (objectness.grad[labels[0] == 0] != 0).all()


def _layer(head: nn.Module, index: int) -> nn.Linear:
    layer = list(head.children())[index]
    assert isinstance(layer, nn.Linear)
    return layer


@pytest.mark.parametrize("dataset", ["lung_nodules", "universal"])
def test_a_sample_trains_only_its_datasets_outputs(dataset: str) -> None:
    """Section 3.1: "When a training sample comes from dataset d, only the d'th detection
    score in each classification head will be learned"; every dataset has its own RPN and
    box regression layer. So output d of *every* organ head learns (weighted by its gate),
    and no other dataset's output of any head, RPN or regressor gets a gradient."""
    torch.manual_seed(0)
    net = MeldNet(preset_config("cpu", **TINY)).train()
    d = DATASETS.index(dataset)
    net(make_batch([blob_sample(np.random.default_rng(3), dataset)], image_size=None))[
        "total"
    ].backward()
    others = [k for k in range(len(DATASETS)) if k != d]
    for head in net.roi_heads.cls_heads:
        grad = _layer(head, -1).weight.grad
        assert grad is not None and grad[d].abs().sum() > 0
        assert (grad[others] == 0).all()
    regressor = net.roi_heads.box_regressor.weight.grad
    assert regressor is not None
    assert regressor.view(len(DATASETS), 4, -1)[d].abs().sum() > 0
    assert (regressor.view(len(DATASETS), 4, -1)[others] == 0).all()
    # Each dataset has its own RPN, convolution included.
    for k, expert in enumerate(net.rpn.head.experts):
        for layer in (expert.conv[0][0], expert.cls_logits, expert.bbox_pred):
            grad = layer.weight.grad
            if k == d:
                assert grad is not None and grad.abs().sum() > 0
            else:
                assert grad is None or (grad == 0).all()
    # The gate is trained by the organ target of the matched lesion.
    gate_grad = _layer(net.roi_heads.gate_head, -1).weight.grad
    assert gate_grad is not None and gate_grad.abs().sum() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[MeldNet, Path]:
    rng = np.random.default_rng(10)
    pool = [blob_sample(rng, index=k) for k in range(48)]

    def sampler(epoch_rng: np.random.Generator) -> list[SliceSample]:
        return [pool[i] for i in epoch_rng.choice(len(pool), 24, replace=False)]

    val = [blob_sample(rng, index=100 + k) for k in range(6)]
    out = tmp_path_factory.mktemp("meld")
    config = preset_config(
        "cpu", **TINY, epochs=8, lr=3e-3, lr_drop_epochs=(6,), batch_size=4, steps_per_epoch=25
    )
    net, history = train_meld(sampler, val, config, out_dir=out)
    assert len(history) == 8 and all("avg_sensitivity" in h for h in history)
    return net, out


def _top_box_hits(net: MeldNet, samples: list[SliceSample]) -> int:
    """Slices whose top-scored universal detection has IoU > 0.3 with the blob's box."""
    table, _ = predict(net, samples)
    hits = 0
    for sample in samples:
        rows = table[table["image_id"] == sample.image_id]
        if len(rows):
            top = rows.iloc[[int(np.argmax(rows["score"]))]][["x1", "y1", "x2", "y2"]]
            hits += int(box_iou(top.to_numpy(float), sample.boxes)[0, 0] > 0.3)
    return hits


def test_training_detects_bright_blobs_well_above_chance(
    trained: tuple[MeldNet, Path],
) -> None:
    net, _ = trained
    rng = np.random.default_rng(99)
    held_out = [blob_sample(rng, index=200 + k) for k in range(12)]
    torch.manual_seed(0)
    # Chance: the same network untrained (its top box lands on 3 of these 12 blobs).
    untrained = _top_box_hits(MeldNet(net.config).eval(), held_out)
    hits = _top_box_hits(net, held_out)
    assert hits >= 10 and hits >= untrained + 5


def test_model_folder_round_trip_and_fine_tuning_start(trained: tuple[MeldNet, Path]) -> None:
    net, out = trained
    samples = [blob_sample(np.random.default_rng(5), index=k) for k in range(3)]
    loaded = load_meld(out)
    assert loaded.config == net.config
    before, emb_before = predict(net, samples, dataset="lymph_nodes")
    after, emb_after = predict(loaded, samples, dataset="lymph_nodes")
    pd.testing.assert_frame_equal(before, after)
    np.testing.assert_array_equal(emb_before, emb_after)
    np.testing.assert_array_equal(embed_boxes(net, samples), embed_boxes(loaded, samples))
    assert embed_boxes(net, samples).shape == (3, 32)
    # The paper fine-tunes from an intermediate epoch: each epoch's weights are kept.
    epoch_2 = initial_weights(out / "epochs" / "epoch_002.pt")
    assert set(epoch_2) == set(net.state_dict())
    assert not torch.equal(
        epoch_2["roi_heads.box_regressor.weight"],
        net.state_dict()["roi_heads.box_regressor.weight"],
    )
    resaved = save_meld(out / "copy", loaded)
    assert load_meld(resaved).config == net.config


def test_paper_preset_is_densenet_with_the_papers_head_widths() -> None:
    config = preset_config("paper")
    assert (config.backbone, config.cls_width, config.gate_width) == ("densenet121", 1024, 512)
    assert (config.optimizer, config.lr, config.epochs, config.lr_drop_epochs) == (
        "radam",
        1e-4,
        8,
        (4, 6),
    )
    net = MeldNet(preset_config("paper", rpn_post_nms_train=64, roi_batch_per_image=16))
    losses = net.train()(make_batch([blob_sample(np.random.default_rng(0))], image_size=None))
    assert torch.isfinite(losses["total"])
    assert _layer(net.roi_heads.cls_heads[0], 0).out_features == 1024


def test_bad_settings_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(InputError, match="paper"):
        preset_config("papr")
    with pytest.raises(InputError, match="anchor_sizes"):
        preset_config("cpu", anchor_sizes=(8, 16))
    with pytest.raises(ValueError, match="dataset must be one of"):
        MeldNet(preset_config("cpu", **TINY)).eval().detect(
            make_batch([blob_sample(np.random.default_rng(0))], image_size=None), "lungs"
        )


def test_a_detected_box_trains_the_scores_but_not_box_regression() -> None:
    # Yan et al. 2020, section 3.2: mined lesions "are only used in training the
    # classification heads but not the bounding-box regression head".
    torch.manual_seed(0)
    heads = MeldNet(preset_config("cpu", **TINY)).roi_heads
    heads.sampler.batch_size_per_image = 10_000  # take every proposal: no random draw
    features = _pyramid(0)
    proposals = [torch.tensor([[11.0, 9.0, 27.0, 25.0], [40.0, 40.0, 56.0, 56.0]])]
    datasets = torch.tensor([0])
    drawn = heads.loss(features, proposals, (64, 64), datasets, [_target([])])
    target = {**_target([]), "regressed": torch.tensor([False])}
    detected = heads.loss(features, proposals, (64, 64), datasets, [target])
    assert drawn["roi_box"] > 0 and detected["roi_box"] == 0
    torch.testing.assert_close(detected["roi_cls"], drawn["roi_cls"])
    torch.testing.assert_close(detected["gate"], drawn["gate"])


def test_augmentation_resize_survives_the_network_resize() -> None:
    from activecad.data.lesion_samples import augment_sample
    from activecad.models.meld.train import MeldFitTask

    config = preset_config("cpu", **{**TINY, "image_size": 32, "batch_size": 1})
    sample = blob_sample(np.random.default_rng(1))  # 64 px: the network halves it

    def enlarge(s: SliceSample, rng: np.random.Generator) -> SliceSample:
        return augment_sample(s, rng, scale_range=(1.5, 1.5), max_shift_px=0)

    task = MeldFitTask(MeldNet(config), [sample], None, config, augment=enlarge)
    task.start_epoch(0)
    batch = task.next_batch("cpu")
    # Scaled by 0.5 from the size before augmentation: a 96 px image becomes 48 px (resized
    # to 32 from its own size, it would undo the 1.5 and every lesion would keep its size).
    assert batch.image_sizes == [(48, 48)] and batch.scales == [0.5]
    torch.testing.assert_close(
        batch.targets[0]["boxes"].double(), torch.tensor(sample.boxes) * 1.5 * 0.5
    )
