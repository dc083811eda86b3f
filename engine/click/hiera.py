"""SAM 2.1's image encoder: the Hiera trunk and the FPN neck, key for key the authors' layout.

Hiera is a hierarchical ViT: a stride-4 patch embedding, then four stages whose first block halves the
resolution by max-pooling the attention queries ("q-pooling") and doubles the width. Most blocks attend
inside non-overlapping windows; a few named blocks attend globally. The position embedding is a small
"background" grid interpolated (bicubic) to the token grid plus one window-sized embedding tiled over
it. The FPN neck projects every stage to 256 channels and adds the nearest-upsampled coarser level to
the levels the config names. Pure PyTorch; parameter names equal the authors' modules'
(``image_encoder.trunk.*``, ``image_encoder.neck.*``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .sam import window_partition, window_unpartition
from .sam_decoder import MLP

__all__ = ["FpnNeck", "Hiera", "HieraConfig", "ImageEncoder", "sine_position_encoding"]


@dataclass(frozen=True)
class HieraConfig:
    """One Hiera size. The defaults are the authors' Hiera defaults (what a sam2.1_hiera_*.yaml
    leaves unset, e.g. most of base+)."""
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3                 # how many stage changes pool the queries
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def channel_list(self) -> list[int]:
        """Output widths of the four stages, coarsest first (the neck's ``backbone_channel_list``)."""
        return [int(self.embed_dim * self.dim_mul ** i) for i in range(len(self.stages))][::-1]


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a B×H×W×C map (channels last)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)   # channels last from here on


class MultiScaleAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_pool is not None:
            # Pooling only the queries shrinks the output grid while keys still see every token.
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float,
                 q_stride: tuple[int, int] | None, window_size: int) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window_size, self.q_stride = dim, dim_out, window_size, q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The widening block's shortcut is the projected, pooled normalised input.
            shortcut = _pool(self.proj(x), self.pool)
        window = self.window_size
        if window > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_stride:
            # q-pooling shrank every window; the grid to rebuild is the shortcut's.
            window = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            padded = (h + (window - h % window) % window, w + (window - w % window) % window)
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Returns the four stages' outputs (B×C×H×W), finest first."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[:i]) - 1 for i in range(1, len(cfg.stages) + 1)]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][:cfg.q_pool]
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))
        self.blocks = nn.ModuleList()
        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        for i in range(depth):
            # The window size lags a block: a stage's first block still uses the previous stage's.
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * cfg.dim_mul), int(heads * cfg.head_mul), stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, cfg.mlp_ratio,
                                               cfg.q_stride if i in q_pool_blocks else None, window))
            dim = dim_out

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile([p // q for p, q in zip(pos.shape, win.shape)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1:3])
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                outs.append(x.permute(0, 3, 1, 2))
        return outs


def sine_position_encoding(h: int, w: int, dim: int = 256, temperature: float = 10000.0,
                           device=None) -> torch.Tensor:
    """The neck's normalised sine position encoding of an h×w grid (1×dim×h×w): y features then x.

    Image mode never reads it (only video memory attention does), so the neck does not compute it;
    it is kept, checked against the authors' code, for anyone adding tracking."""
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(h, 1).expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, w).expand(h, w)
    y, x = y / (h + eps) * scale, x / (w + eps) * scale
    t = torch.arange(half, dtype=torch.float32, device=device)
    t = temperature ** (2 * (t // 2) / half)
    px, py = x[..., None] / t, y[..., None] / t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).permute(2, 0, 1)[None]


class FpnNeck(nn.Module):
    """1×1 convs to ``d_model`` per stage (``convs[0]`` takes the coarsest); levels in
    ``top_down_levels`` add the nearest-upsampled next-coarser output."""

    def __init__(self, d_model: int, channel_list: list[int], top_down_levels: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for dim in channel_list:
            seq = nn.Sequential()
            seq.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(seq)
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [None] * len(self.convs)   # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                # The authors upsample in float32 even under autocast; the sum then promotes.
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out


class ImageEncoder(nn.Module):
    """Trunk + neck; ``scalp`` coarsest levels are dropped from the output (SAM 2.1 drops one)."""

    def __init__(self, cfg: HieraConfig, d_model: int = 256, scalp: int = 1) -> None:
        super().__init__()
        self.trunk = Hiera(cfg)
        self.neck = FpnNeck(d_model, cfg.channel_list)
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.neck(self.trunk(x))
        return feats[:-self.scalp] if self.scalp > 0 else feats
