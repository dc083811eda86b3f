"""One reading of the ``cancel`` argument every long job takes (Predictor, downloads, training)."""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["cancel_check"]


def cancel_check(cancel: Any) -> Callable[[], bool]:
    """``cancel`` (None, a ``threading.Event``, or a callable returning bool) -> a no-argument check."""
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a callable returning bool or a threading.Event")
