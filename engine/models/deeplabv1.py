"""DeepLab v1 LargeFOV: VGG16 with atrous conv5/fc6, output stride 8.

Follows the authors' Caffe ``DeepLab-LargeFOV/train.prototxt`` (as reproduced by public ports and
described in the v1/v2 papers and the seed notes):

* conv1_1 .. conv4_3 are VGG16's; pool1-pool3 are **3x3, stride 2, pad 1** max-pools (VGG's are 2x2/2).
  Caffe rounds pooled sizes up, so they use ``ceil_mode=True`` (PyTorch's ceil mode also drops a last
  window that would start in the right padding, as Caffe does): a 321 input gives 161, 81, 41.
* pool4 and pool5 keep 3x3/pad 1 but with **stride 1**, so the network stops at stride 8; conv5_x then
  use dilation 2 ("hole 2") to keep their field of view.
* ``pool5a``: a 3x3/1 pad 1 average pool before fc6, present in the LargeFOV prototxt.  Caffe divides
  padded windows by 9 when the window stays within the padding, which is ``count_include_pad=True``.
* fc6: 3x3 conv, dilation 12, 1024 channels; fc7: 1x1, 1024; both ReLU + dropout 0.5 (Caffe's
  element-wise dropout, ``nn.Dropout``); fc8: 1x1 to the classes.

Trainable parameters: 14,714,688 (VGG16 convs) + 4,719,616 (fc6) + 1,049,600 (fc7) + 1025·C (fc8):
20,505,429 for 21 classes.

Layout: ``backbone.<i>.*`` uses exactly the indices of torchvision's ``vgg16().features`` (convs at
0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; pools at 4, 9, 16, 23, 30 carry no weights), so the
ImageNet ``vgg16-397923af.pth`` ``features.*`` tensors load into it unchanged
(:func:`vgg16_imagenet_to_backbone`).  The head is ``classifier.{fc6,fc7,fc8}.*`` (Caffe's names).
Preprocessing is torchvision's ImageNet RGB mean/std, because that is what the backbone weights we can
load were trained with (the Caffe originals used BGR mean subtraction).  The authors' ``vgg16_20M``
init also subsampled VGG's fc6/fc7 down to 1024 channels; we do not reproduce that: fc6/fc7 start
random.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn as nn

from ..meta import IMAGENET
from ._base import SegModel, state_dict_from
from .registry import register

__all__ = [
    "VGG16_CONV_INDICES",
    "VGG16LargeFOVBackbone",
    "LargeFOVHead",
    "vgg16_imagenet_to_backbone",
    "load_vgg16_imagenet",
    "deeplabv1_vgg16",
]

# VGG16 "D" configuration: output channels per conv, "M" for a pool (torchvision's cfgs["D"]).
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")
# Index in torchvision's ``vgg16().features`` of each of the 13 convs (conv1_1 .. conv5_3).
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class VGG16LargeFOVBackbone(nn.Sequential):
    """VGG16 conv1_1 .. pool5 with DeepLab's pools and atrous conv5; returns ``{"out": N×512×h×w}``.

    h = ceil-mode size after three stride-2 pools: 41 for H = 321, 9 for H = 65.
    """

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        in_ch, n_pools, n_convs = 3, 0, 0
        for v in _VGG16_CFG:
            if v == "M":
                n_pools += 1
                # pool4 and pool5 (the 4th and 5th) keep their window but stop downsampling.
                layers.append(nn.MaxPool2d(3, stride=2 if n_pools <= 3 else 1, padding=1, ceil_mode=True))
                continue
            n_convs += 1
            dilation = 2 if n_convs > 10 else 1  # conv5_1 .. conv5_3 compensate for pool4's lost stride
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            in_ch = int(v)
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init, for a usable random backbone
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def __getitem__(self, idx):
        # Slices are plain Sequentials (tensor in, tensor out): nn.Sequential would call our __init__.
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"out": super().forward(x)}


class LargeFOVHead(nn.Sequential):
    """pool5a (3x3 avg) -> fc6 (3x3, rate 12) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8.

    N×512×h×w float -> N×num_classes×h×w logits.
    """

    def __init__(self, num_classes: int, in_ch: int = 512, channels: int = 1024, rate: int = 12,
                 dropout: float = 0.5) -> None:
        super().__init__(OrderedDict([
            ("pool5a", nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)),
            ("fc6", nn.Conv2d(in_ch, channels, 3, padding=rate, dilation=rate)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Conv2d(channels, channels, 1)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Conv2d(channels, num_classes, 1)),
        ]))
        for name in ("fc6", "fc7"):
            conv = getattr(self, name)
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # The prototxt's fc8 fillers: gaussian std 0.01, bias 0.
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)


def vgg16_imagenet_to_backbone(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchvision's ImageNet VGG16 state dict onto our model: ``features.<i>.*`` -> ``backbone.<i>.*``.

    Returns the 26 conv tensors (13 weights, 13 biases) keyed for ``model.load_state_dict(...,
    strict=False)``.  VGG's ``classifier.*`` (fc 4096-wide) are dropped: LargeFOV's 1024-channel 3x3
    fc6 cannot take them.  Raises KeyError naming missing or unknown keys, ValueError naming keys whose
    shapes differ from VGG16's (e.g. a VGG16-BN or VGG19 checkpoint).
    """
    expected = _expected_vgg16_shapes()
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    unknown = sorted(k for k in sd if k not in expected and not k.startswith("classifier."))
    missing = sorted(k for k in expected if k not in sd)
    if unknown or missing:
        raise KeyError(f"not a torchvision VGG16 state dict: missing {missing[:6]}"
                       f"{'...' if len(missing) > 6 else ''}, unknown {unknown[:6]}"
                       f"{'...' if len(unknown) > 6 else ''}")
    wrong = [f"{k} {tuple(sd[k].shape)} != {shape}" for k, shape in expected.items()
             if tuple(sd[k].shape) != shape]
    if wrong:
        raise ValueError("VGG16 shape mismatch: " + "; ".join(wrong[:4]))
    return {"backbone." + k.removeprefix("features."): sd[k] for k in expected}


