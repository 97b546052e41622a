"""SE block, Networks 1 and 2 (Kim et al.), the loss."""

from __future__ import annotations

import pytest
import torch

from activecad.models.cxr.network import CxrNet, CxrOutput, SEBlock, cxr_loss

SMALL = {"growth_rate": 4, "block_config": (1, 1, 1, 1), "num_init_features": 8, "sub_channels": 8}


def test_se_block_gates_channels_by_hand() -> None:
    se = SEBlock(4, reduction=16)  # hidden width max(4 // 16, 4) = 4
    with torch.no_grad():
        se.fc1.weight.copy_(torch.eye(4))
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(torch.eye(4))
        se.fc2.bias.zero_()
    means = torch.tensor([1.0, -1.0, 2.0, 0.0])
    x = means[None, :, None, None].expand(1, 4, 3, 5).clone()
    x[0, 0, 0, 0] += 3.0  # the gate uses the channel mean: add and remove the same
    x[0, 0, 0, 1] -= 3.0
    y = se(x)
    assert y.shape == x.shape
    # gate = sigmoid(relu(mean)) by hand: sigmoid(1), sigmoid(0), sigmoid(2), sigmoid(0).
    gate = torch.sigmoid(torch.tensor([1.0, 0.0, 2.0, 0.0]))
    torch.testing.assert_close(y, x * gate[None, :, None, None])


@pytest.mark.parametrize(("network", "side"), [(1, 16), (2, 32)])
def test_map_size_at_512_and_probability_is_the_maps_maximum(network: int, side: int) -> None:
    torch.manual_seed(0)
    net = CxrNet(network, **SMALL).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 512, 512))
    assert out.map_logit.shape == (2, 1, side, side)
    torch.testing.assert_close(out.probability, out.heatmap.amax(dim=(1, 2, 3)))
    if network == 1:
        torch.testing.assert_close(out.logit, out.map_logit.mean(dim=(1, 2, 3)))


def test_network_1_heat_map_is_the_cam_scaled_by_hand() -> None:
    # A 1 x 3 CAM with logits -1, 1, 3: the image logit is their mean, 1, so p = sigmoid(1);
    # scaled within the image to 0, 0.5, 1 and times p. The raw sigmoid would put every
    # cell but the first above 0.5.
    cam = torch.tensor([-1.0, 1.0, 3.0]).reshape(1, 1, 1, 3)
    out = CxrOutput(logit=cam.mean(dim=(1, 2, 3)), map_logit=cam, cam=True)
    p = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(out.heatmap, torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3) * p)


def test_backbone_is_densenet121_with_se_blocks() -> None:
    net = CxrNet(1)
    assert net.features.out_channels == 1024  # DenseNet-121's final width
    assert sum(isinstance(m, SEBlock) for m in net.modules()) == 4


def test_loss_adds_pixel_bce_against_the_mask() -> None:
    torch.manual_seed(0)
    net = CxrNet(2, **SMALL)
    x = torch.rand(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, 0, 10:14, 10:14] = 1
    out = net(x)
    loss, parts = cxr_loss(out, torch.tensor([1, 0]), mask)
    assert set(parts) == {"cls", "loc"}
    assert loss.item() == pytest.approx(parts["cls"] + parts["loc"], rel=1e-5)
    loss.backward()
