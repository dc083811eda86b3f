"""Recognising peer checkpoint layouts and matching them to a registered architecture.

A peer checkpoint is a flat ``{key: tensor}`` state dict in one of these layouts:

- ``torchvision``: ``backbone.conv1.weight``, ``classifier.0.convs.0.0.weight``, ``aux_classifier.*``,
  MobileNetV3 ``backbone.0.0.weight``.
- ``vainf`` (VainF/DeepLabV3Plus-Pytorch): ``classifier.classifier.*`` (v3), ``classifier.project.*``
  (v3+), ``backbone.low_level_features.*`` (MobileNetV2), ``.body.`` for separable convs.
- ``kazuto1011`` (deeplab-pytorch v2): ``base.layer1.conv1.conv.weight``, ``base.aspp.c0.weight``,
  with or without the MSC wrapper's ``base.`` prefix.
- ``smp`` (segmentation_models_pytorch DeepLabV3/V3Plus, bare or under ``state_dict`` /
  ``model_state_dict``): ``encoder.conv1.weight``, ``decoder.aspp.*``, ``segmentation_head.0.weight``;
  smp 0.3/0.4's DeepLabV3 ``decoder.0.``/``.1.``/``.2.`` are renamed.
- ``mmseg`` (mmsegmentation's EncoderDecoder, in ``{"meta", "state_dict"}``): ``backbone.stem.0.weight``,
  ``decode_head.conv_seg.weight``, ``auxiliary_head.*`` (its FCN head, kept as the aux branch).

Rather than hard-coding every architecture's key list, the matcher builds each registered model on
the ``meta`` device (shapes only, no memory), renames the checkpoint's keys with the format's few
candidate renamings, and keeps the architecture whose keys and shapes agree exactly.  So ResNet-50
vs -101 falls out of the layer3 block count, the class count out of the final conv, and a family
added later needs no change here.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode

from ..meta import CAFFE_BGR, IMAGENET, TORCHVISION_SEG, Preprocessing
from ..models import build_model, list_models, model_spec
from ..models.mmseg import MMSEG

__all__ = [
    "PeerFormat",
    "FORMATS",
    "KeyDiff",
    "Match",
    "detect_format",
    "strip_wrapper_prefixes",
    "match_architecture",
    "diff_keys",
    "expected_shapes",
    "format_diff",
    "SkipRandomInit",
]

StateDict = dict[str, torch.Tensor]
Shape = tuple[int, ...]


@dataclass(frozen=True)
class PeerFormat:
    """What a checkpoint layout implies beyond its keys."""

    name: str
    preprocessing: Preprocessing
    default_stride: int | None  # the stride the peer's released weights were evaluated at


FORMATS: dict[str, PeerFormat] = {
    "torchvision": PeerFormat("torchvision", TORCHVISION_SEG, 8),
    "vainf": PeerFormat("vainf", IMAGENET, 16),
    "kazuto1011": PeerFormat("kazuto1011", CAFFE_BGR, 8),
    # smp's encoders' ImageNet preprocessing; each family's registry default stride is smp's own
    # (DeepLabV3 8, DeepLabV3Plus 16), so the format names none.
    "smp": PeerFormat("smp", IMAGENET, None),
    # mmseg's zoo DeepLabs are D8 unless named d16 (the keys cannot tell: dilations have no weights)
    "mmseg": PeerFormat("mmseg", MMSEG, 8),
    # A bare state dict already in our own key layout (e.g. torch.save(model.state_dict())):
    # preprocessing comes from the registry entry.
    "state_dict": PeerFormat("state_dict", IMAGENET, None),
}


# --------------------------------------------------------------------------------------------
# format detection

def strip_wrapper_prefixes(sd: StateDict) -> StateDict:
    """Drop prefixes added by wrappers rather than by the model: DataParallel/DDP's ``module.``
    and ``torch.compile``'s ``_orig_mod.``, when every key carries them."""
    for prefix in ("module.", "_orig_mod."):
        while sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_format(keys: Iterable[str], *, wrapped_in_model_state: bool = False) -> str:
    """Name the layout of a (prefix-stripped) state dict from its keys.

    Returns one of ``FORMATS``; ``"state_dict"`` when nothing peer-specific is recognised.
    """
    keys = list(keys)
    if any(k.startswith("segmentation_head.") for k in keys) and any(k.startswith("encoder.") for k in keys):
        return "smp"  # smp's SegmentationModel: encoder / decoder / segmentation_head
    if wrapped_in_model_state:
        return "vainf"  # only VainF's training script wraps weights in {"model_state": ...}
    if any(k.endswith("aspp.c0.weight") for k in keys) and any(".conv1.conv.weight" in k for k in keys):
        return "kazuto1011"
    if any(k.startswith("decode_head.") for k in keys):
        return "mmseg"
    if any(k.startswith(("classifier.classifier.", "classifier.project.", "backbone.low_level_features."))
           for k in keys):
        return "vainf"
    if any(k.startswith(("classifier.0.convs.", "backbone.0.0.")) for k in keys):
        return "torchvision"
    return "state_dict"


