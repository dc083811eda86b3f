"""The fine-tune dialog's plot: training loss and held-out mIoU against the step, in plain QPainter."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, QRectF, QSize
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QWidget

__all__ = ["CurvePlot"]

_LOSS_COLOUR = QColor(40, 90, 200)
_MIOU_COLOUR = QColor(220, 110, 20)
_LOSS_PAD = 0.08  # share of the loss's range left free above and below the curve
_INSET = 5.0      # pixels between the frame and the nearest point (an mIoU dot's radius and a bit)


class CurvePlot(QWidget):
    """Training loss (left axis, scaled to the data) and held-out mIoU (right axis, 0..1) against the step.

    Plain QPainter: two short polylines do not justify a plotting dependency.  ``loss`` and ``miou``
    are lists of (step, value) the tests read.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.miou: list[tuple[int, float]] = []
        self.total = 1
        self.setMinimumSize(320, 160)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        return QSize(420, 200)

    def clear(self, total: int = 1) -> None:
        self.loss.clear()
        self.miou.clear()
        self.total = max(int(total), 1)
        self.update()

    def add_event(self, ev: Any) -> None:
        """Take a :class:`trainer.Progress`: a train step adds a loss point, a measured mIoU a point."""
        if ev.total:
            self.total = max(self.total, int(ev.total))
        if ev.phase == "train" and ev.loss is not None:
            self.loss.append((int(ev.step), float(ev.loss)))
        # Train events repeat the latest held-out mIoU; the one measured before training first shows
        # up there (step 0).  Later measurements come with "validate", the final one with "save" and
        # "done": one point per measurement.
        if ev.miou is not None:
            point = (0, float(ev.miou)) if ev.phase == "train" else (int(ev.step), float(ev.miou))
            if (ev.phase == "train" and not self.miou) or (ev.phase != "train" and point not in self.miou[-1:]):
                self.miou.append(point)
        self.update()

    def plot_area(self) -> QRectF:
        """The frame the curves are drawn in (widget coordinates); nothing is drawn outside it."""
        fm = self.fontMetrics()
        margin_l, margin_r = fm.horizontalAdvance("0.000") + 8, fm.horizontalAdvance("1.00") + 8
        return QRectF(margin_l, fm.height() + 6, self.width() - margin_l - margin_r,
                      self.height() - 2 * fm.height() - 12)

    def loss_range(self) -> tuple[float, float]:
        """(bottom, top) of the loss axis: the data's range widened by a margin on each side, so the
        highest and lowest points sit inside the frame, not on its edges (never below 0)."""
        values = [v for _, v in self.loss]
        if not values:
            return 0.0, 1.0
        lo, hi = min(values), max(values)
        pad = (hi - lo) * _LOSS_PAD or abs(hi) * _LOSS_PAD or 1.0
        return max(lo - pad, 0.0), hi + pad

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt naming)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(255, 255, 255))
        fm = p.fontMetrics()
        area = self.plot_area()
        if area.width() < 10 or area.height() < 10:
            return
        p.setPen(QPen(QColor(160, 160, 160)))
        p.drawRect(area)
        lo_loss, top_loss = self.loss_range()
        # Points map into the frame less an inset, so a line's width or an mIoU dot at 0 or 1 stays
        # off the frame's edges; the clip below catches anything else.
        inner = area.adjusted(_INSET, _INSET, -_INSET, -_INSET)

        def pt(step: int, value: float, lo: float, top: float) -> QPointF:
            x = inner.left() + inner.width() * min(max(step / self.total, 0.0), 1.0)
            y = inner.bottom() - inner.height() * min(max((value - lo) / (top - lo), 0.0), 1.0)
            return QPointF(x, y)

        # Axis labels: loss on the left, mIoU on the right, step underneath.
        p.setPen(_LOSS_COLOUR)
        p.drawText(QPointF(2, area.top() + fm.ascent()), f"{top_loss:.3f}")
        p.drawText(QPointF(2, area.bottom()), f"{lo_loss:.3f}" if lo_loss else "0")
        p.setPen(_MIOU_COLOUR)
        p.drawText(QPointF(area.right() + 4, area.top() + fm.ascent()), "1.00")
        p.drawText(QPointF(area.right() + 4, area.bottom()), "0")
        p.setPen(QColor(90, 90, 90))
        p.drawText(QPointF(area.left(), self.height() - 4), "step 0")
        last = f"{self.total}"
        p.drawText(QPointF(area.right() - fm.horizontalAdvance(last), self.height() - 4), last)
        p.setPen(_LOSS_COLOUR)
        p.drawText(QPointF(area.left(), fm.ascent() + 2), "loss")
        p.setPen(_MIOU_COLOUR)
        p.drawText(QPointF(area.left() + fm.horizontalAdvance("loss") + 12, fm.ascent() + 2), "held-out mIoU")

        p.setClipRect(area.adjusted(1, 1, -1, -1))  # inside the frame's line
        if len(self.loss) > 1:
            p.setPen(QPen(_LOSS_COLOUR, 1.5))
            p.drawPolyline(QPolygonF([pt(s, v, lo_loss, top_loss) for s, v in self.loss]))
        if self.miou:
            p.setPen(QPen(_MIOU_COLOUR, 2.0))
            points = [pt(s, v, 0.0, 1.0) for s, v in self.miou]
            if len(points) > 1:
                p.drawPolyline(QPolygonF(points))
            p.setBrush(_MIOU_COLOUR)
            for q in points:
                p.drawEllipse(q, 3.0, 3.0)
        p.end()
