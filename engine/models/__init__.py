"""Model zoo: every DeepLab generation, with state-dict layouts identical to the public peers.

Importing this package registers every family's builders.
"""
from __future__ import annotations

# Each family module registers its builders on import.
from . import deeplabv1, deeplabv2, deeplabv3, mobilenet, xception  # noqa: F401,E402
from . import mmseg  # noqa: F401,E402  (mmsegmentation's layout)
from . import smp  # noqa: F401,E402  (segmentation_models_pytorch's layout)
from .registry import ModelSpec, build_model, list_models, model_spec, register

__all__ = ["build_model", "list_models", "model_spec", "register", "ModelSpec"]