# --------------------------------------------------------------------------------------------
# key renamings per format; each maps a peer state dict to a candidate native one

def _identity(sd: StateDict) -> StateDict:
    return sd


def _vainf_v3(sd: StateDict) -> StateDict:
    """VainF's DeepLabHead nests its Sequential one level deeper (``classifier.classifier.N``) than
    torchvision's (``classifier.N``); the indices inside are the same.  v3+ heads are left alone."""
    if any(k.startswith("classifier.project.") for k in sd):
        return sd
    from ..models.deeplabv3 import vainf_v3_to_native  # the model family owns its key mapping

    try:
        return dict(vainf_v3_to_native(sd))
    except ValueError:  # not a v3 head after all: leave it for the identity candidate's diff
        return sd


def _smp_legacy(sd: StateDict) -> StateDict:
    from ..models.smp import smp_legacy_to_current  # the model family owns its key mapping

    return smp_legacy_to_current(sd)


def _add_base(sd: StateDict) -> StateDict:
    # kazuto1011's MSC wrapper stores the network under ``base.``; plain DeepLabV2 dumps lack it.
    return sd if all(k.startswith("base.") for k in sd) else {"base." + k: v for k, v in sd.items()}


def _strip_base(sd: StateDict) -> StateDict:
    return {(k[5:] if k.startswith("base.") else k): v for k, v in sd.items()}


_RENAMINGS: dict[str, tuple[Callable[[StateDict], StateDict], ...]] = {
    "torchvision": (_identity,),
    "vainf": (_identity, _vainf_v3),
    "kazuto1011": (_add_base, _strip_base),
    "smp": (_identity, _smp_legacy),
    "state_dict": (_identity,),
}


# --------------------------------------------------------------------------------------------
# expected layouts, built on the meta device

def _builder_params(arch: str) -> set[str]:
    try:
        return set(inspect.signature(model_spec(arch).builder).parameters)
    except (TypeError, ValueError):
        return set()


class SkipRandomInit(TorchFunctionMode):
    """Context manager turning random in-place initialisers into no-ops, for models whose every
    weight is about to be overwritten from a checkpoint.  (On the meta device they are no-ops
    anyway, but ``normal_`` there goes through torch._refs, whose first use imports torch._dynamo:
    seconds.)"""

    # nn.init functions dispatch as themselves (has_torch_function), so they are listed too.
    _SKIP = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_,
             *(getattr(torch.nn.init, n) for n in (
                 "normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_",
                 "xavier_normal_", "xavier_uniform_", "orthogonal_", "sparse_") if hasattr(torch.nn.init, n))}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SKIP:  # nn.init passes the tensor by keyword
            return args[0] if args else (kwargs or {}).get("tensor", (kwargs or {}).get("self"))
        return func(*args, **(kwargs or {}))


