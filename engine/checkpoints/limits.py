"""What a checkpoint may declare before any of it is inflated, unpickled or loaded.

A ``.pth`` file says how big its tensors are before it holds them: a zip's central directory
declares each record's inflated size, and the pickle declares each storage's element count.
``torch.load`` allocates what is declared and then inflates or reads into it, so a 4 MiB zip of
deflated zeros that declares 4 GiB costs 4 GiB of memory before anything can look at the result.
These checks read only the declarations -- the zip central directory (:mod:`zipfile`, nothing
decompressed), the pickle with every storage stood in for by a ``meta`` one (no memory), the
safetensors JSON header -- and refuse, with a one-line :class:`CheckpointError` naming the file,
one that:

- declares more tensor data than the limit, or more than the file can hold;
- has a pickle (``data.pkl``) or a safetensors header over :data:`PICKLE_LIMIT` /
  :data:`HEADER_LIMIT` bytes (a weights file's are kilobytes);
- has zip entries whose sizes cannot be true: a stored entry whose compressed and declared sizes
  differ, a deflated one claiming more than deflate's 1032:1 maximum, data past the end of the file,
  entries overlapping each other (together more compressed bytes than the file has).

The limit is a parameter (``limit=None`` means :func:`default_limit`): :data:`LIMIT_MARGIN` times the
fp32 parameter and buffer bytes of the largest model the registry builds (:func:`largest_model`:
each architecture built once on the ``meta`` device with :data:`MAX_CLASSES` classes and its aux head,
cached), plus :data:`LIMIT_SLACK`, and never less than the largest ImageNet backbone file read
(torchvision's VGG16, :data:`VGG16_IMAGENET_BYTES`).  The margin leaves room for training state saved
next to the weights: VainF's files carry SGD momentum (one more copy of the weights), an Adam
optimizer two more.  A caller reading a bigger family (SAM ViT-H checkpoints are about 2.5 GB)
passes its own limit.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import one_line

__all__ = [
    "CheckpointError",
    "error_detail",
    "DETAIL_LIMIT",
    "MAX_CLASSES",
    "LIMIT_MARGIN",
    "LIMIT_SLACK",
    "VGG16_IMAGENET_BYTES",
    "PICKLE_LIMIT",
    "HEADER_LIMIT",
    "MAX_ZIP_ENTRIES",
    "largest_model",
    "default_limit",
    "format_bytes",
    "check_torch_file",
    "safetensors_header",
    "check_safetensors",
]

MAX_CLASSES = 256          # masks are uint8 with 255 for void: no model here can need more classes
LIMIT_MARGIN = 4           # weights + up to three same-sized copies of optimizer state
LIMIT_SLACK = 64 << 20     # scheduler state, histories and other small extras
VGG16_IMAGENET_BYTES = 138_357_544 * 4  # torchvision's vgg16-397923af.pth, read for its conv weights
PICKLE_LIMIT = 4 << 20     # data.pkl and the other non-tensor zip records, together
HEADER_LIMIT = 16 << 20    # a safetensors JSON header (tensor table plus our metadata)
MAX_ZIP_ENTRIES = 65_536   # a ResNet-101 with optimizer state has about 1,100
DETAIL_LIMIT = 200         # characters of a library's error message quoted in a CheckpointError
_CENTRAL_DIR_LIMIT = 32 << 20
_DEFLATE_MAX_RATIO = 1032  # one 258-byte match per 2 bits: no deflate stream inflates further


class CheckpointError(ValueError):
    """A file is not a usable checkpoint, or does not fit the requested model.  The message names
    the file and what is wrong (missing / unexpected / mis-shaped keys, refused pickle, corruption,
    declared sizes over the limit), on one line."""


def error_detail(exc: BaseException) -> str:
    """A library's own error message, to quote inside a CheckpointError: one line, and bounded, since
    torch's run to paragraphs."""
    return one_line(exc, limit=DETAIL_LIMIT) or "no details"


