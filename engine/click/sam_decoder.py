"""SAM's mask decoder: the two-way transformer between the prompt tokens and the image embedding
and the mask decoder itself (shared by SAM, MobileSAM and, with its own heads, SAM 2.1), with the
layers they share (LayerNorm2d, MLPBlock, MLP); the output upscaling is in ``sam_upscale.py``.

Module and parameter names follow segment-anything's own modules key for key, so the authors' state
dicts load unchanged. Arithmetic follows theirs too, with products reordered where that is cheaper
(each place says why the values are the same).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .sam_upscale import UPSCALE_ROWS, FoldedDeconv, block_order, folded_weights, upscale_masks, upscale_masks_first

__all__ = [
    "MLP",
    "PROMPT_DIM",
    "FoldedDeconv",
    "UPSCALE_ROWS",
    "Attention",
    "ImageSide",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "NormedRows",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "block_order",
    "folded_deconv",
    "upscale_masks",
    "upscale_masks_first",
]

PROMPT_DIM = 256        # channels of the image embedding and of every prompt token


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an N×C×H×W map (eps 1e-6, as SAM's)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same (x - mean) / sqrt(biased var + eps) as the authors' step-by-step version, in one
        # fused pass over the channels-last view (several times faster on a CPU). Always in float32:
        # under autocast the convolutions before it give half precision, whose variance over 256
        # channels loses digits.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if x.shape[1] <= FEW_CHANNELS:
                # (a few channels, the mask encoder's 4 at 128×128: the authors' steps over the
                # channel axis take 0.12 ms where a norm over rows of 4 takes 0.74, on every click
                # with a mask prompt)
                u = x.mean(1, keepdim=True)
                xc = x - u
                s = (xc * xc).mean(1, keepdim=True)
                return xc * torch.rsqrt(s + self.eps) * self.weight.float()[:, None, None] \
                    + self.bias.float()[:, None, None]
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight.float(), self.bias.float(), self.eps)
        return y.permute(0, 3, 1, 2)


FEW_CHANNELS = 8   # LayerNorm2d: up to this many channels, per pixel over the channel axis


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))



# --------------------------------------------------------------------------- two-way transformer

def _bmm(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """torch.bmm / baddbmm, one batch as plain matrices: the CPU's bmm copies a transposed right
    operand first (BLAS takes it as it is)."""
    if a.shape[0] != 1:
        return torch.bmm(a, b) if base is None else torch.baddbmm(base, a, b)
    return (torch.mm(a[0], b[0]) if base is None else torch.addmm(base[0], a[0], b[0])).unsqueeze(0)


def _bmm_into(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``base`` += a·b in place (batched; ``base`` a fresh tensor of the caller's own): the product
    is added where it lies, where :func:`_bmm` with a base first copies the base to a new tensor
    (a pass over the heads' scores, 1 MiB, twice a click with a mask prompt)."""
    if a.shape[0] != 1:
        return base.baddbmm_(a, b)
    base[0].addmm_(a[0], b[0])
    return base


