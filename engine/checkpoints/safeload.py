"""``torch.load`` of training-framework checkpoints without running anything they contain.

Plain weights files load with ``torch.load(weights_only=True)``.  Files saved by training frameworks
carry more than tensors next to the weights:

* mmsegmentation 0.x (mmcv's ``save_checkpoint``): ``{"meta": {...}, "state_dict": ..., "optimizer": ...}``;
  meta holds the config text, ``CLASSES`` / ``PALETTE``, versions, time, epoch/iter and ``hook_msgs``,
  whose values may be numpy scalars or arrays.
* mmsegmentation 1.x (mmengine's runner): ``{"meta": {... "dataset_meta": {"classes", "palette"}},
  "state_dict", "message_hub", "optimizer", "param_schedulers"}``; ``message_hub["log_scalars"]`` maps
  names to mmengine ``HistoryBuffer`` objects (numpy arrays inside).

:func:`load_data_only` still uses torch's weights-only unpickler, which builds nothing but what is
allow-listed, and widens the allow-list in two ways only:

* numpy arrays, dtypes and scalars: data, rebuilt by numpy's own constructors;
* classes of the training frameworks' namespaces (``mmengine.``, ``mmcv.``, ``mmseg.``) become inert
  placeholders: a fresh empty class per name that stores what it is given and can do nothing else;
  the real class is never imported.  They may appear only in bookkeeping entries (``message_hub``,
  ``param_schedulers``, ...), never in ``state_dict`` or ``meta``, which must hold data alone.

Any other global (``os.system``, ``subprocess.*``, ``builtins.eval``, an unknown class) refuses the
file before it could be called.
"""
from __future__ import annotations

import pickle
import re
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .limits import CheckpointError

__all__ = ["load_data_only", "Placeholder", "INERT_NAMESPACES", "check_data_only"]

# Runner bookkeeping classes of these frameworks stand in as placeholders (never imported).
INERT_NAMESPACES = ("mmengine.", "mmcv.", "mmseg.")
_MAX_RETRIES = 64  # distinct framework classes one file may name
_UNSUPPORTED = re.compile(r"GLOBAL (\S+) was not an allowed global")
_BLOCKED = re.compile(r"unsupported GLOBAL (\S+) whose module")
# torch's allow-list is one process-wide set; loads that widen it take turns
_LOCK = threading.Lock()


class Placeholder:
    """Stands in for a framework object in a checkpoint's bookkeeping: keeps its arguments and state
    as plain attributes, has no behaviour.  ``qualname`` names the class it replaces."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualname}>"


def _numpy_globals() -> list[tuple[Any, str]]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    mods = ("numpy.core.multiarray", "numpy._core.multiarray")
    out = [(core.multiarray._reconstruct, f"{m}._reconstruct") for m in mods]
    out += [(core.multiarray.scalar, f"{m}.scalar") for m in mods]
    out += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    # a dtype's BUILD needs its concrete class (numpy.dtypes.Float64DType ...) allowed as well
    dtypes = getattr(np, "dtypes", None)
    for name in getattr(dtypes, "__all__", ()):
        out.append((getattr(dtypes, name), f"numpy.dtypes.{name}"))
    return out


def _placeholder(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname, "__module__": __name__})


def _refusal(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load: the file holds Python objects beyond tensors and plain containers "
        f"({what}), and unpickling it could run code it contains. Only weights files are accepted.")


def load_data_only(f: BinaryIO, path: Path) -> Any:
    """``torch.load(f, weights_only=True)`` with numpy data and framework placeholders allowed (see the
    module docstring).  Raises CheckpointError for any other global or a placeholder in the weights or
    meta; lets torch's other errors through for the caller to report."""
    start = f.tell()
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise
        first = str(e)
    allowed: list[Any] = _numpy_globals()
    placeholders: set[str] = set()
    text = first
    with _LOCK:
        for _ in range(_MAX_RETRIES):
            blocked = _BLOCKED.search(text)
            if blocked:
                raise _refusal(path, blocked.group(1)) from None
            m = _UNSUPPORTED.search(text)
            if m and m.group(1).startswith(INERT_NAMESPACES) and m.group(1) not in placeholders:
                placeholders.add(m.group(1))
                allowed.append((_placeholder(m.group(1)), m.group(1)))
            elif m and not any(name == m.group(1) for _, name in allowed):
                raise _refusal(path, m.group(1)) from None
            elif text is not first:
                # not a global torch names: an opcode or a call it refuses
                why = next((ln.strip() for ln in text.splitlines() if ln.strip()
                            and "Weights only load failed" not in ln), "")
                raise _refusal(path, why[:200] or "a refused pickle instruction") from None
            f.seek(start)
            try:
                with torch.serialization.safe_globals(allowed):
                    obj = torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                if "Weights only load failed" not in str(e):
                    raise
                text = str(e)
                continue
            check_data_only(obj, path)
            return obj
    raise _refusal(path, f"more than {_MAX_RETRIES} framework classes")


_DATA = (str, bytes, int, float, complex, bool, type(None), np.generic, np.dtype, torch.Tensor)


def _find_object(value: Any, depth: int = 0) -> str | None:
    """The qualified name of the first non-data object inside ``value``, else None."""
    if depth > 64:
        return "nesting deeper than 64 levels"
    if isinstance(value, _DATA) and not isinstance(value, Placeholder):
        return None
    if isinstance(value, np.ndarray):
        return None if value.dtype != object else next(
            (w for w in (_find_object(v, depth + 1) for v in value.ravel().tolist()) if w), None)
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        return getattr(value, "qualname", None) or f"{type(value).__module__}.{type(value).__qualname__}"
    return next((w for w in (_find_object(v, depth + 1) for v in items) if w), None)


def check_data_only(obj: Any, path: Path) -> None:
    """Placeholders may sit in bookkeeping entries only: refuse a file whose top level, weights or
    ``meta`` hold one (meta must be data: containers, strings, numbers, numpy values)."""
    if isinstance(obj, Placeholder):
        raise _refusal(path, f"a {obj.qualname} object at the top level")
    if not isinstance(obj, dict):
        return
    for key in ("meta", "state_dict"):
        if key in obj:
            found = _find_object(obj[key])
            if found:
                raise CheckpointError(f"{path}: refused to load: its {key!r} entry holds a {found} object; "
                                      f"only data (containers, strings, numbers, numpy values) is accepted there")
