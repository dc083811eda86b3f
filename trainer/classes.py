"""Class-list changes: keep every weight that still means the same thing.

When the store's class list differs from the model's (classes added, removed, renamed or
re-ordered), only the output rows of the class-producing layers change: a class whose name is in
both lists keeps its row (moved to its new index), a new class gets a freshly initialised row, and
the backbone, ASPP and decoder are copied untouched.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from engine import build_model

__all__ = ["ClassChange", "class_tensor_keys", "adapt_classes"]


@dataclass(frozen=True)
class ClassChange:
    """What :func:`adapt_classes` did: names kept (old index -> new index), added, removed."""

    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or any(i != j for i, j in self.kept.values()))


def _rebuild(meta, num_classes: int, device=None) -> nn.Module:
    kw = dict(meta.options)
    if meta.aux:
        kw["aux"] = True
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return build_model(meta.arch, num_classes=num_classes, output_stride=meta.output_stride, **kw)


def class_tensor_keys(model: nn.Module) -> list[str]:
    """State-dict keys whose first dimension is the class count (final conv weights and biases).

    Found by building the same architecture with one more class on the meta device (no memory, no
    init cost) and comparing shapes: exact for every registry model, whatever its head layout.
    """
    meta = model.meta
    other = _rebuild(meta, meta.num_classes + 1, "meta")
    mine = model.state_dict()
    theirs = other.state_dict()
    return [k for k, v in mine.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]


def adapt_classes(model: nn.Module, class_names: Sequence[str],
                  class_colors: Sequence[Sequence[int]] | None = None, *,
                  renames: Mapping[str, str] | None = None) -> tuple[nn.Module, ClassChange]:
    """A model for ``class_names``: matched names keep their weights, new ones are re-initialised.

    ``renames``: old name -> new name, for a rename that should keep the learned row (by default a
    new name is a new class).  Returns ``(model, change)``; when only colours differ (or nothing),
    a deep copy comes back with updated metadata.  The input model is never modified.
    """
    meta = model.meta
    names = list(class_names)
    colors = [tuple(int(v) for v in c) for c in (class_colors or [])] or None
    renames = dict(renames or {})
    old_names = [renames.get(n, n) for n in meta.class_names]
    old_index = {n: i for i, n in enumerate(old_names)}
    kept = {n: (old_index[n], j) for j, n in enumerate(names) if n in old_index}
    change = ClassChange(kept=kept, added=[n for n in names if n not in old_index],
                         removed=[meta.class_names[i] for i, n in enumerate(old_names) if n not in kept])
    new_meta_fields = dict(num_classes=len(names), class_names=names,
                           class_colors=colors or _colors_for(names, meta))
    if not change.changed and len(names) == meta.num_classes:
        out = copy.deepcopy(model)
        out.meta = dataclasses.replace(meta, **new_meta_fields)
        return out, change

    keys = set(class_tensor_keys(model))
    new = _rebuild(meta, len(names))
    old_sd = model.state_dict()
    new_sd = new.state_dict()
    src = torch.tensor([i for i, _ in kept.values()], dtype=torch.long)
    dst = torch.tensor([j for _, j in kept.values()], dtype=torch.long)
    with torch.no_grad():
        for k, v in new_sd.items():
            if k not in keys:
                v.copy_(old_sd[k])
            elif len(src):
                v[dst] = old_sd[k].to(v.dtype)[src]
    new.meta = dataclasses.replace(meta, **new_meta_fields,
                                   extra={**meta.extra, "class_change": {"added": change.added,
                                                                         "removed": change.removed}})
    device = next(model.parameters()).device
    return new.to(device).train(model.training), change


def _colors_for(names: list[str], meta) -> list[tuple[int, int, int]]:
    # Keep a kept class's colour; new classes get the VOC colour of their index.
    from engine import default_colors
    old = dict(zip(meta.class_names, meta.class_colors))
    defaults = default_colors(len(names))
    return [tuple(old.get(n, defaults[j])) for j, n in enumerate(names)]
