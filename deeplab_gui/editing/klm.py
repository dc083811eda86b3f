"""Estimated human time of an editing action: a keystroke-level model. No Qt.

The constants are the operators of Card, Moran & Newell, "The keystroke-level model for user
performance time with interactive systems", Communications of the ACM 23(7), 1980 (Figure 1):

- K, a key press or a mouse-button click: 0.20 s (average skilled typist; the paper's range is
  0.08 s for the best typists to 1.2 s for the worst);
- P, pointing the mouse at a target on the screen: 1.10 s;
- M, mental preparation before a unit of work: 1.35 s;
- D(n, l), drawing n straight segments of total length l cm with the mouse: 0.9·n + 0.16·l s.

How an action is charged (the simulated annotator's convention, stated once here): one M for each
action (deciding what to fix and with what), P + K for each click (point, then click: a polygon
vertex, a fill, the start of a stroke), D for the drag of a stroke, K for each keystroke (undo, the
Enter that closes a polygon, a key choosing another tool or class). Lengths on screen assume image
pixels at 100 % zoom on a 96-dpi display.
"""
from __future__ import annotations

__all__ = ["D_PER_CM", "D_SEGMENT", "PX_PER_CM", "K", "M", "P", "action_seconds"]

K = 0.20          # key press or button click, s
P = 1.10          # point with the mouse, s
M = 1.35          # mental preparation, s
D_SEGMENT = 0.9   # drawing: per straight segment, s
D_PER_CM = 0.16   # drawing: per cm of path, s
PX_PER_CM = 96 / 2.54   # screen pixels per cm at 96 dpi


def action_seconds(*, clicks: int = 0, keys: int = 0, drag_px: float = 0.0, segments: int = 0) -> float:
    """Estimated seconds for one action: M + clicks·(P + K) + keys·K + D(segments, drag length)."""
    if min(clicks, keys, segments) < 0 or drag_px < 0:
        raise ValueError("clicks, keys, segments and drag_px must be >= 0")
    drag = D_SEGMENT * segments + D_PER_CM * (drag_px / PX_PER_CM) if segments or drag_px else 0.0
    return M + clicks * (P + K) + keys * K + drag
