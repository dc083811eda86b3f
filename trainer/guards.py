"""Checks that stop a run before it trains on nothing, or before it writes what must not be written.

* :func:`check_out_path`: an explicit output file must be writable before the run starts, not after
  minutes of training (a folder, a missing folder, a read-only one, a name too long for a file).
* :func:`has_labelled_pixels`: masks that are void everywhere give a zero loss and a model that learned
  nothing, saved as a new version all the same.

Weights holding NaN or infinity are found by :func:`engine.checkpoints.nonfinite_tensors`, the check
the checkpoint reader and writer apply too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from engine import NAME_MAX, VOID, load_mask_png, temp_path

__all__ = ["check_out_path", "has_labelled_pixels"]


def check_out_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path when a checkpoint can be written there; ValueError (starting with the path)
    when it is a folder, its name is too long for a file name, it sits in a folder that does not
    exist, or that folder cannot be written."""
    p = Path(path)
    size = len(os.fsencode(p.name))
    if size > NAME_MAX:
        raise ValueError(f"{p}: the file name is {size} bytes long, more than the {NAME_MAX} a file name may have")
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; name the checkpoint file to write, e.g. {p / 'model.safetensors'}")
    if p.exists() and not p.is_file():
        raise ValueError(f"{p}: exists and is not a regular file")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{p}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is not a folder")
    # Creating a file is the one reliable test of "can write here" (permissions, read-only mounts, ACLs),
    # under the kind of temp name save_model writes first, which fits whatever the checkpoint's name.
    probe = temp_path(p)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
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
