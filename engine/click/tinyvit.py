"""MobileSAM: the TinyViT-5M image encoder in front of SAM's prompt encoder and mask decoder.

MobileSAM distils SAM ViT-H's encoder into a TinyViT (a convolutional first stage, then three stages
of windowed attention with a depthwise convolution between attention and MLP) and keeps SAM's
prompt encoder and mask decoder unchanged, so a file ``mobile_sam.pt`` is a bare state dict with
``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys, and the predictor's pre- and
post-processing are SAM's. The modules below keep the authors' module tree, so their state-dict keys
are the published file's keys, including the ImageNet classifier (``norm_head``, ``head``) that the
encoder never runs but the file carries.

Only inference is implemented: MobileSAM's encoder has no stochastic depth (rate 0), so there is no
DropPath, and BatchNorm always uses its running statistics in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ClickSpec, register_click_model
from .sam_parts import LayerNorm2d, Sam, build_sam_decoder_parts

__all__ = ["MOBILE_SAM_ENCODER", "TinyViT", "TinyViTConfig", "build_mobile_sam"]


@dataclass(frozen=True)
class TinyViTConfig:
    """A TinyViT's stages: stage 0 is convolutional (MBConv blocks), stages 1.. use attention."""
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000     # the unused ImageNet head the official file carries
    out_chans: int = 256        # the neck's output: SAM's image-embedding channels


MOBILE_SAM_ENCODER = TinyViTConfig()


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (keys ``c.*``, ``bn.*``)."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(cout)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        # Inference: BatchNorm folded into the convolution, which saves a pass over the activations
        # (the largest of the encoder: 256×256 positions in stage 0).
        c, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return F.conv2d(x, c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale,
                        c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 convolutions: the image at 1/4 resolution."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(cin, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, then GELU after the residual sum."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)   # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1×1, depthwise 3×3 (stride 2), 1×1. Takes N×C×H×W, returns channels-last N×H×W×C'.

    MobileSAM keeps 1/16 resolution for the last stage: the merge into a 320-, 448- or 576-channel
    stage (its widths) does not downsample."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.permute(0, 2, 3, 1)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on N×C×H×W, then a merge."""

    def __init__(self, dim: int, depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Multi-head self-attention within one window, pre-normalised, with a learned bias per head for
    every (|dy|, |dx|) offset between two positions of the window (LeViT's attention bias).

    The authors number the offsets in order of first appearance over all pairs of positions; the
    first position (0, 0) already meets every offset, in row-major order, so offset (dy, dx) is
    column ``dy * window + dx`` of ``attention_biases``."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        # q, k and v of each head lie side by side: head h's channels are [q_h, k_h, v_h].
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        idx = (ys[:, None] - ys[None]).abs() * window + (xs[:, None] - xs[None]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # B×N×C, N = window²
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise convolution linking the windows, an MLP; on N×H×W×C."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x.reshape(b, h * w, c)).view(b, h, w, c)
        # Zero padding to whole windows, as the authors do: the padded positions take part in the
        # attention as keys (normalised zeros), which the published weights were trained with.
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        win = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        win = self.attn(win)
        x = win.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w] if (pad_b or pad_r) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage on N×H×W×C, then (except the last stage) a merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        return x


class TinyViT(nn.Module):
    """1×3×S×S normalised image → 1×256×(S/16)×(S/16) embedding (S = 1024 for MobileSAM).

    The authors' code fixes each stage's resolution at construction (a 64×64 output); these modules
    take the size from the input instead, so any side divisible by 32 works."""

    def __init__(self, cfg: TinyViTConfig = MOBILE_SAM_ENCODER, in_chans: int = 3) -> None:
        super().__init__()
        dims, n = cfg.embed_dims, len(cfg.embed_dims)
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            out_dim = dims[i + 1] if i < n - 1 else None
            if i == 0:
                self.layers.append(ConvLayer(dims[0], cfg.depths[0], dims[1], cfg.mbconv_expand_ratio))
            else:
                self.layers.append(BasicLayer(dims[i], cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i],
                                              cfg.mlp_ratio, cfg.local_conv_size, out_dim))
        # The ImageNet classifier of TinyViT's pre-training: in the published file, never run here.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], cfg.num_classes)
        self.apply(self._init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, 1, bias=False), LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False), LayerNorm2d(cfg.out_chans))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The authors' initialisation, so that a model built with random weights behaves like theirs.
        if isinstance(m, nn.Linear):
            # Truncation at ±2 is ~100 std away: a clamp is the same. (nn.init.trunc_normal_ resamples in a
            # loop, which never ends when the loader's SkipRandomInit makes normal_ a no-op.)
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0.0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last memory throughout: the convolutions run faster on it, and the attention
        # stages' N×H×W×C tensors are then plain views of the convolutions' outputs.
        x = self.layers[0](self.patch_embed(x.contiguous(memory_format=torch.channels_last)))
        for layer in self.layers[1:]:
            x = layer(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_mobile_sam() -> Sam:
    """MobileSAM with random weights: TinyViT-5M, then SAM's prompt encoder and mask decoder."""
    prompt_encoder, mask_decoder = build_sam_decoder_parts()
    return Sam("mobile_sam", TinyViT(MOBILE_SAM_ENCODER), prompt_encoder, mask_decoder)


register_click_model(ClickSpec(
    "mobile_sam", "sam", build_mobile_sam,
    description="MobileSAM: TinyViT-5M image encoder distilled from SAM ViT-H, with SAM's decoder (mobile_sam.pt)"))