@functools.lru_cache(maxsize=64)
def _expected_cached(arch: str, num_classes: int, options: tuple) -> tuple[tuple[str, Shape], ...]:
    kw = dict(options)
    try:
        with torch.device("meta"), SkipRandomInit():
            model = build_model(arch, num_classes=num_classes, **kw)
    except Exception:  # a builder doing real arithmetic at init time: fall back to CPU
        model = build_model(arch, num_classes=num_classes, **kw)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_shapes(arch: str, num_classes: int = 21, **options) -> dict[str, Shape]:
    """``{key: shape}`` of ``build_model(arch, num_classes=..., **options)``'s state dict."""
    return dict(_expected_cached(arch, int(num_classes), tuple(sorted(options.items()))))


def _shapes_for(arch: str, num_classes: int, options: dict) -> dict[str, Shape]:
    """Expected shapes for any class count from two builds (21 and 3 classes): a dimension that is
    21 in one and 3 in the other is the class dimension.  Saves a build per class count."""
    a = expected_shapes(arch, 21, **options)
    if num_classes == 21:
        return a
    b = expected_shapes(arch, 3, **options)
    return {k: (shape if b.get(k) == shape else tuple(
        num_classes if (x, y) == (21, 3) else x for x, y in zip(shape, b.get(k, shape))))
        for k, shape in a.items()}


def _class_keys(arch: str, options: dict) -> list[str]:
    """Keys whose shape depends on the class count (final convs)."""
    a = expected_shapes(arch, 21, **options)
    b = expected_shapes(arch, 3, **options)
    return [k for k in a if a[k] != b.get(k)]


def _options_for(arch: str, sd: StateDict) -> dict:
    """Builder options the checkpoint's keys imply, for builders that take them."""
    params = _builder_params(arch)
    opts: dict = {}
    if "aux" in params and any(k.startswith(("aux_classifier.", "auxiliary_head.")) for k in sd):
        opts["aux"] = True  # only when present: some builders refuse aux=True outright
    if "separable" in params:
        opts["separable"] = any(".body." in k for k in sd if k.startswith("classifier."))
    if "aspp_separable" in params or "classification_classes" in params:
        from ..models.smp import smp_options_from_state_dict

        opts.update({k: v for k, v in smp_options_from_state_dict(sd).items() if k in params})
    return opts


# --------------------------------------------------------------------------------------------
# comparison

