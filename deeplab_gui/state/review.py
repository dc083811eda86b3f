"""Accept and next: mark the current image reviewed, save it and move on the way the person is moving.

Marking an image reviewed, alone or with the move, is accepting it: the effort meter records when.

"The way the person is moving" is the image list's order with its filter applied (what the window
hands over as :attr:`ReviewState.visible`), or, when the last move was "next most uncertain", the
uncertainty queue.  The image each folder had open is remembered in the settings, so that a folder
reopens where the person stopped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QObject

from engine import VOID

__all__ = ["ReviewState"]


class ReviewState(QObject):
    """See the module docstring.  ``visible``: the ids the image list shows now (None: every image)."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.s = session
        self.visible: Callable[[], Iterable[str]] | None = None
        self.by_uncertainty = False   # the last move was "next most uncertain"
        self._uncertain_pick = False  # a "next most uncertain" selection is on its way
        session.current_changed.connect(self._on_current)

    def _on_current(self, image_id: str) -> None:
        self.by_uncertainty, self._uncertain_pick = self._uncertain_pick, False
        if self.s.folder is not None and image_id:
            self.s.settings.set_last_image(self.s.folder, image_id)

    def next_most_uncertain(self) -> Any:
        """The session's "next most uncertain", remembered as the way the person is moving."""
        self._uncertain_pick = True
        return self.s.next_most_uncertain()

    def next_in_list(self) -> str | None:
        """The image after the current one in the folder's order among those the list shows."""
        s = self.s
        ids = s.ids
        cur = s.image_id
        shown = set(self.visible()) if self.visible is not None else set(ids)
        start = ids.index(cur) + 1 if cur in ids else 0
        return next((i for i in ids[start:] if i in shown and i != cur), None)

    def mark_reviewed(self) -> bool:
        """Save the current mask as reviewed and record it as accepted (the effort meter's "done").
        A mask with no label at all is not accepted (saying why): a reviewed image is ground truth
        and goes into the exported dataset, and an empty one is a slip of the key, not a label."""
        s = self.s
        image_id = s.image_id
        doc = s.document
        # (VOID is the largest value: an all-void mask's minimum is VOID; one pass, no temporary)
        if doc is not None and image_id is not None and not s.read_only and int(doc.mask.min()) == VOID:
            # (the status bar, not a box to dismiss: the image staying on screen shows it too)
            s._say("info", f"{image_id} has no labels yet: label it (a fill with background for an image "
                              "with nothing in it) before accepting it")
            return False
        if not s.mark_reviewed():
            return False
        s.effort.note_accepted(image_id)
        return True

    def accept_and_next(self) -> bool:
        """Mark the current image reviewed, save it, then show the next image; False (saying why)
        when it could not be marked."""
        s = self.s
        image_id = s.image_id
        if s.store is None or image_id is None or s.document is None:
            s._say("info", "no image to accept")
            return False
        if s.read_only:
            s._say("warning", "this folder is open read-only: cannot mark images reviewed")
            return False
        # Chosen before marking: the new status may take the current image out of a filtered list.
        target = None if self.by_uncertainty else self.next_in_list()
        if not self.mark_reviewed():
            return False  # the failed write has said why
        if self.by_uncertainty:
            self.next_most_uncertain()
        elif target is not None:
            s.select(target)
        else:
            s._say("info", f"marked {image_id} reviewed; it is the last image in this list")
        return True
