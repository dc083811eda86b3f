"""mmsegmentation's DeepLab v3 / v3+ on ResNetV1c-50/101, with mmseg's own state-dict layout.

mmsegmentation (open-mmlab) publishes DeepLab weights as ``{"meta": ..., "state_dict": ...}`` files
whose keys are those of its ``EncoderDecoder``: ``backbone.*`` (``ResNetV1c``), ``decode_head.*``
(``ASPPHead`` for v3, ``DepthwiseSeparableASPPHead`` for v3+) and ``auxiliary_head.*`` (an
``FCNHead`` on layer3, used only for the training loss).  The modules here reproduce those keys
exactly, so a zoo file loads without any renaming:

* ``backbone.stem.{0,3,6}.weight``: the "deep stem" of three 3x3 convs (3->32->32->64) instead of
  torchvision's 7x7 conv; then max-pool and four Bottleneck stages (``backbone.layer1.0.conv1.weight``,
  the same block as torchvision's, stride on the 3x3 conv).
* D8 (the zoo's "-d8" files): layer3 and layer4 keep stride 1 and dilate by 2 and 4; D16: only
  layer4 dilates by 2.  ``contract_dilation`` gives a stage's first block half its dilation, which is
  what torchvision's ``replace_stride_with_dilation`` does too.  ``multi_grid=(1, 2, 4)`` reproduces
  the zoo's "-d16-mg124" files: layer4's blocks then use dilations 1, 2, 4 (mmseg does not multiply
  them by the stage dilation).
* ``decode_head``: ASPP branches ``aspp_modules.{0..3}`` (a 1x1 conv, then 3x3 convs at rates
  12/24/36 for D8, 6/12/18 for D16), global pooling ``image_pool.1``, ``bottleneck`` (3x3 fusion),
  ``conv_seg`` (classifier).  v3+ makes the dilated branches depthwise-separable
  (``aspp_modules.1.depthwise_conv.conv`` / ``.pointwise_conv.conv``), adds ``c1_bottleneck``
  (layer1 -> 48 channels) and ``sep_bottleneck.{0,1}``.
* Every conv + BatchNorm + ReLU is mmcv's ``ConvModule`` (keys ``.conv.weight``, ``.bn.*``).

The output stride cannot be read from the keys (dilations have no weights): the zoo's DeepLab files
are D8 unless their name says d16, so 8 is the default and catalog entries state it.
Upsampling is bilinear with align_corners False, as the zoo's 512x1024 / 512x512 / 480x480 configs
use in the heads and in the segmentor's final resize.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..meta import Preprocessing
from .registry import register
from .resnet import RESNET_DEPTHS, Bottleneck

__all__ = [
    "MMSEG",
    "ConvModule",
    "DepthwiseSeparableConvModule",
    "ResNetV1c",
    "ASPPHead",
    "DepthwiseSeparableASPPHead",
    "FCNHead",
    "MMSegModel",
    "mmseg_deeplab",
    "MMSEG_ARCHS",
]

# mmseg's SegDataPreProcessor: BGR file -> RGB, 0..255, mean/std per channel.
MMSEG = Preprocessing(channel_order="RGB", scale=1.0, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))

# strides and dilations of the four stages, and the ASPP rates, per output stride (mmseg configs)
_STAGES = {8: ((1, 2, 1, 1), (1, 1, 2, 4), (1, 12, 24, 36)),
           16: ((1, 2, 2, 1), (1, 1, 1, 2), (1, 6, 12, 18))}


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` with a BatchNorm: conv (no bias) -> ``bn`` -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, padding: int = 0, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's ``DepthwiseSeparableConvModule``: depthwise ConvModule, then a 1x1 ConvModule."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, kernel, padding=padding, dilation=dilation, groups=in_ch)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ResNetV1c(nn.Module):
    """mmseg's ``ResNetV1c`` (deep stem, ``style='pytorch'``, ``contract_dilation=True``).

    ``forward`` returns the four stages' outputs (256, 512, 1024, 2048 channels).
    """

    def __init__(self, depth: int, output_stride: int = 8, multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNetV1c depth must be one of {sorted(RESNET_DEPTHS)}, not {depth}")
        if output_stride not in _STAGES:
            raise ValueError(f"mmseg ResNetV1c supports output stride 8 or 16, not {output_stride}")
        strides, dilations, _ = _STAGES[output_stride]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, stride, dilation) in enumerate(zip(RESNET_DEPTHS[depth], strides, dilations)):
            planes = 64 * 2 ** i
            grid = tuple(multi_grid) if multi_grid is not None and i == 3 else None
            self.add_module(f"layer{i + 1}", self._make_layer(inplanes, planes, blocks, stride, dilation, grid))
            inplanes = planes * Bottleneck.expansion

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int,
                    grid: tuple[int, ...] | None) -> nn.Sequential:
        if grid is not None and len(grid) != blocks:
            raise ValueError(f"multi_grid needs {blocks} dilations, got {grid}")
        # mmseg's ResLayer: with multi_grid the block dilations are the grid itself; otherwise the
        # first block of a dilated stage uses half the dilation (contract_dilation)
        dil = list(grid) if grid is not None else (
            [dilation // 2 if dilation > 1 else dilation] + [dilation] * (blocks - 1))
        downsample = None
        if stride != 1 or inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(inplanes, planes, stride, downsample, dil[0])]
        layers += [Bottleneck(planes * Bottleneck.expansion, planes, dilation=d) for d in dil[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


def _up(x: torch.Tensor, size) -> torch.Tensor:
    # mmseg's resize(..., mode='bilinear', align_corners=False) in these configs
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPPHead(nn.Module):
    """mmseg's ``ASPPHead`` (DeepLab v3) on layer4: 2048 -> 512 channels -> ``conv_seg``."""

    def __init__(self, num_classes: int, dilations: Sequence[int], in_ch: int = 2048, ch: int = 512) -> None:
        super().__init__()
        # mmseg's BaseDecodeHead creates the classifier first: its keys come first in the state dict
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)  # no weights; inactive in eval mode
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_ch, ch, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_ch, ch, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d) for d in dilations)
        self.bottleneck = ConvModule((len(dilations) + 1) * ch, ch, 3, padding=1)

    def _aspp(self, x: torch.Tensor) -> torch.Tensor:
        outs = [_up(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self._aspp(feats[3])))


