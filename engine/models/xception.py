"""Aligned Xception-65 (DeepLab v3+ backbone) and ``deeplabv3plus_xception65``.

Architecture (TensorFlow ``research/deeplab/core/xception.py``, ``xception_65``), which modifies
Chollet's Xception the way seed 000 describes: a deeper middle flow (16 units instead of 8), every
max-pool replaced by a strided depthwise-separable conv (so atrous rates can stand in for any stride),
and batch norm after every depthwise 3x3 (plus ReLU inside the exit flow's last unit)::

    stem   conv1_1 3x3/2 32, conv1_2 3x3 64 (conv + BN + ReLU)             stride 2
    entry  block1 128,128,128 /2  | block2 256,256,256 /2 | block3 728x3 /2  strides 4, 8, 16
    middle 16 units 728,728,728, identity shortcut                           stride 16
    exit   block1 728,1024,1024 /2 | block2 1536,1536,2048 (no shortcut)     stride 32 nominal

Each unit is three separable convs (depthwise 3x3 + BN, pointwise 1x1 + BN); the stride sits on the
third.  Entry, middle and exit-block1 units are pre-activation (ReLU *before* each separable conv,
TF's ``activation_fn_in_separable_conv=False``); exit block2 has ReLU after both BNs instead.  A
"conv" shortcut is a strided 1x1 conv + BN on the unit's (un-activated) input.  Output strides below
32 follow TF's ``stack_blocks_dense``: once the running stride reaches the target, later strides
become 1 and the atrous rate is multiplied by them (OS 16: exit block2 at rate 2; OS 8: entry block3
at rate 1 then the middle flow and exit block1 at rate 2 and exit block2 at rate 4).

Padding is TF's explicit "fixed" padding (``dilation * (k - 1) / 2`` each side for k = 3), so a
stride-2 conv maps n pixels to ceil(n / 2) for odd n too, and the conv and 1x1 shortcut paths of a
unit always agree in size.  Batch norms use TF's epsilon 1e-3 so converted TF weights behave alike.

Decoder tap: ``low_level`` is entry block2's second separable conv (pointwise BN output, before the
third, strided conv): 256 channels at stride 4, as TF deeplab's ``DECODER_END_POINTS`` for
xception_65.  The backbone returns ``{"low_level": N×256×H/4×W/4, "out": N×2048×H/OS×W/OS}``.

Native state-dict layout (no public PyTorch peer exists; names mirror TF scopes so a converter from
TF checkpoints is a mechanical rename)::

    backbone.entry_flow.conv1_1.{conv.weight, bn.*}            backbone.entry_flow.conv1_2...
    backbone.entry_flow.block{1,2,3}.sepconv{1,2,3}.{depthwise.weight, depthwise_bn.*,
                                                     pointwise.weight, pointwise_bn.*}
    backbone.entry_flow.block{1,2,3}.shortcut.{conv.weight, bn.*}
    backbone.middle_flow.{0..15}.sepconv{1,2,3}...             (no shortcut weights)
    backbone.exit_flow.block1.{sepconv1..3, shortcut}...      backbone.exit_flow.block2.sepconv1..3...
    classifier.*                                               VainF DeepLabHeadV3Plus (see heads.py)

No conv in the backbone has a bias (each is followed by BN).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..meta import IMAGENET
from ._base import SegModel
from .heads import DeepLabHeadV3Plus, convert_to_separable_conv
from .registry import register

__all__ = [
    "XceptionConfig",
    "ConvBNReLU",
    "SeparableConvBN",
    "XceptionUnit",
    "AlignedXception65",
    "unit_schedule",
    "deeplabv3plus_xception65",
]


@dataclass(frozen=True)
class XceptionConfig:
    """Knobs of the aligned Xception-65 that are not architecture choices of the registry.

    ``multi_grid``: per-conv rate multipliers of exit block2 (TF's ``multi_grid``; DeepLab's VOC
    Xception recipes leave it at (1, 1, 1)).  ``bn_eps``: TF deeplab uses 1e-3.
    ``bn_momentum``: PyTorch convention (TF's decay 0.9997 would be 0.0003, far too slow to adapt
    when fine-tuning on a handful of corrected images).
    """

    multi_grid: tuple[int, int, int] = (1, 1, 1)
    bn_eps: float = 1e-3
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.multi_grid)
        if len(grid) != 3 or any(g < 1 for g in grid):
            raise ValueError(f"multi_grid needs three positive rates, not {self.multi_grid!r}")
        object.__setattr__(self, "multi_grid", grid)


# (name, depths, shortcut, activation inside the separable convs, nominal stride, units)
_BLOCKS: tuple[tuple[str, tuple[int, int, int], str, bool, int, int], ...] = (
    ("entry_flow.block1", (128, 128, 128), "conv", False, 2, 1),
    ("entry_flow.block2", (256, 256, 256), "conv", False, 2, 1),
    ("entry_flow.block3", (728, 728, 728), "conv", False, 2, 1),
    ("middle_flow", (728, 728, 728), "sum", False, 1, 16),
    ("exit_flow.block1", (728, 1024, 1024), "conv", False, 2, 1),
    ("exit_flow.block2", (1536, 1536, 2048), "none", True, 1, 1),
)
_STEM_STRIDE = 2
SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)


def unit_schedule(output_stride: int) -> list[tuple[int, int]]:
    """``(stride, rate)`` of every unit in order (1+1+1+16+1+1 = 21 units) for an output stride.

    TF's ``stack_blocks_dense``: while the running stride is below the target a unit keeps its
    nominal stride at rate 1; from the unit at which the target is reached on, strides become 1 and
    the rate grows by each removed stride (the unit itself still runs at the old rate).
    """
    if output_stride not in SUPPORTED_OUTPUT_STRIDES:
        raise ValueError(f"aligned Xception-65 supports output stride {SUPPORTED_OUTPUT_STRIDES}, "
                         f"not {output_stride}")
    current, rate, plan = _STEM_STRIDE, 1, []
    for _name, _depths, _skip, _act, stride, units in _BLOCKS:
        for u in range(units):
            s = stride if u == units - 1 else 1  # TF puts a block's stride in its last unit
            if current == output_stride:
                plan.append((1, rate))
                rate *= s
            else:
                plan.append((s, 1))
                current *= s
    assert current == output_stride  # every supported stride is reachable by construction
    return plan


def _bn(channels: int, cfg: XceptionConfig) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


class ConvBNReLU(nn.Module):
    """Dense k×k conv (no bias, fixed padding) + BN + ReLU; keys ``conv``, ``bn``.

    N×in×H×W float -> N×out×ceil(H/stride)×ceil(W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 cfg: XceptionConfig = XceptionConfig()) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=False)
        self.bn = _bn(out_channels, cfg)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConvBN(nn.Module):
    """Depthwise 3x3 (dilated) + BN [+ ReLU], pointwise 1x1 + BN [+ ReLU].

    ``activation=False`` is TF's pre-activation variant: no ReLU inside; the unit applies one before.
    Padding ``dilation`` on each side equals TF's fixed padding for k = 3, so size is kept at stride 1
    and becomes ceil(n / 2) at stride 2 for any n.  N×in×H×W -> N×out×H'×W'.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 activation: bool = False, cfg: XceptionConfig = XceptionConfig()) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation,
                                   dilation=dilation, groups=in_channels, bias=False)
        self.depthwise_bn = _bn(in_channels, cfg)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pointwise_bn = _bn(out_channels, cfg)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_bn(self.depthwise(x))
        if self.activation:
            x = torch.relu(x)
        x = self.pointwise_bn(self.pointwise(x))
        if self.activation:
            x = torch.relu(x)
        return x


class XceptionUnit(nn.Module):
    """One Xception module: three separable convs (stride on the third) plus a shortcut.

    ``skip``: "conv" (1x1 strided conv + BN on the input), "sum" (identity) or "none".
    ``forward(x, return_second=False)``: N×in×H×W -> N×depths[2]×H'×W'; with ``return_second`` also
    the second separable conv's output (N×depths[1]×H×W, before the stride), the v3+ decoder tap.
    """

    def __init__(self, in_channels: int, depths: Sequence[int], skip: str, stride: int = 1,
                 rate: int = 1, activation: bool = False, rate_multipliers: Sequence[int] = (1, 1, 1),
                 cfg: XceptionConfig = XceptionConfig()) -> None:
        super().__init__()
        if skip not in ("conv", "sum", "none"):
            raise ValueError(f"skip must be 'conv', 'sum' or 'none', not {skip!r}")
        if skip == "sum" and (stride != 1 or in_channels != depths[-1]):
            raise ValueError("an identity shortcut needs stride 1 and in_channels == depths[-1]")
        self.pre_activation = not activation
        self.skip = skip
        chans = [in_channels, *depths]
        for i in range(3):
            self.add_module(f"sepconv{i + 1}", SeparableConvBN(
                chans[i], chans[i + 1], stride=stride if i == 2 else 1,
                dilation=rate * int(rate_multipliers[i]), activation=activation, cfg=cfg))
        if skip == "conv":
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", nn.Conv2d(in_channels, depths[-1], 1, stride=stride,
                                                       bias=False))
            self.shortcut.add_module("bn", _bn(depths[-1], cfg))

    def forward(self, x: torch.Tensor, return_second: bool = False):
        y = x
        second = None
        for i, conv in enumerate((self.sepconv1, self.sepconv2, self.sepconv3)):
            if self.pre_activation:
                # Not in place: ``x`` itself feeds the shortcut un-activated.
                y = torch.relu(y)
            y = conv(y)
            if i == 1:
                second = y
        if self.skip == "conv":
            y = y + self.shortcut(x)
        elif self.skip == "sum":
            y = y + x
        return (y, second) if return_second else y


class AlignedXception65(nn.Module):
    """The DeepLab v3+ aligned Xception-65 feature extractor (no classification layers).

    ``forward(x)`` with x N×3×H×W float (ImageNet-normalised) returns ``{"low_level":
    N×256×ceil(H/4)×ceil(W/4), "out": N×2048×h×w}`` where h, w come from ``output_stride`` (8, 16 or
    32) by repeated ceil-halving.  ``return_stages=True`` adds every block's output under its name
    (``entry_flow.block1`` ...), for inspection and tests.
    """

    out_channels = 2048
    low_level_channels = 256

    def __init__(self, output_stride: int = 16, cfg: XceptionConfig = XceptionConfig()) -> None:
        super().__init__()
        plan = iter(unit_schedule(output_stride))
        self.output_stride = output_stride
        self.entry_flow = nn.Module()
        self.exit_flow = nn.Module()
        self.entry_flow.conv1_1 = ConvBNReLU(3, 32, 3, stride=2, cfg=cfg)
        self.entry_flow.conv1_2 = ConvBNReLU(32, 64, 3, stride=1, cfg=cfg)
        in_ch = 64
        for name, depths, skip, act, _stride, units in _BLOCKS:
            mods = []
            for _ in range(units):
                s, r = next(plan)
                grid = cfg.multi_grid if name == "exit_flow.block2" else (1, 1, 1)
                mods.append(XceptionUnit(in_ch, depths, skip, stride=s, rate=r, activation=act,
                                         rate_multipliers=grid, cfg=cfg))
                in_ch = depths[-1]
            parent, _, leaf = name.rpartition(".")
            block = mods[0] if units == 1 else nn.Sequential(*mods)
            setattr(getattr(self, parent) if parent else self, leaf, block)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init that keeps a never-trained net's eval-mode activations O(1).

        Kaiming-normal with fan_in (PyTorch's fan_out ignores ``groups`` and would shrink depthwise
        kernels ~sqrt(C)-fold), ReLU gain only where the conv's input has just passed a ReLU.  In eval
        mode a fresh BN is the identity, so 16 identity-shortcut units would double the variance 16
        times over; scaling each middle unit's last BN gamma by 1/sqrt(16) (SkipInit-style) bounds the
        growth to about e while keeping every gradient non-zero.  Trained weights replace all of it.
        """
        for m in self.modules():
            if isinstance(m, ConvBNReLU):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, SeparableConvBN):
                nn.init.kaiming_normal_(m.depthwise.weight, mode="fan_in", nonlinearity="relu")
                nn.init.kaiming_normal_(m.pointwise.weight, mode="fan_in",
                                        nonlinearity="relu" if m.activation else "linear")
            elif isinstance(m, XceptionUnit) and m.skip == "conv":
                nn.init.kaiming_normal_(m.shortcut.conv.weight, mode="fan_in", nonlinearity="linear")
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        units = list(self.middle_flow)
        for unit in units:
            nn.init.constant_(unit.sepconv3.pointwise_bn.weight, len(units) ** -0.5)

    def forward(self, x: torch.Tensor, return_stages: bool = False) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.entry_flow.conv1_2(self.entry_flow.conv1_1(x))
        x = self.entry_flow.block1(x)
        out["entry_flow.block1"] = x
        x, out["low_level"] = self.entry_flow.block2(x, return_second=True)
        out["entry_flow.block2"] = x
        x = self.entry_flow.block3(x)
        out["entry_flow.block3"] = x
        x = self.middle_flow(x)
        out["middle_flow"] = x
        x = self.exit_flow.block1(x)
        out["exit_flow.block1"] = x
        x = self.exit_flow.block2(x)
        out["exit_flow.block2"] = x
        out["out"] = x
        if return_stages:
            return out
        return {"low_level": out["low_level"], "out": out["out"]}


