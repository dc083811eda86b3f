"""The image view: ``canvas`` (zoom, pan, the mask overlay) and ``tools`` (brush, eraser, polygon,
fill, picker, CRF-snap), which turn mouse events into edits of the document."""
