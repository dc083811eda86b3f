"""SAM's prompt side and its container: the prompt encoder and :class:`Sam`, which joins any image
encoder (SAM's ViT in ``sam.py``, MobileSAM's TinyViT) to the prompt encoder and the mask decoder
(``sam_decoder.py``, whose names are also importable from here).

Module and parameter names follow segment-anything's own modules key for key, so the authors' state
dicts load unchanged.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import LOW_RES, ClickModel
from .sam_decoder import (  # noqa: F401  (re-exported: the decoder's names were defined here before)
    MLP,
    PROMPT_DIM,
    UPSCALE_ROWS,
    Attention,
    ImageSide,
    LayerNorm2d,
    MLPBlock,
    MaskDecoder,
    TwoWayAttentionBlock,
    TwoWayTransformer,
    block_order,
    upscale_masks,
)

__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "build_sam_decoder_parts",
    "preprocess_shape",
]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)   # ImageNet statistics in 0..255 units
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------- prompt encoder

class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] through a fixed random 2×F matrix (stored in the weights)."""

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))
        self._grid: tuple[tuple, torch.Tensor] | None = None

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

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """1×C×H×W :meth:`forward`, kept between calls (it is a tenth of a click's decoding on a CPU)
        and recomputed when the random matrix changes (a new load, another device)."""
        m = self.positional_encoding_gaussian_matrix
        key = (m.device, m.dtype, m.data_ptr(), m._version, tuple(size))
        if self._grid is None or self._grid[0] != key:
            with torch.inference_mode(False), torch.no_grad():   # usable outside inference mode too
                self._grid = (key, self(size).unsqueeze(0))
        return self._grid[1]

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

    def get_dense_pe(self) -> torch.Tensor:
        """1×C×h×w positional encoding of the image embedding's grid."""
        return self.pe_layer.grid(self.image_embedding_size)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5   # the centre of the pixel
        labels = labels.to(points.dtype)
        if pad:   # without a box the decoder was trained with one extra "not a point" token
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        # The authors' boolean-mask updates, as selections: the same values (0 + w is w), and no hidden
        # nonzero() (a device sync, which a CUDA graph cannot record).
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        emb = torch.where(lab == 0, emb + self.point_embeddings[0].weight, emb)
        emb = torch.where(lab == 1, emb + self.point_embeddings[1].weight, emb)
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

    def prepare(self, features: dict[str, torch.Tensor]) -> ImageSide:
        """The image rows with the no-mask embedding and the first block's projections (used by
        every click that has no ``mask_input``)."""
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder.transformer.image_side(features["image_embed"] + dense,
                                                        self.prompt_encoder.get_dense_pe(), project=True,
                                                        upscaling=self.mask_decoder.output_upscaling)

    def needed_low_res(self, input_size: tuple[int, int]) -> tuple[int, int]:
        # postprocess reads the logits over the image plus one row (column) for the bilinear
        # upsampling's last taps (see its two paths); the rest covers the padding.
        f = self.image_size // LOW_RES
        return tuple(min(LOW_RES, -(-int(n) // f) + 1) for n in input_size)

    def decode(self, features, points, labels, box, mask_input, multimask, prepared=None):
        raw, iou, rest = self.decode_first(features, points, labels, box, mask_input, multimask, prepared)
        if rest is not None:
            rest()
        return raw, iou

    def decode_first(self, features, points, labels, box, mask_input, multimask, prepared=None, *, needed=None):
        emb, pe = features["image_embed"], self.prompt_encoder
        side = prepared
        if prepared is not None and mask_input is not None:   # the prepared rows, changed by the mask
            side = self.mask_decoder.transformer.with_dense(
                prepared, pe.mask_downscaling[:-1](mask_input), pe.mask_downscaling[-1], pe.no_mask_embed.weight,
                self.mask_decoder.output_upscaling)
            mask_input = None
        sparse, dense = pe(points=(points, labels) if points is not None else None, boxes=box, masks=mask_input)
        first = None
        if needed is not None:   # the grid cells under the needed logits (4 logits a cell a side)
            per = LOW_RES // emb.shape[-2]
            first = (-(-int(needed[0]) // per), -(-int(needed[1]) // per))
        return self.mask_decoder.forward_first(emb, pe.get_dense_pe(), sparse, dense, multimask, side, first)

    def postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
        # The authors upsample to the whole S×S input (bilinear), crop the image's part and resize
        # that to the image (bilinear).
        s, low = self.image_size, low_res.shape[-1]
        (h, w), (oh, ow) = input_size, original_size
        if oh * ow <= h * w:
            # An image no larger than the crop: both steps are separable and linear, so each output
            # row (column) is a fixed mix of at most three low-resolution rows (columns). The composed
            # weights, made once per image size from the two interpolations themselves, are applied
            # directly, without the 1024×1024 intermediate (float rounding apart, the same values).
            rows = _composed_taps(low, s, int(h), int(oh), str(low_res.device))
            cols = _composed_taps(low, s, int(w), int(ow), str(low_res.device))
            # Only the low-resolution rows and columns the taps read (not the padding's).
            x = low_res[..., :rows[2], :cols[2]].float()
            if low_res.device.type == "cpu":
                return _resample(x, _taps_operator(low, s, int(h), int(oh)), _taps_operator(low, s, int(w), int(ow)))
            x = _mix(x.transpose(-1, -2).contiguous(), *cols[:2])                # B×K×W×rows read
            return _mix(x.transpose(-1, -2).contiguous(), *rows[:2])            # B×K×H×W
        # Larger images: only the low-resolution rows and columns the crop reads are upsampled
        # (one more than a quarter of it), then resized: the authors' values, less work.
        f = s // low
        r, c = min(low_res.shape[-2], -(-h // f) + 1), min(low, -(-w // f) + 1)
        masks = F.interpolate(low_res[..., :r, :c], (r * f, c * f), mode="bilinear", align_corners=False)
        return F.interpolate(masks[..., :h, :w], (oh, ow), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=16)
def _composed_taps(low: int, full: int, crop: int, out: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For one axis: bilinear ``low`` → ``full``, keep the first ``crop``, bilinear → ``out`` (as
    F.interpolate with align_corners=False does each). Returns (out×k low indices, out×k weights,
    how many low positions from the first are read)."""
    def operator(n_in: int, n_out: int) -> torch.Tensor:   # n_out×n_in: F.interpolate's own weights
        eye = torch.eye(n_in, dtype=torch.float32).view(1, 1, n_in, n_in)
        return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]
    with torch.inference_mode(False), torch.no_grad():   # plain tensors: cached across modes
        composed = operator(crop, out) @ operator(low, full)[:crop]
        k = int((composed != 0).sum(1).max())
        weights, index = composed.topk(k, dim=1)
        # A row with fewer taps than k reads its strongest one again at weight 0 (topk's zeros may
        # name any position, such as the padding's, which may not be made yet: 0 × it is no answer).
        index = torch.where(weights > 0, index, index[:, :1])
        return index.to(device), weights.to(device), int(index.max()) + 1


# torch calls its sparse CSR tensors beta; the product used here (CSR times dense, CPU) is not.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


@functools.lru_cache(maxsize=16)
def _taps_operator(low: int, full: int, crop: int, out: int) -> torch.Tensor:
    """:func:`_composed_taps` on a CPU as an out×(inputs read) sparse (CSR) matrix: at most three
    entries a row, so applying it reads each input once."""
    index, weights, n_in = _composed_taps(low, full, crop, out, "cpu")
    with torch.inference_mode(False), torch.no_grad():
        dense = torch.zeros(index.shape[0], n_in, dtype=weights.dtype, device=index.device)
        dense.scatter_add_(1, index, weights)   # (a repeated index has weight 0: adds nothing)
        return dense.to_sparse_csr()


def _resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """B×K×r×c → B×K×H×W, each output pixel Σ rows[i, ·]·x·cols[j, ·]ᵀ (H×r and W×c sparse taps,
    :func:`_taps_operator`): two sparse products, each a single pass over its input (where the
    tap-by-tap gather, scale and add of :func:`_mix` made several, three times the time)."""
    b, k, r, c = x.shape
    y = torch.sparse.mm(cols, x.permute(3, 0, 1, 2).reshape(c, b * k * r))    # W × (B·K·r)
    w = y.shape[0]
    y = torch.sparse.mm(rows, y.view(w, b * k, r).permute(2, 1, 0).reshape(r, b * k * w))   # H × (B·K·W)
    return y.view(-1, b, k, w).permute(1, 2, 0, 3).contiguous()


def _mix(x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t weights[:, t] · x's rows index[:, t] (rows: the second-to-last axis; whole rows are copied)."""
    out = None
    for t in range(index.shape[1]):
        term = x.index_select(-2, index[:, t]) * weights[:, t, None]
        out = term if out is None else out.add_(term)
    return out
