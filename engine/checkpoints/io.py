"""Reading and writing model checkpoints: native safetensors plus the peers' ``.pth`` layouts.

- ``save_model(model, path, **metadata)`` writes the native format: a ``.safetensors`` file whose own
  metadata dict holds ``ModelMeta`` as JSON and a format version.  Written atomically (temp file in
  the same folder, fsync, rename), so a crash never leaves a half-written checkpoint under ``path``.
- ``load_model(path, ...)`` reads native files and torchvision / VainF / kazuto1011 ``.pth`` files,
  recognising the layout and the architecture from the keys (see ``checkpoint_formats``).
- Nothing is ever unpickled with code execution: ``torch.load(..., weights_only=True)`` only; a file
  that would need more is refused with :class:`CheckpointError`.
- Before anything is inflated or loaded, the sizes a file declares are checked against a limit
  derived from the largest registered model (``checkpoint_limits``): a small zip that would inflate
  to gigabytes is refused at the cost of reading its directory.  Weights holding NaN or infinity are
  refused too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..fileio import atomic_output
from ..meta import ModelMeta
from ..models import build_model, model_spec
from .formats import (
    FORMATS,
    SkipRandomInit,
    detect_format,
    diff_keys,
    format_diff,
    match_architecture,
    strip_wrapper_prefixes,
)
from .limits import CheckpointError, check_safetensors, check_torch_file, error_detail, safetensors_header
from .safeload import load_data_only

__all__ = [
    "CheckpointError",
    "RawCheckpoint",
    "NATIVE_FORMAT",
    "NATIVE_FORMAT_VERSION",
    "read_checkpoint",
    "save_model",
    "load_model",
    "read_meta",
    "nonfinite_tensors",
]

NATIVE_FORMAT = "deeplab-gui"
NATIVE_FORMAT_VERSION = 1
# Keys a training script may wrap the weights in (VainF: model_state; common others).
_WRAPPER_KEYS = ("model_state", "state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class RawCheckpoint:
    """A checkpoint file's tensors before any model is involved.

    ``state_dict``: ``{key: tensor}`` on CPU, wrapper prefixes (``module.``) not yet stripped.
    ``native_meta``: the ModelMeta of a native file, else None.  ``wrapper``: the dict key the
    weights were found under (``"model_state"`` for VainF), else None.  ``extras``: the wrapper's
    other plain entries (``cur_itrs``, ``best_score``..., lists of strings such as a ``classes`` list),
    tensors and optimizer state left out.
    ``peer_meta``: the wrapper's ``meta`` dict when it has one (mmsegmentation: classes, palette,
    config), checked to hold data only.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    native_meta: ModelMeta | None = None
    wrapper: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    peer_meta: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# reading

