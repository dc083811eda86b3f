"""DeepLab v2: Caffe-style ResNet-101, ASPP-L and multi-scale inputs (MSC), output stride 8.

The state-dict layout is kazuto1011/deeplab-pytorch's ``MSC(base=DeepLabV2(...))`` so its released
``deeplabv2_resnet101_msc-vocaug-20000.pth`` (converted from the authors' Caffe model) loads as is::

    base.layer1.conv1.conv.weight            (64, 3, 7, 7)   stem; then base.layer1.pool (no weights)
    base.layer2.block1.reduce.conv.weight    (64, 64, 1, 1)  bottleneck: reduce / conv3x3 / increase
    base.layer2.block1.shortcut.bn.running_var               1x1 projection in each layer's first block
    base.aspp.c0.weight                      (C, 2048, 3, 3) ASPP branch, rate 6 (c1..c3: 12, 18, 24)

What makes it the Caffe (MSRA) ResNet rather than torchvision's:

* the stride sits on the 1x1 ``reduce`` conv of the first block, not on the 3x3 conv;
* the stem max-pool is 3x3/2, pad 1 with ``ceil_mode=True`` (Caffe rounds pooled sizes up);
* BatchNorm eps 1e-5, momentum 0.001 (Caffe's moving-average fraction 0.999);
* layer4 (conv4_x) has dilation 2 and layer5 (conv5_x) dilation 4 instead of strides: output stride 8;
* ASPP-L is the *sum* of four 3x3 convs straight to class logits (rates 6/12/18/24, with bias), no BN.

MSC, as kazuto1011 evaluates it: logits at full scale and at input scales 0.5 and 0.75 (input resized
bilinearly with ``scale_factor``), the scaled logits resized to the full-scale logits' size, then the
pixelwise max.  Our forward then resizes that stride-8 map to the input size (bilinear,
align_corners=False, as kazuto1011's evaluation does), which is the engine's model contract.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..meta import CAFFE_BGR
from .registry import register

__all__ = [
    "ConvBnReLU",
    "CaffeBottleneck",
    "ResLayer",
    "Stem",
    "SumASPP",
    "DeepLabV2Base",
    "DeepLabV2",
    "deeplabv2_resnet101",
    "DEFAULT_MSC_SCALES",
]

DEFAULT_MSC_SCALES: tuple[float, ...] = (0.5, 0.75)
_EXPANSION = 4
# Caffe's BatchNorm keeps a moving average with fraction 0.999; PyTorch's momentum is 1 - fraction.
_BN_EPS = 1e-5
_BN_MOMENTUM = 1 - 0.999


class ConvBnReLU(nn.Sequential):
    """Bias-free conv, BatchNorm and (optionally) ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, relu: bool = True) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM))
        if relu:
            self.add_module("relu", nn.ReLU())


