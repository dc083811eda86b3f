"""Label names from a source (COCO categories, labelme labels) matched to a class list.

Names are matched exactly after trimming spaces, as the store keeps them.  A name the class list
does not have is either added at the end (``unknown="add"``) or refuses the whole import with the
list of such names (``unknown="refuse"``), so that a typo in one file cannot quietly grow the list.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..labels import LabelClass
from ..meta import voc_colormap
from .common import FormatError

__all__ = ["UNKNOWN_CHOICES", "resolve_names", "fresh_color"]

UNKNOWN_CHOICES = ("add", "refuse")
_MAX_CLASSES = 255  # index 255 is void


def fresh_color(used: Iterable[Sequence[int]], index: int) -> tuple[int, int, int]:
    """The VOC colour map's colour for ``index``, or the next one no class uses yet."""
    taken = {tuple(int(v) for v in c) for c in used}
    cmap = voc_colormap(256)
    for k in list(range(index, 256)) + list(range(1, index)):
        if cmap[k] not in taken:
            return cmap[k]
    return cmap[index % 256]


def resolve_names(names: Iterable[str], classes: Sequence[LabelClass] | None, *, unknown: str = "add",
                  where: str, colors: Mapping[str, Sequence[int]] | None = None,
                  ) -> tuple[list[LabelClass], dict[str, int]]:
    """``(class list, name -> index)`` covering every name in ``names``.

    ``classes``: the list to match into (None: start from an empty list, every name is added in the
    order given).  ``colors``: a colour the source gives for a name, used when it is added.
    ``where``: the source, for the refusal's message.
    """
    if unknown not in UNKNOWN_CHOICES:
        raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_CHOICES)}, got {unknown!r}")
    out = list(classes or [])
    index = {c.name: i for i, c in enumerate(out)}
    missing: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if name in index or name in missing:
            continue
        if classes is not None and unknown == "refuse":
            missing.append(name)
            continue
        if not name:
            raise FormatError(f"{where}: a label name is empty")
        color = (colors or {}).get(raw) or (colors or {}).get(name)
        if color is None or tuple(color) in {c.color for c in out}:
            color = fresh_color((c.color for c in out), len(out))
        out.append(LabelClass(name, tuple(int(v) for v in color)))
        index[name] = len(out) - 1
    if missing:
        shown = ", ".join(repr(n) for n in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20
                                                             else "")
        raise FormatError(f"{where}: label names not in the folder's class list: {shown} "
                          f"(--unknown add adds them)")
    if len(out) > _MAX_CLASSES:
        raise FormatError(f"{where}: {len(out)} classes, more than the {_MAX_CLASSES} a mask can hold")
    return out, {name: i for name, i in index.items()}
