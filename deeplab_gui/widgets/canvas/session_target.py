"""The session as what the tools edit: the one place that knows which session attributes the tools'
document, class, CRF-snap input, task runner and click model come from (see :mod:`.toolview`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .toolview import SnapInput

__all__ = ["SessionTarget"]


class SessionTarget:
    """A :class:`~.toolview.RegionTarget` over a session; every read goes to the session at that moment,
    so a tool always edits the image on screen."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._ready: Callable[[str], Any] | None = None   # the region tool listening for embeddings

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
                 on_error: Callable[[str], Any], task_name: str, **kw: Any) -> Any:
        return self._session.run_task(fn, on_result=on_result, on_error=on_error, task_name=task_name, **kw)

    def report_error(self, text: str) -> None:
        self._session.message.emit("error", text)

    # ------------------------------------------------------------ region tools (RegionTarget)
    @property
    def image_key(self) -> str:
        return self._session.image_id or ""

    @property
    def class_names(self) -> list[str]:
        return list(self._session.class_names)

    def _click(self) -> Any:
        return getattr(self._session, "click", None)

    def click_predictor(self) -> Any:
        click, key = self._click(), self.image_key
        return click.predictor(key) if click is not None and key else None

    def click_status(self) -> str | None:
        click = self._click()
        if click is None:
            return "click models are not available in this build"
        return None if click.model_name else click.status_text

    def note_click(self) -> None:
        """The click tool got a prompt (the click state holds neighbours' encoder runs back)."""
        click = self._click()
        if click is not None:
            click.note_prompt()

    def on_embedding_ready(self, callback: Callable[[str], Any] | None) -> None:
        click = self._click()
        if click is None:
            return
        if self._ready is not None:
            click.embedding_ready.disconnect(self._ready)
            self._ready = None
        if callback is not None:
            self._ready = callback
            click.embedding_ready.connect(callback)

    def show_status(self, text: str) -> None:
        self._session.message.emit("info", text)

