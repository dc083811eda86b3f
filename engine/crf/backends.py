"""``refine``: one-shot dense-CRF refinement with a choice of backend ("torch", "pydensecrf", "auto")."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import torch

from . import dense
from .lattice import BuildCancelled
from .params import DEEPLAB_V1, PROB_EPS, CRFParams, check_image, check_probs

__all__ = ["refine", "available_backends", "resolve_backend", "BACKENDS", "PRUNE_TOLERANCE"]

BACKENDS = ("torch", "pydensecrf")
# Classes whose mean-field probability provably stays below this everywhere are left out of message
# passing (see dense.py). 1e-4 changes kept probabilities by far less than float32 noise matters.
PRUNE_TOLERANCE = 1e-4
# On CPU "auto" prefers the backend measured faster at full size (benchmarks/results/crf.md).
_CPU_ORDER = ("torch", "pydensecrf")


def _has_pydensecrf() -> bool:
    return importlib.util.find_spec("pydensecrf") is not None


def available_backends() -> list[str]:
    """Backends usable in this environment, in "auto" preference order for this machine."""
    order = ["torch", "pydensecrf"] if torch.cuda.is_available() else list(_CPU_ORDER)
    return [b for b in order if b != "pydensecrf" or _has_pydensecrf()]


def resolve_backend(backend: str) -> str:
    """Map "auto" to a concrete backend: CUDA torch when present, else the faster importable one."""
    if backend == "auto":
        return available_backends()[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; choose from {('auto',) + BACKENDS}")
    if backend == "pydensecrf" and not _has_pydensecrf():
        raise ValueError("CRF backend 'pydensecrf' is not installed (pip install pydensecrf2)")
    return backend


def refine(image: np.ndarray, probs: np.ndarray, params: CRFParams = DEEPLAB_V1, backend: str = "auto", *,
           device: str | torch.device | None = None, prune_tolerance: float = PRUNE_TOLERANCE,
           cancel: Callable[[], bool] | None = None, where: np.ndarray | None = None) -> np.ndarray | None:
    """Refine per-pixel class probabilities with a fully-connected CRF.

    Args:
        image: H×W×3 uint8 RGB.
        probs: C×H×W float probabilities (finite, >= 0, summing to 1 per pixel).
        params: kernel weights/widths and iteration count.
        backend: "torch" (this project's lattice, CPU or CUDA), "pydensecrf", or "auto".
        device: torch backend only; None/"auto" picks CUDA when available.
        prune_tolerance: torch backend only; 0 disables class pruning.
        cancel: asked before the work starts and, with the torch backend, between the steps of
            the kernels' build and before each iteration; True stops it (background work the
            person no longer waits for).
        where: H×W bool (torch backend): the CRF over these pixels alone, fully connected among
            them (their positions and colours as in the whole image); the others keep ``probs``.
            A band along a region's border costs its own pixels, not its bounding box's.
    Returns:
        C×H×W float32 refined probabilities. With ``params.iterations == 0``, a copy of ``probs``.
        None when ``cancel`` stopped it.
    Raises:
        ValueError: malformed image or probabilities, size mismatch, unknown/unavailable backend.
    """
    if not isinstance(params, CRFParams):
        raise ValueError(f"params must be a CRFParams, got {type(params).__name__}")
    img = check_image(image)
    p = check_probs(probs, img.shape)
    if where is not None and backend == "pydensecrf":   # (said whether pydensecrf is installed or not)
        raise ValueError("where needs the torch backend (pydensecrf runs over the whole image)")
    name = resolve_backend(backend)
    if where is not None:
        where = np.asarray(where)
        if where.shape != img.shape[:2] or where.dtype != np.bool_:
            raise ValueError(f"where must be an H×W bool array of shape {img.shape[:2]}, "
                             f"got {where.shape} {where.dtype}")
        name = "torch"
    if params.iterations == 0:
        return p.copy()
    if cancel is not None and cancel():
        return None
    if name == "pydensecrf":
        return _refine_pydensecrf(img, p, params)
    return _refine_torch(img, p, params, dense.pick_device(device), prune_tolerance, cancel, where)


def torch_kernels(image: torch.Tensor, params: CRFParams, cancel: Callable[[], bool] | None = None,
                  pick: torch.Tensor | None = None) -> list[tuple[dense.Kernel, float]]:
    """Build the (kernel, weight) pairs for ``params`` on an (H, W, 3) float32 image tensor.
    ``cancel``: asked between the lattices' build steps; True raises ``lattice.BuildCancelled``.
    ``pick``: the flat indices of the pixels the kernels span (default all)."""
    h, w, _ = image.shape
    features, weights = [], []
    if params.gaussian_weight > 0:
        features.append(dense.gaussian_features(h, w, params.gaussian_xy, image.device))
        weights.append(params.gaussian_weight)
    if params.bilateral_weight > 0:
        features.append(dense.bilateral_features(image, params.bilateral_xy, params.bilateral_rgb))
        weights.append(params.bilateral_weight)
    if pick is not None:
        features = [f[pick] for f in features]
    return list(zip(dense.kernels_from_features(features, cancel), weights))


def _refine_torch(img: np.ndarray, p: np.ndarray, params: CRFParams, device: torch.device,
                  tolerance: float, cancel: Callable[[], bool] | None = None,
                  where: np.ndarray | None = None) -> np.ndarray | None:
    c, h, w = p.shape
    with torch.inference_mode():
        # Read-only arrays (the app's images) make torch warn on from_numpy; the bytes are only read.
        image_t = torch.from_numpy(img if img.flags.writeable else img.copy()).to(device=device,
                                                                                   dtype=torch.float32)
        logp = dense.log_unary(torch.from_numpy(p if p.flags.writeable else p.copy()).to(device))
        pick = None if where is None else torch.from_numpy(np.flatnonzero(where)).to(device)
        if pick is not None and pick.numel() == 0:
            return p.copy()
        try:
            kernels = torch_kernels(image_t, params, cancel, pick)
        except BuildCancelled:
            return None
        if pick is not None:
            logp = logp[pick]
        keep = dense.prune(dense.class_ratios(logp), kernels, tolerance)
        q = dense.mean_field(logp, kernels, params.iterations, keep=keep, cancel=cancel)
        if q is None:
            return None
        if pick is not None:   # the other pixels keep their probabilities
            out = p.copy()
            out.reshape(c, -1)[:, pick.cpu().numpy()] = q.t().cpu().numpy()
            return out
        # q is this call's own tensor: the array may share its memory (one C×H×W copy, the transpose).
        return q.t().contiguous().reshape(c, h, w).cpu().numpy()


def _refine_pydensecrf(img: np.ndarray, p: np.ndarray, params: CRFParams) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    c, h, w = p.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.maximum(p, PROB_EPS)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if params.gaussian_weight > 0:
        crf.addPairwiseGaussian(sxy=params.gaussian_xy, compat=params.gaussian_weight)
    if params.bilateral_weight > 0:
        # pydensecrf's Cython signature takes a writable buffer even though it only reads it; arrays
        # from Pillow (np.asarray(image)) are read-only, so copy those.
        rgbim = np.require(img, dtype=np.uint8, requirements=["C", "W"])
        crf.addPairwiseBilateral(sxy=params.bilateral_xy, srgb=params.bilateral_rgb, rgbim=rgbim,
                                 compat=params.bilateral_weight)
    q = np.array(crf.inference(params.iterations), dtype=np.float32)
    return q.reshape(c, h, w)