def _join_columns(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two B×N×· column blocks side by side, B×N×(m+k), made as the transpose of a contiguous
    B×(m+k)×N: the layout a block's attention weights come in (B×heads×n×N), so joining them is one
    contiguous copy, where joining their N×m view along its last axis gathered it element by
    element (0.5 ms a block)."""
    return torch.cat([left.transpose(1, 2), right.transpose(1, 2)], dim=1).transpose(1, 2)


@dataclass
class NormedRows:
    """A block's image rows after its LayerNorm, kept as how they came about instead of made:
    X' = r ⊙ (K0 + R·M) ⊙ γ + β, with K0 the image's own rows (whose products are made once per
    image, :attr:`ImageSide.nproj`), R·M the block's change less its per-row mean (R = [A | μ],
    B×N×(m+1): the image-to-token attention's weights and the mean; M = [V; −1], B×(m+1)×C: the
    tokens' values through the out projection), r the inverse spread (B×N×1) and γ, β the norm's
    weight and bias. A product a·X'ᵀ of a few rows a is then ((aγ)·K0ᵀ + ((aγ)·Mᵀ)·Rᵀ) ⊙ rᵀ + a·β,
    and a softmax-weighted sum w·X' is ((w⊙rᵀ)·K0 + ((w⊙rᵀ)·R)·M)·γ + β: products with m + 1 = 57
    columns where the plain way has 256 (see :meth:`Attention.normed_scores`)."""
    rstd: torch.Tensor
    rows: torch.Tensor
    mat: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @staticmethod
    def of(step: tuple) -> NormedRows:
        """From a block's FoldedDeconv step (weights, values, mean, inverse spread, norm)."""
        weights, values, mean, rstd, norm = step
        minus = values.new_full((values.shape[0], 1, values.shape[2]), -1.0)
        return NormedRows(rstd, _join_columns(weights, mean), torch.cat([values, minus], dim=1), norm.weight,
                          norm.bias)


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by ``downsample_rate``.

    Besides the plain ``forward``, the cross attentions between a few prompt tokens and the 4096
    image rows have their own paths. :meth:`tokens_to_image` and :meth:`image_to_tokens` compute
    the same softmax(q·kᵀ/√d)·v with the products associated the other way: the projection matrices
    are first applied to the handful of tokens, so the image rows are multiplied once by a
    C×(heads·tokens) matrix instead of being projected to the internal width and back. With 8 heads
    and a width of 128 that is cheaper while there are fewer than 16 tokens (a click with up to
    about ten points). The key bias of ``tokens_to_image`` adds one constant per query row, to which
    softmax is blind, so it drops out exactly; the value bias passes through unchanged because each
    softmax row sums to one. The ``projected_*`` variants take the image side's projections already
    made (per image, see :class:`ImageSide`), in heads layout B×heads×N×d.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide the attention's internal width")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """B×heads×n×d → the out projection of B×n×(heads·d)."""
        b, h, n, d = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._merge(F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))))

    def _few(self, tokens: int) -> bool:
        return self.num_heads * tokens < self.internal_dim

    def _split(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection to the internal width as heads×d×C weights and heads×d biases."""
        return linear.weight.view(self.num_heads, -1, linear.in_features), linear.bias.view(self.num_heads, -1)

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor | None = None,
                        pe_k: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for few queries (B×n×C tokens) over many keys and values (B×N×C image rows).
        With ``pe`` the keys are ``k`` + ``pe`` (B×N×C), and ``pe_k`` may give the key projection
        of ``pe`` (:meth:`pe_projection`)."""
        b, n, c = q.shape
        if not self._few(n):
            return self.forward(q, k if pe is None else k + pe, v)
        h = self.num_heads
        wk, _ = self._split(self.k_proj)                                   # h×d×C
        wv, bv = self._split(self.v_proj)
        d = wk.shape[1]
        qh = self._heads(self.q_proj(q)) * d ** -0.5                        # B×h×n×d
        a = torch.einsum("bhnd,hdc->bhnc", qh, wk).reshape(b, h * n, c)     # queries in image channels
        attn = torch.softmax(self._scores(a, k, pe, qh, pe_k), dim=-1)                                # B×(h·n)×N
        ctx = (attn @ v).view(b, h, n, c)                                   # attended image rows
        return self._merge(torch.einsum("bhnc,hdc->bhnd", ctx, wv) + bv[:, None, :])

    def pe_projection(self, linear: nn.Linear, pe: torch.Tensor) -> torch.Tensor:
        """``linear``'s weights (a projection to the internal width) times the positional encoding's
        1×N×C rows: heads×d×N, made once per image with its prepared rows (see
        :meth:`tokens_to_image`'s ``pe_k``)."""
        w, _ = self._split(linear)
        return w @ pe[0].t()

    def _scores(self, a: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor | None, ph: torch.Tensor,
                pe_proj: torch.Tensor | None, base: torch.Tensor | None = None) -> torch.Tensor:
        """B×(h·n)×N scores a·(keys + pe)ᵀ (+ ``base``) of the heads-layout B×h×n×d rows ``ph`` whose
        image-channel form is ``a`` (B×(h·n)×C); no ``pe``: a·keysᵀ. With ``pe_proj``
        (:meth:`pe_projection`) the encoding's part is ph·pe_proj, a product over d = 16 instead of
        a sum of two 4 MiB maps first (the same values, float rounding apart)."""
        b, hn, _ = a.shape
        if pe is None or pe_proj is None:
            k = keys if pe is None else keys + pe
            scores = torch.bmm(a, k.transpose(1, 2))
            return scores if base is None else scores.add_(base)
        part = torch.matmul(ph, pe_proj).reshape(b, hn, -1)
        if base is not None:
            part += base
        return torch.baddbmm(part, a, keys.transpose(1, 2))

    def normed_scores(self, ph: torch.Tensor, a: torch.Tensor, own: torch.Tensor, chain: list[NormedRows],
                      pe_proj: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`_scores` over rows X' + pe given as ``chain`` (:class:`NormedRows`, the first over
        the image's own rows K0, each later one over the rows the one before gives), not made:
        ``a`` the B×(h·n)×C rows in image channels (a = ph·W per head), ``ph`` their heads form
        B×h×n×d, ``own`` K0 through (the chain's γs)⊙W (B×h×N×d, made once per image),
        ``pe_proj`` the encoding through W (h×d×N). Level k: S_k = (S_{k-1} + (a_k γ_k·M_kᵀ)·R_kᵀ)
        ⊙ r_kᵀ + a_k·β_k with a_k = a times the γs of the levels after k, S_0 = (a·Πγ)·K0ᵀ =
        ph·ownᵀ: products over d = 16 and m + 1 = 57 columns instead of C = 256 (the same values,
        float rounding apart). (A mask prompt's dense embedding is part of the first level's change,
        see :attr:`ImageSide.dense`.)"""
        b, hn, _ = a.shape
        outer, g = [], a
        for rows in reversed(chain):          # a_k, from the last level in
            outer.append(g)
            g = g * rows.weight
        scores = torch.matmul(ph, own.transpose(-1, -2)).view(b, hn, -1)
        for rows, ak in zip(chain, reversed(outer)):
            scores = _bmm(_bmm(ak * rows.weight, rows.mat.transpose(1, 2)), rows.rows.transpose(1, 2), scores)
            scores.mul_(rows.rstd.transpose(1, 2)).add_((ak @ rows.bias).unsqueeze(-1))
        scores.add_(torch.matmul(ph, pe_proj).view(b, hn, -1))
        return scores if base is None else scores.add_(base)

    def normed_tokens_to_image(self, q: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor,
                               chain: list[NormedRows], pe_k: torch.Tensor) -> torch.Tensor:
        """:meth:`tokens_to_image` for few queries (B×n×C) over image rows X' (keys X' plus the
        encoding, values X') given as ``chain`` (see :meth:`normed_scores`); ``own_k``, ``own_v``:
        K0 through the chain's γs times the key and value projections (B×h×N×d), ``pe_k`` the
        encoding's key projection. The softmax weights w (rows summing to one) give, level by
        level from the last, w·X_k' = γ_k⊙((w_k⊙r_kᵀ)·X_{k-1}' + ((w_k⊙r_kᵀ)·R_k)·M_k) + (w_k·1)β_k."""
        b, n, c = q.shape
        h = self.num_heads
        wk, _ = self._split(self.k_proj)
        wv, bv = self._split(self.v_proj)
        qh = self._heads(self.q_proj(q)) * wk.shape[1] ** -0.5                # B×h×n×d
        a = torch.einsum("bhnd,hdc->bhnc", qh, wk).reshape(b, h * n, c)
        w = torch.softmax(self.normed_scores(qh, a, own_k, chain, pe_k), dim=-1)
        total, scale = chain[-1].bias, None   # in image channels; scale: the γs of the levels done
        for k, rows in enumerate(reversed(chain)):
            if k:   # an earlier level: its shift weighs by w_k·1 (the rows no longer sum to one)
                total = total + w.sum(-1, keepdim=True) * (rows.bias if scale is None else rows.bias * scale)
            scale = rows.weight if scale is None else rows.weight * scale
            w = w * rows.rstd.transpose(1, 2)                                 # w_{k-1} = w_k ⊙ r_kᵀ
            total = total + _bmm(_bmm(w, rows.rows), rows.mat) * scale
        out = torch.matmul(w.view(b, h, n, -1), own_v)                        # w_0·K0·(Πγ⊙Wv)ᵀ
        out += torch.einsum("bhnc,hdc->bhnd", total.expand(b, h * n, c).reshape(b, h, n, c), wv)
        return self._merge(out + bv[:, None, :])

    def projected_tokens_to_image(self, q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
                                  dense: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``forward`` with the keys and values already projected (B×heads×N×d). ``dense``: (R B×N×k,
        M B×k×C), the image rows' change R·M that ``kp`` and ``vp`` were not made with (a mask
        prompt's, :attr:`ImageSide.dense`): its part of the scores is (qh·(M·Wk)ᵀ)·Rᵀ and of the
        output (w·R)·(M·Wv), products with k = 17 columns instead of remaking the projections."""
        qh = self._heads(self.q_proj(q)) * kp.shape[-1] ** -0.5
        scores = qh @ kp.transpose(-1, -2)                                  # B×h×n×N
        if dense is None:
            return self._merge(torch.softmax(scores, dim=-1) @ vp)
        r, m = dense
        b, h, n, big = scores.shape
        mk = self._heads(m @ self.k_proj.weight.t())                        # B×h×k×d
        scores = _bmm_into(scores.view(b, h * n, big), (qh @ mk.transpose(-1, -2)).reshape(b, h * n, -1),
                           r.transpose(1, 2)).view(b, h, n, big)
        w = torch.softmax(scores, dim=-1)
        out = w @ vp + _bmm(w.view(b, h * n, big), r).view(b, h, n, -1) @ self._heads(m @ self.v_proj.weight.t())
        return self._merge(out)

    def _weigh_tokens(self, attn: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None,
                      stash: list | None = None, dense: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """B×heads×n×N attention of N image rows over n tokens (softmax taken), token values B×n×C →
        B×N×C (plus ``residual``): each head's values are first carried through the out projection
        (heads·n rows). Each head's weights of a row sum to one, so adding a heads-th of the out
        bias to every head's rows adds the bias once. ``stash``: gets (the B×N×(heads·n) weights,
        the B×(heads·n)×C values), whose product is what is added (see FoldedDeconv). ``dense``: (R
        B×N×k, M B×k×C), a change of the rows not yet in ``residual`` (a mask prompt's,
        :attr:`ImageSide.dense`): added in the same product, as k more columns of the weights."""
        b, h, n, big = attn.shape
        vh = self._heads(self.v_proj(v))                                    # B×h×n×d
        vo = torch.einsum("bhnd,chd->bhnc", vh, self.out_proj.weight.view(-1, h, vh.shape[-1]))
        vo = (vo + self.out_proj.bias / h).reshape(b, h * n, -1)
        weights = attn.reshape(b, h * n, big).transpose(1, 2)
        if dense is not None:
            weights, vo = _join_columns(weights, dense[0]), torch.cat([vo, dense[1]], dim=1)
        if stash is not None:
            stash.append((weights, vo))
        return torch.bmm(weights, vo) if residual is None else torch.baddbmm(residual, weights, vo)

    def image_to_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        residual: torch.Tensor | None = None, pe: torch.Tensor | None = None,
                        pe_q: torch.Tensor | None = None, stash: list | None = None,
                        normed: tuple | None = None) -> torch.Tensor:
        """``forward`` for many queries (B×N×C image rows) over few keys and values (B×n×C tokens),
        plus ``residual`` (B×N×C) when given. With ``pe`` the queries are ``q`` + ``pe``, and
        ``pe_q`` may give the query projection of ``pe`` (:meth:`pe_projection`). ``stash``: see
        :meth:`_weigh_tokens` (None is put there when the tokens are too many for that path).
        ``normed``: (the image's own rows through γ times the query projection, B×h×N×d; ``q`` as
        :class:`NormedRows`): the scores from those (:meth:`normed_scores`, needs ``pe_q``)."""
        b, n, c = k.shape
        if not self._few(n):
            if stash is not None:
                stash.append(None)
            out = self.forward(q if pe is None else q + pe, k, v)
            return out if residual is None else residual + out
        h = self.num_heads
        wq, bq = self._split(self.q_proj)
        kh = self._heads(self.k_proj(k)) * wq.shape[1] ** -0.5              # B×h×n×d
        m = torch.einsum("bhnd,hdc->bhnc", kh, wq).reshape(b, h * n, c)     # image channels → scores
        bias = torch.einsum("bhnd,hd->bhn", kh, bq).reshape(b, h * n, 1)
        # Scores laid out B×h×n×N: softmax over the n tokens of each row is then a reduction over a
        # middle axis, several times faster than over a last axis of 5-15.
        if normed is not None and pe_q is not None:
            own, rows = normed
            scores = self.normed_scores(kh, m, own, [rows], pe_q, base=bias).view(b, h, n, -1)
        else:
            scores = self._scores(m, q, pe, kh, pe_q, base=bias).view(b, h, n, -1)
        return self._weigh_tokens(torch.softmax(scores, dim=2), v, residual, stash)

    def projected_image_to_tokens(self, qp: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  residual: torch.Tensor | None = None, stash: list | None = None,
                                  dense: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``image_to_tokens`` with the image rows' queries already projected (B×heads×N×d).
        ``dense``: (R B×N×k, M B×k×C), the rows' change R·M that ``qp`` and ``residual`` were not
        made with (a mask prompt's, :attr:`ImageSide.dense`): its part of the scores is
        R·(kh·(M·Wq)ᵀ)ᵀ, and the output takes R·M in (see :meth:`_weigh_tokens`)."""
        kh = self._heads(self.k_proj(k)) * qp.shape[-1] ** -0.5             # B×h×n×d
        scores = kh @ qp.transpose(-1, -2)                                  # B×h×n×N
        if dense is not None:
            r, m = dense
            b, h, n, big = scores.shape
            mq = self._heads(m @ self.q_proj.weight.t())                    # B×h×k×d
            scores = _bmm_into(scores.view(b, h * n, big), (kh @ mq.transpose(-1, -2)).reshape(b, h * n, -1),
                               r.transpose(1, 2)).view(b, h, n, big)
        attn = torch.softmax(scores, dim=2)
        if self._few(k.shape[1]):
            return self._weigh_tokens(attn, v, residual, stash, dense)
        if stash is not None:
            stash.append(None)
        if dense is not None:
            residual = _bmm(dense[0], dense[1], residual)
        out = self._merge(attn.transpose(-1, -2) @ self._heads(self.v_proj(v)))
        return out if residual is None else residual + out


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` between them (keys ``layers.N``); SAM's heads
    and SAM 2.1's transformer, heads and Hiera blocks all use it."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False) -> None:
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


@dataclass
class ImageSide:
    """The image half of the two-way transformer's input as B×N×C rows (N = h·w), contiguous: the
    products and sums of a click run several times faster on rows than on the permuted 64×64 map.

    ``keys`` is the image embedding plus the dense prompt embedding, ``key_pe`` the positional
    encoding, ``k`` their sum. When no mask is given the dense embedding is a learned constant, so
    everything the first block computes from the image alone can be done once per image
    (:meth:`TwoWayTransformer.image_side` with ``project=True``): the key and value projections of
    its token-to-image attention (``kp``, ``vp``) and the query projection of its image-to-token
    attention (``qp``), all B×heads×N×d. A click then costs the first block a few million
    multiply-adds instead of a few hundred million. ``pe_proj`` spares the later blocks the sum of
    their rows and the encoding.
    """
    keys: torch.Tensor
    key_pe: torch.Tensor
    k: torch.Tensor | None       # None when the projections below are given (nothing else reads it)
    hw: tuple[int, int]
    kp: torch.Tensor | None = None
    vp: torch.Tensor | None = None
    qp: torch.Tensor | None = None
    # The positional encoding through the later attentions' image-side projections (per block after
    # the first: its token-to-image keys, its image-to-token queries; then the final attention's
    # keys), each heads×d×N: the same for every click (see Attention.pe_projection).
    pe_proj: tuple[torch.Tensor, ...] | None = None
    # ``keys`` times the upscaling's first matrix with the blocks' norms folded in (B×N×C'; on a
    # CPU, see FoldedDeconv): the click's first upscaling product then costs less than half.
    folded: torch.Tensor | None = None
    # ``keys`` through the first block's norm weight γ times the second block's image-side
    # projections (its token-to-image keys and values, its image-to-token queries) and, with two
    # blocks, through both γs times the final attention's keys and values, each B×heads×N×d (on a
    # CPU; TwoWayTransformer.normed_matrices): the later attentions then work from the blocks'
    # changes of the rows (``normed``, see NormedRows) instead of from the new rows, in products a
    # quarter the size.
    nproj: tuple[torch.Tensor, ...] | None = None
    normed: NormedRows | None = None   # the rows as NormedRows (the side a later block gets)
    # With ``nproj``, a mask prompt's change of the rows (TwoWayTransformer.with_dense): (R0 B×N×k,
    # M0 B×k×C), the rows being ``keys`` plus R0·M0; ``keys``, ``kp``, ``vp``, ``qp``, ``folded`` and
    # ``nproj`` stay the no-mask rows' own. The first block takes it in as k more columns of its change
    # (its attentions' products with R0, see Attention.projected_tokens_to_image), so NormedRows,
    # FoldedDeconv and the later blocks see it as part of that change.
    dense: tuple[torch.Tensor, torch.Tensor] | None = None

    def batch(self, n: int) -> ImageSide:
        """The same rows for ``n`` prompt sets (one copy each)."""
        if self.keys.shape[0] == n:
            return self
        rep = {f: getattr(self, f) for f in ("keys", "key_pe", "k", "kp", "vp", "qp", "folded")}
        many = lambda t: None if t is None else t.expand(n, *t.shape[1:]).contiguous()   # noqa: E731
        return ImageSide(hw=self.hw, pe_proj=self.pe_proj, nproj=None if self.nproj is None else
                         tuple(many(t) for t in self.nproj),
                         dense=None if self.dense is None else tuple(many(t) for t in self.dense),
                         **{f: many(t) for f, t in rep.items()})


class TwoWayAttentionBlock(nn.Module):
    """Tokens attend to themselves, then to the image; an MLP on the tokens; the image attends to the
    tokens. Positional encodings are re-added before every attention (queries' too, except at the
    first block's self-attention, whose queries are the prompt tokens themselves)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp: nn.Module, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = mlp
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, side: ImageSide, query_pe: torch.Tensor,
                pe_k: torch.Tensor | None = None, pe_q: torch.Tensor | None = None, steps: list | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``side.k`` may be None past the first block: the attentions then add the encoding
        themselves (with its projections ``pe_k`` and ``pe_q`` when given). ``steps``: gets how the
        image rows changed, (weights, values, mean, inverse spread, norm) or None (FoldedDeconv)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        # The image side is unchanged until the last step: its positional sum serves both cross attentions.
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if side.kp is not None:
            attn = t2i.projected_tokens_to_image(queries + query_pe, side.kp, side.vp, dense=side.dense)
        elif side.k is not None:
            attn = t2i.tokens_to_image(queries + query_pe, side.k, side.keys)
        elif side.normed is not None and pe_k is not None and t2i._few(queries.shape[1]):
            attn = t2i.normed_tokens_to_image(queries + query_pe, side.nproj[0], side.nproj[1], [side.normed], pe_k)
        else:
            attn = t2i.tokens_to_image(queries + query_pe, side.keys, side.keys, pe=side.key_pe, pe_k=pe_k)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))
        stash = None if steps is None else []
        if side.qp is not None:
            keys = i2t.projected_image_to_tokens(side.qp, queries + query_pe, queries, residual=side.keys, stash=stash,
                                                 dense=side.dense)
        elif side.k is not None:
            keys = i2t.image_to_tokens(side.k, queries + query_pe, queries, residual=side.keys, stash=stash)
        else:
            keys = i2t.image_to_tokens(side.keys, queries + query_pe, queries, residual=side.keys,
                                       pe=side.key_pe, pe_q=pe_q, stash=stash,
                                       normed=None if side.normed is None else (side.nproj[2], side.normed))
        if steps is None:
            return queries, self.norm4(keys)
        # The same LayerNorm, with its per-row statistics kept.
        n4 = self.norm4
        keys, mean, rstd = torch.native_layer_norm(keys, (keys.shape[-1],), n4.weight, n4.bias, n4.eps)
        steps.append(None if stash[0] is None else (*stash[0], mean, rstd, n4))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then the tokens attend to the image once more. ``mlp`` builds each
    block's token MLP (SAM: ``MLPBlock``, keys ``lin1``/``lin2``; SAM 2.1: ``MLP``, keys ``layers.N``)."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 mlp: Callable[[int, int], nn.Module] | None = None, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        mlp = mlp or (lambda dim, hidden: MLPBlock(dim, hidden, nn.ReLU))
        self.num_heads = num_heads
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp(embedding_dim, mlp_dim), attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0)) for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_side(self, image: torch.Tensor, image_pe: torch.Tensor, project: bool = False,
                   upscaling: nn.Sequential | None = None) -> ImageSide:
        """B×C×h×w image (+ dense prompt) and its 1×C×h×w encoding → rows; ``project``: also the first
        block's image-only projections (when ``image`` is the same for every click) and, given the
        decoder's ``upscaling`` on a CPU, the rows' folded product (ImageSide.folded)."""
        b, _, h, w = image.shape
        keys = image.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).expand(b, -1, -1).contiguous()
        k = keys + key_pe
        if not project:
            return ImageSide(keys, key_pe, k, (h, w))
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        heads = lambda attn, x: attn._heads(x).contiguous()
        pe = key_pe[:1]
        pe_proj = [p for layer in self.layers[1:] for p in (
            layer.cross_attn_token_to_image.pe_projection(layer.cross_attn_token_to_image.k_proj, pe),
            layer.cross_attn_image_to_token.pe_projection(layer.cross_attn_image_to_token.q_proj, pe))]
        final = self.final_attn_token_to_image
        pe_proj.append(final.pe_projection(final.k_proj, pe))
        cpu = image.device.type == "cpu"
        fold = self.fold_matrix(upscaling) if cpu else None
        nmats = self.normed_matrices() if cpu else None
        return ImageSide(keys, key_pe, k, (h, w), kp=heads(t2i, t2i.k_proj(k)), vp=heads(t2i, t2i.v_proj(keys)),
                         qp=heads(i2t, i2t.q_proj(k)), pe_proj=tuple(pe_proj),
                         folded=None if fold is None else keys @ fold,
                         nproj=None if nmats is None else tuple(heads(a, keys @ m) for a, m in nmats))

    def normed_matrices(self) -> list[tuple[Attention, torch.Tensor]] | None:
        """The second block's image-side projections (token-to-image keys and values, image-to-token
        queries) with the first block's norm weight folded in, and with two blocks the final
        attention's keys and values with both blocks' norm weights, each (its attention, a C×width
        matrix): what :attr:`ImageSide.nproj` multiplies the image's rows by. None with one block."""
        if len(self.layers) < 2:
            return None
        g = self.layers[0].norm4.weight
        second = self.layers[1]
        t2i, i2t = second.cross_attn_token_to_image, second.cross_attn_image_to_token
        mats = [(t2i, t2i.k_proj, g), (t2i, t2i.v_proj, g), (i2t, i2t.q_proj, g)]
        if len(self.layers) == 2:
            final, gg = self.final_attn_token_to_image, g * second.norm4.weight
            mats += [(final, final.k_proj, gg), (final, final.v_proj, gg)]
        return [(att, (lin.weight * scale).t()) for att, lin, scale in mats]

    def fold_matrix(self, upscaling: nn.Sequential | None) -> torch.Tensor | None:
        """The upscaling's first matrix with the blocks' norms folded in (:func:`folded_weights`), or
        None (no upscaling given)."""
        return None if upscaling is None else folded_weights([layer.norm4 for layer in self.layers], upscaling[0])

    def with_dense(self, side: ImageSide, mask_features: torch.Tensor, conv: nn.Conv2d, no_mask: torch.Tensor,
                   upscaling: nn.Sequential | None = None) -> ImageSide:
        """``side`` (made with ``project=True`` for the image plus the no-mask embedding ``no_mask``)
        with a mask prompt's dense embedding instead: ``conv`` (the mask encoder's last, 1×1
        convolution) of ``mask_features`` (B×c×h×w, what comes before it, c = 16).

        The dense embedding changes the image rows by R·M, R the c features of each row and a one,
        M the convolution's c×C weights and the change of its constant: rank c + 1 = 17. On a CPU
        (the side has ``nproj``) that change is handed on as it is (:attr:`ImageSide.dense`): the
        first block's attentions take it in as products with R (a few million multiply-adds), and
        the side's rows, projections and folded product stay the no-mask ones, none of them remade
        (a 4096×896 product and five passes over 2-4 MiB maps, about 4 ms a click, before). Elsewhere
        the rows and their three linear projections (and the folded product) are the no-mask ones
        plus the projection of the change, a c×(C + 3·width) matrix instead of the rows' several
        hundred million multiply-adds. The same values, float rounding apart."""
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        b, c = mask_features.shape[:2]
        n, dim = side.keys.shape[1:]
        w = conv.weight.reshape(dim, c).t()                                  # c×C
        delta = conv.bias - no_mask.reshape(-1)                              # the constant's change, C
        rows = mask_features.flatten(2).transpose(1, 2).reshape(b * n, c)
        if side.nproj is not None:
            ones = rows.new_ones((b * n, 1))
            dense = (torch.cat([rows, ones], dim=1).view(b, n, c + 1),
                     torch.cat([w, delta[None]]).expand(b, c + 1, dim))
            return ImageSide(side.keys, side.key_pe, None, side.hw, kp=side.kp, vp=side.vp, qp=side.qp,
                             pe_proj=side.pe_proj, folded=side.folded, nproj=side.nproj, dense=dense)
        # (the folded product too, when the side has it: its matrix is C×C', from the same weights)
        projections = [p.t() for p in (t2i.k_proj.weight, t2i.v_proj.weight, i2t.q_proj.weight)]
        fold = self.fold_matrix(upscaling) if side.folded is not None else None
        if fold is not None:
            projections.append(fold)
        mats = torch.cat([w] + [w @ p for p in projections], dim=1)
        consts = torch.cat([delta] + [delta @ p for p in projections])
        change = torch.addmm(consts, rows, mats).view(b, n, -1)
        dk, dkp, dvp, dqp, *rest = change.split([dim] + [p.shape[1] for p in projections], dim=-1)
        dfold = rest[0] if rest else None
        side = side.batch(b)
        keys = side.keys + dk
        heads = lambda attn, base, d: base + attn._heads(d)                  # noqa: E731
        return ImageSide(keys, side.key_pe, None, side.hw, kp=heads(t2i, side.kp, dkp),
                         vp=heads(t2i, side.vp, dvp), qp=heads(i2t, side.qp, dqp), pe_proj=side.pe_proj,
                         folded=None if dfold is None else side.folded + dfold)

    def forward(self, side: ImageSide, point_embedding: torch.Tensor, keep: int | list[int] | None = None,
                steps: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image rows, B×T×C tokens) → (B×T×C tokens, B×N×C image rows). ``keep``: only these tokens
        are wanted back (the first ``keep``, or a list of indices: the decoder's output tokens it
        reads, not the prompts' own), so the final attention is computed for those alone (each
        token attends to the image on its own). ``steps``: gets each block's change of the image
        rows (see TwoWayAttentionBlock.forward)."""
        side = side.batch(point_embedding.shape[0])
        proj = side.pe_proj or (None,) * (2 * len(self.layers) - 1)
        queries, nproj, chain = point_embedding, side.nproj, []
        for i, layer in enumerate(self.layers):
            pe_k, pe_q = (proj[2 * i - 2], proj[2 * i - 1]) if i else (None, None)
            # (each block's change of the rows is wanted by the normed paths after it, see NormedRows)
            mine = [] if steps is not None or nproj is not None else None
            queries, keys = layer(queries, side, point_embedding, pe_k, pe_q, mine)
            if steps is not None:
                steps.extend(mine)
            if nproj is not None and mine[0] is not None and len(chain) == i < 2:
                chain.append(NormedRows.of(mine[0]))
            if i + 1 < len(self.layers):
                normed = chain[0] if i == 0 and chain else None
                # (a mask prompt's change, side.dense, is in the first block's change from here on)
                side = ImageSide(keys, side.key_pe, None, side.hw, nproj=nproj if normed else None, normed=normed)
        queries, pe = _tokens(queries, keep), _tokens(point_embedding, keep)
        final = self.final_attn_token_to_image
        # (a chain of two: nproj holds the final attention's projections too, see normed_matrices)
        if len(chain) == len(self.layers) == 2 and proj[-1] is not None and final._few(queries.shape[1]):
            # (the rows after both blocks, as the chain of their changes: see normed_matrices)
            attn = final.normed_tokens_to_image(queries + pe, nproj[3], nproj[4], chain, proj[-1])
        else:
            attn = final.tokens_to_image(queries + pe, keys, keys, pe=side.key_pe, pe_k=proj[-1])
        return self.norm_final_attn(queries + attn), keys


def folded_deconv(side: ImageSide, steps: list | None, upscaling: nn.Sequential) -> FoldedDeconv | None:
    """The upscaling's first product made the folded way for a click whose transformer run filled
    ``steps`` (None where it cannot be: no folded rows, or too many tokens for the few-token path)."""
    if not steps or side.folded is None or any(step is None for step in steps):
        return None
    return FoldedDeconv(side.folded, steps, upscaling[0], side.hw)


def _tokens(x: torch.Tensor, keep: int | list[int] | None) -> torch.Tensor:
    """B×T×C tokens → the first ``keep`` or those listed, by slices (an index tensor made from a
    list would be a host-to-device copy, which a recorded CUDA graph cannot hold)."""
    if not isinstance(keep, list):
        return x[:, :keep]
    runs, start = [], 0
    for i in range(1, len(keep) + 1):
        if i == len(keep) or keep[i] != keep[i - 1] + 1:
            runs.append(x[:, keep[start]:keep[i - 1] + 1])
            start = i
    return runs[0] if len(runs) == 1 else torch.cat(runs, dim=1)


# --------------------------------------------------------------------------- mask decoder

class MaskDecoder(nn.Module):
    """Output tokens (an IoU token and 1 + ``num_multimask_outputs`` mask tokens) go through the
    two-way transformer with the prompts; each mask token's MLP weighs the 4× upscaled image features
    into one mask. Token 0 is the single-mask answer, tokens 1..3 the three ambiguous ones."""

    def __init__(self, *, transformer_dim: int, transformer: TwoWayTransformer, num_multimask_outputs: int = 3,
                 activation: type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256
                 ) -> None:
        super().__init__()
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool, side: ImageSide | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (B×K×4h×4w mask logits, B×K predicted IoU), K = 3 with ``multimask_output``, else 1.
        ``side``: the image rows already made for this image and dense embedding (see :class:`ImageSide`)."""
        masks, iou, _ = self.forward_first(image_embeddings, image_pe, sparse_prompt_embeddings,
                                           dense_prompt_embeddings, multimask_output, side)
        return masks, iou

    def forward_first(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                      multimask_output: bool, side: ImageSide | None = None, first: tuple[int, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None] | None]:
        """:meth:`forward` with the masks made over the grid's top-left ``first`` cells only and a
        callable that makes the rest (see :meth:`predict_masks_first`)."""
        if side is None:
            side = self.transformer.image_side(image_embeddings + dense_prompt_embeddings, image_pe)
        return self.predict_masks_first(side, sparse_prompt_embeddings,
                                        slice(1, None) if multimask_output else slice(0, 1), first)

    def predict_masks(self, side: ImageSide, sparse_prompt_embeddings: torch.Tensor, select: slice = slice(None)
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """All masks and IoU (token 0 single, 1..3 multimask), or the ``select``-ed ones (only those
        are upscaled)."""
        masks, iou, _ = self.predict_masks_first(side, sparse_prompt_embeddings, select)
        return masks, iou

    def predict_masks_first(self, side: ImageSide, sparse_prompt_embeddings: torch.Tensor,
                            select: slice = slice(None), first: tuple[int, int] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None] | None]:
        """:meth:`predict_masks` with the masks made over the grid's top-left ``first`` = (rows,
        columns) only, and a callable that makes the rest (see :func:`upscale_masks_first`; None
        when nothing is left)."""
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((tokens, sparse_prompt_embeddings), dim=1)
        # Only the IoU token and the selected masks' tokens come out (a mask token not asked for is
        # not carried through the final attention).
        mlps = list(enumerate(self.output_hypernetworks_mlps))[select]
        steps = None if side.folded is None else []
        hs, keys = self.transformer(side, tokens, keep=[0] + [1 + i for i, _ in mlps], steps=steps)
        iou_out = hs[:, 0, :]
        hyper = torch.stack([mlp(hs[:, 1 + j, :]) for j, (_, mlp) in enumerate(mlps)], dim=1)
        masks, rest = upscale_masks_first(keys, side.hw, self.output_upscaling, hyper, first or side.hw,
                                          folded_deconv(side, steps, self.output_upscaling))
        return masks, self.iou_prediction_head(iou_out)[:, select], rest
