"""Checkpoint files: reading every supported format safely, writing the native one, and their identity.

``io`` reads and writes (weights only, never code), ``formats`` recognises the peers' layouts,
``limits`` refuses files whose declared sizes exceed what any supported model needs before anything is
inflated, and ``identity`` names a file by its content.
"""
from __future__ import annotations

from .identity import checkpoint_id
from .io import (
                 NATIVE_FORMAT,
                 NATIVE_FORMAT_VERSION,
                 CheckpointError,
                 RawCheckpoint,
                 load_model,
                 nonfinite_tensors,
                 read_checkpoint,
                 read_meta,
                 save_model,
)

__all__ = ["CheckpointError", "RawCheckpoint", "NATIVE_FORMAT", "NATIVE_FORMAT_VERSION", "read_checkpoint",
           "save_model", "load_model", "read_meta", "checkpoint_id", "nonfinite_tensors"]
