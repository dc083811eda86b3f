"""Parameter groups (head lr ×10) and frozen BatchNorm, for every registry model.

Backbone parameters are ``backbone.*`` everywhere except DeepLab v2 (kazuto1011 layout), where the
ResNet is ``base.layer1-5`` and the head is ``base.aspp``.  Everything that is not backbone is head
(ASPP, decoder, classifier, aux classifier).  DDP's ``module.`` prefix is ignored.
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["is_backbone_param", "split_params", "set_train_mode", "freeze_bn_params", "bn_statistics_trained"]


def is_backbone_param(name: str) -> bool:
    """True for parameters of the pretrained feature extractor (the part that gets the base lr)."""
    if name.startswith("module."):
        name = name[len("module."):]
    if name.startswith("backbone."):
        return True
    return name.startswith("base.") and not name.startswith("base.aspp.")


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) lists of the parameters that require grad."""
    backbone, head = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if is_backbone_param(name) else head).append(p)
    return backbone, head


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_statistics_trained(model: nn.Module) -> bool:
    """Whether any BatchNorm layer holds learned running statistics (not the initial mean 0, var 1).

    A model built from scratch has none: freezing its BatchNorm would fix every layer to the identity
    normalisation, under which activations grow layer by layer and training diverges."""
    layers = [m for m in _bn_layers(model) if getattr(m, "running_mean", None) is not None]
    return any(bool(m.running_mean.detach().abs().max() > 0) or bool((m.running_var.detach() - 1).abs().max() > 0)
               for m in layers)


def freeze_bn_params(model: nn.Module) -> int:
    """Stop gradients into BatchNorm scale/shift (the Caffe DeepLab recipe); returns layers frozen."""
    layers = _bn_layers(model)
    for m in layers:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return len(layers)


def set_train_mode(model: nn.Module, *, frozen_bn: bool) -> None:
    """``model.train()``, but with BatchNorm kept in eval mode (running statistics) when frozen.

    With a few images per batch the batch statistics are noise and would overwrite the good
    running statistics of the pretrained model; DeepLab v2/v3 froze BN for exactly this reason.
    """
    model.train()
    if frozen_bn:
        for m in _bn_layers(model):
            m.eval()
