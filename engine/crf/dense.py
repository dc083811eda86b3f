"""The torch backend: dense-CRF mean-field inference on permutohedral lattices, as pydensecrf runs it.

pydensecrf's ``DenseCRF2D`` with ``setUnaryEnergy(-log p)``, ``addPairwiseGaussian(sxy=θγ, compat=w2)``,
``addPairwiseBilateral(sxy=θα, srgb=θβ, rgbim, compat=w1)`` and ``inference(n)`` computes

    Q⁰ = softmax(log p);   Qᵗ⁺¹ = softmax(log p + Σ_k w_k · n_k ⊙ K_k(n_k ⊙ Qᵗ))

per pixel over classes, where K_k is the lattice filter of kernel k (self term included) and
n_k = 1/sqrt(K_k·1) its NORMALIZE_SYMMETRIC weights. This module does the same with tensors laid out
(N, C), pixel-major, on any device; per-point factors are folded into the lattice's splat and slice
weights once per kernel so that an iteration is three fused gather-sums per kernel plus a softmax.

Class pruning: since every message is >= 0 and at most W·max_j Q_l(j) with W = Σ_k w_k·max_i(K̃_k·1)(i),
a class l whose probability never exceeds a_l = max_i p_l(i)/max_c p_c(i) can never rise above q*, the
smallest root of q = a_l·exp(W q). Classes with q* below a tolerance are left out of the message passing
(their messages are taken as 0) but stay in every softmax denominator, so the kept classes' results
change by far less than the tolerance and no pruned class could have become any pixel's label.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .lattice import PermutohedralLattice
from .params import PROB_EPS

__all__ = ["Kernel", "bilateral_kernel", "gaussian_kernel", "log_unary", "class_ratios", "keep_classes",
           "prune", "mean_field", "pick_device"]

Cancel = Callable[[], bool]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto": CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Kernel:
    """One Gaussian kernel on one image: its lattice with normalisation folded into the weights.

    ``row_max`` is max_i (K̃·1)(i) for the normalised kernel K̃, used by the pruning bound; it costs
    one filter pass, so it is computed on first use.
    """

    def __init__(self, lattice: PermutohedralLattice):
        self.lattice = lattice
        norm = lattice.normalizer()
        self.splat_w = lattice.splat_weights(norm)  # (N*(d+1),) float32, includes n
        self.slice_w = lattice.slice_weights(norm)  # (N, d+1) float32, includes n and alpha
        self._row_max: float | None = None
        self._weighted: tuple[float, torch.Tensor] | None = None

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "Kernel":
        return cls(PermutohedralLattice(features))

    @property
    def nbytes(self) -> int:
        """Memory held by this kernel's tensors (lattice included), for cache budgets."""
        lat = self.lattice
        tensors = [self.splat_w, self.slice_w, lat._slice_idx, lat._slice_bags, lat._slice_w, lat._splat_idx,
                   lat._splat_bags, lat._splat_w, lat._blur_bags, *lat._blur_idx, *lat._blur_w]
        if self._weighted is not None:
            tensors.append(self._weighted[1])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def row_max(self) -> float:
        if self._row_max is None:
            ones = torch.ones((self.lattice.n_points, 1), dtype=torch.float32, device=self.lattice.device)
            self._row_max = float(self.apply(ones, 1.0).max())
        return self._row_max

    def apply(self, q: torch.Tensor, weight: float) -> torch.Tensor:
        """(N, C) -> (N, C): weight · n ⊙ K(n ⊙ q)."""
        lat = self.lattice
        if self._weighted is None or self._weighted[0] != weight:
            self._weighted = (weight, self.slice_w * weight)  # reused across iterations
        return lat.slice(lat.blur(lat.splat(q, self.splat_w)), self._weighted[1])


def _grid(height: int, width: int, xy: float, device: torch.device) -> list[torch.Tensor]:
    # densecrf divides in float32: x / (float) sxy.
    sxy = torch.tensor(xy, dtype=torch.float32, device=device)
    ys = (torch.arange(height, dtype=torch.float32, device=device) / sxy).view(height, 1).expand(height, width)
    xs = (torch.arange(width, dtype=torch.float32, device=device) / sxy).view(1, width).expand(height, width)
    return [xs.reshape(-1), ys.reshape(-1)]


def gaussian_kernel(height: int, width: int, xy: float, device: torch.device) -> Kernel:
    """Smoothness kernel exp(-|pi-pj|²/2θγ²) on an H×W pixel grid (features x/θγ, y/θγ)."""
    return Kernel.from_features(torch.stack(_grid(height, width, xy, device), 1))