def load_vgg16_imagenet(model: nn.Module, source: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ImageNet VGG16 conv weights (the state dict of ``vgg16-*.pth``) into a
    ``deeplabv1_vgg16`` model's backbone, in place; the head is untouched.  Returns the model."""
    mapped = vgg16_imagenet_to_backbone(state_dict_from(source))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(k.startswith("backbone.") for k in missing):
        raise KeyError(f"model is not a deeplabv1_vgg16: unexpected {unexpected[:6]}")
    return model


def _expected_vgg16_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch, convs = 3, iter(VGG16_CONV_INDICES)
    for v in _VGG16_CFG:
        if v == "M":
            continue
        i = next(convs)
        shapes[f"features.{i}.weight"] = (int(v), in_ch, 3, 3)
        shapes[f"features.{i}.bias"] = (int(v),)
        in_ch = int(v)
    return shapes


@register("deeplabv1_vgg16", output_strides=(8,), default_stride=8, preprocessing=IMAGENET,
          description="DeepLab v1 LargeFOV: VGG16, atrous fc6 (rate 12, 1024 ch), output stride 8")
def deeplabv1_vgg16(num_classes: int = 21, output_stride: int | None = 8, *,
                    pretrained_backbone: Mapping[str, torch.Tensor] | None = None) -> SegModel:
    """Random-weight DeepLab v1 LargeFOV (20,505,429 trainable parameters with 21 classes).

    ``pretrained_backbone``: torchvision's ImageNet ``vgg16-397923af.pth`` (path or state dict) to
    start conv1-conv5 from, as the paper fine-tunes from ImageNet VGG16.
    """
    if output_stride not in (None, 8):
        raise ValueError(f"deeplabv1_vgg16 supports output stride (8,), not {output_stride}")
    model = SegModel(VGG16LargeFOVBackbone(), LargeFOVHead(num_classes))
    if pretrained_backbone is not None:
        load_vgg16_imagenet(model, pretrained_backbone)
    return model