@register("deeplabv3plus_xception65", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET,
          description="DeepLab v3+, aligned Xception-65, atrous separable ASPP + decoder (native)")
def deeplabv3plus_xception65(num_classes: int, output_stride: int = 16, separable: bool = True,
                             multi_grid: Sequence[int] = (1, 1, 1)) -> nn.Module:
    """DeepLab v3+ on aligned Xception-65: ``model(x)`` N×3×H×W -> N×num_classes×H×W logits.

    ASPP rates (6, 12, 18) at OS 16, (12, 24, 36) at OS 8.  ``separable=True`` (the default here,
    unlike the VainF-compatible ResNet/MobileNet v3+ builders) turns every 3x3 conv of ASPP and the
    decoder into a depthwise + pointwise pair: the v3+ paper's Xception model is defined that way
    ("atrous separable convolution" in both modules, cutting their multiply-adds substantially at no
    loss of mIoU), and this model is native-only, so there is no peer checkpoint whose dense-conv
    layout we would need to load.
    """
    cfg = XceptionConfig(multi_grid=tuple(multi_grid))
    backbone = AlignedXception65(output_stride, cfg)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    head = DeepLabHeadV3Plus(backbone.out_channels, backbone.low_level_channels, num_classes, rates)
    if separable:
        head = convert_to_separable_conv(head)
    return SegModel(backbone, head, classifier_takes_dict=True)
