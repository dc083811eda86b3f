"""The image view: ``canvas`` (zoom, pan, the mask overlay, tool previews) and ``tools`` (brush,
eraser, polygon, fill, picker, CRF-snap), which turn mouse events into edits of the document.
``toolview`` holds what the two offer each other, so the tools import neither the canvas nor the
session; ``session_target`` shows the session to the tools as what they edit."""
