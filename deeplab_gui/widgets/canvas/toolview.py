"""What an editing tool and the view it works on offer each other, so a tool needs neither the canvas
nor the session.

A tool edits an :class:`EditTarget` (the current image's mask document and the current class) and
draws its transient previews (the polygon's rubber band, the CRF-snap stroke) through a
:class:`ToolView`.  The canvas is one ToolView; a test can pass any object with these methods.
Coordinates are image pixels (x column, y row), the document's convention.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ...editing.document import MaskDocument

__all__ = ["RGBA", "EditTarget", "RegionTarget", "SnapInput", "SnapTarget", "ToolView"]

RGBA = tuple[int, int, int, int]


class ToolView(Protocol):
    """Previews drawn over the image for the active tool: one path at a time, replaced by each call,
    and the brush outline."""

    def show_path(self, points: Sequence[tuple[float, float]], *, closed: bool = False,
                  width: float = 0.0, color: RGBA = (255, 255, 0, 255)) -> None:
        """Show a line through ``points`` (image pixels), joined back to the first when ``closed``.

        ``width`` 0 draws one screen pixel at any zoom (an outline); a positive width is in image
        pixels with round ends and joins, so a stroke preview covers what the brush covers.
        """

    def clear_preview(self) -> None:
        """Remove the preview, if any."""

    def show_outline(self, center: tuple[float, float], radius: float) -> None:
        """Show the brush's reach: a circle of ``radius`` image pixels around ``center``, drawn one
        screen pixel wide, so it grows and shrinks with the zoom as the painted disc does.  It is
        separate from the preview: a stroke preview and the outline can show together."""

    def clear_outline(self) -> None:
        """Hide the outline, if shown."""

    def show_region(self, mask_crop: np.ndarray, origin: tuple[float, float], color: RGBA,
                    label_text: str = "", scale: tuple[float, float] = (1.0, 1.0)) -> None:
        """Show a proposed region: ``mask_crop`` (h×w bool) placed with its top-left pixel at
        ``origin`` (x0, y0), filled translucent in ``color`` with a full-alpha outline, and
        ``label_text`` (the class it would get) beside it.  Each mask pixel covers ``scale`` (sy,
        sx) image pixels (a large photo's reduced preview).  Replaces the previous region."""

    def clear_region(self) -> None:
        """Remove the proposed region, if any."""

    def show_overlay(self, rgba_crop: np.ndarray, origin: tuple[float, float],
                     scale: tuple[float, float] = (1.0, 1.0)) -> None:
        """Show an h×w×4 uint8 RGBA image (superpixel borders) with its top-left pixel at ``origin``,
        each pixel covering ``scale`` (sy, sx) image pixels, under the previews.  Replaces the
        previous overlay."""

    def clear_overlay(self) -> None:
        """Remove the overlay, if any."""


class EditTarget(Protocol):
    """What the painting tools edit: read afresh on every event, since both change as people work."""

    @property
    def document(self) -> MaskDocument | None:
        """The current image's mask document; None while no image is shown."""

    current_label: int  # the class painted; the picker sets it

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """RGB per class index, for previews in the class's colour."""


@dataclass(frozen=True)
class SnapInput:
    """What the CRF-snap brush refines with, taken when a stroke ends."""

    image: np.ndarray              # H×W×3 uint8, full resolution
    probs: np.ndarray | None       # C×h×w float32 network probabilities (h×w may be a coarser grid)
    params: Any                    # engine.crf.CRFParams
    num_classes: int               # classes the strokes may name when there are no probabilities


class SnapTarget(EditTarget, Protocol):
    """An EditTarget that can also feed and run the CRF-snap brush's refinement."""

    def snap_input(self) -> SnapInput | None:
        """The image, probabilities and CRF settings now; None until the full-resolution pixels are in."""

    def run_task(self, fn: Callable[[], Any], *, on_result: Callable[[Any], Any],
                 on_error: Callable[[str], Any], task_name: str) -> Any:
        """Run ``fn`` off the UI thread; its result or error message comes back on the UI thread."""

    def report_error(self, text: str) -> None:
        """Tell the person that something failed (one line)."""


class RegionTarget(SnapTarget, Protocol):
    """A SnapTarget that also offers what the region tools (superpixels, CRF click, click model) need."""

    @property
    def image_key(self) -> str:
        """Names the image on screen (caches are kept per image)."""

    @property
    def class_names(self) -> list[str]:
        """Class names by index, for the proposed class's label."""

    def click_predictor(self) -> Any:
        """The click model's predictor for the image on screen, its embedding set; None while there is
        no model or the embedding is still being computed."""

    def click_status(self) -> str | None:
        """None when a click model is chosen; else one line saying how to get one."""

    def on_embedding_ready(self, callback: Callable[[str], Any] | None) -> None:
        """Call ``callback(image_key)`` when an image's embedding is ready (None: stop calling)."""

    def show_status(self, text: str) -> None:
        """One line in the status bar."""