def bilateral_kernel(image: torch.Tensor, xy: float, rgb: float) -> Kernel:
    """Appearance kernel exp(-|pi-pj|²/2θα² - |Ii-Ij|²/2θβ²); ``image`` (H, W, 3) float32 0-255 RGB."""
    h, w, _ = image.shape
    srgb = torch.tensor(rgb, dtype=torch.float32, device=image.device)
    colour = (image.reshape(-1, 3) / srgb).unbind(1)
    return Kernel.from_features(torch.stack(_grid(h, w, xy, image.device) + list(colour), 1))


def log_unary(probs: torch.Tensor) -> torch.Tensor:
    """(C, H, W) probabilities -> (N, C) float32 log-probabilities clipped at PROB_EPS (= -unary)."""
    c = probs.shape[0]
    return torch.log(probs.reshape(c, -1).t().clamp(min=PROB_EPS)).contiguous()


def class_ratios(logp: torch.Tensor) -> torch.Tensor:
    """(C,) a_l = max over pixels of p_l / max_c p_c, the input to the pruning bound."""
    return torch.exp((logp - logp.max(1, keepdim=True).values).max(0).values)


def keep_classes(ratios: torch.Tensor, bound_weight: float, tolerance: float) -> torch.Tensor:
    """Indices of classes whose mean-field probability could exceed ``tolerance`` somewhere.

    ``bound_weight`` is W = Σ_k w_k·row_max_k. q* = a·exp(W q*) is found by fixed-point iteration from
    q = a, which rises monotonically to the smallest root; no root (a·W·e > 1) means "keep".
    """
    a = ratios.double().cpu()
    keep = torch.ones_like(a, dtype=torch.bool)
    if tolerance > 0 and a.numel() > 1:
        q = a.clone()
        for _ in range(60):
            q = torch.minimum(a * torch.exp(bound_weight * q), torch.ones_like(q))
        has_root = a * bound_weight * math.e <= 1.0
        keep = ~(has_root & (q < tolerance))
        if not keep.any():
            keep[a.argmax()] = True
    return torch.nonzero(keep).view(-1)


def _softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax of (N, K), returned contiguous. For small K torch's last-dim softmax is slow on CPU
    (short rows vectorise badly); a softmax over dim 0 of the transposed view is several times faster."""
    if logits.shape[1] <= 8:
        return torch.softmax(logits.t(), 0).t().contiguous()
    return torch.softmax(logits, 1)


def prune(ratios: torch.Tensor, kernels: list[tuple[Kernel, float]], tolerance: float) -> torch.Tensor | None:
    """Classes to keep for message passing, or None to keep all. Since q* >= a_l, a class with
    a_l >= tolerance is always kept; the bound (one filter pass per kernel) is computed only when
    some class could be pruned."""
    if tolerance <= 0 or ratios.numel() < 2 or not bool((ratios < tolerance).any()):
        return None
    bound = sum(weight * kernel.row_max for kernel, weight in kernels if weight != 0.0)
    keep = keep_classes(ratios, bound, tolerance)
    return None if keep.numel() == ratios.numel() else keep


def mean_field(logp: torch.Tensor, kernels: list[tuple[Kernel, float]], iterations: int, *,
               keep: torch.Tensor | None = None, cancel: Cancel | None = None) -> torch.Tensor | None:
    """Mean-field inference. logp (N, C) float32; returns Q (N, C) float32, or None when cancelled.

    ``keep`` (indices) restricts message passing to those classes; the others keep their unary-only
    values inside every normaliser and in the output.
    """
    n, c = logp.shape
    kernels = [(k, w) for k, w in kernels if w != 0.0]
    if keep is None or keep.numel() == c:
        q = _softmax_rows(logp)
        for _ in range(iterations):
            if cancel is not None and cancel():
                return None
            logits = logp.clone()
            for kernel, weight in kernels:
                logits += kernel.apply(q, weight)
            q = _softmax_rows(logits)
        return q

    keep = keep.to(logp.device)
    k = keep.numel()
    drop = torch.ones(c, dtype=torch.bool, device=logp.device)
    drop[keep] = False
    # Column k holds the pruned classes' total unary-only log-mass, so one row softmax over k+1
    # columns normalises the kept classes against everything, and its last column is the pruned mass.
    logits = torch.empty((n, k + 1), dtype=logp.dtype, device=logp.device)
    lse_drop = torch.logsumexp(logp[:, drop], 1, keepdim=True)
    logits[:, k:] = lse_drop
    lp_keep = logp[:, keep]
    logits[:, :k] = lp_keep
    q_ext = _softmax_rows(logits)
    for _ in range(iterations):
        if cancel is not None and cancel():
            return None
        q = q_ext[:, :k].contiguous()
        logits[:, :k] = lp_keep
        for kernel, weight in kernels:
            logits[:, :k] += kernel.apply(q, weight)
        q_ext = _softmax_rows(logits)
    # Pruned classes share the pruned mass in proportion to their unary-only terms.
    out = torch.exp(logp - lse_drop) * q_ext[:, k:]
    out[:, keep] = q_ext[:, :k]
    return out