def format_bytes(n: int) -> str:
    """``4294967296`` -> ``"4.0 GiB"``; MiB / KiB below that, bytes below 1 KiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.1f} {unit}" if v < 10 or unit == "GiB" else f"{v:.0f} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------------------------
# the limit

@functools.lru_cache(maxsize=1)
def largest_model() -> tuple[str, int]:
    """``(registry name, fp32 bytes)`` of the biggest state dict any registered architecture has,
    with :data:`MAX_CLASSES` classes and an aux head where it takes one.  Built on the meta device
    once per process (under a second for the whole registry)."""
    from ..models import list_models
    from .formats import expected_shapes  # shapes-only builds, shared cache

    best = ("", 0)
    for name in list_models():
        shapes = None
        for options in ({"aux": True}, {}):
            try:
                shapes = expected_shapes(name, MAX_CLASSES, **options)
                break
            except (ValueError, TypeError):  # this builder has no aux head
                continue
        if shapes is not None:
            size = 4 * sum(math.prod(s) for s in shapes.values())
            best = max(best, (name, size), key=lambda p: p[1])
    return best


@functools.lru_cache(maxsize=1)
def default_limit() -> int:
    """Bytes of tensor data a checkpoint may declare when the caller names no limit (module
    docstring): ``max(LIMIT_MARGIN * largest_model()[1], VGG16_IMAGENET_BYTES) + LIMIT_SLACK``."""
    return max(LIMIT_MARGIN * largest_model()[1], VGG16_IMAGENET_BYTES) + LIMIT_SLACK


def _over(declared: int, limit: int | None) -> bool:
    # The default limit is never below LIMIT_SLACK, so small files skip building the registry.
    if limit is None:
        return declared > LIMIT_SLACK and declared > default_limit()
    return declared > limit


def _too_much(path: Path, declared: int, limit: int | None) -> CheckpointError:
    if limit is None:
        name, size = largest_model()
        why = (f"the {format_bytes(default_limit())} a checkpoint of the largest supported model "
               f"({name}, {format_bytes(size)}) may hold with its optimizer state")
    else:
        why = f"the {format_bytes(limit)} limit"
    return CheckpointError(f"{path}: declares {format_bytes(declared)} of tensor data, more than {why}; refused")


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: corrupt or truncated PyTorch file ({what})")


# --------------------------------------------------------------------------------------------
# the pickle's own declarations, read without allocating a byte of tensor data

class _PickleRefused(Exception):
    """The pre-read unpickler met something torch.load's would refuse too: torch.load reports it."""


