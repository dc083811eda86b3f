"""The end of SAM's mask decoder: the image rows, upscaled 4× by two 2×2 transposed convolutions,
weighed by each mask token into a mask (shared by SAM, MobileSAM and SAM 2.1, whose high-resolution
features join in). Matrix products on rows kept in block order instead of convolutions on the map;
each place says why the values are the same.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UPSCALE_ROWS", "FoldedDeconv", "block_order", "folded_weights", "upscale_constant", "upscale_masks",
           "upscale_masks_first"]


def _deconv_weights(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2×2, stride-2 transposed convolution as a Cin×(2·2·Cout) matrix and its bias: each input
    position becomes its 2×2 output block (row i, column j of the block, then the channels).

    Without autograd (a click) the pair is kept on the module while its weights are unchanged
    (the same tensors, not written to since): the permuted copy took 0.1 ms of every click."""
    weight, bias = conv.weight, conv.bias
    cin, cout = weight.shape[:2]

    def made() -> tuple[torch.Tensor, torch.Tensor]:
        return weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), bias.repeat(4)

    if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad):
        return made()
    # (``module.to`` swaps a parameter's data without a new version: its address says so)
    state = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in (weight, bias))
    kept = getattr(conv, "_as_matrix", None)
    if kept is None or kept[0] is not weight or kept[1] is not bias or kept[2] != state:
        with torch.inference_mode(False), torch.no_grad():   # plain tensors: usable in and out of inference mode
            kept = (weight, bias, state, *made())
        conv._as_matrix = kept
    return kept[3], kept[4]


UPSCALE_ROWS = 512   # image rows per CPU pass of upscale_masks: its intermediates stay in a core's cache


def folded_weights(norms: list[nn.LayerNorm], conv: nn.ConvTranspose2d) -> torch.Tensor | None:
    """The first transposed convolution's C×(4·C/4) matrix with every block's final LayerNorm
    scale folded in (rows times the product of their weights): what :class:`FoldedDeconv` needs
    the image rows multiplied by once per image. None when a norm has no weight."""
    if any(n.weight is None or n.bias is None for n in norms):
        return None
    w, _ = _deconv_weights(conv)
    scale = torch.ones_like(norms[0].weight)
    for n in norms:
        scale = scale * n.weight
    return scale[:, None] * w


class FoldedDeconv:
    """The upscaling's first product (the decoder's final image rows times the first transposed
    convolution's matrix, plus its bias) made from how those rows came about, not from the rows.

    Each two-way block ends with rows X_k = X_{k-1}' + A_k·V_k (its image-to-token attention: A_k
    the N×(heads·tokens) weights, V_k the tokens' values through the out projection) and a
    LayerNorm, X_k' = r_k ⊙ (X_k − μ_k) ⊙ γ_k + β_k. The per-row mean μ and inverse spread r are
    scalars, so for any matrix H, X_k'·H = r_k ⊙ (X_{k-1}'·(γ_k H) + A_k·(V_k γ_k H) − μ_k·1ᵀ(γ_k H)) +
    β_k H: unrolled down to the image's own rows X_0, whose product with the folded matrix is made
    once per image (``base``, see :func:`folded_weights`), the click's part is a product of the N
    rows with heads·tokens columns per block (2·56 for a click) instead of with C = 256: less than
    half the multiply-adds. The same values, float rounding apart.

    ``steps``: per block in order, (A B×N×m, V B×m×C, μ B×N×1, r B×N×1, the LayerNorm). ``base``:
    B×N×C' image rows times :func:`folded_weights`. Rows are taken as the h×w grid ``hw``.
    """

    def __init__(self, base: torch.Tensor, steps: list[tuple], conv: nn.ConvTranspose2d,
                 hw: tuple[int, int]) -> None:
        h, _ = _deconv_weights(conv)
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []   # (B×N×m rows, B×m×C' matrix)
        small: list[tuple[torch.Tensor, torch.Tensor]] = []   # (B×N×1 rows, C' row)
        rho = const = None
        for weights, values, mean, rstd, norm in reversed(steps):
            if const is None:   # the last block's shift stays outside every scale
                const = upscale_constant(norm, conv)
            else:               # an earlier block: what came after is inside its scale
                sigma = rstd.reciprocal()
                pairs = [(rows * sigma, mat) for rows, mat in pairs]
                small = [(rows * sigma, vec) for rows, vec in small] + [(sigma, norm.bias @ h)]
            gh = norm.weight[:, None] * h
            pairs.append((weights, values @ gh))
            small.append((-mean, gh.sum(0)))
            rho = rstd if rho is None else rho * rstd
            h = gh
        self.base, self.pairs, self.rho, self.const, self.hw = base, pairs, rho, const, hw
        self.small_rows = torch.cat([r for r, _ in small], dim=-1)            # B×N×s
        self.small_mat = torch.stack([v for _, v in small])                   # s×C'

    def rows(self, r: slice | None = None, k: slice | None = None, shift: torch.Tensor | None = None
             ) -> torch.Tensor:
        """B×n×C': the product for the grid's rows ``r`` and columns ``k`` (all when None), in the
        order of the grid's cells there. ``shift``: B×n×C' to add instead of the product's constant
        part (:func:`upscale_constant`), which it holds already (SAM 2.1's high-resolution features
        plus that constant, made once per image: a pass over the product fewer a click)."""
        gh, gw = self.hw

        def part(t: torch.Tensor) -> torch.Tensor:
            if r is None and k is None:
                return t
            g = t.reshape(t.shape[0], gh, gw, t.shape[-1])[:, r or slice(None), k or slice(None)]
            return g.reshape(t.shape[0], -1, t.shape[-1])

        out = None
        for rows, mat in self.pairs:
            out = torch.baddbmm(part(self.base), part(rows), mat) if out is None else out.baddbmm_(part(rows), mat)
        out.baddbmm_(part(self.small_rows), self.small_mat.expand(out.shape[0], -1, -1))
        # (scale and shift in one pass)
        return torch.addcmul(self.const if shift is None else shift, out, part(self.rho), out=out)


