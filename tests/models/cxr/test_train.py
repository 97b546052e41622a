"""A few training steps on bright-blob radiographs; the model folder; the transfer chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activecad.errors import InputError
from activecad.metrics import roc_auc_score
from activecad.models.cxr.data import load_cxr_items
from activecad.models.cxr.inference import predict_arrays
from activecad.models.cxr.train import (
    load_cxr_bundle,
    prepare_items,
    preset_cxr_config,
    train_cxr,
)

from .helpers import TINY, write_blob_folder


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cxr")
    return write_blob_folder(root / "train", 24, seed=1), write_blob_folder(root / "test", 20, 2)


@pytest.mark.parametrize("network", [1, 2])
def test_few_steps_raise_auc_on_bright_blobs(
    blobs: tuple[Path, Path], tmp_path: Path, network: int
) -> None:
    train, test = blobs
    cfg = preset_cxr_config("cpu", network=network, steps=40, **TINY)
    items = load_cxr_items(train, need_masks=network == 2)
    net, history = train_cxr(items, cfg, tmp_path / "model", log_every=20)
    assert history[-1]["loss"] < history[0]["loss"] * 1.5
    test_items = load_cxr_items(test)
    _, y, _ = prepare_items(test_items, cfg, need_masks=False)
    from activecad.models.cxr.data import read_cxr_image
    from activecad.models.cxr.train import read_cxr_mask

    arrays = [read_cxr_image(it.image) for it in test_items]
    lungs = [read_cxr_mask(it.lungs) for it in test_items]  # type: ignore[arg-type]
    probs, maps = predict_arrays(net, cfg, arrays, lungs)
    auc = roc_auc_score(y.numpy(), probs)
    assert auc > 0.75, auc  # chance is 0.5; the blobs are obvious
    assert maps[0].shape == arrays[0].shape
    # The saved folder gives the same probabilities.
    net2, cfg2 = load_cxr_bundle(tmp_path / "model")
    probs2, _ = predict_arrays(net2, cfg2, arrays, lungs)
    np.testing.assert_allclose(probs, probs2, atol=1e-6)


def test_transfer_chain_starts_from_the_given_weights(
    blobs: tuple[Path, Path], tmp_path: Path
) -> None:
    train, _ = blobs
    cfg = preset_cxr_config("cpu", network=1, steps=2, label_column="label_noisy", **TINY)
    items = load_cxr_items(train, "label_noisy")
    train_cxr(items, cfg, tmp_path / "noisy")
    src, _ = load_cxr_bundle(tmp_path / "noisy")
    cfg0 = preset_cxr_config("cpu", network=2, steps=1, **{**TINY, "lr": 0.0})
    net, _ = train_cxr(load_cxr_items(train), cfg0, None, init_from=tmp_path / "noisy")
    # lr 0: the backbone is exactly the pretrained one (BatchNorm statistics aside).
    a = src.features.body.conv0.weight
    b = net.features.body.conv0.weight
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_single_class_and_missing_column_are_clear_errors(blobs: tuple[Path, Path]) -> None:
    train, _ = blobs
    items = [it for it in load_cxr_items(train) if it.label == 1]
    with pytest.raises(InputError, match="both classes"):
        train_cxr(items, preset_cxr_config("cpu", steps=1, **TINY))
    with pytest.raises(InputError, match=r"no label column 'nope'.*--labels"):
        load_cxr_items(train, "nope")
