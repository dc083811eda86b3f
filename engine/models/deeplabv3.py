"""DeepLab v3 and v3+ on ResNet-50/101.

* ``deeplabv3_resnet50`` / ``_resnet101``: torchvision's layout (``classifier.0.convs.0.0.weight``,
  ``classifier.4.weight``, optional ``aux_classifier.*`` on layer3).  VainF's v3 ResNet checkpoints are
  the same network with the head one level deeper (``classifier.classifier.*``) and no aux head;
  :func:`vainf_v3_to_native` / :func:`native_to_vainf_v3` convert between the two.
* ``deeplabv3plus_resnet50`` / ``_resnet101``: VainF's layout (``classifier.project``,
  ``classifier.aspp``, ``classifier.classifier``), low-level features from layer1; ``separable=True``
  applies VainF's ``convert_to_separable_conv`` to the head, as its ``--separable_conv`` flag does.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..meta import IMAGENET, TORCHVISION_SEG
from ._base import SegModel
from .heads import DeepLabHead, DeepLabHeadV3Plus, FCNHead, convert_to_separable_conv
from .registry import register
from .resnet import atrous_config, resnet_backbone

__all__ = [
    "deeplabv3_resnet",
    "deeplabv3plus_resnet",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "vainf_v3_to_native",
    "native_to_vainf_v3",
]

_VAINF_V3_HEAD = re.compile(r"^classifier\.classifier\.")
_NATIVE_V3_HEAD = re.compile(r"^classifier\.(?=\d)")


def deeplabv3_resnet(depth: int, num_classes: int = 21, output_stride: int = 8, aux: bool = False,
                     pretrained_backbone=None) -> SegModel:
    """torchvision-layout DeepLab v3: ResNet ``out`` = layer4 (2048 ch), ``aux`` = layer3 (1024 ch)."""
    _, rates = atrous_config(output_stride)
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    backbone = resnet_backbone(depth, output_stride, return_layers, pretrained_backbone)
    classifier = DeepLabHead(2048, num_classes, rates)
    aux_classifier = FCNHead(1024, num_classes) if aux else None
    return SegModel(backbone, classifier, aux_classifier)


def deeplabv3plus_resnet(depth: int, num_classes: int = 21, output_stride: int = 16, separable: bool = False,
                         aux: bool = False, pretrained_backbone=None) -> SegModel:
    """VainF-layout DeepLab v3+: ASPP on layer4, decoder on layer1 (256 ch, stride 4)."""
    if aux:
        raise ValueError("DeepLab v3+ has no auxiliary head (VainF's layout); use aux=False")
    _, rates = atrous_config(output_stride)
    backbone = resnet_backbone(depth, output_stride, {"layer4": "out", "layer1": "low_level"},
                               pretrained_backbone)
    classifier = DeepLabHeadV3Plus(2048, 256, num_classes, rates)
    if separable:
        convert_to_separable_conv(classifier)
    return SegModel(backbone, classifier, classifier_takes_dict=True)


@register("deeplabv3_resnet50", output_strides=(8, 16), default_stride=8, preprocessing=TORCHVISION_SEG,
          description="DeepLab v3, ResNet-50 (torchvision layout; VainF v3 via key rename)")
def deeplabv3_resnet50(num_classes: int = 21, output_stride: int = 8, *, aux: bool = False,
                       pretrained_backbone=None) -> SegModel:
    return deeplabv3_resnet(50, num_classes, output_stride, aux, pretrained_backbone)


@register("deeplabv3_resnet101", output_strides=(8, 16), default_stride=8, preprocessing=TORCHVISION_SEG,
          description="DeepLab v3, ResNet-101 (torchvision layout; VainF v3 via key rename)")
def deeplabv3_resnet101(num_classes: int = 21, output_stride: int = 8, *, aux: bool = False,
                        pretrained_backbone=None) -> SegModel:
    return deeplabv3_resnet(101, num_classes, output_stride, aux, pretrained_backbone)


@register("deeplabv3plus_resnet50", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET,
          description="DeepLab v3+, ResNet-50 (VainF layout)")
def deeplabv3plus_resnet50(num_classes: int = 21, output_stride: int = 16, *, separable: bool = False,
                           aux: bool = False, pretrained_backbone=None) -> SegModel:
    return deeplabv3plus_resnet(50, num_classes, output_stride, separable, aux, pretrained_backbone)


@register("deeplabv3plus_resnet101", output_strides=(8, 16), default_stride=16, preprocessing=IMAGENET,
          description="DeepLab v3+, ResNet-101 (VainF layout)")
def deeplabv3plus_resnet101(num_classes: int = 21, output_stride: int = 16, *, separable: bool = False,
                            aux: bool = False, pretrained_backbone=None) -> SegModel:
    return deeplabv3plus_resnet(101, num_classes, output_stride, separable, aux, pretrained_backbone)


def vainf_v3_to_native(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VainF ``deeplabv3_resnet*`` ``model_state`` -> our (torchvision) keys.

    Only the head prefix differs: ``classifier.classifier.<i>.`` becomes ``classifier.<i>.``;
    ``backbone.*`` is identical.  Pass the unwrapped ``model_state`` dict, not the whole checkpoint.
    Raises ValueError when a ``classifier.`` key is not in VainF's v3 form.
    """
    out: dict[str, torch.Tensor] = {}
    bad = []
    for k, v in state_dict.items():
        if k.startswith("classifier."):
            if not _VAINF_V3_HEAD.match(k):
                bad.append(k)
                continue
            k = _VAINF_V3_HEAD.sub("classifier.", k)
        out[k] = v
    if bad:
        raise ValueError(f"not a VainF DeepLab v3 state dict; unexpected head keys: {bad[:5]}")
    return out


def native_to_vainf_v3(state_dict: Mapping[str, torch.Tensor], *, drop_aux: bool = False
                       ) -> dict[str, torch.Tensor]:
    """Our ``deeplabv3_resnet*`` keys -> VainF's (``classifier.<i>.`` -> ``classifier.classifier.<i>.``).

    VainF's v3 has no aux head: ``aux_classifier.*`` keys raise ValueError unless ``drop_aux``.
    """
    out: dict[str, torch.Tensor] = {}
    aux = [k for k in state_dict if k.startswith("aux_classifier.")]
    if aux and not drop_aux:
        raise ValueError(f"VainF's DeepLab v3 has no aux head; pass drop_aux=True to drop {len(aux)} "
                         f"keys such as {aux[0]!r}")
    for k, v in state_dict.items():
        if k.startswith("aux_classifier."):
            continue
        if k.startswith("classifier."):
            if not _NATIVE_V3_HEAD.match(k):
                raise ValueError(f"not a native DeepLab v3 head key: {k!r}")
            k = _NATIVE_V3_HEAD.sub("classifier.classifier.", k)
        out[k] = v
    return out
