"""Click segmentation: SAM 2.1, SAM and MobileSAM in pure PyTorch, loading their authors' files.

``list_click_models()`` names them, ``load_click_model(path)`` reads an official checkpoint (or this
project's copy) and recognises which it is, and :class:`ClickPredictor` turns an image and clicks into
masks (numpy in and out). Each family's modules live in their own file (``sam.py``, ``tinyvit.py``,
``sam2.py``), with key-for-key the layouts of the authors' code. No Qt.
"""
from __future__ import annotations

from .base import LOW_RES, ClickModel
from .loading import click_limit, detect_click_model, load_click_model
from .predictor import ClickEmbedding, ClickPrediction, ClickPredictor
from .registry import (
    ClickSpec,
    build_click_model,
    click_spec,
    expected_click_shapes,
    list_click_models,
    register_click_model,
)

__all__ = [
    "LOW_RES",
    "ClickEmbedding",
    "ClickModel",
    "ClickPrediction",
    "ClickPredictor",
    "ClickSpec",
    "build_click_model",
    "click_limit",
    "click_spec",
    "detect_click_model",
    "expected_click_shapes",
    "list_click_models",
    "load_click_model",
    "register_click_model",
]
