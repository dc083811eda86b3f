"""The encoders segmentation_models_pytorch (smp) builds its DeepLab models on, in its exact layout.

smp's ``resnet34/50/101`` encoders are torchvision ResNets without ``avgpool``/``fc``; its
``mobilenet_v2`` encoder is torchvision's MobileNetV2 without ``classifier`` (``features.0`` …
``features.18``, the 1280-channel 1×1 conv included).  Keys are therefore torchvision's, under the
model's ``encoder.`` prefix.

``forward`` returns smp's feature list: the input, then one map per stage at strides 2, 4, 8, 16, 32
(before dilation).  For output strides 8 and 16 smp dilates differently from torchvision's
segmentation models: *every* conv of a dilated stage (the first block's strided conv and its 1×1
projection included) gets stride 1 and the stage's rate, ``32 // output_stride`` for the last stage
and ``16 // output_stride`` for the one before; :func:`dilate` reproduces that rule.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from .resnet import Bottleneck

__all__ = ["BasicBlock", "SmpResNetEncoder", "SmpMobileNetV2Encoder", "dilate", "smp_encoder", "ENCODER_NAMES"]


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3×3 convs with BN, stride on the first; identity or
    projection skip (``downsample.0`` conv, ``downsample.1`` BN)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _init_torchvision(module: nn.Module) -> None:
    # torchvision's classification init (both encoders); a randomly built model stays trainable.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SmpResNetEncoder(nn.Module):
    """smp's ``ResNetEncoder``: N×3×H×W -> [x, stem (H/2), layer1 (H/4), layer2, layer3, layer4]."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        exp = block.expansion
        self.out_channels = (3, 64, 64 * exp, 128 * exp, 256 * exp, 512 * exp)
        _init_torchvision(self)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> dict[int, list[nn.Module]]:
        """The modules working at stride 16 and 32, which dilation turns to stride 1 (smp's get_stages)."""
        return {16: [self.layer3], 32: [self.layer4]}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        feats.append(x)
        x = self.layer1(self.maxpool(x))
        feats.append(x)
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


class _ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation for MobileNetV2: conv (padding (k-1)//2) -> BN -> ReLU6."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: [1×1 expand] -> 3×3 depthwise -> 1×1 linear project (``conv.*``).

    The residual is decided once, from the configured stride, as torchvision does; dilation later
    changes the stride but never the channel counts, so the decision stays right.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        layers: list[nn.Module] = [_ConvBNReLU6(cin, hidden, k=1)] if expand_ratio != 1 else []
        layers += [_ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (channels), n (repeats), s (stride): MobileNetV2 paper Table 2, as torchvision.
_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


class SmpMobileNetV2Encoder(nn.Module):
    """smp's ``MobileNetV2Encoder``: ``features.0``-``18``; outputs taken after blocks 1, 3, 6, 13, 18
    (16, 24, 32, 96 and 1280 channels at strides 2, 4, 8, 16, 32)."""

    OUT_INDEXES = (1, 3, 6, 13, 18)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _V2_SETTING:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_ConvBNReLU6(cin, 1280, k=1))
        self.features = nn.Sequential(*layers)
        self.out_channels = (3, 16, 24, 32, 96, 1280)
        _init_torchvision(self)

    def stages(self) -> dict[int, list[nn.Module]]:
        return {16: list(self.features[7:14]), 32: list(self.features[14:])}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.OUT_INDEXES:
                feats.append(x)
        return feats


def _replace_strides_with_dilation(modules: Iterable[nn.Module], rate: int) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                m.stride, m.dilation, m.padding = (1, 1), (rate, rate), ((kh // 2) * rate, (kw // 2) * rate)


def dilate(encoder: SmpResNetEncoder | SmpMobileNetV2Encoder, output_stride: int) -> None:
    """smp's ``make_dilated``: stages deeper than ``output_stride`` (8 or 16) run at stride 1 with
    dilation ``stage_stride // output_stride`` on every conv.  32 leaves the encoder as it is."""
    if output_stride == 32:
        return
    if output_stride not in (8, 16):
        raise ValueError(f"smp encoders support output stride 8, 16 or 32, not {output_stride}")
    for stage_stride, modules in encoder.stages().items():
        if stage_stride > output_stride:
            _replace_strides_with_dilation(modules, stage_stride // output_stride)


_RESNETS = {"resnet34": (BasicBlock, (3, 4, 6, 3)), "resnet50": (Bottleneck, (3, 4, 6, 3)),
            "resnet101": (Bottleneck, (3, 4, 23, 3))}
ENCODER_NAMES: tuple[str, ...] = (*_RESNETS, "mobilenet_v2")


def smp_encoder(name: str, output_stride: int) -> SmpResNetEncoder | SmpMobileNetV2Encoder:
    """smp's ``get_encoder(name, depth=5, output_stride=...)`` with random weights, 3 input channels."""
    if name == "mobilenet_v2":
        encoder: SmpResNetEncoder | SmpMobileNetV2Encoder = SmpMobileNetV2Encoder()
    elif name in _RESNETS:
        encoder = SmpResNetEncoder(*_RESNETS[name])
    else:
        raise ValueError(f"unknown smp encoder {name!r}; supported: {', '.join(ENCODER_NAMES)}")
    dilate(encoder, output_stride)
    encoder.output_stride = output_stride
    return encoder
