"""The session as what the tools edit: the one place that knows which session attributes the tools'
document, class, CRF-snap input and task runner come from (see :mod:`.toolview`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .toolview import SnapInput

__all__ = ["SessionTarget"]


class SessionTarget:
    """A :class:`~.toolview.SnapTarget` over a session; every read goes to the session at that moment,
    so a tool always edits the image on screen."""

    def __init__(self, session: Any) -> None:
        self._session = session

    @property
    def document(self) -> Any:
        return self._session.document

    @property
    def current_label(self) -> int:
        return self._session.current_label

    @current_label.setter
    def current_label(self, label: int) -> None:
        self._session.current_label = label

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return self._session.class_colors

    def snap_input(self) -> SnapInput | None:
        s = self._session
        if s.image is None:  # a reduced preview is on screen: the CRF needs the real pixels
            return None
        # The parameters in use this moment (session.crf owns them), not what was last saved.
        return SnapInput(s.image, s.probs, s.crf.params, len(s.class_names))

    def run_task(self, fn: Callable[[], Any], *, on_result: Callable[[Any], Any],
                 on_error: Callable[[str], Any], task_name: str) -> Any:
        return self._session.run_task(fn, on_result=on_result, on_error=on_error, task_name=task_name)

    def report_error(self, text: str) -> None:
        self._session.message.emit("error", text)