def _declared_storages(stream: BinaryIO, limit: int | None, path: Path) -> dict[str, int]:
    """``{storage key: bytes}`` the next pickle in ``stream`` declares.  The pickle is read by
    torch's own weights-only unpickler, with each storage a ``meta`` one: the tensors' views are
    checked against their storages as torch.load would, yet nothing is allocated."""
    from torch import _weights_only_unpickler

    declared: dict[str, int] = {}
    meta: dict[str, Any] = {}
    total = [0]

    def persistent_load(pid: Any) -> Any:
        # zip: ("storage", type, key, location, numel); legacy adds a view description
        if not (isinstance(pid, tuple) and len(pid) in (5, 6)):
            raise ValueError(f"unexpected storage reference {str(pid)[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"storage {key} has an invalid type or size")
        if key not in meta:
            declared[key] = numel * dtype.itemsize
            total[0] += declared[key]
            if _over(total[0], limit):
                raise _too_much(path, total[0], limit)
            meta[key] = torch.UntypedStorage(declared[key], device="meta")
        return torch.storage.TypedStorage(wrap_storage=meta[key], dtype=dtype, _internal=True)

    unpickler = _weights_only_unpickler.Unpickler(stream, encoding="utf-8")
    unpickler.persistent_load = persistent_load
    try:
        unpickler.load()
    except CheckpointError:
        raise
    except _weights_only_unpickler.UnpicklingError as e:
        raise _PickleRefused() from e
    return declared


# --------------------------------------------------------------------------------------------
# torch files: zip archives and legacy pickle streams

def _check_zip(f: BinaryIO, path: Path, size: int, limit: int | None) -> None:
    # zipfile reads the whole central directory and builds an object per entry: bound both first,
    # from the end record (a private helper, but the one ZipFile itself calls)
    end_record = getattr(zipfile, "_EndRecData", None)
    end = end_record(f) if end_record is not None else ()
    if end is None:
        raise _corrupt(path, "no zip central directory")
    if end:
        entries, cd_size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
        if entries > MAX_ZIP_ENTRIES or cd_size > _CENTRAL_DIR_LIMIT:
            raise CheckpointError(f"{path}: its zip directory lists {entries} records "
                                  f"({format_bytes(cd_size)}), far more than a weights file has; refused")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise _corrupt(path, error_detail(e)) from None
    if not infos:
        raise _corrupt(path, "empty zip archive")
    # torch looks records up under the folder the first entry is in
    archive = infos[0].filename.split("/", 1)[0]
    data_prefix = f"{archive}/data/"
    data_total = other_total = packed_total = 0
    for info in infos:
        name, declared, packed = info.filename, info.file_size, info.compress_size
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _corrupt(path, f"record {name!r} uses zip compression method {info.compress_type}")
        if info.compress_type == zipfile.ZIP_STORED and packed != declared:
            raise CheckpointError(f"{path}: zip record {name!r} is stored uncompressed yet declares "
                                  f"{format_bytes(declared)} from {format_bytes(packed)}; refused")
        if declared > packed * _DEFLATE_MAX_RATIO + 1024:
            raise CheckpointError(f"{path}: zip record {name!r} declares {format_bytes(declared)} inflated from "
                                  f"{format_bytes(packed)}, more than deflate can produce; refused")
        if info.header_offset + packed > size:
            raise _corrupt(path, f"record {name!r} extends past the end of the file")
        packed_total += packed
        if name.startswith(data_prefix):
            data_total += declared
        else:
            other_total += declared
    if packed_total > size:
        raise CheckpointError(f"{path}: its zip records claim {format_bytes(packed_total)} of a "
                              f"{format_bytes(size)} file (overlapping records); refused")
    if _over(data_total, limit):
        raise _too_much(path, data_total, limit)
    if other_total > PICKLE_LIMIT:
        raise CheckpointError(f"{path}: declares {format_bytes(other_total)} of pickled objects and other "
                              f"non-tensor records, more than the {format_bytes(PICKLE_LIMIT)} a weights "
                              f"file needs; refused")
    pkl = f"{archive}/data.pkl"
    records = {i.filename: i.file_size for i in infos}
    if pkl not in records:
        return  # not what torch.save writes: torch.load says what it is
    try:
        with zf.open(pkl) as stream:
            declared = _declared_storages(io.BytesIO(stream.read(PICKLE_LIMIT)), limit, path)
    except CheckpointError:
        raise
    except (_PickleRefused, zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError):
        return  # memory is bounded already; torch.load gives the reason
    for key, nbytes in declared.items():
        have = records.get(data_prefix + key)
        if have is None:
            raise _corrupt(path, f"tensor data record data/{key} is missing")
        if have != nbytes:
            raise _corrupt(path, f"record data/{key} holds {have} bytes, its tensors declare {nbytes}")


def _check_legacy(f: BinaryIO, path: Path, size: int, limit: int | None) -> None:
    # Layout (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False): pickled magic
    # number, protocol version and system info; the main pickle; the list of storage keys; then
    # each storage as an 8-byte element count followed by its bytes.
    if _over(size - PICKLE_LIMIT, limit):
        raise _too_much(path, size, limit)
    from torch import _weights_only_unpickler

    head = io.BytesIO(f.read(PICKLE_LIMIT))
    try:
        for _ in range(3):
            _weights_only_unpickler.Unpickler(head, encoding="utf-8").load()
        declared = _declared_storages(head, limit, path)
        keys = _weights_only_unpickler.Unpickler(head, encoding="utf-8").load()
    except (_PickleRefused, _weights_only_unpickler.UnpicklingError):
        return  # torch.load refuses it the same way, before reading any storage
    except CheckpointError:
        raise
    except EOFError:
        if size > PICKLE_LIMIT:
            raise CheckpointError(f"{path}: its pickled part is longer than the {format_bytes(PICKLE_LIMIT)} "
                                  f"a weights file needs; refused") from None
        raise _corrupt(path, "ends inside its pickle") from None
    except Exception as e:  # noqa: BLE001 -- anything torch's unpickler or the meta rebuild raises
        raise _corrupt(path, error_detail(e)) from None
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
        raise _corrupt(path, "its storage list does not match the tensors' storages")
    needed = head.tell() + sum(8 + n for n in declared.values())
    if needed > size:
        raise _corrupt(path, f"declares {format_bytes(needed)} of pickles and tensor data, "
                             f"the file holds {format_bytes(size)}")


def check_torch_file(f: BinaryIO, path: str | os.PathLike, limit: int | None = None) -> None:
    """Refuse (CheckpointError) a torch zip or legacy ``.pth`` whose declared sizes are over
    ``limit`` (None: :func:`default_limit`) or cannot be true.  ``f`` is the open file, at any
    position; it is left at 0 for ``torch.load``."""
    path = Path(path)
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    magic = f.read(4)
    f.seek(0)
    try:
        if magic == b"PK\x03\x04":
            _check_zip(f, path, size, limit)
        else:
            _check_legacy(f, path, size, limit)
    finally:
        f.seek(0)


# --------------------------------------------------------------------------------------------
# safetensors

def safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and the bytes of tensor data it declares,
    checked against :data:`HEADER_LIMIT` and the file's real size; nothing else is read."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if n > HEADER_LIMIT:
            raise CheckpointError(f"{path}: its safetensors header is {format_bytes(n)}, more than the "
                                  f"{format_bytes(HEADER_LIMIT)} a weights file needs; refused")
        raw = f.read(n)
    bad = f"{path}: corrupt or truncated safetensors file"
    if len(raw) < n:
        raise CheckpointError(f"{bad} (the file ends inside its header)")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{bad} (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{bad} (tensor {name[:80]!r} has no valid data offsets)")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise CheckpointError(f"{bad} (its header declares {format_bytes(end)} of tensor data, the file "
                              f"holds {format_bytes(max(size - 8 - n, 0))})")
    return header, end


def check_safetensors(path: str | os.PathLike, limit: int | None = None) -> dict[str, Any]:
    """:func:`safetensors_header`, plus the declared tensor data against ``limit`` (None:
    :func:`default_limit`).  Returns the header."""
    header, declared = safetensors_header(path)
    if _over(declared, limit):
        raise _too_much(Path(path), declared, limit)
    return header
