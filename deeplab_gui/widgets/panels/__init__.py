"""Dock panels: image list, classes, model (with versions), CRF."""
