"""MobileNet DeepLab models: torchvision's DeepLabV3-MobileNetV3-Large and VainF's MobileNetV2 v3 / v3+.

Two peers, two layouts, kept exactly so their released weights load without renaming:

* ``deeplabv3_mobilenet_v3_large`` follows torchvision: the dilated MobileNetV3-Large ``features``
  (17 children, ``backbone.0`` … ``backbone.16``) inside an IntermediateLayerGetter, ``DeepLabHead(960)``
  with torchvision's default ASPP rates (12, 24, 36) even though the backbone runs at output stride 16,
  and an optional ``FCNHead(40)`` aux head on block 4 (output stride 8).
* ``deeplabv3_mobilenet_v2`` / ``deeplabv3plus_mobilenet_v2`` follow VainF/DeepLabV3Plus-Pytorch: the
  MobileNetV2 features split into ``low_level_features`` (0-3, stride 4, 24 channels) and
  ``high_level_features`` (4-17, original indices kept, 320 channels); the final 1280-channel conv is
  dropped.  VainF pads every inverted-residual *input* with TF-style "fixed padding" and runs all its
  convs unpadded, so even the 1×1 expansion sees the zero border; we do the same so logits match.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..meta import IMAGENET, TORCHVISION_SEG
from ._base import IntermediateLayerGetter, SegModel, state_dict_from
from .heads import DeepLabHead, DeepLabHeadV3Plus, FCNHead, VainFDeepLabHead, convert_to_separable_conv
from .registry import register

__all__ = [
    "MobileNetV3LargeConfig",
    "mobilenet_v3_large_features",
    "MobileNetV2Backbone",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_mobilenet_v2",
    "deeplabv3plus_mobilenet_v2",
    "features_from_imagenet_mobilenet_v2",
    "features_from_imagenet_mobilenet_v3_large",
]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% (TF-slim rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _init_backbone(module: nn.Module) -> None:
    # Both peers initialise their MobileNets this way; it keeps a randomly built model trainable.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- MobileNetV3-Large (torchvision)

class _ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> optional activation; children ``0``, ``1``, ``2`` as torchvision's
    Conv2dNormActivation, padding ``(k - 1) // 2 * dilation`` (same-size output at stride 1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act: Callable[..., nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation=dilation, groups=groups, bias=False),
            norm(cout)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class _SqueezeExcite(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))); fc1/fc2 are 1×1 convs with bias (torchvision names)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class MobileNetV3LargeConfig:
    """One bneck row of MobileNetV3-Large (paper Table 1): kernel, expansion, output, SE, act, stride."""

    # in, kernel, expanded, out, use_se, hardswish, stride; the last three rows form stage C4/C5 and
    # become dilated (rate 2, stride 1) for segmentation.
    ROWS: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
        (16, 3, 16, 16, False, False, 1),
        (16, 3, 64, 24, False, False, 2),
        (24, 3, 72, 24, False, False, 1),
        (24, 5, 72, 40, True, False, 2),
        (40, 5, 120, 40, True, False, 1),
        (40, 5, 120, 40, True, False, 1),
        (40, 3, 240, 80, False, True, 2),
        (80, 3, 200, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1),
        (80, 3, 480, 112, True, True, 1),
        (112, 3, 672, 112, True, True, 1),
        (112, 5, 672, 160, True, True, 2),
        (160, 5, 960, 160, True, True, 1),
        (160, 5, 960, 160, True, True, 1),
    )
    DILATED_FROM = 12  # index into ROWS of the first dilated block


class _InvertedResidualV3(nn.Module):
    """MobileNetV3 bneck: [1×1 expand] -> k×k depthwise -> [SE] -> 1×1 project, residual when shapes allow.

    ``_is_cn`` marks blocks whose configured stride is 2 (stage boundaries), as torchvision does, even
    when dilation replaced the stride; the segmentation model picks its out/aux taps from them.
    """

    def __init__(self, cin: int, k: int, exp: int, cout: int, use_se: bool, use_hs: bool, stride: int,
                 dilation: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        act = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_ConvBNAct(cin, exp, 1, norm=norm, act=act))
        layers.append(_ConvBNAct(exp, exp, k, stride=1 if dilation > 1 else stride, dilation=dilation,
                                 groups=exp, norm=norm, act=act))
        if use_se:
            layers.append(_SqueezeExcite(exp, _make_divisible(exp // 4, 8)))
        layers.append(_ConvBNAct(exp, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.out_channels = cout
        self._is_cn = stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


def mobilenet_v3_large_features(dilated: bool = True) -> nn.Sequential:
    """torchvision's ``mobilenet_v3_large(dilated=...).features``: 17 children, stem ``0``, bnecks
    ``1``-``15``, the 960-channel 1×1 conv ``16``.  Input N×3×H×W, output N×960×H/16×W/16 when dilated
    (H/32 otherwise).  BatchNorm eps 1e-3, momentum 0.01 as torchvision (eps changes outputs)."""
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    rows = MobileNetV3LargeConfig.ROWS
    layers: list[nn.Module] = [_ConvBNAct(3, rows[0][0], 3, stride=2, norm=norm, act=nn.Hardswish)]
    for i, (cin, k, exp, cout, se, hs, s) in enumerate(rows):
        dil = 2 if dilated and i >= MobileNetV3LargeConfig.DILATED_FROM else 1
        layers.append(_InvertedResidualV3(cin, k, exp, cout, se, hs, s, dil, norm))
    last_in = rows[-1][3]
    layers.append(_ConvBNAct(last_in, 6 * last_in, 1, norm=norm, act=nn.Hardswish))
    features = nn.Sequential(*layers)
    _init_backbone(features)
    return features


# --------------------------------------------------------------------------- MobileNetV2 (VainF)

class _ConvBNReLU6(nn.Sequential):
    """conv with **no padding** (VainF pads the block input instead) -> BN -> ReLU6."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, 0, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


