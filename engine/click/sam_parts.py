"""SAM's prompt side and its container: the prompt encoder, the two-way transformer, the mask decoder,
and :class:`Sam`, which joins any image encoder to them (SAM's ViT in ``sam.py``, MobileSAM's TinyViT).

Module and parameter names follow segment-anything's own modules key for key, so the authors' state
dicts load unchanged. Arithmetic follows theirs too: attention through
``F.scaled_dot_product_attention`` computes the same softmax(q·kᵀ/√d)·v as their explicit product.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import ClickModel

__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "build_sam_decoder_parts",
    "preprocess_shape",
]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)   # ImageNet statistics in 0..255 units
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
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
            y = F.layer_norm(x.float().permute(0, 2, 3, 1), (x.shape[1],), self.weight.float(),
                             self.bias.float(), self.eps)
        return y.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# --------------------------------------------------------------------------- prompt encoder

class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] through a fixed random 2×F matrix (stored in the weights)."""

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """C×H×W encoding of the centres of an H×W grid."""
        h, w = size
        grid = torch.ones((h, w), device=self.positional_encoding_gaussian_matrix.device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """B×N×C encoding of B×N×2 (x, y) pixel coordinates in an image of ``image_size`` (H, W)."""
        coords = coords.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Points and box corners → sparse tokens; a low-resolution mask → a dense map added to the image
    embedding (a learned constant when there is none)."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # negative point, positive point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """1×C×h×w positional encoding of the image embedding's grid.

        Kept between calls (it is a tenth of a click's decoding on a CPU) and recomputed when the
        random matrix changes (a new load, another device)."""
        m = self.pe_layer.positional_encoding_gaussian_matrix
        key = (m.device, m.dtype, m.data_ptr(), m._version, self.image_embedding_size)
        if self._dense_pe is None or self._dense_pe[0] != key:
            with torch.inference_mode(False), torch.no_grad():   # usable outside inference mode too
                self._dense_pe = (key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
        return self._dense_pe[1]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5   # the centre of the pixel
        labels = labels.to(points.dtype)
        if pad:   # without a box the decoder was trained with one extra "not a point" token
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        emb[labels == -1] = 0.0
        emb[labels == -1] += self.not_a_point_embed.weight
        emb[labels == 0] += self.point_embeddings[0].weight
        emb[labels == 1] += self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self.pe_layer.forward_with_coords((boxes + 0.5).reshape(-1, 2, 2), self.input_image_size)
        corners[:, 0, :] += self.point_embeddings[2].weight
        corners[:, 1, :] += self.point_embeddings[3].weight
        return corners

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B×N×C sparse tokens: points then box corners, B×C×h×w dense embedding)."""
        bs = points[0].shape[0] if points is not None else boxes.shape[0] if boxes is not None else \
            masks.shape[0] if masks is not None else 1
        dev = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=dev)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense


# --------------------------------------------------------------------------- two-way transformer

class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by ``downsample_rate``."""

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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """Tokens attend to themselves, then to the image; an MLP on the tokens; the image attends to the
    tokens. Positional encodings are re-added before every attention (queries' too, except at the
    first block's self-attention, whose queries are the prompt tokens themselves)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        # The image side is unchanged until the last step: its positional sum serves both cross
        # attentions (one 4096×256 addition saved per block).
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=queries + query_pe, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0)) for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B×C×h×w image, its encoding, B×N×C tokens) → (B×N×C tokens, B×hw×C image)."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        return self.norm_final_attn(queries + attn), keys


# --------------------------------------------------------------------------- mask decoder

class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + dims, dims + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class MaskDecoder(nn.Module):
    """Output tokens (an IoU token and 1 + ``num_multimask_outputs`` mask tokens) go through the
    two-way transformer with the prompts; each mask token's MLP weighs the 4× upscaled image features
    into one mask. Token 0 is the single-mask answer, tokens 1..3 the three ambiguous ones."""

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
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
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (B×K×4h×4w mask logits, B×K predicted IoU), K = 3 with ``multimask_output``, else 1."""
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                        dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((tokens, sparse_prompt_embeddings), dim=1)
        n = tokens.shape[0]
        # One prompt set (every click in the app): no copy of the 64×64 maps.
        src = (image_embeddings if n == image_embeddings.shape[0] == 1
               else torch.repeat_interleave(image_embeddings, n, dim=0)) + dense_prompt_embeddings
        pos_src = image_pe if n == image_pe.shape[0] == 1 else torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_out, mask_out = hs[:, 0, :], hs[:, 1:1 + self.num_mask_tokens, :]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = up.shape
        masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_out)


def build_sam_decoder_parts(image_size: int = 1024) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder with the authors' settings (shared by SAM and MobileSAM)."""
    side = image_size // 16
    prompt = PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(side, side),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=PROMPT_DIM, iou_head_depth=3,
                          iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8))
    return prompt, decoder


# --------------------------------------------------------------------------- the container

def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``long_side``, rounded half up as SAM's ResizeLongestSide."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class Sam(ClickModel):
    """SAM: ``image_encoder`` (any module mapping the 1×3×1024×1024 normalised, zero-padded image to
    1×256×64×64), ``prompt_encoder`` and ``mask_decoder`` (see :func:`build_sam_decoder_parts`).

    Preprocessing is the authors' predictor's: the longer side resized to 1024 by PIL's bilinear
    filter on the uint8 image (their ResizeLongestSide goes through a PIL image), normalised with
    ImageNet statistics in 0..255 units, padded with zeros at the bottom and right.
    """

    family = "sam"

    def __init__(self, name: str, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, image_size: int = 1024) -> None:
        super().__init__(name)
        self.image_size = image_size
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not in the authors' state dicts (non-persistent there too).
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1), persistent=False)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = preprocess_shape(image.shape[0], image.shape[1], self.image_size)
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float()
        x = (x - self.pixel_mean.cpu()) / self.pixel_std.cpu()
        x = F.pad(x, (0, self.image_size - w, 0, self.image_size - h))
        return x, (h, w)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embed": self.image_encoder(x)}

    def transform_coords(self, xy: np.ndarray, original_size: tuple[int, int],
                         input_size: tuple[int, int]) -> np.ndarray:
        (old_h, old_w), (new_h, new_w) = original_size, preprocess_shape(*original_size, self.image_size)
        out = np.array(xy, dtype=np.float64)
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out.astype(np.float32)

    def decode(self, features, points, labels, box, mask_input, multimask):
        emb = features["image_embed"]
        sparse, dense = self.prompt_encoder(points=(points, labels) if points is not None else None,
                                            boxes=box, masks=mask_input)
        return self.mask_decoder(image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask)

    def postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
        s = self.image_size
        masks = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

