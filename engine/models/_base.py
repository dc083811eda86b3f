"""The shared model skeleton: backbone + classifier (+ optional aux classifier).

State-dict prefixes ``backbone.``, ``classifier.`` and ``aux_classifier.`` follow torchvision's
``_SimpleSegmentationModel`` (and VainF's copy of it), so peer weights load with at most a prefix
rename.  Backbones return a dict of feature maps: ``"out"`` always, ``"aux"`` when an aux head is
used, ``"low_level"`` for DeepLabV3+ decoders.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SegModel", "IntermediateLayerGetter", "state_dict_from"]


class IntermediateLayerGetter(nn.ModuleDict):
    """Run child modules in order and return the outputs named in ``return_layers``.

    Same semantics and state-dict layout as ``torchvision.models._utils.IntermediateLayerGetter``:
    children after the last requested one are dropped, so their weights are not part of the model.
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        names = [name for name, _ in model.named_children()]
        if not set(return_layers).issubset(names):
            raise ValueError(f"return_layers {sorted(return_layers)} not all in {names}")
        wanted = dict(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class SegModel(nn.Module):
    """``model(x)`` -> N×C×H×W logits at the input's size (bilinear, align_corners=False).

    ``model(x, return_aux=True)`` -> ``(logits, aux_logits)`` with aux_logits None when there is no
    aux head; the trainer uses it.  The classifier receives the backbone's feature dict when
    ``classifier_takes_dict`` (DeepLabV3+ needs ``low_level``), else ``features["out"]``.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None,
                 *, classifier_takes_dict: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.classifier_takes_dict = classifier_takes_dict

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        size = x.shape[-2:]
        features = self.backbone(x)
        head_in = features if self.classifier_takes_dict else features["out"]
        out = F.interpolate(self.classifier(head_in), size=size, mode="bilinear", align_corners=False)
        if not return_aux:
            return out
        aux = None
        if self.aux_classifier is not None:
            aux = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear",
                                align_corners=False)
        return out, aux


def state_dict_from(weights) -> dict[str, torch.Tensor]:
    """A state dict from a mapping.  Models never read files: ``engine.build_model`` reads a checkpoint
    path (safely, through ``engine.checkpoints``) before it reaches a builder."""
    if isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{weights}: pass backbone weights as a state dict; engine.build_model reads files")
    if not isinstance(weights, Mapping):
        raise TypeError(f"backbone weights must be a state dict or a file path, not {type(weights).__name__}")
    return dict(weights)
