"""SAM ViT-B/L/H: the image encoder (a plain ViT with windowed and global attention, decomposed
relative positions and a convolutional neck) and the three models' registrations.

Names follow segment-anything's ``ImageEncoderViT`` key for key, so ``sam_vit_b_01ec64.pth`` and its
siblings load unchanged. The prompt side and the :class:`~engine.click.sam_parts.Sam` container are
in ``sam_parts.py`` (MobileSAM shares them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ClickSpec, register_click_model
from .sam_parts import PROMPT_DIM, LayerNorm2d, MLPBlock, Sam, build_sam_decoder_parts

__all__ = ["SAM_VIT_CONFIGS", "ImageEncoderViT", "SamViTConfig", "build_sam_vit"]


@dataclass(frozen=True)
class SamViTConfig:
    """One SAM size: the ViT's width, depth, heads and which blocks attend globally (the rest attend
    within 14×14 windows)."""
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    description: str = ""


SAM_VIT_CONFIGS = {
    "sam_vit_b": SamViTConfig(768, 12, 12, (2, 5, 8, 11), "SAM ViT-B (94 M parameters)"),
    "sam_vit_l": SamViTConfig(1024, 24, 16, (5, 11, 17, 23), "SAM ViT-L (312 M parameters)"),
    "sam_vit_h": SamViTConfig(1280, 32, 16, (7, 15, 23, 31), "SAM ViT-H (641 M parameters)"),
}


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B×H×W×C → (B·n×window×window×C windows, padded (Hp, Wp)); zero padding at bottom/right."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, pad_hw: tuple[int, int], hw: tuple[int, int]
                       ) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding (SAM's ViT and Hiera share both)."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if hp > h or wp > w else x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """q_size×k_size×C table of the embeddings for each query-key offset (linearly resampled when the
    stored table was made for another size)."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_dist,
                                mode="linear").reshape(-1, max_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


class Attention(nn.Module):
    """Multi-head self-attention over an H×W grid with decomposed relative positions (MViTv2): the
    bias of query (i, j) to key (k, l) is q·Rh[i-k] + q·Rw[j-l]."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)   # each B×heads×HW×d
        d = q.shape[-1]
        rq = q.reshape(b * self.num_heads, h, w, d)
        rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
        rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, self.num_heads, h * w, h * w)
        # The same softmax(q·kᵀ/√d + bias)·v as the authors' explicit product, through the fused kernel.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(b, self.num_heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size`` > 0 attends within windows, 0 across the grid."""

    def __init__(self, dim: int, num_heads: int, window_size: int, input_size: tuple[int, int],
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            x, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, pad_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)   # B×H×W×C


class ImageEncoderViT(nn.Module):
    """1×3×S×S normalised image → 1×256×(S/16)×(S/16) embedding: 16×16 patches plus an absolute
    position table, ``depth`` blocks, then a 1×1 and a 3×3 convolution each followed by LayerNorm2d."""

    def __init__(self, cfg: SamViTConfig, img_size: int = 1024, patch_size: int = 16, window_size: int = 14,
                 out_chans: int = PROMPT_DIM) -> None:
        super().__init__()
        self.img_size = img_size
        side = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, side, side, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, 0 if i in cfg.global_attn_indexes else window_size, (side, side))
            for i in range(cfg.depth))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_sam_vit(name: str) -> Sam:
    """``sam_vit_b``, ``sam_vit_l`` or ``sam_vit_h`` with random weights."""
    prompt_encoder, mask_decoder = build_sam_decoder_parts()
    return Sam(name, ImageEncoderViT(SAM_VIT_CONFIGS[name]), prompt_encoder, mask_decoder)


for _name, _cfg in SAM_VIT_CONFIGS.items():
    register_click_model(ClickSpec(name=_name, family="sam", builder=lambda n=_name: build_sam_vit(n),
                                   description=_cfg.description))