class DepthwiseSeparableASPPHead(ASPPHead):
    """mmseg's ``DepthwiseSeparableASPPHead`` (DeepLab v3+): separable ASPP on layer4, decoder on layer1."""

    def __init__(self, num_classes: int, dilations: Sequence[int], in_ch: int = 2048, ch: int = 512,
                 c1_in: int = 256, c1_ch: int = 48) -> None:
        super().__init__(num_classes, dilations, in_ch, ch)
        for i, d in enumerate(dilations):
            if d > 1:
                self.aspp_modules[i] = DepthwiseSeparableConvModule(in_ch, ch, 3, padding=d, dilation=d)
        self.c1_bottleneck = ConvModule(c1_in, c1_ch, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(ch + c1_ch, ch, 3, padding=1),
            DepthwiseSeparableConvModule(ch, ch, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c1 = self.c1_bottleneck(feats[0])
        x = torch.cat([_up(self._aspp(feats[3]), c1.shape[2:]), c1], dim=1)
        return self.conv_seg(self.dropout(self.sep_bottleneck(x)))


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` as the zoo's auxiliary head: layer3 (1024) -> 3x3 ConvModule (256) -> ``conv_seg``."""

    def __init__(self, num_classes: int, in_ch: int = 1024, ch: int = 256) -> None:
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(ConvModule(in_ch, ch, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(feats[2])))


class MMSegModel(nn.Module):
    """mmseg's ``EncoderDecoder`` at inference: ``model(x)`` -> N×C×H×W logits at the input's size.

    ``model(x, return_aux=True)`` -> ``(logits, aux_logits)`` like :class:`engine.models._base.SegModel`;
    the auxiliary head exists when built with ``aux=True`` (zoo files carry it) and only the trainer
    reads its output.
    """

    def __init__(self, backbone: ResNetV1c, decode_head: nn.Module, auxiliary_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = _up(self.decode_head(feats), size)
        if not return_aux:
            return out
        aux = None if self.auxiliary_head is None else _up(self.auxiliary_head(feats), size)
        return out, aux


def mmseg_deeplab(plus: bool, depth: int, num_classes: int = 19, output_stride: int = 8, aux: bool = False,
                  multi_grid: Sequence[int] | None = None) -> MMSegModel:
    """An mmseg DeepLab v3 (``plus=False``) or v3+ on ResNetV1c-``depth``; random weights."""
    backbone = ResNetV1c(depth, output_stride, multi_grid)
    rates = _STAGES[output_stride][2]
    head = DepthwiseSeparableASPPHead(num_classes, rates) if plus else ASPPHead(num_classes, rates)
    return MMSegModel(backbone, head, FCNHead(num_classes) if aux else None)


def _builder(plus: bool, depth: int):
    def build(num_classes: int = 19, output_stride: int = 8, *, aux: bool = False,
              multi_grid: tuple[int, ...] | None = None) -> MMSegModel:
        return mmseg_deeplab(plus, depth, num_classes, output_stride, aux, multi_grid)
    return build


# registry name -> (v3+?, depth).  "r50v1c": the ResNetV1c backbone mmseg's zoo calls "R-50-D8".
MMSEG_ARCHS = {
    "mmseg_deeplabv3_r50v1c": (False, 50),
    "mmseg_deeplabv3_r101v1c": (False, 101),
    "mmseg_deeplabv3plus_r50v1c": (True, 50),
    "mmseg_deeplabv3plus_r101v1c": (True, 101),
}

for _name, (_plus, _depth) in MMSEG_ARCHS.items():
    register(_name, output_strides=(8, 16), default_stride=8, preprocessing=MMSEG,
             description=f"mmsegmentation DeepLab v3{'+' if _plus else ''}, ResNetV1c-{_depth} "
                         f"(mmseg layout, auxiliary FCN head optional)")(_builder(_plus, _depth))
