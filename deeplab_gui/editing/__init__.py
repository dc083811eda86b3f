"""Qt-free editing: the mask document (paint, fill, undo patches), brush and raster geometry, the
CRF-snap region, uncertainty maps, and writing masks out by name.  Pure numpy; testable without a display."""
