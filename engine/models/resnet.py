"""torchvision-layout ResNet-50/101 (v1.5: stride on the 3x3 conv) with atrous output strides.

Key names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.2.bn3``,
``layer1.0.downsample.0/1``, ``fc``), which VainF's copy shares, so ImageNet backbones
(``resnet50-0676ba61.pth``, ``resnet101-63fe2227.pth``) and both peers' DeepLab checkpoints load as is.

For DeepLab the network is wrapped by :class:`IntermediateLayerGetter`, which drops ``avgpool``/``fc``:
output stride 16 turns layer4's stride into dilation 2, output stride 8 also layer3's (dilations 2, 4).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from ._base import IntermediateLayerGetter, state_dict_from

__all__ = [
    "Bottleneck",
    "ResNet",
    "RESNET_DEPTHS",
    "atrous_config",
    "resnet",
    "resnet_backbone",
    "load_imagenet_resnet",
]

# Blocks per stage for the Bottleneck variants DeepLab uses.
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def atrous_config(output_stride: int) -> tuple[tuple[bool, bool, bool], tuple[int, int, int]]:
    """``(replace_stride_with_dilation for layer2..4, ASPP rates)`` for an output stride of 8 or 16.

    The ASPP rates double when the output stride halves so the receptive field in pixels is kept
    (DeepLab v3 paper, section 3.3).
    """
    if output_stride == 16:
        return (False, False, True), (6, 12, 18)
    if output_stride == 8:
        return (False, True, True), (12, 24, 36)
    raise ValueError(f"ResNet DeepLab supports output stride 8 or 16, not {output_stride}")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand (x4), each with BN; identity or projection skip.

    N×inplanes×H×W -> N×(4·planes)×H/stride×W/stride.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # torchvision (and VainF) put the stride on the 3x3 conv ("ResNet v1.5"); padding = dilation
        # keeps the spatial size when stride is 1.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet with torchvision's layout; ``forward`` gives N×num_classes classification logits.

    ``replace_stride_with_dilation[i]`` replaces layer(i+2)'s stride 2 by dilation, as torchvision does:
    the first block of such a stage keeps the previous dilation and later blocks use the new one.
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 1000,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        if len(layers) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError("need 4 stage depths and 3 replace_stride_with_dilation flags")
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> ResNet:
    """ResNet-50/101/152 with random weights (torchvision init)."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, not {depth}")
    return ResNet(RESNET_DEPTHS[depth], replace_stride_with_dilation=replace_stride_with_dilation)


def load_imagenet_resnet(net: nn.Module, weights) -> None:
    """Load ImageNet weights (a state dict or a ``.pth``/``.safetensors`` path) into a :class:`ResNet`.

    ``fc.*`` may be present or absent; any other missing or unexpected key is an error naming them.
    """
    missing, unexpected = net.load_state_dict(state_dict_from(weights), strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"backbone weights do not fit ResNet: missing {missing[:8]}, unexpected {unexpected[:8]}")


def resnet_backbone(depth: int, output_stride: int, return_layers: Mapping[str, str],
                    pretrained_backbone=None) -> IntermediateLayerGetter:
    """A dilated ResNet returning ``{new_name: feature}`` for the stages in ``return_layers``.

    Feature shapes for an N×3×H×W input: ``layer1`` N×256×H/4×W/4, ``layer3`` N×1024×H/os3,
    ``layer4`` N×2048×H/os (ceil division at each stride-2 step).  ``pretrained_backbone``: None/False,
    or ImageNet weights for :func:`load_imagenet_resnet` (no download happens here).
    """
    dilate, _ = atrous_config(output_stride)
    net = resnet(depth, dilate)
    if pretrained_backbone is True:
        raise ValueError("pretrained_backbone=True needs a file: pass the ImageNet state dict or its path")
    if pretrained_backbone not in (None, False):
        load_imagenet_resnet(net, pretrained_backbone)
    return IntermediateLayerGetter(net, return_layers=dict(return_layers))
