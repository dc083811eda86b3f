"""DeepLab v1 LargeFOV (VGG16) and v2 (Caffe ResNet-101, ASPP-L, MSC): layouts, sizes, MSC semantics.

Golden data: tests/data/keys_deeplabv2_resnet101.json is kazuto1011/deeplab-pytorch's
``DeepLabV2_ResNet101_MSC(21).state_dict()`` key -> shape list, in order.  Set DEEPLAB_KAZUTO_ROOT to a
checkout of that repository to also compare logits against its code; with torchvision importable the
VGG16 mapping is checked against torchvision's own model.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import engine
from engine.meta import CAFFE_BGR, IMAGENET
from engine.models.deeplabv1 import load_vgg16_imagenet, vgg16_imagenet_to_backbone
from engine.models.deeplabv2 import DeepLabV2, DeepLabV2Base

DATA = pathlib.Path(__file__).parent / "data"

# torchvision vgg16(): the 13 convs of ``features`` and the three fc layers, written out by hand.
TV_VGG16_SHAPES = {
    "features.0": (64, 3), "features.2": (64, 64), "features.5": (128, 64), "features.7": (128, 128),
    "features.10": (256, 128), "features.12": (256, 256), "features.14": (256, 256),
    "features.17": (512, 256), "features.19": (512, 512), "features.21": (512, 512),
    "features.24": (512, 512), "features.26": (512, 512), "features.28": (512, 512),
}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _fake_tv_vgg16() -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for name, (out_ch, in_ch) in TV_VGG16_SHAPES.items():
        sd[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3)
        sd[f"{name}.bias"] = torch.randn(out_ch)
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096),
                        "classifier.6": (1000, 4096)}.items():
        # expanded views: the real shapes (fc6 alone is 100M floats) without allocating them
        sd[f"{name}.weight"] = torch.zeros(1, 1).expand(*shape)
        sd[f"{name}.bias"] = torch.zeros(1).expand(shape[0])
    return sd


@pytest.fixture(scope="module")
def v2():
    return engine.build_model("deeplabv2_resnet101", num_classes=21)


def _tiny_v2(num_classes: int = 4, msc_scales=(0.5, 0.75)) -> DeepLabV2:
    """One bottleneck per layer: same code paths as ResNet-101, a fraction of the cost."""
    torch.manual_seed(1)
    model = DeepLabV2(DeepLabV2Base(num_classes, n_blocks=(1, 1, 1, 1)), msc_scales=msc_scales).eval()
    for m in model.modules():  # non-trivial BN statistics so eval-mode BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


# ---------------------------------------------------------------- DeepLab v2
def test_v2_state_dict_matches_kazuto_golden_layout(v2):
    golden = json.loads((DATA / "keys_deeplabv2_resnet101.json").read_text())
    ours = [[k, list(v.shape)] for k, v in v2.state_dict().items()]
    assert ours == golden["keys"]
    assert _trainable(v2) == golden["trainable_params"] == 44_048_532
    # the released checkpoint must load strictly
    v2.load_state_dict({k: torch.zeros(s) for k, s in golden["keys"]}, strict=True)


def test_v2_class_count_only_changes_aspp():
    golden = dict((k, s) for k, s in json.loads((DATA / "keys_deeplabv2_resnet101.json").read_text())["keys"])
    model = engine.build_model("deeplabv2_resnet101", num_classes=5)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes.keys() == golden.keys()
    changed = sorted(k for k in shapes if shapes[k] != golden[k])
    assert changed == sorted(f"base.aspp.c{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert shapes["base.aspp.c0.weight"] == [5, 2048, 3, 3]


def test_v2_is_the_caffe_resnet(v2):
    base = v2.base
    pool = base.layer1.pool
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode and pool.kernel_size == 3 and pool.stride == 2
    bns = [m for m in v2.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 and abs(m.momentum - 0.001) < 1e-12 for m in bns)
    first = base.layer3.block1
    assert first.reduce.conv.stride == (2, 2) and first.conv3x3.conv.stride == (1, 1)
    assert [len(getattr(base, f"layer{i}")) for i in range(2, 6)] == [3, 4, 23, 3]
    assert base.layer4.block5.conv3x3.conv.dilation == (2, 2)
    assert base.layer5.block3.conv3x3.conv.dilation == (4, 4)
    assert [c.dilation[0] for c in base.aspp.children()] == [6, 12, 18, 24]
    assert all(c.bias is not None for c in base.aspp.children())
    assert v2.msc_scales == (0.5, 0.75)
    assert v2.meta.preprocessing == CAFFE_BGR and v2.meta.output_stride == 8


def test_v2_odd_input_gives_logits_at_input_size(v2):
    x = torch.randn(1, 3, 65, 97)
    with torch.inference_mode():
        scales = v2.forward_scales(x)
        out, aux = v2(x, return_aux=True)
    assert [tuple(s.shape[-2:]) for s in scales] == [(9, 13), (5, 7), (7, 10), (9, 13)]
    assert out.shape == (1, 21, 65, 97) and aux is None and torch.isfinite(out).all()


def test_msc_is_the_pixelwise_max_of_full_and_resized_scaled_logits():
    model = _tiny_v2()
    x = torch.randn(1, 3, 33, 41)
    with torch.inference_mode():
        full = model.base(x)
        scaled = [model.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                  for s in (0.5, 0.75)]
        expected = full
        for s in scaled:
            expected = torch.maximum(expected, F.interpolate(s, size=full.shape[-2:], mode="bilinear",
                                                             align_corners=False))
        got = model(x)
    torch.testing.assert_close(got, F.interpolate(expected, size=(33, 41), mode="bilinear",
                                                  align_corners=False), rtol=0, atol=0)
    # MSC really changes the answer: the max is not the full-scale map everywhere
    assert not torch.equal(expected, full)


@pytest.mark.parametrize("off", [None, ()])
def test_msc_off_runs_the_full_scale_only(off):
    with_msc, without = _tiny_v2(), _tiny_v2(msc_scales=off)
    without.load_state_dict(with_msc.state_dict())
    assert without.msc_scales == ()
    x = torch.randn(1, 3, 33, 47)
    with torch.inference_mode():
        plain = without(x)
        assert len(without.forward_scales(x)) == 1
        assert torch.equal(plain, F.interpolate(without.base(x), size=(33, 47), mode="bilinear",
                                                align_corners=False))
        # bilinear weights are non-negative, so the resized max dominates the resized full scale
        assert (with_msc(x) >= plain - 1e-6).all()


def test_v2_builder_options_and_errors():
    model = engine.build_model("deeplabv2_resnet101", num_classes=3, msc_scales=())
    assert model.msc_scales == () and model.meta.options["msc_scales"] == ()
    assert engine.ModelMeta.from_json(model.meta.to_json()).options["msc_scales"] == []
    with pytest.raises(ValueError, match="msc_scales"):
        _tiny_v2(msc_scales=(0.5, -1.0))
    with pytest.raises(ValueError, match="output stride"):
        engine.build_model("deeplabv2_resnet101", output_stride=16)


def test_v2_parameter_views_cover_every_weight_once(v2):
    backbone = {id(p) for p in v2.backbone.parameters()}
    head = {id(p) for p in v2.classifier.parameters()}
    assert not backbone & head and backbone | head == {id(p) for p in v2.parameters()}
    assert v2.aux_classifier is None


@pytest.mark.skipif(not os.environ.get("DEEPLAB_KAZUTO_ROOT"),
                    reason="set DEEPLAB_KAZUTO_ROOT to a kazuto1011/deeplab-pytorch checkout")
def test_v2_logits_equal_kazuto1011(v2):
    sys.path.insert(0, os.environ["DEEPLAB_KAZUTO_ROOT"])
    try:
        from libs.models import DeepLabV2_ResNet101_MSC
    finally:
        sys.path.pop(0)
    ref = DeepLabV2_ResNet101_MSC(n_classes=21).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    v2.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 65, 97) * 50
    with torch.inference_mode():
        expected = F.interpolate(ref(x), size=(65, 97), mode="bilinear", align_corners=False)
        got = v2(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- DeepLab v1
def test_v1_size_layout_and_preprocessing():
    model = engine.build_model("deeplabv1_vgg16", num_classes=21)
    assert _trainable(model) == 20_505_429
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {f"backbone.{n[len('features.'):]}.weight": (o, i, 3, 3) for n, (o, i) in TV_VGG16_SHAPES.items()}
    expected |= {f"backbone.{n[len('features.'):]}.bias": (o,) for n, (o, _) in TV_VGG16_SHAPES.items()}
    expected |= {"classifier.fc6.weight": (1024, 512, 3, 3), "classifier.fc6.bias": (1024,),
                 "classifier.fc7.weight": (1024, 1024, 1, 1), "classifier.fc7.bias": (1024,),
                 "classifier.fc8.weight": (21, 1024, 1, 1), "classifier.fc8.bias": (21,)}
    assert keys == expected
    assert model.meta.preprocessing == IMAGENET and model.meta.output_stride == 8


def test_v1_pools_dilations_and_output_stride():
    model = engine.build_model("deeplabv1_vgg16", num_classes=4)
    pools = [m for m in model.backbone if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pools] == \
        [(3, 2, 1, True)] * 3 + [(3, 1, 1, True)] * 2
    assert [model.backbone[i].dilation for i in (21, 24, 26, 28)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    head = model.classifier
    assert isinstance(head.pool5a, nn.AvgPool2d) and head.fc6.dilation == (12, 12)
    assert head.fc6.padding == (12, 12) and isinstance(head.drop7, nn.Dropout)
    with torch.inference_mode():
        # the prototxt's alignment for n = 32k - 31 (k = 4): 97 -> 49 -> 25 -> 13
        assert model.backbone(torch.randn(1, 3, 97, 97))["out"].shape == (1, 512, 13, 13)
        assert model.backbone(torch.randn(1, 3, 65, 97))["out"].shape == (1, 512, 9, 13)
        out, aux = model(torch.randn(2, 3, 65, 97), return_aux=True)
    assert out.shape == (2, 4, 65, 97) and aux is None
    with pytest.raises(ValueError, match="output stride"):
        engine.build_model("deeplabv1_vgg16", output_stride=16)


def test_vgg16_imagenet_keys_map_onto_the_backbone(tmp_path):
    sd = _fake_tv_vgg16()
    mapped = vgg16_imagenet_to_backbone(sd)
    assert len(mapped) == 26 and not any("classifier" in k for k in mapped)
    assert mapped["backbone.28.weight"] is sd["features.28.weight"]
    model = engine.build_model("deeplabv1_vgg16")
    fc8 = model.classifier.fc8.weight.clone()
    load_vgg16_imagenet(model, sd)
    for name in TV_VGG16_SHAPES:
        i = int(name.split(".")[1])
        assert torch.equal(model.backbone[i].weight, sd[f"{name}.weight"])
    assert torch.equal(model.classifier.fc8.weight, fc8)
    # through the builder, from a file (weights_only load), and kept out of the metadata
    path = tmp_path / "vgg16.pth"
    torch.save({k: v for k, v in sd.items() if k.startswith("features.")}, path)
    built = engine.build_model("deeplabv1_vgg16", num_classes=3, pretrained_backbone=str(path))
    assert torch.equal(built.backbone[0].weight, sd["features.0.weight"])
    assert "pretrained_backbone" not in built.meta.options


def test_vgg16_mapping_rejects_other_networks():
    sd = _fake_tv_vgg16()
    with pytest.raises(KeyError, match="features.28.weight"):
        vgg16_imagenet_to_backbone({k: v for k, v in sd.items() if k != "features.28.weight"})
    bn_like = dict(sd, **{"features.1.running_mean": torch.zeros(64)})
    with pytest.raises(KeyError, match="features.1.running_mean"):
        vgg16_imagenet_to_backbone(bn_like)
    with pytest.raises(ValueError, match="features.0.weight"):
        vgg16_imagenet_to_backbone(dict(sd, **{"features.0.weight": torch.zeros(64, 1, 3, 3)}))


def test_vgg16_mapping_against_torchvision():
    tv = pytest.importorskip("torchvision")
    ref = tv.models.vgg16()
    model = load_vgg16_imagenet(engine.build_model("deeplabv1_vgg16"), ref.state_dict())
    # Apply DeepLab's changes to torchvision's own VGG16: the backbones must then agree exactly.
    feats = ref.features.eval()
    for i, stride in ((4, 2), (9, 2), (16, 2), (23, 1), (30, 1)):
        feats[i] = nn.MaxPool2d(3, stride, 1, ceil_mode=True)
    for i in (24, 26, 28):
        feats[i].dilation, feats[i].padding = (2, 2), (2, 2)
    x = torch.randn(1, 3, 49, 67)
    with torch.inference_mode():
        torch.testing.assert_close(model.backbone(x)["out"], feats(x), rtol=0, atol=0)
