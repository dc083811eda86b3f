"""Error messages as a person reads them: one line each.

Exceptions from libraries often span several lines (torch's loaders, Pillow, a JSON parser pointing at
a column), and a message built from one would break a terminal line, a status bar or a log record
in the middle.  :func:`one_line` is the single place where an exception or a text becomes one line;
every error the engine, the trainer and the app show goes through it.
"""
from __future__ import annotations

__all__ = ["one_line"]

_CUT = "..."


def one_line(message: object, limit: int | None = None) -> str:
    """``str(message)`` (an exception or any text) on one line: every run of whitespace, newlines
    included, becomes one space, none at either end.  ``""`` when there is nothing to say, so a caller
    can write ``one_line(exc) or "unknown error"``.

    ``limit``: the most characters to return; a longer message is cut and ends with ``...`` (for
    third-party messages quoted inside one's own, which can run to paragraphs).
    """
    text = " ".join(str(message).split())
    if limit is not None and len(text) > limit:
        text = (text[:max(limit - len(_CUT), 0)].rstrip() + _CUT)[:max(limit, 0)]
    return text
