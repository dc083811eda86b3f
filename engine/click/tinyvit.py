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

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and bias with the BatchNorm's running statistics folded in."""
        c, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        # Inference: BatchNorm folded into the convolution, which saves a pass over the activations.
        return F.conv2d(x, *self.folded(), self.c.stride, self.c.padding, self.c.dilation, self.c.groups)


# At inference every stage runs in bands of rows: stage 0 and the merges, the attention one row of
# windows at a time, the MLPs. Their full-size intermediates (up to 256 channels × 256 × 256 at
# 1024², 64 MiB) would be fresh allocations on every image: a worker thread's allocator maps anything
# that large from the system, and touching its new pages cost more than the arithmetic on them (about
# 100 000 page faults an image on the 2-core machine; about 4 000 in bands). A band
# of about 2 MiB is reused from the allocator's free lists and stays in the cache between the steps.
# Every output row reads the same inputs with the same weights: at 1024² the embedding is the
# whole-image computation's bit for bit (tests: equal to float rounding at other sizes and bands).
BAND_BYTES = 2 << 20


def _band_rows(channels: int, width: int) -> int:
    return max(2, BAND_BYTES // (4 * channels * width))


def _conv3_rows(x: torch.Tensor, first: int, total: int, conv: "Conv2dBN", r0: int, r1: int,
                weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Rows ``r0:r1`` of ``conv`` (3×3, padding 1) over a tensor of ``total`` rows, from ``x``, which holds
    its rows ``first:first + x.shape[2]`` (at least those the output rows read)."""
    s = conv.c.stride[0]
    need0, need1 = s * r0 - 1, s * (r1 - 1) + 2          # the input rows the output rows read
    lo, hi = max(need0, 0), min(need1, total)
    x = x[:, :, lo - first:hi - first]
    if lo > need0 or hi < need1:                          # the zero padding at the top or bottom edge
        x = F.pad(x, (0, 0, lo - need0, need1 - hi))
    return F.conv2d(x, weight, bias, conv.c.stride, (0, 1), 1, conv.c.groups)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of a channels-last N×C×H×W tensor through its N×H×W×C view. PyTorch's CPU GELU takes a
    scalar path on channels-last tensors, slower than its vectorised one and a rounding away from the
    authors' (who run these stages on ordinary contiguous tensors, which take the vectorised path)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


def _in_bands(rows: int, band: int, make) -> torch.Tensor:
    """``make(r0, r1)`` for consecutive bands of output rows, joined along the rows."""
    return torch.cat([make(r0, min(r0 + band, rows)) for r0 in range(0, rows, band)], dim=2)


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 convolutions: the image at 1/4 resolution."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(cin, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.seq(x)
        conv1, conv2 = self.seq[0], self.seq[2]
        (w1, b1), (w2, b2) = conv1.folded(), conv2.folded()
        h, w = x.shape[2], x.shape[3]
        mid = (h + 1) // 2                                 # rows after the first convolution, then the second
        out = (mid + 1) // 2

        def band(r0: int, r1: int) -> torch.Tensor:
            m0, m1 = max(2 * r0 - 1, 0), min(2 * r1, mid)   # the first convolution's rows the band reads
            y = _gelu(_conv3_rows(x, 0, h, conv1, m0, m1, w1, b1))
            return _conv3_rows(y, m0, mid, conv2, r0, r1, w2, b2)

        return _in_bands(out, _band_rows(conv1.c.out_channels, (w + 1) // 2) // 2, band)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, then GELU after the residual sum."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)   # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
            return F.gelu(self.conv3(y) + x)
        (w1, b1), (w2, b2), (w3, b3) = self.conv1.folded(), self.conv2.folded(), self.conv3.folded()
        h = x.shape[2]

        def band(r0: int, r1: int) -> torch.Tensor:
            e0, e1 = max(r0 - 1, 0), min(r1 + 1, h)          # the expanded rows the depthwise reads
            y = _gelu(F.conv2d(x[:, :, e0:e1], w1, b1))
            y = _gelu(_conv3_rows(y, e0, h, self.conv2, r0, r1, w2, b2))
            return _gelu(F.conv2d(y, w3, b3) + x[:, :, r0:r1])

        return _in_bands(h, _band_rows(self.conv1.c.out_channels, x.shape[3]), band)


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
        if self.training:
            return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x))))).permute(0, 2, 3, 1)
        (w1, b1), (w2, b2), (w3, b3) = self.conv1.folded(), self.conv2.folded(), self.conv3.folded()
        h, s = x.shape[2], self.conv2.c.stride[0]

        def band(r0: int, r1: int) -> torch.Tensor:
            e0, e1 = max(s * r0 - 1, 0), min(s * (r1 - 1) + 2, h)
            y = _gelu(F.conv2d(x[:, :, e0:e1], w1, b1))
            return F.conv2d(_gelu(_conv3_rows(y, e0, h, self.conv2, r0, r1, w2, b2)), w3, b3)

        rows = (h - 1) // s + 1
        return _in_bands(rows, max(1, _band_rows(self.conv1.c.out_channels, x.shape[3]) // s), band
                         ).permute(0, 2, 3, 1)


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

    def bias(self) -> torch.Tensor:
        """heads × window² × window²: the learned bias of every pair of positions."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:   # B×N×C, N = window²
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=3)
        bias = (self.bias() if bias is None else bias).to(q.dtype)
        # Written out as the authors write it: with a float mask, PyTorch's CPU attention takes a path
        # that checks the mask for -inf rows on every call, and is slower than these three steps.
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(self.key_dim ** -0.5).add_(bias)
        out = torch.matmul(scores.softmax(-1), v)
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
        x = self.attn(win).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w] if (pad_b or pad_r) else x

    def _attention_in_bands(self, x: torch.Tensor) -> torch.Tensor:
        """``x + _windowed(x)`` one row of windows at a time (about 2 MiB of q, k and v in each stage
        at 1024²), for the reason stage 0 runs in bands; the sum is written straight into the output."""
        b, h, w, c = x.shape
        ws = self.window
        pad_r = (ws - w % ws) % ws
        nw = (w + pad_r) // ws
        bias = self.attn.bias()
        out = torch.empty_like(x)
        for r0 in range(0, h, ws):
            r1 = min(r0 + ws, h)
            band = x[:, r0:r1]
            if pad_r or r1 - r0 < ws:
                band = F.pad(band, (0, 0, 0, pad_r, 0, ws - (r1 - r0)))
            win = band.view(b, ws, nw, ws, c).transpose(1, 2).reshape(b * nw, ws * ws, c)
            y = self.attn(win, bias).view(b, nw, ws, ws, c).transpose(1, 2).reshape(b, ws, nw * ws, c)
            torch.add(x[:, r0:r1], y[:, :r1 - r0, :w], out=out[:, r0:r1])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + self._windowed(x)
            x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return x + self.mlp(x)
        x = self._attention_in_bands(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # The MLP is per position: in bands of rows, added in place to the convolution's output (ours).
        for part in x.split(_band_rows(self.mlp.fc1.out_features, x.shape[2]), dim=1):
            part.add_(self.mlp(part))
        return x


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
