"""Every registered architecture: builds, keeps the output contract, matches the published sizes."""
from __future__ import annotations

import pytest
import torch

import engine
from engine.models import model_spec

EXPECTED_ARCHS = {
    "deeplabv1_vgg16", "deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v2", "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101", "deeplabv3plus_mobilenet_v2", "deeplabv3plus_xception65",
}
# segmentation_models_pytorch's DeepLabV3 / DeepLabV3Plus (engine/models/smp.py)
EXPECTED_ARCHS |= {f"smp_{family}_{encoder}" for family in ("deeplabv3", "deeplabv3plus")
                   for encoder in ("resnet34", "resnet50", "resnet101", "mobilenet_v2")}
# mmsegmentation's DeepLabV3 / DeepLabV3+ on ResNetV1c (engine/models/mmseg.py)
EXPECTED_ARCHS |= {f"mmseg_{family}_{depth}v1c" for family in ("deeplabv3", "deeplabv3plus") for depth in ("r50", "r101")}

# Trainable parameters with 21 classes, as the peers report them (torchvision / VainF / kazuto1011).
EXACT_PARAMS = [
    ("deeplabv2_resnet101", {}, 44_048_532),
    ("deeplabv3_resnet50", {"aux": True}, 42_004_074),
    ("deeplabv3_resnet50", {}, 39_638_869),
    ("deeplabv3_resnet101", {"aux": True}, 60_996_202),
    ("deeplabv3_mobilenet_v3_large", {"aux": True}, 11_029_328),
    ("deeplabv3_mobilenet_v2", {}, 5_113_877),
    ("deeplabv3plus_resnet50", {}, 39_761_845),
    ("deeplabv3plus_resnet101", {}, 58_753_973),
    ("deeplabv3plus_mobilenet_v2", {}, 5_225_717),
]


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_has_every_generation():
    assert set(engine.list_models()) == EXPECTED_ARCHS


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCHS))
@pytest.mark.parametrize("num_classes", [21, 5])
def test_builds_and_returns_logits_at_input_size(name, num_classes):
    model = engine.build_model(name, num_classes=num_classes)
    assert not model.training
    assert model.meta.arch == name and model.meta.num_classes == num_classes
    assert len(model.meta.class_names) == num_classes
    x = torch.randn(1, 3, 65, 97)
    with torch.inference_mode():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (1, num_classes, 65, 97)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCHS))
def test_every_allowed_output_stride_builds(name):
    spec = model_spec(name)
    for os_ in spec.output_strides:
        model = engine.build_model(name, num_classes=3, output_stride=os_)
        assert model.meta.output_stride == os_
        with torch.inference_mode():
            assert model(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)
    bad = next(s for s in (4, 8, 16, 32) if s not in spec.output_strides)
    with pytest.raises(ValueError, match="output stride"):
        engine.build_model(name, output_stride=bad)


@pytest.mark.parametrize("name,kw,expected", EXACT_PARAMS,
                         ids=[f"{n}{'-aux' if kw else ''}" for n, kw, _ in EXACT_PARAMS])
def test_trainable_parameter_counts_match_the_peers(name, kw, expected):
    assert _trainable(engine.build_model(name, num_classes=21, **kw)) == expected


def test_deeplabv1_is_about_the_papers_size():
    n = _trainable(engine.build_model("deeplabv1_vgg16", num_classes=21))
    assert 20.0e6 <= n <= 21.0e6, n


def test_unknown_model_and_bad_class_count_are_clear():
    with pytest.raises(KeyError, match="unknown model"):
        engine.build_model("deeplabv9_resnet0")
    with pytest.raises(ValueError, match="num_classes"):
        engine.build_model("deeplabv3_mobilenet_v2", num_classes=0)
