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
    if name.startswith(("backbone.", "encoder.")):   # torchvision/VainF/mmsegmentation; smp
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


def _pooled_bn_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers that follow a global average pool in the same block (ASPP's image pooling)."""
    out = []
    for block in model.modules():
        children = list(block.children())
        for i, m in enumerate(children):
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                out += [c for c in children[i + 1:] if isinstance(c, nn.modules.batchnorm._BatchNorm)]
    return out


def set_train_mode(model: nn.Module, *, frozen_bn: bool, batch_size: int = 2) -> None:
    """``model.train()``, but with BatchNorm kept in eval mode (running statistics) when frozen.

    With a few images per batch the batch statistics are noise and would overwrite the good
    running statistics of the pretrained model; DeepLab v2/v3 froze BN for exactly this reason.
    With one image per batch, BatchNorm after a global pool sees one value per channel, which has no
    batch statistics at all: those layers keep their running statistics even when the rest train.
    """
    model.train()
    if frozen_bn:
        for m in _bn_layers(model):
            m.eval()
    elif batch_size < 2:
        for m in _pooled_bn_layers(model):
            m.eval()
