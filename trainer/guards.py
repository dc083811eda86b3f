"""Checks that stop a run before it trains on nothing, or before it writes what must not be written.

* :func:`check_out_path`: an explicit output file must be writable before the run starts, not after
  minutes of training (a folder, a missing folder or a read-only one).
* :func:`has_labelled_pixels`: masks that are void everywhere give a zero loss and a model that learned
  nothing, saved as a new version all the same.
* :func:`nonfinite_tensors`: a checkpoint with NaN or infinite weights predicts garbage, and as the
  current version it would be every later run's starting point.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from engine.labels import load_mask_png

from engine.labels import VOID

__all__ = ["check_out_path", "has_labelled_pixels", "nonfinite_tensors"]


def check_out_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path when a checkpoint can be written there; ValueError (starting with the path)
    when it is a folder, sits in a folder that does not exist, or that folder cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; name the checkpoint file to write, e.g. {p / 'model.safetensors'}")
    if p.exists() and not p.is_file():
        raise ValueError(f"{p}: exists and is not a regular file")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{p}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is not a folder")
    try:  # the one reliable test of "can write here" (permissions, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{p}: cannot write in {parent} ({exc.strerror or exc})") from None
    return p


def has_labelled_pixels(mask_paths: Iterable[str | os.PathLike]) -> bool:
    """Whether any of these mask PNGs has a pixel that is not void (255).  Stops at the first one, so a
    usual folder costs one decode."""
    for path in mask_paths:
        if bool(np.any(load_mask_png(path) != VOID)):
            return True
    return False


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (e.g. a state dict)."""
    return [k for k, t in tensors.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
