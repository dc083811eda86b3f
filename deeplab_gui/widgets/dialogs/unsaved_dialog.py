"""The question asked before edits that are not on disk would be lost, and what each answer does.

Edits stay only in memory when the folder is open read-only (another instance holds it, or it is on
a read-only mount) or when the store cannot write (a full disk). Closing the window, quitting or
opening another folder then asks, with four answers: save the masks elsewhere, retry the store,
discard them, or cancel. When everything is on disk nothing is asked. Saving elsewhere keeps out of
the image folder and its store and never replaces a file (export_unsaved.py). :func:`ask` and
:func:`ask_folder` are module-level so tests can answer them; :func:`settle` is the whole flow.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from ...editing.export_unsaved import ExportError, export_masks

__all__ = ["CANCEL", "CHOICES", "DISCARD", "RETRY", "SAVE_ELSEWHERE", "UnsavedDialog", "ask",
           "ask_folder", "describe", "settle", "ELSEWHERE_RULE"]

SAVE_ELSEWHERE, RETRY, DISCARD, CANCEL = "save elsewhere", "retry", "discard", "cancel"
CHOICES = (SAVE_ELSEWHERE, RETRY, DISCARD, CANCEL)
SHOW_NAMES = 5    # names listed in the question; the details list all of them
SHOW_REASONS = 3
# What Save elsewhere… promises, in the question and in the folder picker's title.
ELSEWHERE_RULE = ("a folder outside the image folder, and never replaces a file already there (an empty or new "
                  "folder is best)")


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOW_NAMES])
    return shown + (f" and {len(ids) - SHOW_NAMES} more" if len(ids) > SHOW_NAMES else "")


def describe(unsaved: Sequence[tuple[str, str]], action: str) -> tuple[str, str]:
    """(question, why) for ``unsaved`` ``(image id, reason)`` pairs before ``action`` ("closing the
    window"): how many images and which, and the distinct reasons."""
    ids = [image_id for image_id, _ in unsaved]
    n = len(ids)
    question = (f"{n} image{'s' if n != 1 else ''} ha{'ve' if n != 1 else 's'} changes that are not on "
                f"disk: {_names(ids)}.\n{action[:1].upper() + action[1:]} now would lose them.")
    reasons = list(dict.fromkeys(why for _, why in unsaved))
    why = "\n".join(f"Why: {r}" for r in reasons[:SHOW_REASONS])
    if len(reasons) > SHOW_REASONS:
        why += f"\n(and {len(reasons) - SHOW_REASONS} other reasons; see the details)"
    return question, why


class UnsavedDialog(QMessageBox):
    """Save elsewhere… / Retry / Discard / Cancel for edits that are not on disk."""

    def __init__(self, unsaved: Sequence[tuple[str, str]], action: str, parent: QWidget | None = None) -> None:
        question, why = describe(unsaved, action)
        super().__init__(QMessageBox.Icon.Warning, "Unsaved changes", question, parent=parent)
        self.setInformativeText(f"{why}\n\nSave elsewhere… writes the masks into {ELSEWHERE_RULE}.")
        self.setDetailedText("\n".join(f"{image_id}: {reason}" for image_id, reason in unsaved))
        role = QMessageBox.ButtonRole
        self.choice_buttons = {
            SAVE_ELSEWHERE: self.addButton("Save elsewhere…", role.AcceptRole),
            RETRY: self.addButton("Retry", role.ActionRole),
            DISCARD: self.addButton("Discard", role.DestructiveRole),
            CANCEL: self.addButton("Cancel", role.RejectRole),
        }
        self.choice_buttons[SAVE_ELSEWHERE].setToolTip("Write these masks as PNG files into a folder you pick, "
                                                         "outside the image folder; no file there is replaced")
        self.choice_buttons[RETRY].setToolTip("Try to save them in this folder's store again")
        self.choice_buttons[DISCARD].setToolTip("Lose these changes")
        self.setDefaultButton(self.choice_buttons[SAVE_ELSEWHERE])
        self.setEscapeButton(self.choice_buttons[CANCEL])  # Esc and the title bar's close button

    def choice(self) -> str:
        """The answer given (Cancel when the dialog was closed some other way)."""
        clicked = self.clickedButton()
        return next((c for c, b in self.choice_buttons.items() if b is clicked), CANCEL)

    def ask(self) -> str:
        self.exec()
        return self.choice()


def ask(parent: QWidget | None, unsaved: Sequence[tuple[str, str]], action: str) -> str:
    """Show the question modally; one of :data:`CHOICES`."""
    return UnsavedDialog(unsaved, action, parent).ask()


def ask_folder(parent: QWidget | None, start: str) -> str:
    """The folder to save the masks in ("" when the person cancels)."""
    return QFileDialog.getExistingDirectory(
        parent, "Save the unsaved masks in (outside the image folder; no file there is replaced)", start)


def settle(window: Any, action: str) -> bool:
    """Before ``action`` lets go of ``window.session``'s folder: True when nothing unsaved is lost
    (everything is on disk, saved elsewhere, or knowingly discarded), False to stay as it is.
    ``window`` has ``session`` and ``show_message(level, text)``."""
    s = window.session
    if s.store is None:
        return True
    if not s.read_only:
        s.saves.save_all()  # what letting go of the folder does anyway: usually this is all it takes
    unsaved = s.unsaved()
    if not unsaved:
        return True
    choice = ask(window, unsaved, action)
    if choice == DISCARD:
        s.saves.discard()
        return True
    if choice == RETRY:
        if s.saves.retry():
            return True
        left = s.unsaved()
        window.show_message("error", f"{len(left)} image(s) still not on disk ({_names([i for i, _ in left])}): "
                                     f"{left[0][1]}")
        return False
    if choice == SAVE_ELSEWHERE:
        folder = ask_folder(window, str(s.folder.parent if s.folder is not None else Path.home()))
        if not folder:
            return False
        masks = {}
        for image_id, _why in unsaved:
            doc = s.saves.document(image_id)
            if doc is not None:
                masks[image_id] = doc.mask.copy()
        try:
            export_masks(folder, masks, s.class_names, s.class_colors,
                         keep_out=[(s.store.folder, "the image folder"), (s.store.root, "its annotation store")])
        except ExportError as exc:
            window.show_message("error", f"{exc}; the changes are still only in memory")
            return False
        window.show_message("info", f"saved {len(masks)} mask(s) in {folder}")
        s.saves.discard()  # they are safe elsewhere: letting go of the folder must not retry them
        return True
    return False