@dataclass
class KeyDiff:
    """Differences between a checkpoint and a model's expected state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, found, expected

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mis_shaped)


def diff_keys(sd: StateDict, expected: dict[str, Shape]) -> KeyDiff:
    """Compare keys and shapes.  BatchNorm's ``num_batches_tracked`` may be absent (checkpoints
    written before PyTorch 0.4.1, e.g. Caffe conversions); it is not a weight."""
    d = KeyDiff()
    for k, shape in expected.items():
        if k not in sd:
            if not k.endswith("num_batches_tracked"):
                d.missing.append(k)
        elif tuple(sd[k].shape) != shape:
            d.mis_shaped.append((k, tuple(sd[k].shape), shape))
    d.unexpected = [k for k in sd if k not in expected]
    return d


def format_diff(diff: KeyDiff, limit: int = 5) -> str:
    """One human-readable paragraph: counts plus the first few keys of each kind."""
    parts = []
    if diff.missing:
        parts.append(f"{len(diff.missing)} missing key(s): {', '.join(diff.missing[:limit])}"
                     + (" ..." if len(diff.missing) > limit else ""))
    if diff.unexpected:
        parts.append(f"{len(diff.unexpected)} unexpected key(s): {', '.join(diff.unexpected[:limit])}"
                     + (" ..." if len(diff.unexpected) > limit else ""))
    if diff.mis_shaped:
        shown = ", ".join(f"{k} {list(f)} vs {list(e)} expected" for k, f, e in diff.mis_shaped[:limit])
        parts.append(f"{len(diff.mis_shaped)} mis-shaped key(s): {shown}"
                     + (" ..." if len(diff.mis_shaped) > limit else ""))
    return "; ".join(parts) or "no differences"


# --------------------------------------------------------------------------------------------
# matching

@dataclass
class Match:
    """Result of matching a checkpoint to an architecture.

    ``state_dict`` is renamed into the native layout; when ``diff`` is not ok this is only the
    closest candidate, kept for the error message.
    """

    arch: str
    num_classes: int
    options: dict
    state_dict: StateDict
    diff: KeyDiff

    @property
    def ok(self) -> bool:
        return self.diff.ok


# Hints that order the candidates so the right one is usually built first; the key comparison
# alone decides.  (substring of a key, substring of the registry name)
_HINTS = (
    ("classifier.project.", "plus"),
    ("backbone.low_level_features.", "mobilenet_v2"),
    ("backbone.0.0.", "mobilenet_v3"),
    ("aspp.c0.", "deeplabv2"),
    ("segmentation_head.", "smp_"),
    ("decoder.block1.", "smp_deeplabv3plus"),
    ("decode_head.", "mmseg_"),
    ("decode_head.c1_bottleneck.", "plus"),
    ("layer3.22.", "resnet101"),
    ("layer3.5.", "resnet50"),
)


def _hint_score(name: str, sd: StateDict) -> int:
    keys = list(sd)
    score = sum(name_part in name for key_part, name_part in _HINTS if any(key_part in k for k in keys))
    if "plus" not in name and not any(k.startswith("classifier.project.") for k in keys):
        score += 1
    # a rename that produces the torchvision head for a torchvision-layout model
    if any(k.startswith("classifier.0.convs.") for k in keys) and model_spec(name).preprocessing == TORCHVISION_SEG:
        score += 1
    return score


def _score(sd: StateDict, arch: str, options: dict, num_classes: int | None) -> Match:
    nc = num_classes
    if nc is None:
        found = next((sd[k].shape[0] for k in _class_keys(arch, options) if k in sd and sd[k].dim() > 0), None)
        nc = int(found) if found else 21
    return Match(arch, nc, options, sd, diff_keys(sd, _shapes_for(arch, nc, options)))


def match_architecture(sd: StateDict, fmt: str, *, arch: str | None = None,
                       num_classes: int | None = None) -> Match:
    """Find the registered architecture (and class count, aux/separable options) that ``sd`` fits.

    Tries every registry entry (or only ``arch``) with each renaming ``fmt`` allows: first the
    key sets (one shapes-only build per architecture, cached), then shapes with the class count
    read from the final conv (or ``num_classes``).  Returns the first exact match, else the
    closest candidate with its ``diff`` (``ok`` False).
    """
    if arch is not None:
        model_spec(arch)  # KeyError naming the known models if unknown
    pairs = []  # (rename, arch) in the order the hints suggest
    for rename in _RENAMINGS.get(fmt, (_identity,)):
        renamed = rename(sd)
        for name in ([arch] if arch is not None else list_models()):
            pairs.append((_hint_score(name, renamed), len(pairs), name, renamed))
    pairs.sort(key=lambda p: (-p[0], p[1]))
    best: tuple[int, str, dict, StateDict] | None = None
    for _, _, name, renamed in pairs:
        options = _options_for(name, renamed)
        try:
            expected = expected_shapes(name, 21, **options)
        except (ValueError, TypeError):  # the builder refuses an aux head: compare without one,
            options.pop("aux", None)     # so the diff names the aux keys as unexpected
            try:
                expected = expected_shapes(name, 21, **options)
            except (ValueError, TypeError):
                continue
        mismatch = sum(k not in renamed for k in expected if not k.endswith("num_batches_tracked"))
        mismatch += sum(k not in expected for k in renamed)
        if mismatch == 0:
            match = _score(renamed, name, options, num_classes)
            if match.ok or arch is not None:
                return match
        if best is None or mismatch < best[0]:
            best = (mismatch, name, options, renamed)
    if best is None:
        raise KeyError("no architectures are registered")
    _, name, options, renamed = best
    return _score(renamed, name, options, num_classes)