class CaffeBottleneck(nn.Module):
    """MSRA bottleneck: 1x1 ``reduce`` (carries the stride), 3x3 ``conv3x3`` (carries the dilation),
    1x1 ``increase``; ``shortcut`` is a 1x1 conv+BN in a layer's first block, identity elsewhere."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, downsample: bool) -> None:
        super().__init__()
        mid = out_ch // _EXPANSION
        self.reduce = ConvBnReLU(in_ch, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid, out_ch, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + self.shortcut(x))


class ResLayer(nn.Sequential):
    """``n_blocks`` bottlenecks named ``block1``..``blockN``; only the first one strides and projects."""

    def __init__(self, n_blocks: int, in_ch: int, out_ch: int, stride: int, dilation: int) -> None:
        super().__init__()
        for i in range(n_blocks):
            self.add_module(f"block{i + 1}", CaffeBottleneck(
                in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation, downsample=i == 0))


class Stem(nn.Sequential):
    """7x7/2 conv+BN+ReLU, then the Caffe 3x3/2 max-pool (pad 1, ceil mode): 1/4 resolution."""

    def __init__(self, out_ch: int = 64) -> None:
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class SumASPP(nn.Module):
    """DeepLab v2 ASPP-L: ``sum_i conv3x3_rate_i(x)``, each branch ``c{i}`` straight to class logits.

    Input N×in_ch×h×w float, output N×num_classes×h×w.  Weights N(0, 0.01), biases 0, as the v2
    prototxt's ``fc8`` fillers.
    """

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, num_classes, 3, 1, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = iter(self.children())
        out = next(branches)(x)
        for branch in branches:
            out = out + branch(x)
        return out


class DeepLabV2Base(nn.Sequential):
    """Dilated Caffe ResNet + ASPP-L: N×3×H×W -> N×C×h×w logits at output stride 8 (not resized).

    Sizes: conv1 gives ``a = ceil(H/2)``, the ceil-mode pool ``b = ceil((a-1)/2) + 1``, layer3's strided
    1x1 conv ``h = ceil(b/2)`` (65 for H = 513, 9 for H = 65 or 64); callers resize as they need.
    """

    def __init__(self, num_classes: int, n_blocks: Sequence[int] = (3, 4, 23, 3),
                 atrous_rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        ch = [64 * 2 ** p for p in range(6)]  # 64 .. 2048
        self.add_module("layer1", Stem(ch[0]))
        self.add_module("layer2", ResLayer(n_blocks[0], ch[0], ch[2], stride=1, dilation=1))
        self.add_module("layer3", ResLayer(n_blocks[1], ch[2], ch[3], stride=2, dilation=1))
        self.add_module("layer4", ResLayer(n_blocks[2], ch[3], ch[4], stride=1, dilation=2))
        self.add_module("layer5", ResLayer(n_blocks[3], ch[4], ch[5], stride=1, dilation=4))
        self.add_module("aspp", SumASPP(ch[5], num_classes, atrous_rates))


class DeepLabV2(nn.Module):
    """DeepLab v2 with multi-scale inputs; keys ``base.*`` as kazuto1011's ``MSC`` wrapper.

    ``model(x)``: x N×3×H×W float (Caffe BGR, mean-subtracted) -> N×C×H×W float32 logits: the pixelwise
    max over scales (1, *msc_scales) of stride-8 logits, resized to H×W (bilinear, align_corners=False).
    ``model(x, return_aux=True)`` -> ``(logits, None)``: there is no aux head; a trainer that wants
    kazuto1011's per-scale losses calls :meth:`forward_scales` instead.
    ``msc_scales=()`` (or None) runs the full scale only.

    ``backbone`` / ``classifier`` are views for parameter grouping (head lr ×10), not extra weights.
    """

    aux_classifier = None  # same attribute as SegModel, so generic code can ask for it

    def __init__(self, base: DeepLabV2Base, msc_scales: Sequence[float] | None = DEFAULT_MSC_SCALES) -> None:
        super().__init__()
        self.base = base
        scales = tuple(float(s) for s in (msc_scales or ()))
        if any(not 0.0 < s for s in scales):
            raise ValueError(f"msc_scales must be positive, not {scales}")
        self.msc_scales = scales

    @property
    def backbone(self) -> nn.Sequential:
        return nn.Sequential(*(getattr(self.base, f"layer{i}") for i in range(1, 6)))

    @property
    def classifier(self) -> nn.Module:
        return self.base.aspp

    def forward_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """kazuto1011's training outputs: ``[full, *per_scale, max]``, each N×C×h×w at its own stride-8
        size except ``max``, which has the full-scale size.  With no scales: ``[full]``."""
        full = self.base(x)
        if not self.msc_scales:
            return [full]
        size = full.shape[-2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.msc_scales]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([full, *resized]).max(dim=0).values
        return [full, *pyramid, fused]

    def forward(self, x: torch.Tensor, return_aux: bool = False, return_scales: bool = False):
        """N×C×H×W logits; ``return_scales=True`` gives ``forward_scales(x)`` instead (training: one
        loss per output, through DDP's forward so that gradients are synchronised)."""
        outputs = self.forward_scales(x)
        if return_scales:
            return outputs
        out = F.interpolate(outputs[-1], size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (out, None) if return_aux else out


@register("deeplabv2_resnet101", output_strides=(8,), default_stride=8, preprocessing=CAFFE_BGR,
          description="DeepLab v2 ASPP-L + MSC, Caffe ResNet-101 (kazuto1011 layout)")
def deeplabv2_resnet101(num_classes: int = 21, output_stride: int | None = 8, *,
                        msc_scales: Sequence[float] | None = DEFAULT_MSC_SCALES,
                        atrous_rates: Sequence[int] = (6, 12, 18, 24)) -> DeepLabV2:
    """Random-weight DeepLab v2 ResNet-101 (44,048,532 trainable parameters with 21 classes).

    ``atrous_rates=(3, 6, 9, 12)`` gives the paper's ASPP-S.  Only output stride 8 exists (the
    dilations are fixed by the released weights).
    """
    if output_stride not in (None, 8):
        raise ValueError(f"deeplabv2_resnet101 supports output stride (8,), not {output_stride}")
    return DeepLabV2(DeepLabV2Base(num_classes, (3, 4, 23, 3), tuple(atrous_rates)), msc_scales)
