"""Two series against one axis, in plain QPainter: the fine-tune dialog's loss and held-out mIoU against
the step, and the progress window's seconds and actions per image against the images done."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QLineF, QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QWidget

__all__ = ["CurvePlot"]

_LOSS_COLOUR = QColor(40, 90, 200)
_MIOU_COLOUR = QColor(220, 110, 20)
_MARK_COLOUR = QColor(60, 150, 60)
_LOSS_PAD = 0.08  # share of the left series' range left free above and below the curve
_INSET = 5.0      # pixels between the frame and the nearest point (a dot's radius and a bit)
_MAX_DOTS = 300   # more points than this are drawn as a line only: dots would merge into a smear


def _thinned(points: list[QPointF]) -> list[QPointF]:
    """A polyline that looks the same with at most two points per pixel column (the column's lowest
    and highest), so that thousands of images draw as fast as a few hundred."""
    if len(points) <= 2 * (points[-1].x() - points[0].x() + 1):
        return points
    out: list[QPointF] = []
    column: list[QPointF] = []
    for q in points:
        if column and int(q.x()) != int(column[0].x()):
            out.extend(_ends(column))
            column = []
        column.append(q)
    out.extend(_ends(column))
    return out


def _ends(column: list[QPointF]) -> list[QPointF]:
    lo, hi = min(column, key=QPointF.y), max(column, key=QPointF.y)
    return [lo, hi] if lo is not hi else [lo]


class CurvePlot(QWidget):
    """A left series (left axis, scaled to the data) and a right series (right axis, ``right_range``,
    or scaled to the data when None) against x from ``start`` to ``total``, with optional vertical
    ``markers`` (x, name).

    Plain QPainter: two short polylines do not justify a plotting dependency.  The defaults are the
    fine-tune dialog's: training loss and held-out mIoU (0..1) against the step; ``loss`` and
    ``miou`` are its two series as lists of (step, value), which the tests read.
    """

    def __init__(self, parent: QWidget | None = None, *, left_name: str = "loss",
                 right_name: str = "held-out mIoU", x_name: str = "step",
                 right_range: tuple[float, float] | None = (0.0, 1.0), left_format: str = "{:.3f}",
                 right_format: str = "{:.2f}", start: int = 0, left_dots: bool = False,
                 left_from_zero: bool = False) -> None:
        super().__init__(parent)
        self.left: list[tuple[float, float]] = []
        self.right: list[tuple[float, float]] = []
        self.markers: list[tuple[float, str]] = []
        self.total = 1
        self.start = start
        self.left_name, self.right_name, self.x_name = left_name, right_name, x_name
        self.fixed_right = right_range
        self.left_format, self.right_format = left_format, right_format
        self.left_dots = left_dots
        # Amounts (seconds per image) read wrong against an axis that starts above zero: a drop from
        # 200 to 100 would look like one to nothing.  A loss is better scaled to its data.
        self.left_from_zero = left_from_zero
        self.setMinimumSize(320, 160)

    @property
    def loss(self) -> list[tuple[float, float]]:
        return self.left

    @property
    def miou(self) -> list[tuple[float, float]]:
        return self.right

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        return QSize(420, 200)

    def clear(self, total: int = 1) -> None:
        self.left.clear()
        self.right.clear()
        self.markers.clear()
        self.total = max(int(total), 1)
        self.update()

    def set_series(self, left: list[tuple[float, float]], right: list[tuple[float, float]], total: int,
                   markers: list[tuple[float, str]] = ()) -> None:
        """Replace everything shown at once."""
        self.left[:], self.right[:], self.markers[:] = left, right, list(markers)
        self.total = max(int(total), self.start + 1)
        self.update()

    def add_event(self, ev: Any) -> None:
        """Take a :class:`trainer.Progress`: a train step adds a loss point, a measured mIoU a point."""
        if ev.total:
            self.total = max(self.total, int(ev.total))
        if ev.phase == "train" and ev.loss is not None:
            self.left.append((int(ev.step), float(ev.loss)))
        # Train events repeat the latest held-out mIoU; the one measured before training first shows
        # up there (step 0).  Later measurements come with "validate", the final one with "save" and
        # "done": one point per measurement.
        if ev.miou is not None:
            point = (0, float(ev.miou)) if ev.phase == "train" else (int(ev.step), float(ev.miou))
            if (ev.phase == "train" and not self.right) or (ev.phase != "train" and point not in self.right[-1:]):
                self.right.append(point)
        self.update()

    def plot_area(self) -> QRectF:
        """The frame the curves are drawn in (widget coordinates); nothing is drawn outside it."""
        fm = self.fontMetrics()
        lo, top = self.loss_range()
        rlo, rtop = self.right_range()
        margin_l = max(fm.horizontalAdvance(self.left_format.format(v)) for v in (lo, top, 0.125)) + 8
        margin_r = max(fm.horizontalAdvance(self.right_format.format(v)) for v in (rlo, rtop)) + 8
        return QRectF(margin_l, fm.height() + 6, self.width() - margin_l - margin_r,
                      self.height() - 2 * fm.height() - 12)

    def loss_range(self) -> tuple[float, float]:
        """(bottom, top) of the left axis: the data's range widened by a margin on each side, so the
        highest and lowest points sit inside the frame, not on its edges (never below 0; from 0 with
        ``left_from_zero``)."""
        values = [v for _, v in self.left]
        if not values:
            return 0.0, 1.0
        lo, hi = min(values), max(values)
        pad = (hi - lo) * _LOSS_PAD or abs(hi) * _LOSS_PAD or 1.0
        return 0.0 if self.left_from_zero else max(lo - pad, 0.0), hi + pad

    def right_range(self) -> tuple[float, float]:
        """(bottom, top) of the right axis: fixed, or from 0 to a little over the data's highest value."""
        if self.fixed_right is not None:
            return self.fixed_right
        hi = max((v for _, v in self.right), default=0.0)
        return 0.0, hi * (1 + _LOSS_PAD) if hi > 0 else 1.0

    def x_at(self, x: float, inner: QRectF | None = None) -> float:
        """The widget x coordinate of data x (``inner``: the frame less its inset, when at hand)."""
        if inner is None:
            inner = self.plot_area().adjusted(_INSET, _INSET, -_INSET, -_INSET)
        span = max(self.total - self.start, 1)
        return inner.left() + inner.width() * min(max((x - self.start) / span, 0.0), 1.0)

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
        lo_left, top_left = self.loss_range()
        lo_right, top_right = self.right_range()
        # Points map into the frame less an inset, so a line's width or a dot at either end of its
        # axis stays off the frame's edges; the clip below catches anything else.
        inner = area.adjusted(_INSET, _INSET, -_INSET, -_INSET)

        def pt(x: float, value: float, lo: float, top: float) -> QPointF:
            y = inner.bottom() - inner.height() * min(max((value - lo) / (top - lo), 0.0), 1.0)
            return QPointF(self.x_at(x, inner), y)

        # Axis labels: the left series on the left, the right one on the right, x underneath.
        p.setPen(_LOSS_COLOUR)
        p.drawText(QPointF(2, area.top() + fm.ascent()), self.left_format.format(top_left))
        p.drawText(QPointF(2, area.bottom()), self.left_format.format(lo_left) if lo_left else "0")
        p.setPen(_MIOU_COLOUR)
        p.drawText(QPointF(area.right() + 4, area.top() + fm.ascent()), self.right_format.format(top_right))
        p.drawText(QPointF(area.right() + 4, area.bottom()), self.right_format.format(lo_right) if lo_right else "0")
        p.setPen(QColor(90, 90, 90))
        p.drawText(QPointF(area.left(), self.height() - 4), f"{self.x_name} {self.start}")
        last = f"{self.total}"
        p.drawText(QPointF(area.right() - fm.horizontalAdvance(last), self.height() - 4), last)
        p.setPen(_LOSS_COLOUR)
        p.drawText(QPointF(area.left(), fm.ascent() + 2), self.left_name)
        p.setPen(_MIOU_COLOUR)
        p.drawText(QPointF(area.left() + fm.horizontalAdvance(self.left_name) + 12, fm.ascent() + 2), self.right_name)

        p.setClipRect(area.adjusted(1, 1, -1, -1))  # inside the frame's line
        for x, name in self.markers:
            mx = self.x_at(x, inner)
            p.setPen(QPen(_MARK_COLOUR, 1.0, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(mx, area.top()), QPointF(mx, area.bottom()))
            p.setPen(_MARK_COLOUR)
            # The name goes right of its line, or left of it where the frame would cut it off.
            width = fm.horizontalAdvance(name)
            tx = mx + 3 if mx + 3 + width <= area.right() - 2 else max(mx - 3 - width, area.left() + 2)
            p.drawText(QPointF(tx, area.top() + fm.ascent() + 2), name)
        self._series(p, [pt(x, v, lo_left, top_left) for x, v in self.left], _LOSS_COLOUR, 1.5, self.left_dots)
        self._series(p, [pt(x, v, lo_right, top_right) for x, v in self.right], _MIOU_COLOUR, 2.0, True)
        p.end()

    @staticmethod
    def _series(p: QPainter, points: list[QPointF], colour: QColor, width: float, dots: bool) -> None:
        if not points:
            return
        p.setPen(QPen(colour, width))
        if len(points) > 1:
            # Separate segments: Qt strokes one long self-crossing polyline hundreds of times slower.
            thin = _thinned(points)
            p.drawLines([QLineF(a, b) for a, b in zip(thin, thin[1:])])
        if dots and len(points) <= _MAX_DOTS:
            p.setBrush(colour)
            for q in points:
                p.drawEllipse(q, 3.0, 3.0)
            p.setBrush(Qt.BrushStyle.NoBrush)
