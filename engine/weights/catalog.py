"""Known public weights and where they live on this machine.

Each :class:`WeightsEntry` describes one public file the way torchvision's ``Weights`` do: URL,
file name (whose ``-<hex>`` suffix is the start of its SHA-256), classes, preprocessing and the
metrics its authors report.  Files are fetched on first use into the user cache folder
(``platformdirs``; ``$DEEPLAB_GUI_CACHE`` overrides) under ``weights/<file name>``; a file already
there (and matching its hash) is used without any network access, so on an offline machine a
person can drop the file there by hand.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..meta import CAFFE_BGR, IMAGENET, TORCHVISION_SEG, VOC_CLASSES, ModelMeta, Preprocessing
from ..models.mmseg import MMSEG
from ..models.mmseg_classes import DATASETS
from .download import (
    DownloadCancelled,
    ProgressFn,
    WeightsError,
    WeightsHashMismatch,
    WeightsUnavailable,
    download_file,
    sha256_of,
)

__all__ = [
    "WeightsEntry",
    "CATALOG",
    "hash_prefix_from_name",
    "CACHE_ENV",
    "list_weights",
    "get_weights",
    "default_cache_dir",
    "weights_path",
    "is_downloaded",
    "download",
    "resolve_weights",
    "load_catalog_model",
    "WeightsError",
    "WeightsUnavailable",
    "WeightsHashMismatch",
    "DownloadCancelled",
]

CACHE_ENV = "DEEPLAB_GUI_CACHE"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z]+$")


def hash_prefix_from_name(file_name: str) -> str | None:
    """``"resnet50-0676ba61.pth"`` -> ``"0676ba61"`` (torch.hub's convention), else None."""
    m = _HASH_SUFFIX.search(file_name)
    return m.group(1) if m else None


# "segmentation": a DeepLab model; "backbone": an ImageNet network to start one from; "click": a
# click-segmentation model (SAM 2.1, SAM, MobileSAM; ``arch`` names it in engine.click).
KINDS = ("segmentation", "backbone", "click")


@dataclass(frozen=True)
class WeightsEntry:
    """One public weights file.

    ``arch``: registry name for ``kind == "segmentation"``; the ImageNet network for backbones,
    whose ``backbone_for`` lists the registry names that can start from it; the click model's name
    (``engine.list_click_models``) for ``kind == "click"`` (``num_classes`` 0).  ``format``: the
    checkpoint layout (``torchvision``, ``vainf``, ``kazuto1011``).  ``metrics``: as reported by
    the authors (mIoU in %, on ``metrics_dataset``).  ``dataset``: the data set whose classes the
    weights predict, for grouping in the app ("Pascal VOC", "COCO (VOC classes)", "Cityscapes" ...);
    ``class_colors``: that data set's palette when it has its own (else the VOC colour map is used).
    """

    id: str
    arch: str
    url: str
    num_classes: int
    preprocessing: Preprocessing
    format: str
    kind: str = "segmentation"
    class_names: tuple[str, ...] = ()
    output_stride: int | None = None
    aux: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    metrics_dataset: str = ""
    backbone_for: tuple[str, ...] = ()
    description: str = ""
    approx_mb: int = 0       # the file's size in MB, roughly (shown before a download)
    license: str = ""
    dataset: str = ""
    class_colors: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        return hash_prefix_from_name(self.file_name)


_TV = "https://download.pytorch.org/models/"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_APACHE = "Apache-2.0 (code and weights, as their authors publish them)"
_TV_SEG_DATASET = "COCO val2017, VOC's 20 categories"
_TV_DATASET = "COCO (VOC classes)"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/"
_MMSEG_LICENSE = "Apache-2.0 (mmsegmentation's code and model zoo)"
# How mmsegmentation's test pipeline evaluated its zoo files (configs/_base_/datasets/*.py and each
# model config's test_cfg): Cityscapes 512x1024 models: Resize to fit 2048x1024 keeping the aspect
# ratio (short side 1024 up to 2:1 images), whole image at once; ADE20K: fit 2048x512 (short side
# 512), whole image; Pascal Context: fit 520x520 (long side 520), then 480x480 crops every 320 px.
_MMSEG_CITYSCAPES = dataclasses.replace(MMSEG, resize_short=1024)
_MMSEG_ADE20K = dataclasses.replace(MMSEG, resize_short=512)
_MMSEG_CONTEXT = dataclasses.replace(MMSEG, sliding_window=(480, 480, 320, 320))


def _mmseg_entry(id_: str, arch: str, path: str, dataset: str, miou: float, miou_ms: float, preprocessing,
                 approx_mb: int, config: str) -> WeightsEntry:
    names, colors = DATASETS[dataset]
    return WeightsEntry(id_, arch, _MMSEG + path, len(names), preprocessing, "mmseg", class_names=names,
                        class_colors=colors, output_stride=8, aux=True, dataset=dataset,
                        metrics={"miou": miou, "miou_ms_flip": miou_ms}, metrics_dataset=f"{dataset} val",
                        approx_mb=approx_mb, license=_MMSEG_LICENSE,
                        description=f"mmsegmentation {config} (R-{arch.split('_r')[-1][:-3]}-D8)")

CATALOG: dict[str, WeightsEntry] = {e.id: e for e in (
    WeightsEntry("deeplabv3_resnet50_coco", "deeplabv3_resnet50", _TV + "deeplabv3_resnet50_coco-cd0a2569.pth",
                 21, TORCHVISION_SEG, "torchvision", class_names=VOC_CLASSES, output_stride=8, aux=True,
                 metrics={"miou": 66.4, "pixel_acc": 92.4}, metrics_dataset=_TV_SEG_DATASET,
                 dataset=_TV_DATASET, description="torchvision DeepLabV3 ResNet-50, trained on COCO with VOC classes"),
    WeightsEntry("deeplabv3_resnet101_coco", "deeplabv3_resnet101", _TV + "deeplabv3_resnet101_coco-586e9e4e.pth",
                 21, TORCHVISION_SEG, "torchvision", class_names=VOC_CLASSES, output_stride=8, aux=True,
                 metrics={"miou": 67.4, "pixel_acc": 92.4}, metrics_dataset=_TV_SEG_DATASET,
                 dataset=_TV_DATASET, description="torchvision DeepLabV3 ResNet-101, trained on COCO with VOC classes"),
    WeightsEntry("deeplabv3_mobilenet_v3_large_coco", "deeplabv3_mobilenet_v3_large",
                 _TV + "deeplabv3_mobilenet_v3_large-fc3c493d.pth", 21, TORCHVISION_SEG, "torchvision",
                 class_names=VOC_CLASSES, output_stride=16, aux=True,
                 metrics={"miou": 60.3, "pixel_acc": 91.2}, metrics_dataset=_TV_SEG_DATASET,
                 dataset=_TV_DATASET, description="torchvision DeepLabV3 MobileNetV3-Large, trained on COCO with VOC classes"),
    WeightsEntry("deeplabv2_resnet101_msc_vocaug", "deeplabv2_resnet101",
                 "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
                 "deeplabv2_resnet101_msc-vocaug-20000.pth",
                 21, CAFFE_BGR, "kazuto1011", class_names=VOC_CLASSES, output_stride=8,
                 metrics={"miou": 76.65, "miou_crf": 77.93}, metrics_dataset="PASCAL VOC 2012 val",
                 dataset="Pascal VOC", description="kazuto1011 DeepLab v2 ResNet-101 MSC, trained on VOC 2012 trainaug"),
    _mmseg_entry("mmseg_deeplabv3plus_r50_cityscapes", "mmseg_deeplabv3plus_r50v1c",
                 "deeplabv3plus/deeplabv3plus_r50-d8_512x1024_80k_cityscapes/"
                 "deeplabv3plus_r50-d8_512x1024_80k_cityscapes_20200606_114049-f9fb496d.pth",
                 "Cityscapes", 80.09, 81.13, _MMSEG_CITYSCAPES, 167, "deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024"),
    _mmseg_entry("mmseg_deeplabv3plus_r101_cityscapes", "mmseg_deeplabv3plus_r101v1c",
                 "deeplabv3plus/deeplabv3plus_r101-d8_512x1024_80k_cityscapes/"
                 "deeplabv3plus_r101-d8_512x1024_80k_cityscapes_20200606_114143-068fcfe9.pth",
                 "Cityscapes", 80.97, 82.03, _MMSEG_CITYSCAPES, 240, "deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024"),
    _mmseg_entry("mmseg_deeplabv3plus_r50_ade20k", "mmseg_deeplabv3plus_r50v1c",
                 "deeplabv3plus/deeplabv3plus_r50-d8_512x512_160k_ade20k/"
                 "deeplabv3plus_r50-d8_512x512_160k_ade20k_20200615_124504-6135c7e0.pth",
                 "ADE20K", 43.95, 44.93, _MMSEG_ADE20K, 167, "deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512"),
    _mmseg_entry("mmseg_deeplabv3plus_r101_ade20k", "mmseg_deeplabv3plus_r101v1c",
                 "deeplabv3plus/deeplabv3plus_r101-d8_512x512_160k_ade20k/"
                 "deeplabv3plus_r101-d8_512x512_160k_ade20k_20200615_123232-38ed86bb.pth",
                 "ADE20K", 45.47, 46.35, _MMSEG_ADE20K, 240, "deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512"),
    _mmseg_entry("mmseg_deeplabv3_r101_pascal_context", "mmseg_deeplabv3_r101v1c",
                 "deeplabv3/deeplabv3_r101-d8_480x480_40k_pascal_context/"
                 "deeplabv3_r101-d8_480x480_40k_pascal_context_20200911_204118-1aa27336.pth",
                 "Pascal Context", 46.55, 47.81, _MMSEG_CONTEXT, 333, "deeplabv3_r101-d8_4xb4-40k_pascal-context-480x480"),
    WeightsEntry("vgg16_imagenet", "vgg16", _TV + "vgg16-397923af.pth", 1000, IMAGENET, "torchvision",
                 kind="backbone", backbone_for=("deeplabv1_vgg16",),
                 metrics={"top1": 71.592, "top5": 90.382}, metrics_dataset="ImageNet-1k val",
                 description="torchvision VGG16 ImageNet classifier"),
    WeightsEntry("resnet50_imagenet", "resnet50", _TV + "resnet50-0676ba61.pth", 1000, IMAGENET, "torchvision",
                 kind="backbone", backbone_for=("deeplabv3_resnet50", "deeplabv3plus_resnet50"),
                 metrics={"top1": 76.13, "top5": 92.862}, metrics_dataset="ImageNet-1k val",
                 description="torchvision ResNet-50 ImageNet classifier (V1 recipe)"),
    WeightsEntry("resnet101_imagenet", "resnet101", _TV + "resnet101-63fe2227.pth", 1000, IMAGENET,
                 "torchvision", kind="backbone", backbone_for=("deeplabv3_resnet101", "deeplabv3plus_resnet101"),
                 metrics={"top1": 77.374, "top5": 93.546}, metrics_dataset="ImageNet-1k val",
                 description="torchvision ResNet-101 ImageNet classifier (V1 recipe)"),
    WeightsEntry("mobilenet_v2_imagenet", "mobilenet_v2", _TV + "mobilenet_v2-b0353104.pth", 1000, IMAGENET,
                 "torchvision", kind="backbone",
                 backbone_for=("deeplabv3_mobilenet_v2", "deeplabv3plus_mobilenet_v2"),
                 metrics={"top1": 71.878, "top5": 90.286}, metrics_dataset="ImageNet-1k val",
                 description="torchvision MobileNetV2 ImageNet classifier"),
    *(WeightsEntry(f"sam2.1_hiera_{size}", f"sam2.1_hiera_{size}", _SAM2 + f"sam2.1_hiera_{size}.pt", 0, IMAGENET,
                   "sam2", kind="click", approx_mb=mb, license=_APACHE,
                   description=f"SAM 2.1 Hiera-{title} (facebookresearch/sam2), image mode")
      for size, title, mb in (("tiny", "T", 156), ("small", "S", 184), ("base_plus", "B+", 324),
                              ("large", "L", 898))),
    *(WeightsEntry(f"sam_vit_{size}", f"sam_vit_{size}", f"{_SAM}sam_vit_{size}_{tag}.pth", 0, IMAGENET, "sam",
                   kind="click", approx_mb=mb, license=_APACHE,
                   description=f"Segment Anything ViT-{size.upper()} (facebookresearch/segment-anything)")
      for size, tag, mb in (("b", "01ec64", 375), ("l", "0b3195", 1250), ("h", "4b8939", 2560))),
    WeightsEntry("mobile_sam", "mobile_sam", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                 0, IMAGENET, "sam", kind="click", approx_mb=41, license=_APACHE,
                 description="MobileSAM: TinyViT-5M encoder with SAM's decoder (ChaoningZhang/MobileSAM); "
                             "small enough for a CPU laptop"),
)}


def list_weights(kind: str | None = None) -> list[WeightsEntry]:
    """Catalog entries, optionally only ``"segmentation"``, ``"backbone"`` or ``"click"`` ones."""
    return [e for e in CATALOG.values() if kind is None or e.kind == kind]


def get_weights(weights_id: str) -> WeightsEntry:
    try:
        return CATALOG[weights_id]
    except KeyError:
        raise WeightsError(f"unknown weights {weights_id!r}; known: {', '.join(CATALOG)}") from None


def _entry(id_or_entry: str | WeightsEntry) -> WeightsEntry:
    return id_or_entry if isinstance(id_or_entry, WeightsEntry) else get_weights(id_or_entry)


def default_cache_dir() -> Path:
    """Folder the weights are cached in: ``$DEEPLAB_GUI_CACHE/weights`` or the platform's user
    cache folder (e.g. ``~/.cache/deeplab-gui/weights``)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("deeplab-gui", appauthor=False)
    return Path(root) / "weights"


def weights_path(id_or_entry: str | WeightsEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the entry's file lives (or will, once downloaded).  No I/O."""
    entry = _entry(id_or_entry)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / entry.file_name


# Hashing a 200 MB file takes a second; remember files already verified, keyed by their stat.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _hash_ok(path: Path, prefix: str | None) -> bool:
    if prefix is None:
        return True
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_of(path)
    return _VERIFIED[key].startswith(prefix)


def is_downloaded(id_or_entry: str | WeightsEntry, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether a complete, hash-valid file is in place."""
    entry = _entry(id_or_entry)
    path = weights_path(entry, cache_dir)
    return path.is_file() and _hash_ok(path, entry.sha256_prefix)


def download(id_or_entry: str | WeightsEntry, *, progress: ProgressFn | None = None,
             cache_dir: str | os.PathLike | None = None, cancel: Any = None, timeout: float = 30.0) -> Path:
    """Path of the entry's file, downloading it first when it is not in place.

    A file already in place whose hash matches is returned without network access; one whose
    hash does not match is replaced by a fresh download.  ``progress(done, total)`` and ``cancel``
    (Event or callable) as in :func:`engine.download.download_file`.
    Raises WeightsUnavailable (offline, unreachable, cut short: the message names the exact path
    to drop the file at by hand), WeightsHashMismatch, DownloadCancelled.
    """
    entry = _entry(id_or_entry)
    dest = weights_path(entry, cache_dir)
    stale = dest.is_file() and not _hash_ok(dest, entry.sha256_prefix)
    if dest.is_file() and not stale:
        return dest
    hint = (f"Without network access, download {entry.url} by hand and save it as {dest}"
            + (" (the file there now has the wrong SHA-256)" if stale else ""))
    return download_file(entry.url, dest, sha256_prefix=entry.sha256_prefix, progress=progress,
                         cancel=cancel, timeout=timeout, manual_hint=hint)


def resolve_weights(spec: str | os.PathLike | WeightsEntry, *, progress: ProgressFn | None = None,
                    cancel: Any = None, cache_dir: str | os.PathLike | None = None,
                    allow_download: bool = True) -> Path:
    """A checkpoint path for ``spec``: an existing file path, or a catalog id (downloaded if needed).

    ``allow_download=False`` only looks in the cache (WeightsUnavailable if the file is absent).
    Raises WeightsError when ``spec`` is neither a file nor a catalog id.
    """
    if isinstance(spec, WeightsEntry):
        entry = spec
    else:
        path = Path(spec)
        if path.is_file():
            return path
        if str(spec) not in CATALOG:
            raise WeightsError(f"{spec!s} is neither an existing file nor a catalog id "
                               f"(known ids: {', '.join(CATALOG)})")
        entry = CATALOG[str(spec)]
    if not allow_download:
        dest = weights_path(entry, cache_dir)
        if not is_downloaded(entry, cache_dir):
            raise WeightsUnavailable(f"{entry.id} is not downloaded; save {entry.url} as {dest}")
        return dest
    return download(entry, progress=progress, cache_dir=cache_dir, cancel=cancel)


def load_catalog_model(spec: str | WeightsEntry, *, device: str = "cpu", output_stride: int | None = None,
                       progress: ProgressFn | None = None, cancel: Any = None,
                       cache_dir: str | os.PathLike | None = None):
    """Download if needed and load a segmentation entry; ``meta.extra`` records the entry id,
    URL and reported metrics."""
    from ..checkpoints.io import load_model

    entry = _entry(spec)
    if entry.kind == "click":
        raise WeightsError(f"{entry.id} is a click-segmentation model; use engine.load_click_model")
    if entry.kind != "segmentation":
        raise WeightsError(f"{entry.id} is an ImageNet backbone; use engine.load_backbone_weights")
    path = download(entry, progress=progress, cancel=cancel, cache_dir=cache_dir)
    model = load_model(path, arch=entry.arch, num_classes=entry.num_classes, device=device,
                       output_stride=output_stride if output_stride is not None else entry.output_stride)
    # the entry knows how its authors evaluated the weights (resize, sliding window) and, when the
    # file names no classes, which data set's classes and palette its outputs are
    meta = dataclasses.replace(model.meta, preprocessing=entry.preprocessing)
    defaults = ModelMeta(meta.arch, meta.num_classes)
    if entry.class_names and meta.class_names == defaults.class_names and meta.class_colors == defaults.class_colors:
        meta = dataclasses.replace(meta, class_names=list(entry.class_names), class_colors=list(entry.class_colors))
    model.meta = meta
    model.meta.extra.update(weights_id=entry.id, url=entry.url, reported_metrics=dict(entry.metrics),
                            metrics_dataset=entry.metrics_dataset, dataset=entry.dataset)
    return model