def upscale_constant(norm: nn.LayerNorm, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """The constant part of :class:`FoldedDeconv`'s product, C' (the last block's norm bias through
    the first transposed convolution, plus its bias), in the columns' order (2×2 position, then
    channel)."""
    w, b = _deconv_weights(conv)
    return norm.bias @ w + b


def upscale_masks(keys: torch.Tensor, hw: tuple[int, int], upscaling: nn.Sequential, hyper: torch.Tensor,
                  skip1: torch.Tensor | None = None, skip0: torch.Tensor | None = None,
                  first: torch.Tensor | None = None, skip0_biased: bool = False) -> torch.Tensor:
    """The decoder's ending: image rows B×(h·w)×C through ``upscaling`` (transposed conv, LayerNorm2d,
    GELU, transposed conv, GELU: 4× the side), each mask token's B×K×C/8 weights over the result →
    B×K×4h×4w logits.

    The same arithmetic as running the 2×2 transposed convolutions on the map, done as matrix
    products on rows kept in block order (position, then its 2×2, then the next 2×2), so no step
    transposes the 16 MiB of features; only the K masks are put back in raster order at the end.
    The rows go through in passes of :data:`UPSCALE_ROWS`, whose intermediates (1 MiB) stay in
    cache instead of streaming 40 MiB through memory. ``skip1`` / ``skip0``: SAM 2.1's
    high-resolution features, added after each convolution, in that block order (:func:`block_order`).
    ``first``: the first convolution's output for these rows (B×n×(4·C/4), :class:`FoldedDeconv`),
    made already; ``keys`` then only gives the shape. ``skip0_biased``: ``skip0`` holds the second
    convolution's bias already (made once per image): it is then the product's starting value, one
    pass over the features fewer a click.
    """
    dc1, ln1, act1, dc2, act2 = upscaling
    (b, n, _), (h, w), k = keys.shape, hw, hyper.shape[1]
    w1, b1 = _deconv_weights(dc1) if first is None else (None, None)   # (a folded first product: made)
    w2, b2 = _deconv_weights(dc2)
    c4, c8 = dc1.weight.shape[1], w2.shape[1] // 4
    # Mask-major (B×K×rows): the K weights times each pass's features transposed is a product of K
    # long rows, which BLAS does at twice the speed of rows×K with K = 3 columns.
    # MKL multiplies three rows by a long matrix at about half the speed of four: three masks get
    # a fourth row of zero weights, dropped at the end.
    rows = k + 1 if k == 3 and keys.device.type == "cpu" else k
    if rows != k:
        hyper = torch.cat([hyper, hyper.new_zeros(b, rows - k, hyper.shape[2])], dim=1)
    out = keys.new_empty((b, rows, n * 16))
    step = UPSCALE_ROWS if keys.device.type == "cpu" else n   # a GPU wants one big pass, not eight launches
    for i in range(b):
        for s in range(0, n, step):
            e = min(n, s + step)
            x = (torch.addmm(b1, keys[i, s:e], w1) if first is None else first[i, s:e]).view(-1, 2, 2, c4)
            if skip1 is not None:
                x += skip1[i, s:e]
            x = act1(F.layer_norm(x, (c4,), ln1.weight, ln1.bias, ln1.eps))
            if skip0 is not None and skip0_biased:
                x = torch.addmm(skip0[i, 4 * s:4 * e].view(-1, 4 * c8), x.view(-1, c4), w2).view(-1, 2, 2, c8)
            else:
                x = torch.addmm(b2, x.view(-1, c4), w2).view(-1, 2, 2, c8)
                if skip0 is not None:
                    x += skip0[i, 4 * s:4 * e]
            torch.mm(hyper[i], act2(x).view(-1, c8).t(), out=out[i, :, 16 * s:16 * e])
    # Back to raster order by a gather: the 8-axis permute moves runs of two floats and costs
    # several times more (about 1 ms for three masks on a CPU).
    raster = out[:, :k].reshape(b * k, n * 16).index_select(1, _raster_index(h, w, str(keys.device)))
    return raster.view(b, k, 4 * h, 4 * w)


def upscale_masks_first(keys: torch.Tensor, hw: tuple[int, int], upscaling: nn.Sequential, hyper: torch.Tensor,
                        first: tuple[int, int], folded: FoldedDeconv | None = None
                        ) -> tuple[torch.Tensor, Callable[[], None] | None]:
    """:func:`upscale_masks` in two parts: the masks over the top-left ``first`` = (rows, columns)
    of the h×w grid now, the rest when the returned callable is called (None: nothing left).
    Returns the B×K×4h×4w logits, whose part outside the first 4·rows × 4·columns is not written
    until then.

    Every step of the upscaling is local to a grid cell (2×2 stride-2 transposed convolutions, a
    per-pixel LayerNorm and GELU, a per-pixel mask product), so each part's values are the same as
    the whole's. SAM pads a non-square image at the bottom or right: the masks at the image's size
    read only the logits over the image, the padding's logits only feed the next click's mask
    input. ``first`` must span the whole width or the whole height. ``folded``: the first
    convolution made the folded way (:class:`FoldedDeconv`, for these rows)."""
    (h, w), (rows, cols) = hw, first
    if rows >= h and cols >= w:
        return upscale_masks(keys, hw, upscaling, hyper, first=None if folded is None else folded.rows()), None
    if rows < h and cols < w:
        raise ValueError(f"the first part {first} must span the whole width or height of {hw}")
    b, _, c = keys.shape
    out = keys.new_empty((b, hyper.shape[1], 4 * h, 4 * w))
    grid = keys.view(b, h, w, c)

    def part(r: slice, k: slice) -> None:
        sub = grid[:, r, k]
        hh, ww = sub.shape[1:3]
        out[..., 4 * r.start:4 * r.stop, 4 * k.start:4 * k.stop] = upscale_masks(
            sub.reshape(b, hh * ww, c), (hh, ww), upscaling, hyper, first=None if folded is None else folded.rows(r, k))

    if rows < h:   # whole rows: the first part's rows are one contiguous run of the keys
        now, later = (slice(0, rows), slice(0, w)), (slice(rows, h), slice(0, w))
    else:
        now, later = (slice(0, h), slice(0, cols)), (slice(0, h), slice(cols, w))
    part(*now)
    return out, functools.partial(part, *later)


@functools.lru_cache(maxsize=8)
def _raster_index(h: int, w: int, device: str) -> torch.Tensor:
    """For each pixel of a 4h×4w raster, its place in :func:`upscale_masks`'s block order."""
    with torch.inference_mode(False), torch.no_grad():   # a plain tensor: cached across modes
        order = torch.arange(h * w * 16).view(h, w, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1)
    return order.to(device)


def block_order(feature: torch.Tensor, levels: int) -> torch.Tensor:
    """A B×C×(2ˡh)×(2ˡw) map (l = ``levels``, 1 or 2) in the row order of :func:`upscale_masks`."""
    b, c, hh, ww = feature.shape
    h, w = hh >> levels, ww >> levels
    if levels == 1:
        x = feature.view(b, c, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)
    else:
        x = feature.view(b, c, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    return x.reshape(b, -1, 2, 2, c).contiguous()