def _sniff(path: Path) -> str:
    """``"safetensors"`` or ``"torch"`` from the first bytes, whatever the file is called."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    # safetensors: u64 little-endian header length, then a JSON object.
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    raise CheckpointError(f"{path}: not a checkpoint (neither a .safetensors nor a PyTorch .pth file)")


def _read_safetensors(path: Path, limit: int | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    check_safetensors(path, limit)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError / OSError: truncated or corrupt header/data
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({error_detail(e)})") from None
    return tensors, metadata


def _torch_load(path: Path, limit: int | None) -> Any:
    try:
        # An open file, not the path: torch.load picks a reader by file extension, and a torch file
        # misnamed .safetensors must still be read as what its bytes say it is.  The same open file
        # is checked and then loaded, so what was checked is what gets read.
        with open(path, "rb") as f:
            check_torch_file(f, path, limit)
            # weights_only, widened to numpy data and inert stand-ins for training-framework
            # bookkeeping (mmengine's message hub): see engine.checkpoints.safeload
            return load_data_only(f, path)
    except pickle.UnpicklingError as e:
        text = str(e)
        # torch's explanation sits on the line naming the refused global / opcode
        why = next((ln.strip() for ln in text.splitlines()
                    if "GLOBAL" in ln or "Unsupported" in ln or "not an allowed" in ln), "")
        if "Weights only load failed" in text:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects beyond tensors and plain "
                f"containers, and unpickling it could run code it contains. Only weights files are "
                f"accepted" + (f" ({why})" if why else "") + ".") from None
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({error_detail(e)})") from None
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch file ({error_detail(e)})") from None


def _as_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """Find the flat ``{str: Tensor}`` dict in what torch.load returned."""
    def is_sd(d: Any) -> bool:
        return isinstance(d, Mapping) and len(d) > 0 and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if is_sd(obj):
        return dict(obj), None, {}
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if is_sd(obj.get(key)):
                # plain values, and lists of strings (class names some training scripts save)
                extras = {k: v for k, v in obj.items() if k != key and (
                    isinstance(v, (int, float, str, bool))
                    or (isinstance(v, list) and all(isinstance(i, str) for i in v)))}
                return dict(obj[key]), key, extras
        # a state dict with a stray non-tensor entry is still reported usefully
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(
            f"{path}: no state dict found: top-level keys {list(obj)[:8]}; non-tensor entries {bad}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` (a state dict) holding NaN or infinity.

    NaN or infinite weights predict garbage, and a checkpoint gets loaded, made current and trained on
    again: this is the one check that the reader, the writer and the trainer all apply.
    """
    return [k for k, t in tensors.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _refuse_non_finite(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    # A diverged training run saves NaN weights; they would only show up later as NaN probabilities.
    bad = nonfinite_tensors(sd)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinity (first {bad[0]}); "
                              f"the weights are damaged")


def read_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> RawCheckpoint:
    """Read a checkpoint file's tensors (and native metadata) without building a model.

    ``max_bytes``: the most tensor data the file may declare; None means
    :func:`engine.checkpoint_limits.default_limit` (sized for the largest registered model with
    optimizer state).  A caller reading bigger models passes its own.  The check reads only the
    file's declarations, so refusing a huge file costs no memory.
    Raises CheckpointError for missing, empty, truncated, corrupt, non-checkpoint, oversized and
    code-carrying files, and for weights holding NaN or infinity.
    """
    path = Path(path)
    if _sniff(path) == "safetensors":
        tensors, metadata = _read_safetensors(path, max_bytes)
        meta = None
        if metadata.get("format") == NATIVE_FORMAT:
            version = int(metadata.get("format_version", "0"))
            if version > NATIVE_FORMAT_VERSION:
                raise CheckpointError(f"{path}: native format version {version} is newer than this "
                                      f"program reads ({NATIVE_FORMAT_VERSION}); update deeplab-gui")
            try:
                meta = ModelMeta.from_json(metadata["meta"])
            except (KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: damaged model metadata ({error_detail(e)})") from None
        if not tensors:
            raise CheckpointError(f"{path}: holds no tensors")
        _refuse_non_finite(path, tensors)
        return RawCheckpoint(path, tensors, meta)
    obj = _torch_load(path, max_bytes)
    sd, wrapper, extras = _as_state_dict(obj, path)
    _refuse_non_finite(path, sd)
    peer_meta = obj.get("meta") if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping) else None
    return RawCheckpoint(path, sd, None, wrapper, extras, dict(peer_meta) if peer_meta is not None else None)


def read_meta(path: str | os.PathLike) -> ModelMeta | None:
    """The ModelMeta of a native checkpoint (reads only the header), None for other files."""
    path = Path(path)
    if _sniff(path) != "safetensors":
        return None
    metadata = safetensors_header(path)[0].get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != NATIVE_FORMAT:
        return None
    try:
        return ModelMeta.from_json(metadata["meta"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged model metadata ({error_detail(e)})") from None


# --------------------------------------------------------------------------------------------
# writing

def save_model(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model`` (weights + ``model.meta``) as a native ``.safetensors`` checkpoint.

    ``metadata``: ``class_names``, ``class_colors`` (and any other ModelMeta field) replace the
    model's; anything else (``parent``, ``training`` summary, ``metrics`` ...) goes into
    ``meta.extra``.  All of it must be JSON-serialisable.  The model's own ``meta`` is not changed.
    Returns the path written.  ``load_model(path)`` gives back bit-identical tensors.  Weights holding
    NaN or infinity are refused (ValueError) and nothing is written.
    """
    path = Path(path)
    meta = getattr(model, "meta", None)
    if not isinstance(meta, ModelMeta):
        raise ValueError("save_model needs a model with .meta (use engine.build_model or load_model)")
    fields = {f.name for f in dataclasses.fields(ModelMeta)} - {"extra"}
    direct = {k: v for k, v in metadata.items() if k in fields}
    extra = {**meta.extra, **{k: v for k, v in metadata.items() if k not in fields}}
    try:
        meta = dataclasses.replace(meta, **direct, extra=extra)
        meta_json = meta.to_json()
    except TypeError as e:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {e}") from None
    header = {"format": NATIVE_FORMAT, "format_version": str(NATIVE_FORMAT_VERSION), "meta": meta_json}

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(ident)
        tensors[k] = t
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ValueError(f"{path}: not written: {len(bad)} tensor(s) hold NaN or infinity (first {bad[0]})")

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


# --------------------------------------------------------------------------------------------
# loading into a model

def _stride_for(arch: str, requested: int | None, fmt_default: int | None) -> int:
    spec = model_spec(arch)
    if requested is not None:
        return int(requested)  # build_model validates it against the architecture
    if fmt_default is not None and fmt_default in spec.output_strides:
        return fmt_default
    return spec.default_stride


def _fast_init(every_weight_overwritten: bool):
    # Random init of a ResNet-101 costs seconds on a small CPU; pointless when a strict load will
    # overwrite every tensor (a strict load fails loudly otherwise, so no garbage can survive).
    return SkipRandomInit() if every_weight_overwritten else contextlib.nullcontext()


def _load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path, strict: bool) -> None:
    own = model.state_dict()
    sd = dict(sd)
    for k, v in own.items():  # pre-0.4.1 checkpoints lack this BatchNorm counter; it is no weight
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    if not strict:
        sd = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # only reachable if the matcher and the real model disagree
        raise CheckpointError(f"{path}: weights do not fit {model.meta.arch}: {e}") from None


def _mismatch_error(path: Path, fmt: str, match, arch: str | None) -> CheckpointError:
    what = f"the {arch} architecture" if arch else f"any known architecture (closest: {match.arch})"
    return CheckpointError(
        f"{path}: {fmt} checkpoint does not fit {what} with {match.num_classes} classes: "
        f"{format_diff(match.diff)}")


def load_model(path: str | os.PathLike, *, arch: str | None = None, output_stride: int | None = None,
               num_classes: int | None = None, device: str | torch.device = "cpu",
               strict: bool = True) -> nn.Module:
    """Load any supported checkpoint into an eval-mode model on ``device`` with ``model.meta``.

    ``arch``: registry name; None detects it from the keys.  ``num_classes``: None takes the
    checkpoint's; a different count is an error.  ``output_stride``: None uses the native file's,
    else the peer's evaluation stride (torchvision 8, VainF 16, kazuto1011 8) where the
    architecture allows it.  ``strict=False`` tolerates missing / unexpected / mis-shaped keys
    (those weights stay random; ``meta.extra["load_report"]`` lists them) unless more than half the
    checkpoint misses, which means it is another model altogether.
    Raises CheckpointError naming the file and the keys that do not fit.
    """
    raw = read_checkpoint(path)
    path = raw.path
    if raw.native_meta is not None:
        meta = raw.native_meta
        if arch is not None and arch != meta.arch:
            raise CheckpointError(f"{path}: holds a {meta.arch} model, not {arch}")
        if num_classes is not None and num_classes != meta.num_classes:
            raise CheckpointError(f"{path}: has {meta.num_classes} classes, not {num_classes}")
        stride = meta.output_stride if output_stride is None else int(output_stride)
        try:
            with _fast_init(strict):
                model = build_model(meta.arch, num_classes=meta.num_classes, output_stride=stride,
                                    **({"aux": True} if meta.aux else {}), **meta.options)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot build its {meta.arch} model: {e}") from None
        meta = dataclasses.replace(meta, output_stride=model.meta.output_stride)
        model.meta = meta
        diff = diff_keys(raw.state_dict, {k: tuple(v.shape) for k, v in model.state_dict().items()})
        if not diff.ok and strict:
            raise CheckpointError(f"{path}: native checkpoint does not fit {meta.arch}: {format_diff(diff)}")
        _load_weights(model, raw.state_dict, path, strict)
        return model.to(device).eval()

    sd = strip_wrapper_prefixes(raw.state_dict)
    fmt = detect_format(sd, wrapped_in_model_state=raw.wrapper == "model_state")
    try:
        match = match_architecture(sd, fmt, arch=arch, num_classes=num_classes)
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from None
    if not match.ok and (strict or match.diff.size > len(sd) // 2):
        raise _mismatch_error(path, fmt, match, arch)
    peer = FORMATS[fmt]
    stride = _stride_for(match.arch, output_stride, peer.default_stride)
    try:
        with _fast_init(strict and match.ok):
            model = build_model(match.arch, num_classes=match.num_classes, output_stride=stride,
                                **match.options)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    spec = model_spec(match.arch)
    extra: dict[str, Any] = {"source_file": str(path)}
    if raw.extras:
        extra["source_info"] = raw.extras
    if not match.ok:
        extra["load_report"] = {"missing": match.diff.missing, "unexpected": match.diff.unexpected,
                                "mis_shaped": [k for k, _, _ in match.diff.mis_shaped]}
    model.meta = dataclasses.replace(
        model.meta, preprocessing=peer.preprocessing if fmt != "state_dict" else spec.preprocessing,
        source_format=fmt, extra=extra)
    if fmt == "mmseg":  # the zoo file's own class names and palette, when its meta has them
        from ..models.mmseg_classes import classes_from_meta

        found = classes_from_meta(raw.peer_meta, match.num_classes)
        if found:
            model.meta = dataclasses.replace(model.meta, class_names=found[0], class_colors=found[1])
    if fmt == "smp":  # smp saves no class names; a training script's own "classes" list, else class_0 ...
        from ..models.smp import smp_class_names

        model.meta = dataclasses.replace(
            model.meta, class_names=smp_class_names(raw.extras.get("classes"), match.num_classes))
    _load_weights(model, match.state_dict, path, strict)
    return model.to(device).eval()
