"""Ctrl+S: save the current mask, wait for the disk, and say in the status bar what happened.

Autosaves stay silent; an explicit save always answers, also when there was nothing to write, so a
person pressing the key knows it was heard and whether the mask is on disk.
"""
from __future__ import annotations

__all__ = ["save_and_report", "save_report"]


def save_report(session, ok: bool) -> str:
    """The status-bar line after an explicit save of ``session``'s current image."""
    image_id = session.image_id
    if session.store is None or image_id is None:
        return "nothing to save: no image is open"
    if ok:
        return f"saved {image_id}"
    if session.read_only:
        return f"not saved: {image_id} is kept in memory only (the folder is open read-only)"
    why = session.saves.errors.get(image_id, "the write failed")
    return f"not saved: {image_id}: {why} (kept in memory)"


def save_and_report(window) -> bool:
    """Save ``window``'s current mask and show the outcome; True when it is on disk."""
    session = window.session
    ok = session.store is not None and session.image_id is not None and session.save_current(wait=True)
    window.show_message("info", save_report(session, ok))
    return ok