def _fixed_padding(kernel: int, dilation: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that keeps a dilated k×k conv 'same' at stride 1;
    at stride 2 it gives ceil(H/2) like TensorFlow's SAME."""
    total = kernel + (kernel - 1) * (dilation - 1) - 1
    beg = total // 2
    return beg, total - beg, beg, total - beg


class _InvertedResidualV2(nn.Module):
    """MobileNetV2 block as VainF writes it: pad input, [1×1 expand], 3×3 depthwise, 1×1 linear project.

    Children ``conv.0`` … ``conv.3`` (``conv.0`` is the depthwise conv when ``expand_ratio == 1``), the
    same names as torchvision's MobileNetV2, so ImageNet weights map by index alone.
    """

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(cin, hidden, k=1))
        layers += [_ConvBNReLU6(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.input_padding = _fixed_padding(3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, self.input_padding))
        return x + y if self.use_res_connect else y


# t (expansion), c (channels), n (repeats), s (stride): MobileNetV2 paper Table 2 without the 1280 conv.
_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


class MobileNetV2Backbone(nn.Module):
    """VainF's MobileNetV2 trunk: ``low_level_features`` (0-3) then ``high_level_features`` (4-17).

    Input N×3×H×W; low level N×24×~H/4×~W/4; high level N×320×~H/OS×~W/OS (OS 8 or 16).  The stem is a
    3×3 stride-2 conv without padding, so sizes are ``(H - 1) // 2`` after it, exactly as VainF.  Once
    the running stride reaches ``output_stride``, later stages keep stride 1 and multiply the dilation;
    the first block of such a stage still uses the previous dilation (VainF's rule, kept for parity).
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetV2 output stride must be 8, 16 or 32, not {output_stride}")
        features: list[nn.Module] = [_ConvBNReLU6(3, 32, stride=2)]
        cin, current, dilation = 32, 2, 1
        for t, c, n, s in _V2_SETTING:
            previous = dilation
            if current == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current = s, current * s
            for i in range(n):
                features.append(_InvertedResidualV2(cin, c, stride if i == 0 else 1,
                                                    previous if i == 0 else dilation, t))
                cin = c
        named = [(str(i), m) for i, m in enumerate(features)]
        self.low_level_features = nn.Sequential(OrderedDict(named[:4]))
        self.high_level_features = nn.Sequential(OrderedDict(named[4:]))
        self.out_channels, self.low_level_channels = cin, 24
        _init_backbone(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.high_level_features(self.low_level_features(x))


# --------------------------------------------------------------------------- registered builders

@register("deeplabv3_mobilenet_v3_large", output_strides=(16,), default_stride=16, preprocessing=TORCHVISION_SEG,
          description="DeepLab v3, MobileNetV3-Large, OS 16 (torchvision layout)")
def deeplabv3_mobilenet_v3_large(num_classes: int = 21, output_stride: int = 16, *, aux: bool = False,
                                 pretrained_backbone=None) -> SegModel:
    """torchvision's ``deeplabv3_mobilenet_v3_large``: logits N×num_classes×H×W for N×3×H×W input.

    The head sees block 16 (960 ch, OS 16); ``aux=True`` adds ``FCNHead(40)`` on block 4 (OS 8).
    ASPP rates stay torchvision's defaults (12, 24, 36): its released weights were trained so.
    ``pretrained_backbone``: None, or torchvision's ImageNet MobileNetV3-Large weights (state dict or path).
    """
    if output_stride != 16:
        raise ValueError(f"deeplabv3_mobilenet_v3_large supports output stride 16 only, not {output_stride}")
    features = mobilenet_v3_large_features(dilated=True)
    # Stage taps as torchvision finds them: stem, every strided block, the last conv.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    out_pos, aux_pos = stages[-1], stages[-4]
    return_layers = {str(out_pos): "out"}
    if aux:
        return_layers[str(aux_pos)] = "aux"
    backbone = IntermediateLayerGetter(features, return_layers)
    classifier = DeepLabHead(features[out_pos].out_channels, num_classes)
    aux_classifier = FCNHead(features[aux_pos].out_channels, num_classes) if aux else None
    model = SegModel(backbone, classifier, aux_classifier)
    _load_imagenet_backbone(model, pretrained_backbone, features_from_imagenet_mobilenet_v3_large)
    return model


def _vainf_rates(output_stride: int) -> tuple[int, int, int]:
    return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


@register("deeplabv3_mobilenet_v2", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET,
          description="DeepLab v3, MobileNetV2 (VainF layout)")
def deeplabv3_mobilenet_v2(num_classes: int = 21, output_stride: int = 16, *, pretrained_backbone=None) -> SegModel:
    """VainF's ``deeplabv3_mobilenet``: ASPP head on the 320-channel MobileNetV2 output.

    Keys ``backbone.low_level_features.*``, ``backbone.high_level_features.4``-``17.*``,
    ``classifier.classifier.*``.  Output N×num_classes×H×W logits.  ``pretrained_backbone``: None, or
    torchvision's ImageNet MobileNetV2 weights (state dict or path), as VainF starts training from.
    """
    trunk = MobileNetV2Backbone(output_stride)
    backbone = IntermediateLayerGetter(trunk, {"high_level_features": "out"})
    model = SegModel(backbone, VainFDeepLabHead(trunk.out_channels, num_classes, _vainf_rates(output_stride)))
    _load_imagenet_backbone(model, pretrained_backbone, features_from_imagenet_mobilenet_v2)
    return model


@register("deeplabv3plus_mobilenet_v2", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET,
          description="DeepLab v3+, MobileNetV2 (VainF layout)")
def deeplabv3plus_mobilenet_v2(num_classes: int = 21, output_stride: int = 16, *, separable: bool = False,
                               pretrained_backbone=None) -> SegModel:
    """VainF's ``deeplabv3plus_mobilenet``: ASPP + decoder fusing the 24-channel stride-4 features.

    ``separable=True`` is VainF's ``--separable_conv``: every k>1 conv of the head becomes depthwise +
    pointwise (keys ``...body.0`` / ``body.1``).  Output N×num_classes×H×W logits.
    ``pretrained_backbone`` as for :func:`deeplabv3_mobilenet_v2`.
    """
    trunk = MobileNetV2Backbone(output_stride)
    backbone = IntermediateLayerGetter(trunk, {"high_level_features": "out", "low_level_features": "low_level"})
    head = DeepLabHeadV3Plus(trunk.out_channels, trunk.low_level_channels, num_classes,
                             _vainf_rates(output_stride))
    if separable:
        head = convert_to_separable_conv(head)
    model = SegModel(backbone, head, classifier_takes_dict=True)
    _load_imagenet_backbone(model, pretrained_backbone, features_from_imagenet_mobilenet_v2)
    return model


# --------------------------------------------------------------------------- ImageNet backbone weights

def features_from_imagenet_mobilenet_v2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``) -> our VainF-layout backbone keys.

    ``features.0``-``3.*`` -> ``backbone.low_level_features.N.*``, ``features.4``-``17.*`` ->
    ``backbone.high_level_features.N.*``; the 1280-channel ``features.18`` and the ImageNet
    ``classifier`` have no place in the segmentation model and are dropped.  Tensors are not copied.
    Raises ValueError when the dict holds no ``features.N`` keys at all.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".", 2)
        if len(parts) < 3 or parts[0] != "features" or not parts[1].isdigit():
            continue
        idx = int(parts[1])
        if idx <= 3:
            out[f"backbone.low_level_features.{idx}.{parts[2]}"] = value
        elif idx <= 17:
            out[f"backbone.high_level_features.{idx}.{parts[2]}"] = value
    if not out:
        raise ValueError("not a torchvision MobileNetV2 state dict: no 'features.N.*' keys")
    return out


def features_from_imagenet_mobilenet_v3_large(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ImageNet MobileNetV3-Large (``mobilenet_v3_large-8738ca79.pth``) -> ``backbone.N.*``.

    Dilation changes no weight shape, so ``features.N.*`` maps one to one (N = 0..16); the ImageNet
    ``classifier`` is dropped.  Raises ValueError when the dict holds no ``features.N`` keys.
    """
    out = {f"backbone.{k[len('features.'):]}": v for k, v in state_dict.items() if k.startswith("features.")}
    if not out:
        raise ValueError("not a torchvision MobileNetV3 state dict: no 'features.N.*' keys")
    return out


def _load_imagenet_backbone(model: nn.Module, weights, convert: Callable[[dict], dict]) -> None:
    """Load ImageNet classification weights (state dict, ``.pth`` or ``.safetensors`` path) into
    ``model.backbone`` after ``convert`` renamed them; every backbone tensor must be covered."""
    if weights is None or weights is False:
        return
    if weights is True:
        raise ValueError("pretrained_backbone=True needs weights: pass the ImageNet state dict or its path")
    missing, unexpected = model.load_state_dict(convert(state_dict_from(weights)), strict=False)
    missing = [k for k in missing if k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"ImageNet weights do not fit {type(model).__name__} backbone: "
                         f"missing {missing[:8]}, unexpected {unexpected[:8]}")
