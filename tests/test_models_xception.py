"""Aligned Xception-65 and deeplabv3plus_xception65: strides, alignment, layout, size, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import engine
from engine.models.heads import AtrousSeparableConvolution
from engine.models.xception import (
    AlignedXception65,
    ConvBNReLU,
    SeparableConvBN,
    XceptionConfig,
    XceptionUnit,
    unit_schedule,
)

ARCH = "deeplabv3plus_xception65"
# Trainable parameters with 21 classes (asserted below, and derived layer by layer for the backbone).
BACKBONE_PARAMS = 37_867_312
PARAMS_SEPARABLE = 40_973_653
PARAMS_DENSE = 54_121_125


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _halve(n: int, times: int) -> int:
    for _ in range(times):
        n = math.ceil(n / 2)  # TF "fixed" padding: a stride-2 3x3 conv maps n to ceil(n / 2)
    return n


@pytest.fixture(scope="module")
def model16():
    return engine.build_model(ARCH)


@pytest.fixture(scope="module")
def model8():
    return engine.build_model(ARCH, output_stride=8, num_classes=3)


def test_registered_with_defaults(model16):
    spec = engine.models.model_spec(ARCH)
    assert spec.output_strides == (8, 16) and spec.default_stride == 16
    assert spec.preprocessing == engine.meta.IMAGENET
    assert model16.meta.output_stride == 16 and not model16.training
    assert model16.classifier_takes_dict
    with pytest.raises(ValueError):
        engine.build_model(ARCH, output_stride=32)


def test_xception65_depth():
    # "65": two stem convs plus 21 units of three separable convs each.
    net = AlignedXception65()
    assert sum(isinstance(m, ConvBNReLU) for m in net.modules()) == 2
    assert sum(isinstance(m, SeparableConvBN) for m in net.modules()) == 63
    assert len(net.middle_flow) == 16
    # Strided separable convs replace max-pooling; no pooling layer anywhere.
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in net.modules())
    # BN after every depthwise conv.
    for m in net.modules():
        if isinstance(m, SeparableConvBN):
            assert m.depthwise.groups == m.depthwise.in_channels
            assert isinstance(m.depthwise_bn, nn.BatchNorm2d)


@pytest.mark.parametrize("size", [(65, 97), (33, 47), (17, 1)])
def test_output_at_input_size_odd_sizes(model16, model8, size):
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        y16, y8 = model16(x), model8(x)
    assert y16.shape == (1, 21, *size) and y8.shape == (1, 3, *size)
    assert torch.isfinite(y16).all() and torch.isfinite(y8).all()


@pytest.mark.parametrize("output_stride, halvings", [
    (16, {"entry_flow.block1": 2, "low_level": 2, "entry_flow.block2": 3, "entry_flow.block3": 4,
          "middle_flow": 4, "exit_flow.block1": 4, "exit_flow.block2": 4, "out": 4}),
    (8, {"entry_flow.block1": 2, "low_level": 2, "entry_flow.block2": 3, "entry_flow.block3": 3,
         "middle_flow": 3, "exit_flow.block1": 3, "exit_flow.block2": 3, "out": 3}),
    (32, {"entry_flow.block1": 2, "low_level": 2, "entry_flow.block2": 3, "entry_flow.block3": 4,
          "middle_flow": 4, "exit_flow.block1": 5, "exit_flow.block2": 5, "out": 5}),
])
def test_stage_strides_and_channels(output_stride, halvings):
    channels = {"entry_flow.block1": 128, "low_level": 256, "entry_flow.block2": 256,
                "entry_flow.block3": 728, "middle_flow": 728, "exit_flow.block1": 1024,
                "exit_flow.block2": 2048, "out": 2048}
    net = AlignedXception65(output_stride).eval()
    h, w = 67, 45
    with torch.inference_mode():
        feats = net(torch.randn(1, 3, h, w), return_stages=True)
        plain = net(torch.randn(1, 3, h, w))
    assert set(plain) == {"out", "low_level"}
    assert set(feats) == set(halvings)
    for name, k in halvings.items():
        assert feats[name].shape == (1, channels[name], _halve(h, k), _halve(w, k)), name


def test_atrous_rates_follow_tf_schedule():
    assert unit_schedule(16)[-2:] == [(1, 1), (1, 2)]  # exit block1 loses its stride, block2 rate 2
    s8 = unit_schedule(8)
    assert s8[:3] == [(2, 1), (2, 1), (1, 1)] and s8[3:20] == [(1, 2)] * 17 and s8[20] == (1, 4)
    assert [s for s, _ in unit_schedule(32)] == [2, 2, 2] + [1] * 16 + [2, 1]
    with pytest.raises(ValueError):
        unit_schedule(4)

    net = AlignedXception65(8, XceptionConfig(multi_grid=(1, 2, 4)))
    assert net.middle_flow[0].sepconv1.depthwise.dilation == (2, 2)
    assert net.exit_flow.block1.sepconv3.depthwise.stride == (1, 1)
    assert net.exit_flow.block1.shortcut.conv.stride == (1, 1)
    block2 = net.exit_flow.block2
    assert [block2.sepconv1.depthwise.dilation[0], block2.sepconv2.depthwise.dilation[0],
            block2.sepconv3.depthwise.dilation[0]] == [4, 8, 16]
    for m in net.modules():  # "same" padding everywhere: padding equals dilation for 3x3
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert m.padding == m.dilation


def test_output_strides_share_one_layout(model16, model8):
    # OS only changes strides/rates, so the same weights serve OS 8 and 16 (backbone part).
    a = {k: v.shape for k, v in model16.backbone.state_dict().items()}
    b = {k: v.shape for k, v in model8.backbone.state_dict().items()}
    assert a == b


@pytest.mark.parametrize("size", [(11, 11), (12, 9)])
def test_strided_unit_is_aligned_subsampling(size):
    # TF's alignment guarantee: a stride-2 unit equals its stride-1 twin subsampled at [::2, ::2],
    # for odd and even sizes, on both the separable path and the 1x1 shortcut.
    cfg = XceptionConfig()
    strided = XceptionUnit(8, (8, 8, 16), "conv", stride=2, cfg=cfg).eval()
    dense = XceptionUnit(8, (8, 8, 16), "conv", stride=1, cfg=cfg).eval()
    dense.load_state_dict(strided.state_dict())
    x = torch.randn(1, 8, *size)
    with torch.inference_mode():
        torch.testing.assert_close(strided(x), dense(x)[..., ::2, ::2])


def test_identity_shortcut_sees_unactivated_input():
    unit = XceptionUnit(8, (8, 8, 8), "sum").eval()
    with torch.no_grad():
        unit.sepconv3.pointwise_bn.weight.zero_()
        unit.sepconv3.pointwise_bn.bias.zero_()
    x = torch.randn(2, 8, 5, 5)
    ref = x.clone()
    with torch.inference_mode():
        y = unit(x)
    torch.testing.assert_close(y, ref)  # negatives survive: the pre-activation ReLU is not in place
    torch.testing.assert_close(x, ref)


def test_low_level_is_entry_block2_second_sepconv():
    net = AlignedXception65().eval()
    seen = {}
    net.entry_flow.block2.sepconv2.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.inference_mode():
        feats = net(torch.randn(1, 3, 29, 31))
    assert torch.equal(feats["low_level"], seen["o"])
    assert feats["low_level"].shape == (1, 256, 8, 8)


def test_parameter_count(model16):
    def sep(cin, cout):
        return cin * 9 + 2 * cin + cin * cout + 2 * cout

    def unit(cin, depths, shortcut):
        chans = [cin, *depths]
        n = sum(sep(chans[i], chans[i + 1]) for i in range(3))
        return n + (cin * depths[-1] + 2 * depths[-1] if shortcut else 0)

    expected = (3 * 32 * 9 + 64) + (32 * 64 * 9 + 128)
    expected += unit(64, (128,) * 3, True) + unit(128, (256,) * 3, True) + unit(256, (728,) * 3, True)
    expected += 16 * unit(728, (728,) * 3, False)
    expected += unit(728, (728, 1024, 1024), True) + unit(1024, (1536, 1536, 2048), False)
    assert expected == BACKBONE_PARAMS
    assert _params(model16.backbone) == BACKBONE_PARAMS
    assert _params(model16) == PARAMS_SEPARABLE


def test_separable_on_off(model16):
    dense = engine.build_model(ARCH, separable=False)
    assert _params(dense) == PARAMS_DENSE
    assert dense.meta.options["separable"] is False
    sep_convs = [m for m in model16.classifier.modules() if isinstance(m, AtrousSeparableConvolution)]
    # Four k>1 convs in the head: three ASPP branches and the 304->256 decoder conv.
    assert len(sep_convs) == 4
    assert [m.body[0].dilation[0] for m in sep_convs[:3]] == [6, 12, 18]
    assert not any(isinstance(m, AtrousSeparableConvolution) for m in dense.classifier.modules())
    for m in dense.classifier.modules():
        if isinstance(m, nn.Conv2d):
            assert m.groups == 1
    assert {k for k in model16.state_dict() if k.startswith("backbone.")} == \
        {k for k in dense.state_dict() if k.startswith("backbone.")}
    with torch.inference_mode():
        assert dense(torch.randn(1, 3, 21, 19)).shape == (1, 21, 21, 19)


def test_state_dict_layout(model16):
    sd = model16.state_dict()
    assert sd["backbone.entry_flow.conv1_1.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["backbone.entry_flow.block1.sepconv1.depthwise.weight"].shape == (64, 1, 3, 3)
    assert sd["backbone.entry_flow.block2.shortcut.conv.weight"].shape == (256, 128, 1, 1)
    assert sd["backbone.middle_flow.15.sepconv3.pointwise.weight"].shape == (728, 728, 1, 1)
    assert sd["backbone.exit_flow.block2.sepconv3.pointwise_bn.weight"].shape == (2048,)
    assert sd["classifier.project.0.weight"].shape == (48, 256, 1, 1)
    assert "backbone.middle_flow.0.shortcut.conv.weight" not in sd
    assert "backbone.exit_flow.block2.shortcut.conv.weight" not in sd
    assert not any(k.startswith("backbone.") and k.endswith(".bias") and "bn" not in k for k in sd)
    bns = [m for m in model16.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)


def test_gradients_flow():
    model = engine.build_model(ARCH, num_classes=4).train()
    x = torch.randn(2, 3, 33, 35)
    target = torch.randint(0, 4, (2, 33, 35))
    target[:, :3] = 255
    loss = nn.functional.cross_entropy(model(x), target, ignore_index=255)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_random_init_keeps_eval_activations_bounded(model16):
    with torch.inference_mode():
        feats = model16.backbone(torch.randn(1, 3, 49, 49), return_stages=True)
    for name, f in feats.items():
        assert 1e-2 < f.std() < 1e2, name
