"""ImageNet classification weights into a segmentation model's backbone.

Training from scratch needs an ImageNet start (catalog kind "backbone"): torchvision's
``resnet50/101-*.pth``, ``vgg16-*.pth``, ``mobilenet_v2-*.pth`` (and ``mobilenet_v3_large``).  The
source network is recognised from its keys, renamed with the model family's own mapping, and
loaded into ``model.backbone``; the head keeps its initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

from ..checkpoints.formats import strip_wrapper_prefixes
from ..checkpoints.io import CheckpointError, read_checkpoint

__all__ = ["BackboneLoadReport", "load_backbone_weights", "detect_imagenet_network"]

StateDict = dict[str, torch.Tensor]


@dataclass
class BackboneLoadReport:
    """What :func:`load_backbone_weights` did.

    ``loaded``: model keys now holding ImageNet weights.  ``missing``: backbone keys of the model
    the source did not cover (BatchNorm counters excepted).  ``skipped``: source keys with no place
    in a segmentation backbone (ImageNet classifier, MobileNetV2's last 1280-ch conv, ...).
    ``rejected``: renamed source keys the model lacks or holds in another shape.
    """

    network: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.loaded) and not self.missing and not self.rejected

    def __str__(self) -> str:
        return (f"{self.network}: loaded {len(self.loaded)} tensors into the backbone, "
                f"{len(self.missing)} backbone tensors not covered, {len(self.skipped)} source tensors "
                f"unused, {len(self.rejected)} rejected")


def _resnet_to_backbone(sd: Mapping[str, torch.Tensor]) -> StateDict:
    # torchvision / VainF ResNet backbones keep torchvision's names under ``backbone.``;
    # avgpool has no weights and fc is the ImageNet classifier.
    return {"backbone." + k: v for k, v in sd.items() if not k.startswith("fc.")}


def _family_mapper(name: str) -> Callable[[Mapping[str, torch.Tensor]], StateDict]:
    # Imported lazily: each model family owns the renaming of its own ImageNet network.
    if name == "vgg16":
        from ..models.deeplabv1 import vgg16_imagenet_to_backbone
        return vgg16_imagenet_to_backbone
    if name == "mobilenet_v2":
        from ..models.mobilenet import features_from_imagenet_mobilenet_v2
        return features_from_imagenet_mobilenet_v2
    if name == "mobilenet_v3_large":
        from ..models.mobilenet import features_from_imagenet_mobilenet_v3_large
        return features_from_imagenet_mobilenet_v3_large
    return _resnet_to_backbone


def detect_imagenet_network(keys) -> str | None:
    """``"resnet"``, ``"vgg16"``, ``"mobilenet_v2"``, ``"mobilenet_v3_large"`` or None, from the keys
    of a torchvision ImageNet classification state dict."""
    keys = set(keys)
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "resnet"
    if "features.0.weight" in keys and "features.28.weight" in keys:
        return "vgg16"
    if any(k.startswith("features.1.conv.") for k in keys):  # InvertedResidual's ``conv`` Sequential
        return "mobilenet_v2"
    if any(k.startswith("features.1.block.") for k in keys):  # MobileNetV3's ``block`` Sequential
        return "mobilenet_v3_large"
    return None


def load_backbone_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, torch.Tensor], *,
                          strict: bool = True) -> BackboneLoadReport:
    """Load an ImageNet classification checkpoint (path or state dict) into ``model``'s backbone.

    The file is read safely (``weights_only``).  ``strict``: every backbone tensor of the model
    must be covered and every renamed tensor must fit, else CheckpointError naming the keys (e.g.
    ResNet-50 weights for a ResNet-101 model); with ``strict=False`` what fits is loaded and the
    report says what was not.  Raises CheckpointError when the weights are no known ImageNet network
    or nothing fits.  Returns a :class:`BackboneLoadReport`.
    """
    where = str(weights) if isinstance(weights, (str, os.PathLike)) else "state dict"
    if isinstance(weights, (str, os.PathLike)):
        sd: Mapping[str, torch.Tensor] = read_checkpoint(weights).state_dict
    else:
        sd = weights
    sd = strip_wrapper_prefixes(dict(sd))
    network = detect_imagenet_network(sd)
    if network is None:
        raise CheckpointError(f"{where}: not a torchvision ImageNet ResNet, VGG16 or MobileNet checkpoint "
                              f"(first keys: {list(sd)[:5]})")
    try:
        mapped = _family_mapper(network)(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: {e.args[0] if e.args else e}") from None

    own = model.state_dict()
    report = BackboneLoadReport(network)
    used = {id(v) for v in mapped.values()}
    report.skipped = [k for k, v in sd.items() if id(v) not in used]
    fitting = {}
    for k, v in mapped.items():
        if k in own and tuple(own[k].shape) == tuple(v.shape):
            fitting[k] = v
        else:
            report.rejected.append(k)
    report.loaded = list(fitting)
    report.missing = [k for k in own if k.startswith("backbone.") and k not in fitting
                      and not k.endswith("num_batches_tracked")]
    if not fitting:
        raise CheckpointError(f"{where}: none of its {network} weights fit this model's backbone "
                              f"(e.g. {report.rejected[:3]})")
    if strict and (report.missing or report.rejected):
        raise CheckpointError(
            f"{where}: {network} weights do not fit the backbone: {len(report.missing)} backbone "
            f"key(s) not covered {report.missing[:5]}, {len(report.rejected)} source key(s) without a "
            f"place or of another shape {report.rejected[:5]}")
    model.load_state_dict(fitting, strict=False)
    return report
