"""Metadata a model carries: architecture, classes, colours and preprocessing.

Every model built by :func:`engine.build_model` or read by :func:`engine.load_model` has a
``ModelMeta`` attached as ``model.meta``.  The Predictor reads preprocessing from it; the GUI reads
class names and colours; native checkpoints store it as JSON.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Preprocessing",
    "ModelMeta",
    "IMAGENET",
    "CAFFE_BGR",
    "TORCHVISION_SEG",
    "VOC_CLASSES",
    "voc_colormap",
    "default_colors",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard PASCAL VOC colour map (bit-interleaved class index), ``n`` entries."""
    cmap = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap.append((r, g, b))
    return cmap


def default_colors(n: int) -> list[tuple[int, int, int]]:
    return voc_colormap(max(n, 1))[:n]


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the network's input tensor.

    ``x = (pixels[channel_order] * scale - mean) / std``, per channel, in the order the network expects.
    ``resize_short``: the shorter side the weights were evaluated at (torchvision uses 520); the
    Predictor may use it as its default inference size.  None means native size.
    ``sliding_window``: ``(crop_h, crop_w, stride_h, stride_w)`` when the weights were evaluated on
    overlapping crops of the (resized) image with the crops' logits averaged (mmsegmentation's
    ``mode='slide'``, e.g. its Cityscapes models); None runs the whole image at once.
    """

    channel_order: str = "RGB"  # "RGB" or "BGR"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_short: int | None = None
    sliding_window: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.sliding_window is not None:
            sw = tuple(int(v) for v in self.sliding_window)
            if len(sw) != 4 or any(v <= 0 for v in sw) or sw[2] > sw[0] or sw[3] > sw[1]:
                raise ValueError("sliding_window is (crop_h, crop_w, stride_h, stride_w), positive, strides "
                                 f"no larger than the crop; got {self.sliding_window!r}")
            object.__setattr__(self, "sliding_window", sw)
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need three values each, std positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


IMAGENET = Preprocessing()
TORCHVISION_SEG = Preprocessing(resize_short=520)
# kazuto1011/deeplab-pytorch (Caffe-converted v2): BGR, 0-255, mean subtracted, no std.
CAFFE_BGR = Preprocessing(channel_order="BGR", scale=1.0, mean=(104.008, 116.669, 122.675), std=(1.0, 1.0, 1.0))


@dataclass
class ModelMeta:
    """What a model is and how to feed it; attached to every model as ``model.meta``."""

    arch: str
    num_classes: int
    output_stride: int | None = None
    aux: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # builder kwargs beyond the above (e.g. separable)
    class_names: list[str] = field(default_factory=list)
    class_colors: list[tuple[int, int, int]] = field(default_factory=list)
    preprocessing: Preprocessing = IMAGENET
    source_format: str = "native"  # native / torchvision / vainf / kazuto1011 / random
    extra: dict[str, Any] = field(default_factory=dict)  # parent checkpoint, training summary, ...

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = list(VOC_CLASSES) if self.num_classes == 21 else [
                f"class_{i}" for i in range(self.num_classes)]
        if not self.class_colors:
            self.class_colors = default_colors(self.num_classes)
        self.class_colors = [tuple(int(v) for v in c) for c in self.class_colors]
        if len(self.class_names) != self.num_classes or len(self.class_colors) != self.num_classes:
            raise ValueError(
                f"{self.num_classes} classes but {len(self.class_names)} names and "
                f"{len(self.class_colors)} colours")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(d, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        d = json.loads(text)
        d["preprocessing"] = Preprocessing.from_dict(d.get("preprocessing", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
