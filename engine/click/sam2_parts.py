"""SAM 2.1's prompt encoder and mask decoder (the per-click part), key for key the authors' layout.

Like SAM's, with three differences that change numbers: the decoder adds the encoder's stride-4 and
stride-8 features (projected by ``conv_s0`` / ``conv_s1``) while upsampling, it has an object-score
token in front of the IoU token, and its IoU head ends in a sigmoid. In single-mask mode it falls back
to the best of the three multimask outputs when the single mask is unstable (its area changes by more
than 2 % between logit thresholds ±0.05), as the authors' image predictor is built to do.
"""
from __future__ import annotations

import torch
from torch import nn

from .sam_decoder import MLP, ImageSide, LayerNorm2d, TwoWayTransformer, block_order, folded_deconv, upscale_masks
from .sam_parts import PositionEmbeddingRandom
from .sam_upscale import upscale_constant

__all__ = ["MaskDecoder", "PromptEncoder", "sam2_transformer"]


class PromptEncoder(nn.Module):
    """Points (labels 1 positive, 0 negative, 2/3 box corners, -1 padding) and a low-res mask → the
    decoder's sparse tokens and dense embedding."""

    def __init__(self, embed_dim: int = 256, embedding_size: int = 64, image_size: int = 1024,
                 mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim, self.embedding_size, self.image_size = embed_dim, embedding_size, image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans),
            nn.GELU(), nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid((self.embedding_size, self.embedding_size))

    def forward(self, points: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # The authors' image predictor always hands boxes over as points, so a padding point
        # (label -1) is always appended.
        b = points.shape[0]
        points = torch.cat([points + 0.5, torch.zeros((b, 1, 2), device=points.device)], dim=1)
        labels = torch.cat([labels, -torch.ones((b, 1), device=labels.device, dtype=labels.dtype)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, (self.image_size, self.image_size))
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for i in range(4):
            emb = torch.where(lab == i, emb + self.point_embeddings[i].weight, emb)
        if mask is not None:
            dense = self.mask_downscaling(mask)
        else:
            s = self.embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, s, s)
        return emb, dense


def sam2_transformer(dim: int = 256) -> TwoWayTransformer:
    """SAM's two-way transformer with SAM 2.1's token MLP (keys ``mlp.layers.N``)."""
    return TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=8, mlp_dim=2048,
                             mlp=lambda d, hidden: MLP(d, hidden, d, 2, activation=nn.ReLU))


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens → 4 mask logits (single, then three multimask) at 4× the
    embedding's side and their predicted IoU."""

    def __init__(self, dim: int = 256, stability_delta: float = 0.05, stability_thresh: float = 0.98) -> None:
        super().__init__()
        self.num_mask_tokens = 4
        self.transformer = sam2_transformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2), nn.GELU())
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        # Whether an object is there at all; only video tracking reads it, but it is in every file.
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.stability_delta, self.stability_thresh = stability_delta, stability_thresh

    def prepare(self, image: torch.Tensor, image_pe: torch.Tensor, no_mask: torch.Tensor,
                high_res: tuple[torch.Tensor, torch.Tensor]) -> dict[str, object]:
        """What every click on this image shares: the image rows with the no-mask embedding
        (:class:`~engine.click.sam_decoder.ImageSide`, projected) and the high-resolution features in
        the upscaling's row order. Where the click's first upscaling product is made the folded way
        (a CPU, :class:`~engine.click.sam_upscale.FoldedDeconv`), the features hold the upscaling's
        constants too (``skip0_biased``: the second convolution's bias; ``skip1_shifted``: the
        folded product's constant part), each added once here instead of on every click."""
        side = self.transformer.image_side(image + no_mask, image_pe, project=True, upscaling=self.output_upscaling)
        skip0, skip1 = block_order(high_res[0], 2), block_order(high_res[1], 1)
        if side.folded is None:
            return {"side": side, "skip0": skip0, "skip1": skip1}
        return {"side": side, "skip0_biased": skip0 + self.output_upscaling[3].bias,
                "skip1_shifted": skip1 + self._upscale_shift()}

    def _upscale_shift(self) -> torch.Tensor:
        """The folded first upscaling product's constant part as 2×2×C/4, the layout of ``skip1``."""
        return upscale_constant(self.transformer.layers[-1].norm4, self.output_upscaling[0]).view(2, 2, -1)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                high_res: tuple[torch.Tensor, torch.Tensor], multimask: bool, prepared: dict | None = None,
                side: ImageSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``prepared``: :meth:`prepare`'s result for this image. ``side``: the image rows with
        ``dense`` in them already (else ``prepared``'s, when given, which hold the no-mask
        embedding: ``dense`` must then be that)."""
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((out_tokens[None].expand(sparse.shape[0], -1, -1), sparse), dim=1)
        if side is None and prepared:
            side = prepared["side"]
        if side is None:
            side = self.transformer.image_side(image + dense, image_pe)
        # Multimask answers are tokens 1..3; a single answer may fall back on them, so needs all four.
        # Only the IoU token and those come out of the final attention (the object-score token is
        # video tracking's).
        first = 1 if multimask else 0
        steps = None if side.folded is None else []
        hs, keys = self.transformer(side, tokens, keep=[1] + list(range(2 + first, 2 + self.num_mask_tokens)),
                                    steps=steps)
        iou_out, mask_out = hs[:, 0], hs[:, 1:]
        n = keys.shape[0]
        hyper = torch.stack([mlp(mask_out[:, j]) for j, mlp in enumerate(self.output_hypernetworks_mlps[first:])],
                            dim=1)
        folded = folded_deconv(side, steps, self.output_upscaling)
        many = lambda t: t.expand(n, *t.shape[1:])   # noqa: E731
        if prepared and "skip1_shifted" in prepared:   # the upscaling's constants are in (see prepare)
            skip0, skip1 = many(prepared["skip0_biased"]), many(prepared["skip1_shifted"])
            if folded is None:   # (too many tokens for the folded product: the plain one adds its own)
                skip1, first_rows = skip1 - self._upscale_shift(), None
            else:
                skip1, first_rows = None, folded.rows(shift=skip1.reshape(n, skip1.shape[1], -1))
            masks = upscale_masks(keys, side.hw, self.output_upscaling, hyper, skip1, skip0, first=first_rows,
                                  skip0_biased=True)
        else:
            if prepared:
                skip0, skip1 = prepared["skip0"], prepared["skip1"]
            else:
                skip0, skip1 = block_order(high_res[0], 2), block_order(high_res[1], 1)
            masks = upscale_masks(keys, side.hw, self.output_upscaling, hyper, many(skip1), many(skip0),
                                  first=None if folded is None else folded.rows())
        iou = self.iou_prediction_head(iou_out)
        if multimask:
            return masks, iou[:, 1:]
        return self._stable_single(masks, iou)

    def _stable_single(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A single mask whose area depends on the threshold is replaced by the multimask output with
        # the highest predicted IoU.
        best = torch.argmax(iou[:, 1:], dim=-1)
        rows = torch.arange(iou.shape[0], device=iou.device)
        best_masks = masks[:, 1:][rows, best][:, None]
        best_iou = iou[:, 1:][rows, best][:, None]
        flat = masks[:, 0:1].flatten(-2)
        inter = torch.sum(flat > self.stability_delta, dim=-1).float()
        union = torch.sum(flat > -self.stability_delta, dim=-1).float()
        stable = torch.where(union > 0, inter / union, 1.0) >= self.stability_thresh
        return (torch.where(stable[..., None, None], masks[:, 0:1], best_masks),
                torch.where(stable, iou[:, 0:1], best_iou))
