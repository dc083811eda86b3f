"""segmentation_models_pytorch (smp) ``DeepLabV3`` and ``DeepLabV3Plus``, in smp's exact layout.

People train these with smp and save ``model.state_dict()`` (bare, or under ``state_dict`` /
``model_state_dict``); such files load here unchanged.  Registry names are
``smp_<family>_<encoder>``: ``smp_deeplabv3_resnet34`` … ``smp_deeplabv3plus_mobilenet_v2`` (families
``deeplabv3``, ``deeplabv3plus``; encoders ``resnet34``, ``resnet50``, ``resnet101``, ``mobilenet_v2``).

smp's defaults, which shape the weights and the output, are kept: encoder depth 5, 3 input channels,
256 decoder channels, ASPP rates (12, 24, 36) at either output stride, ASPP dropout 0.5; DeepLabV3 runs
its encoder at output stride 8 with plain 3×3 ASPP convs, DeepLabV3Plus at 16 with depthwise-separable
ASPP convs (``aspp_separable`` switches either, as smp's ``decoder_aspp_separable``), fuses the
48-channel projection of the stride-4 features and upsamples the ASPP output by 4 (2 at output stride
8).  Every upsampling after the encoder is bilinear with ``align_corners=True``, as smp's
``nn.Upsample``/``UpsamplingBilinear2d``.

Keys (smp 0.4-0.6): ``encoder.*`` (torchvision names), ``decoder.aspp.convs.N.*`` /
``decoder.conv`` / ``decoder.bn`` (v3), ``decoder.aspp.0.*`` / ``decoder.block1`` / ``decoder.block2``
(v3+), ``segmentation_head.0``.  smp 0.3 and 0.4 wrote DeepLabV3's decoder as a Sequential
(``decoder.0.`` / ``decoder.1.`` / ``decoder.2.``): :func:`smp_legacy_to_current` renames those, as smp's
own ``load_state_dict`` does.  A classification head (smp's ``aux_params``) is kept so such files load;
it plays no part in ``model(x)``.

smp refuses inputs whose sides are not multiples of the output stride.  Here such an input is padded
at the bottom and right by reflection (albumentations' ``PadIfNeeded`` default, which smp's examples use
for this) up to the next multiple, and the logits are cropped back: sizes that smp accepts give smp's
logits exactly, and every size gives logits at the input's size.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..meta import IMAGENET
from .heads import ASPP
from .registry import register
from .smp_encoders import ENCODER_NAMES, smp_encoder

__all__ = ["SmpDeepLab", "smp_deeplab", "smp_legacy_to_current", "smp_options_from_state_dict", "smp_class_names",
           "SMP_MODELS", "SMP_FAMILIES"]

SMP_FAMILIES: tuple[str, ...] = ("deeplabv3", "deeplabv3plus")
SMP_MODELS: tuple[str, ...] = tuple(f"smp_{f}_{e}" for f in SMP_FAMILIES for e in ENCODER_NAMES)
_RATES = (12, 24, 36)  # smp's decoder_atrous_rates default, whatever the output stride
_CHANNELS = 256


class _SeparableConv2d(nn.Sequential):
    """smp's SeparableConv2d: depthwise k×k (no bias) ``0`` then pointwise 1×1 ``1``."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0, dilation: int = 1, bias: bool = True) -> None:
        super().__init__(nn.Conv2d(cin, cin, k, padding=padding, dilation=dilation, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=bias))


