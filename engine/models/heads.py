"""DeepLab heads shared by every backbone family: ASPP, the v3 head, the v3+ decoder, the FCN aux head.

Two state-dict layouts exist in the wild and both must load unchanged:

* torchvision (``torchvision.models.segmentation``): ``DeepLabHead`` is a bare ``nn.Sequential``, so
  its keys are ``classifier.0.convs.0.0.weight`` ... ``classifier.4.weight``; ASPP dropout 0.5;
  PyTorch's default init.
* VainF/DeepLabV3Plus-Pytorch: ``VainFDeepLabHead`` wraps the same Sequential in ``.classifier``
  (keys ``classifier.classifier.0.convs...``) and ``DeepLabHeadV3Plus`` adds the 48-channel low-level
  projection and the 304->256 3x3 fusion conv; ASPP dropout 0.1; Kaiming-normal conv init, BN = (1, 0).

``AtrousSeparableConvolution`` / ``convert_to_separable_conv`` reproduce VainF's ``--separable_conv``
option (depthwise ``body.0`` then pointwise ``body.1``), which rewrites every k>1 conv of a head.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ASPPConv",
    "ASPPPooling",
    "ASPP",
    "DeepLabHead",
    "FCNHead",
    "VainFDeepLabHead",
    "DeepLabHeadV3Plus",
    "AtrousSeparableConvolution",
    "convert_to_separable_conv",
    "vainf_init_",
]


def vainf_init_(module: nn.Module) -> None:
    """VainF's ``_init_weight``: Kaiming-normal (fan_in, ReLU gain) conv weights, BN/GN weight 1 bias 0.

    Conv biases keep PyTorch's default init, as in VainF.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class ASPPConv(nn.Sequential):
    """3x3 atrous conv (padding = dilation, so the size is kept) + BN + ReLU; keys ``0``, ``1``."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv + BN + ReLU, upsampled back to N×C×H×W.

    Keys ``1.weight`` (conv) and ``2.*`` (BN); index 0 is the parameter-free pool.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = super().forward(x)
        # A 1x1 map upsampled bilinearly is a constant broadcast; kept as interpolate to match peers.
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLab v3): N×in×H×W -> N×out×H×W.

    ``convs.0`` 1x1 branch, ``convs.1..k`` one 3x3 atrous branch per rate, ``convs.k+1`` image pooling;
    ``project`` = 1x1 conv over the concatenation + BN + ReLU + Dropout(``dropout``).
    torchvision uses dropout 0.5, VainF 0.1 (dropout has no weights, so layouts are identical).
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        rates = tuple(int(r) for r in atrous_rates)
        modules: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )]
        modules += [ASPPConv(in_channels, out_channels, r) for r in rates]
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.atrous_rates = rates
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """torchvision's v3 head: ASPP, 3x3 conv 256 + BN + ReLU, 1x1 conv to ``num_classes``.

    Input ``features["out"]`` N×in×h×w float; output N×num_classes×h×w logits (not upsampled).
    """

    def __init__(self, in_channels: int, num_classes: int,
                 atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, dropout=0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """torchvision's auxiliary head on layer3: 3x3 conv to in/4 + BN + ReLU + Dropout(0.1) + 1x1 conv."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class VainFDeepLabHead(nn.Module):
    """VainF's v3 head: the torchvision Sequential one level deeper (``.classifier``), dropout 0.1.

    Takes ``features["out"]`` (N×in×h×w) like :class:`DeepLabHead`, so it is used with
    ``SegModel(classifier_takes_dict=False)``; the key prefix becomes ``classifier.classifier.``.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 aspp_dilate: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            ASPP(in_channels, aspp_dilate, dropout=0.1),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )
        vainf_init_(self)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        # VainF's own head receives the feature dict; accept both so either SegModel mode works.
        if isinstance(x, dict):
            x = x["out"]
        return self.classifier(x)


class DeepLabHeadV3Plus(nn.Module):
    """VainF's v3+ decoder.

    ``forward(features)`` with ``features["out"]`` N×in×h×w (OS 8/16) and ``features["low_level"]``
    N×low×H4×W4 (OS 4): ASPP on "out", bilinear upsample (align_corners=False) to the low-level size,
    concat with the 48-channel projection of "low_level" (low-level first), 3x3 conv 304->256 + BN +
    ReLU, 1x1 conv -> N×num_classes×H4×W4 logits.
    """

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 aspp_dilate: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(low_level_channels, 48, 1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(inplace=True),
        )
        self.aspp = ASPP(in_channels, aspp_dilate, dropout=0.1)
        self.classifier = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )
        vainf_init_(self)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.project(features["low_level"])
        high = self.aspp(features["out"])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


class AtrousSeparableConvolution(nn.Module):
    """Depthwise k×k (dilated, ``groups=in``) conv ``body.0`` then pointwise 1x1 ``body.1``.

    N×in×H×W -> N×out×H'×W' with the same geometry as the dense conv it replaces.  Both convs take
    the replaced conv's ``bias`` flag, as in VainF.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=bias, groups=in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=bias),
        )
        vainf_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def convert_to_separable_conv(module: nn.Module) -> nn.Module:
    """Replace, recursively and in place, every ``nn.Conv2d`` with kernel > 1 by a separable one.

    Returns the (possibly new) module: a bare Conv2d argument is returned replaced, containers are
    modified in place and returned.  1x1 convs are left alone.  The new convs are freshly initialised.
    """
    new_module = module
    if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
        new_module = AtrousSeparableConvolution(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, bias=module.bias is not None)
    for name, child in module.named_children():
        new_module.add_module(name, convert_to_separable_conv(child))
    return new_module
