"""The image view: ``canvas`` (zoom, pan, the mask overlay, tool previews) and the tools that turn
mouse events into edits of the document: ``tools`` (brush, eraser, polygon, fill, picker, CRF-snap),
``region_tools`` (superpixels, CRF click) and ``click_tool`` (click model), all on ``tool_base.Tool``.
``toolview`` holds what the canvas and tools offer each other, so the tools import neither the canvas
nor the session; ``session_target`` shows the session to the tools as what they edit; ``overlay``,
``region_view`` and ``outline`` are what the canvas draws."""
