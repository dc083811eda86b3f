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

__all__ = ["UPSCALE_ROWS", "block_order", "upscale_masks", "upscale_masks_first"]


def _deconv_weights(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2×2, stride-2 transposed convolution as a Cin×(2·2·Cout) matrix and its bias: each input
    position becomes its 2×2 output block (row i, column j of the block, then the channels)."""
    cin, cout = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), conv.bias.repeat(4)


UPSCALE_ROWS = 512   # image rows per CPU pass of upscale_masks: its intermediates stay in a core's cache


def upscale_masks(keys: torch.Tensor, hw: tuple[int, int], upscaling: nn.Sequential, hyper: torch.Tensor,
                  skip1: torch.Tensor | None = None, skip0: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder's ending: image rows B×(h·w)×C through ``upscaling`` (transposed conv, LayerNorm2d,
    GELU, transposed conv, GELU: 4× the side), each mask token's B×K×C/8 weights over the result →
    B×K×4h×4w logits.

    The same arithmetic as running the 2×2 transposed convolutions on the map, done as matrix
    products on rows kept in block order (position, then its 2×2, then the next 2×2), so no step
    transposes the 16 MiB of features; only the K masks are put back in raster order at the end.
    The rows go through in passes of :data:`UPSCALE_ROWS`, whose intermediates (1 MiB) stay in
    cache instead of streaming 40 MiB through memory. ``skip1`` / ``skip0``: SAM 2.1's
    high-resolution features, added after each convolution, in that block order (:func:`block_order`).
    """
    dc1, ln1, act1, dc2, act2 = upscaling
    (b, n, _), (h, w), k = keys.shape, hw, hyper.shape[1]
    w1, b1 = _deconv_weights(dc1)
    w2, b2 = _deconv_weights(dc2)
    c4, c8 = w1.shape[1] // 4, w2.shape[1] // 4
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
            x = torch.addmm(b1, keys[i, s:e], w1).view(-1, 2, 2, c4)
            if skip1 is not None:
                x += skip1[i, s:e]
            x = act1(F.layer_norm(x, (c4,), ln1.weight, ln1.bias, ln1.eps))
            x = torch.addmm(b2, x.view(-1, c4), w2).view(-1, 2, 2, c8)
            if skip0 is not None:
                x += skip0[i, 4 * s:4 * e]
            torch.mm(hyper[i], act2(x).view(-1, c8).t(), out=out[i, :, 16 * s:16 * e])
    # Back to raster order by a gather: the 8-axis permute moves runs of two floats and costs
    # several times more (about 1 ms for three masks on a CPU).
    raster = out[:, :k].reshape(b * k, n * 16).index_select(1, _raster_index(h, w, str(keys.device)))
    return raster.view(b, k, 4 * h, 4 * w)


def upscale_masks_first(keys: torch.Tensor, hw: tuple[int, int], upscaling: nn.Sequential, hyper: torch.Tensor,
                        first: tuple[int, int]) -> tuple[torch.Tensor, Callable[[], None] | None]:
    """:func:`upscale_masks` in two parts: the masks over the top-left ``first`` = (rows, columns)
    of the h×w grid now, the rest when the returned callable is called (None: nothing left).
    Returns the B×K×4h×4w logits, whose part outside the first 4·rows × 4·columns is not written
    until then.

    Every step of the upscaling is local to a grid cell (2×2 stride-2 transposed convolutions, a
    per-pixel LayerNorm and GELU, a per-pixel mask product), so each part's values are the same as
    the whole's. SAM pads a non-square image at the bottom or right: the masks at the image's size
    read only the logits over the image, the padding's logits only feed the next click's mask
    input. ``first`` must span the whole width or the whole height."""
    (h, w), (rows, cols) = hw, first
    if rows >= h and cols >= w:
        return upscale_masks(keys, hw, upscaling, hyper), None
    if rows < h and cols < w:
        raise ValueError(f"the first part {first} must span the whole width or height of {hw}")
    b, _, c = keys.shape
    out = keys.new_empty((b, hyper.shape[1], 4 * h, 4 * w))
    grid = keys.view(b, h, w, c)

    def part(r: slice, k: slice) -> None:
        sub = grid[:, r, k]
        hh, ww = sub.shape[1:3]
        out[..., 4 * r.start:4 * r.stop, 4 * k.start:4 * k.stop] = upscale_masks(
            sub.reshape(b, hh * ww, c), (hh, ww), upscaling, hyper)

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
