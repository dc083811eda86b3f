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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable

import torch

from . import lattice as lattice_mod
from . import workers
from .lattice import BuildCancelled, PermutohedralLattice
from .params import PROB_EPS

__all__ = ["Kernel", "bilateral_kernel", "gaussian_kernel", "bilateral_features", "gaussian_features",
           "kernels_from_features", "add_messages", "log_unary", "class_ratios", "keep_classes",
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

    def __init__(self, lattice: PermutohedralLattice, cancel: Cancel | None = None):
        self.lattice = lattice
        if cancel is not None and cancel():
            raise BuildCancelled
        norm = lattice.normalizer()
        self.splat_w = lattice.splat_weights(norm)  # (N*(d+1),) float32, includes n
        self.slice_w = lattice.slice_weights(norm)  # (N, d+1) float32, includes n and alpha
        self._row_max: float | None = None
        self._weighted: tuple[float, torch.Tensor] | None = None

    @classmethod
    def from_features(cls, features: torch.Tensor, max_vertices: int | None = None) -> "Kernel":
        """The kernel on these features; ``max_vertices``: see ``PermutohedralLattice``."""
        return cls(PermutohedralLattice(features, max_vertices))

    @property
    def nbytes(self) -> int:
        """Memory held by this kernel's tensors (lattice included), for cache budgets."""
        lat = self.lattice
        tensors = [self.splat_w, self.slice_w, lat._slice_idx, lat._slice_bags, lat._slice_w, lat._splat_idx,
                   lat._splat_bags, lat._splat_bags_z, lat._splat_w, lat._blur_bags, lat._blur_w, *lat._blur_idx]
        if self._weighted is not None:
            tensors.append(self._weighted[1])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def row_max(self) -> float:
        if self._row_max is None:
            ones = torch.ones((self.lattice.n_points, 1), dtype=torch.float32, device=self.lattice.device)
            self._row_max = float(self.apply(ones, 1.0).max())
        return self._row_max

    def weighted_slice(self, weight: float) -> torch.Tensor:
        """Slice weights times ``weight``, cached: reused across iterations."""
        if self._weighted is None or self._weighted[0] != weight:
            self._weighted = (weight, self.slice_w * weight)
        return self._weighted[1]

    def apply(self, q: torch.Tensor, weight: float) -> torch.Tensor:
        """(N, C) -> (N, C): weight · n ⊙ K(n ⊙ q)."""
        return self.lattice.apply(q, self.splat_w, self.weighted_slice(weight))


def _grid(height: int, width: int, xy: float, device: torch.device) -> list[torch.Tensor]:
    # densecrf divides in float32: x / (float) sxy.
    sxy = torch.tensor(xy, dtype=torch.float32, device=device)
    ys = (torch.arange(height, dtype=torch.float32, device=device) / sxy).view(height, 1).expand(height, width)
    xs = (torch.arange(width, dtype=torch.float32, device=device) / sxy).view(1, width).expand(height, width)
    return [xs.reshape(-1), ys.reshape(-1)]


def gaussian_features(height: int, width: int, xy: float, device: torch.device) -> torch.Tensor:
    """(H·W, 2) float32 smoothness-kernel features x/θγ, y/θγ, pixel-major."""
    return torch.stack(_grid(height, width, xy, device), 1)


def bilateral_features(image: torch.Tensor, xy: float, rgb: float) -> torch.Tensor:
    """(H·W, 5) float32 appearance-kernel features x/θα, y/θα, r/θβ, g/θβ, b/θβ; ``image`` (H, W, 3)
    float32 0-255 RGB."""
    h, w, _ = image.shape
    srgb = torch.tensor(rgb, dtype=torch.float32, device=image.device)
    colour = (image.reshape(-1, 3) / srgb).unbind(1)
    return torch.stack(_grid(h, w, xy, image.device) + list(colour), 1)


def gaussian_kernel(height: int, width: int, xy: float, device: torch.device,
                    max_vertices: int | None = None) -> Kernel:
    """Smoothness kernel exp(-|pi-pj|²/2θγ²) on an H×W pixel grid (features x/θγ, y/θγ)."""
    return Kernel.from_features(gaussian_features(height, width, xy, device), max_vertices)


def bilateral_kernel(image: torch.Tensor, xy: float, rgb: float, max_vertices: int | None = None) -> Kernel:
    """Appearance kernel exp(-|pi-pj|²/2θα² - |Ii-Ij|²/2θβ²); ``image`` (H, W, 3) float32 0-255 RGB."""
    return Kernel.from_features(bilateral_features(image, xy, rgb), max_vertices)


def kernels_from_features(features: list[torch.Tensor], cancel: Cancel | None = None) -> list[Kernel]:
    """One Kernel per (N, d) feature tensor. On the CPU with more than one torch thread allowed, the
    lattices are built concurrently on plain threads: their numpy build releases the GIL and starts
    no torch thread pool, so two builds use the two cores a single build leaves half idle.
    ``cancel``: asked between the builds' steps; True raises ``lattice.BuildCancelled``."""
    concurrent = (len(features) > 1 and torch.get_num_threads() > 1 and lattice_mod.NUMPY_ON_CPU
                  and all(f.device.type == "cpu" for f in features))
    if not concurrent:
        return [Kernel(PermutohedralLattice(f, cancel=cancel), cancel) for f in features]
    with ThreadPoolExecutor(len(features) - 1, thread_name_prefix="crf-lattice") as pool:
        others = [pool.submit(PermutohedralLattice, f, cancel=cancel) for f in features[1:]]
        lattices = [PermutohedralLattice(features[0], cancel=cancel)] + [job.result() for job in others]
    # Normalisers use torch's own thread pool: computed after the builds, one at a time.
    return [Kernel(lat, cancel) for lat in lattices]


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


def _kernel_sum(q: torch.Tensor, kernels: list[tuple[Kernel, float]]) -> torch.Tensor:
    total = None
    for kernel, weight in kernels:
        msg = kernel.apply(q, weight)
        total = msg if total is None else total.add_(msg)
    return total


def add_messages(logits: torch.Tensor, q: torch.Tensor, kernels: list[tuple[Kernel, float]]) -> None:
    """logits (N, C) += Σ_k w_k·n_k ⊙ K_k(n_k ⊙ q) for contiguous q (N, C).

    With a single column (two classes, or one kept class) on a multi-core CPU, the kernels run as two
    independent jobs on two single-threaded workers: one-column operators are too light for torch's
    threads, whose per-operator barriers stall badly on a busy machine (see workers.py). With several
    columns each operator carries enough work and torch's threads measured faster (1024×768, 5 classes:
    1.6 s against 2.3 s); ``workers.SPLIT_COLUMNS`` switches on the worker form (half the columns each).
    """
    c = q.shape[1]
    if c == 1 and workers.use_workers(q, len(kernels)):
        for kernel, weight in kernels:
            kernel.weighted_slice(weight)  # fill the caches here; the workers only read them
        for msg in workers.run_all([partial(kernel.apply, q, weight) for kernel, weight in kernels]):
            logits += msg
    elif c > 1 and kernels and workers.SPLIT_COLUMNS and workers.use_workers(q, 2):
        for kernel, weight in kernels:
            kernel.weighted_slice(weight)
        cols = [slice(0, c // 2), slice(c // 2, c)]
        parts = [q[:, s].contiguous() for s in cols]
        for s, msg in zip(cols, workers.run_all([partial(_kernel_sum, part, kernels) for part in parts])):
            logits[:, s] += msg
    else:
        for kernel, weight in kernels:
            logits += kernel.apply(q, weight)


class _Cancelled(Exception):
    pass


def _iterations(n: int, cancel: Cancel | None, enough: Cancel | None):
    """0..n-1, one per mean-field iteration: raises _Cancelled when ``cancel()`` says so, and ends early
    (with the Q reached so far) when ``enough()`` does after the first iteration."""
    for i in range(n):
        if cancel is not None and cancel():
            raise _Cancelled
        if i > 0 and enough is not None and enough():
            return
        yield i


def _mean_field_two(logp: torch.Tensor, kernels: list[tuple[Kernel, float]], iterations: int,
                    cancel: Cancel | None, enough: Cancel | None) -> torch.Tensor:
    """Two classes: the softmax depends only on the logit difference, and the filters are linear, so
    one channel u = q0 - q1 carries all messages: Δ = log p0 - log p1 + Σ_k w_k·n_k ⊙ K_k(n_k ⊙ u),
    q = (σ(Δ), σ(-Δ)). Half the filtering of the two-column form, equal up to float rounding."""
    delta = (logp[:, 0] - logp[:, 1]).contiguous()
    logits = delta
    for _ in _iterations(iterations, cancel, enough):
        u = torch.sigmoid(logits).sub_(torch.sigmoid(-logits)).view(-1, 1)
        logits = delta.clone()
        add_messages(logits.view(-1, 1), u, kernels)
    return torch.stack([torch.sigmoid(logits), torch.sigmoid(-logits)], 1)


def mean_field(logp: torch.Tensor, kernels: list[tuple[Kernel, float]], iterations: int, *,
               keep: torch.Tensor | None = None, cancel: Cancel | None = None,
               enough: Cancel | None = None) -> torch.Tensor | None:
    """Mean-field inference. logp (N, C) float32; returns Q (N, C) float32, or None when cancelled.

    ``enough`` (checked before each iteration after the first) ends the inference early with the Q
    reached so far: a live preview uses it to stay within a time budget.

    ``keep`` (indices) restricts message passing to those classes; the others keep their unary-only
    values inside every normaliser and in the output.
    """
    kernels = [(k, w) for k, w in kernels if w != 0.0]
    try:
        if logp.shape[1] == 2 and (keep is None or keep.numel() == 2):
            return _mean_field_two(logp, kernels, iterations, cancel, enough)
        return _mean_field(logp, kernels, iterations, keep, cancel, enough)
    except _Cancelled:
        return None


def _mean_field(logp: torch.Tensor, kernels: list[tuple[Kernel, float]], iterations: int,
                keep: torch.Tensor | None, cancel: Cancel | None, enough: Cancel | None) -> torch.Tensor:
    n, c = logp.shape
    if keep is None or keep.numel() == c:
        q = _softmax_rows(logp)
        for _ in _iterations(iterations, cancel, enough):
            logits = logp.clone()
            add_messages(logits, q, kernels)
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
    for _ in _iterations(iterations, cancel, enough):
        q = q_ext[:, :k].contiguous()
        logits[:, :k] = lp_keep
        msgs = torch.zeros_like(q)
        add_messages(msgs, q, kernels)
        logits[:, :k] += msgs
        q_ext = _softmax_rows(logits)
    # Pruned classes share the pruned mass in proportion to their unary-only terms.
    out = torch.exp(logp - lse_drop) * q_ext[:, k:]
    out[:, keep] = q_ext[:, :k]
    return out