def _aspp(cin: int, separable: bool) -> ASPP:
    """smp's ASPP: the same modules and keys as torchvision's (``convs.0``-``4``, ``project``), dropout
    0.5; ``separable`` makes the three atrous branches depthwise-separable (``convs.N.0.0``/``.0.1``)."""
    aspp = ASPP(cin, _RATES, out_channels=_CHANNELS, dropout=0.5)
    if separable:
        for i, rate in enumerate(_RATES, start=1):
            aspp.convs[i] = nn.Sequential(
                _SeparableConv2d(cin, _CHANNELS, 3, padding=rate, dilation=rate, bias=False),
                nn.BatchNorm2d(_CHANNELS), nn.ReLU(inplace=True))
    return aspp


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # smp upsamples by an integer factor with align_corners=True; with align_corners the sampling
    # grid depends only on the two sizes, so naming the size gives the same values.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class DeepLabV3Decoder(nn.Module):
    """ASPP on the last feature map, then 3×3 conv + BN + ReLU (``aspp``, ``conv``, ``bn``)."""

    def __init__(self, encoder_channels: Sequence[int], separable: bool) -> None:
        super().__init__()
        self.aspp = _aspp(encoder_channels[-1], separable)
        self.conv = nn.Conv2d(_CHANNELS, _CHANNELS, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(_CHANNELS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(self.bn(self.conv(self.aspp(features[-1]))))


class DeepLabV3PlusDecoder(nn.Module):
    """``aspp`` = ASPP + separable 3×3 + BN + ReLU on the last map, upsampled to the stride-4 map
    (``features[2]``), concatenated after (not before) its 48-channel ``block1`` projection, then
    ``block2`` = separable 3×3 304->256 + BN + ReLU: N×256×H/4×W/4."""

    def __init__(self, encoder_channels: Sequence[int], separable: bool) -> None:
        super().__init__()
        self.aspp = nn.Sequential(
            _aspp(encoder_channels[-1], separable),
            _SeparableConv2d(_CHANNELS, _CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(_CHANNELS), nn.ReLU(inplace=True))
        self.block1 = nn.Sequential(nn.Conv2d(encoder_channels[2], 48, 1, bias=False), nn.BatchNorm2d(48),
                                    nn.ReLU(inplace=True))
        self.block2 = nn.Sequential(_SeparableConv2d(48 + _CHANNELS, _CHANNELS, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(_CHANNELS), nn.ReLU(inplace=True))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        high_res = self.block1(features[2])
        aspp = _up(self.aspp(features[-1]), high_res.shape[-2:])
        return self.block2(torch.cat([aspp, high_res], dim=1))


def _classification_head(cin: int, classes: int) -> nn.Sequential:
    # smp's ClassificationHead (pool, flatten, dropout 0.2, linear, activation): key ``3`` is the linear.
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, classes),
                         nn.Identity())


class SmpDeepLab(nn.Module):
    """``model(x)``: N×3×H×W normalised input -> N×num_classes×H×W logits (any H, W; see the module doc).

    ``model(x, return_aux=True)`` -> ``(logits, None)``: smp's classification head predicts image labels,
    not a map, so there is no auxiliary segmentation output.
    """

    def __init__(self, family: str, encoder: str, num_classes: int, output_stride: int, *,
                 aspp_separable: bool, classification_classes: int = 0) -> None:
        super().__init__()
        if family not in SMP_FAMILIES:
            raise ValueError(f"unknown smp family {family!r}; supported: {', '.join(SMP_FAMILIES)}")
        if output_stride not in (8, 16):
            raise ValueError(f"smp DeepLab supports output stride 8 or 16, not {output_stride}")
        self.encoder = smp_encoder(encoder, output_stride)
        channels = self.encoder.out_channels
        decoder = DeepLabV3PlusDecoder if family == "deeplabv3plus" else DeepLabV3Decoder
        self.decoder = decoder(channels, aspp_separable)
        self.segmentation_head = nn.Sequential(nn.Conv2d(_CHANNELS, num_classes, 1))
        self.classification_head = (_classification_head(channels[-1], classification_classes)
                                    if classification_classes else None)
        self.output_stride = output_stride
        _init_smp_head(self)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        h, w = x.shape[-2:]
        s = self.output_stride
        pad_h, pad_w = -h % s, -w % s
        if pad_h or pad_w:
            # reflection needs the pad to be shorter than the side; tiny inputs repeat the edge instead
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        logits = self.segmentation_head(self.decoder(self.encoder(x)))
        logits = _up(logits, x.shape[-2:])[..., :h, :w]
        return (logits, None) if return_aux else logits


def _init_smp_head(model: SmpDeepLab) -> None:
    # smp's initialize_decoder / initialize_head: Kaiming-uniform decoder convs, Xavier head.
    for m in model.decoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    heads = [model.segmentation_head]
    if model.classification_head is not None:
        heads.append(model.classification_head)
    for head in heads:
        for m in head.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def smp_deeplab(family: str, encoder: str, num_classes: int = 21, output_stride: int | None = None, *,
                aspp_separable: bool | None = None, classification_classes: int = 0) -> SmpDeepLab:
    """smp's ``DeepLabV3`` / ``DeepLabV3Plus(encoder_name=encoder, classes=num_classes, encoder_weights=None)``.

    ``output_stride`` None and ``aspp_separable`` None take smp's family defaults (v3: 8, plain; v3+: 16,
    separable).  ``classification_classes`` > 0 adds smp's ``aux_params`` classification head.
    """
    plus = family == "deeplabv3plus"
    return SmpDeepLab(family, encoder, num_classes, output_stride or (16 if plus else 8),
                      aspp_separable=plus if aspp_separable is None else bool(aspp_separable),
                      classification_classes=int(classification_classes))


def _register(family: str, encoder: str) -> None:
    plus = family == "deeplabv3plus"
    default_stride = 16 if plus else 8

    @register(f"smp_{family}_{encoder}", output_strides=(8, 16), default_stride=default_stride,
              preprocessing=IMAGENET,
              description=f"smp {'DeepLabV3Plus' if plus else 'DeepLabV3'}, {encoder} encoder "
                          f"(segmentation_models_pytorch layout)")
    def build(num_classes: int = 21, output_stride: int = default_stride, *, aspp_separable: bool = plus,
              classification_classes: int = 0) -> SmpDeepLab:
        return smp_deeplab(family, encoder, num_classes, output_stride, aspp_separable=aspp_separable,
                           classification_classes=classification_classes)


for _family in SMP_FAMILIES:
    for _encoder in ENCODER_NAMES:
        _register(_family, _encoder)


# --------------------------------------------------------------------------- key layouts

_LEGACY_V3 = re.compile(r"^decoder\.([012])\.")
_LEGACY_NAMES = {"0": "decoder.aspp.", "1": "decoder.conv.", "2": "decoder.bn."}


def smp_legacy_to_current(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp 0.3/0.4 DeepLabV3 keys -> 0.5+ keys: ``decoder.0.`` -> ``decoder.aspp.``, ``decoder.1.`` ->
    ``decoder.conv.``, ``decoder.2.`` -> ``decoder.bn.`` (smp's own compatibility rename).  Other keys,
    and DeepLabV3Plus keys (``decoder.aspp.0.`` …), are unchanged."""
    return {_LEGACY_V3.sub(lambda m: _LEGACY_NAMES[m.group(1)], k): v for k, v in state_dict.items()}


_SEPARABLE_ASPP = re.compile(r"^decoder\.aspp\.(0\.)?convs\.1\.0\.1\.weight$")


def smp_options_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Builder options a (current-layout) smp state dict implies: ``aspp_separable`` from the ASPP
    branch's depthwise + pointwise pair, ``classification_classes`` from the classification head."""
    opts: dict = {"aspp_separable": any(_SEPARABLE_ASPP.match(k) for k in state_dict)}
    head = state_dict.get("classification_head.3.weight")
    if head is not None and getattr(head, "dim", lambda: 0)() == 2:
        opts["classification_classes"] = int(head.shape[0])
    return opts


def smp_class_names(classes: object, num_classes: int) -> list[str]:
    """Class names for an smp checkpoint: the ``"classes"`` entry some training scripts save next to
    the weights when it is a plain list of distinct, non-empty strings, one per output channel;
    anything else (absent, a count, a tuple, the wrong length) gives ``class_0`` … ``class_{n-1}``."""
    if (isinstance(classes, list) and len(classes) == num_classes and len(set(classes)) == num_classes
            and all(isinstance(c, str) and c.strip() for c in classes)):
        return list(classes)
    return [f"class_{i}" for i in range(num_classes)]
