"""CRF parameters, presets and input validation shared by every backend."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CRFParams",
    "DEEPLAB_V1",
    "DEEPLAB_V2",
    "CONVCRF",
    "PRESETS",
    "MAX_ITERATIONS",
    "PROB_EPS",
    "check_image",
    "check_probs",
]

MAX_ITERATIONS = 50
# Probabilities are clipped to this before taking -log: a class the network rules out entirely gets a
# large but finite unary (18.4), the same for every backend so that they stay comparable.
PROB_EPS = 1e-8
# Tolerance on Σ_c p_c = 1 per pixel: float32 softmax outputs resized or cached as float16 drift a bit.
_SUM_TOL = 1e-3


@dataclass(frozen=True)
class CRFParams:
    """Fully-connected CRF settings (Krähenbühl & Koltun 2011), in pydensecrf's units.

    Pairwise energy w1·exp(-|pi-pj|²/2θα² - |Ii-Ij|²/2θβ²) + w2·exp(-|pi-pj|²/2θγ²) with Potts
    compatibility; positions in pixels, colours in 0-255 RGB units. A weight of 0 switches its kernel off.
    """

    iterations: int = 10
    bilateral_weight: float = 4.0  # w1
    bilateral_xy: float = 49.0  # θα, pixels
    bilateral_rgb: float = 5.0  # θβ, RGB units
    gaussian_weight: float = 3.0  # w2
    gaussian_xy: float = 3.0  # θγ, pixels

    def __post_init__(self) -> None:
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or not 0 <= it <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be an integer in 0..{MAX_ITERATIONS}, got {it!r}")
        object.__setattr__(self, "iterations", int(it))
        for name in ("bilateral_weight", "gaussian_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("bilateral_xy", "bilateral_rgb", "gaussian_xy"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} (a kernel width) must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    def replace(self, **changes) -> "CRFParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> "CRFParams":
        """The same CRF for an image resized by ``factor``: spatial widths scale, colour width does not."""
        return self.replace(bilateral_xy=self.bilateral_xy * factor, gaussian_xy=self.gaussian_xy * factor)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


#: DeepLab v1 LargeFOV release script (iterations, w1, θα, θβ, w2, θγ) = (10, 4, 49, 5, 3, 3).
DEEPLAB_V1 = CRFParams(10, 4.0, 49.0, 5.0, 3.0, 3.0)
#: DeepLab v2 ResNet-101 release: (10, 4, 67, 3, 3, 1).
DEEPLAB_V2 = CRFParams(10, 4.0, 67.0, 3.0, 3.0, 1.0)
#: ConvCRF paper / pydensecrf README example: (10, 10, 80, 13, 3, 3).
CONVCRF = CRFParams(10, 10.0, 80.0, 13.0, 3.0, 3.0)
PRESETS: dict[str, CRFParams] = {"deeplab_v1": DEEPLAB_V1, "deeplab_v2": DEEPLAB_V2, "convcrf": CONVCRF}


def check_image(image) -> np.ndarray:
    """Validate an H×W×3 uint8 RGB image; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return np.ascontiguousarray(image)


def check_probs(probs, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate C×H×W probabilities (finite, >= 0, summing to 1 per pixel); returns float32 C-contiguous.

    ``image_shape`` (H, W, ...) if given must match the probabilities' H and W.
    """
    if not isinstance(probs, np.ndarray):
        raise ValueError(f"probabilities must be a numpy array, got {type(probs).__name__}")
    if probs.ndim != 3 or min(probs.shape) == 0:
        raise ValueError(f"probabilities must have shape (C, H, W), got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probabilities must be floating point, got {probs.dtype}")
    if image_shape is not None and tuple(probs.shape[1:]) != tuple(image_shape[:2]):
        raise ValueError(f"probabilities are {probs.shape[1]}x{probs.shape[2]} (H x W) but the image is "
                         f"{image_shape[0]}x{image_shape[1]}")
    p = np.ascontiguousarray(probs, dtype=np.float32)
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinite values")
    if (p < 0).any():
        raise ValueError(f"probabilities must be >= 0, found {float(p.min())}")
    total = p.sum(0, dtype=np.float64)
    worst = float(np.abs(total - 1.0).max())
    if worst > _SUM_TOL:
        raise ValueError(f"probabilities must sum to 1 over classes at every pixel (worst deviation {worst:.3g}); "
                         "pass softmax outputs, not logits")
    return p
