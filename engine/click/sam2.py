"""SAM 2.1 in image mode: Hiera tiny / small / base+ / large, loading the authors' ``.pt`` files.

What the authors' ``SAM2ImagePredictor`` does, in the :class:`~engine.click.base.ClickModel` seams:

- preprocess: the whole image resized to 1024×1024 (bilinear with antialiasing, on 0..1 floats, aspect
  ratio not kept), then ImageNet mean/std;
- encode: Hiera + FPN; the stride-16 map plus the learned ``no_mem_embed`` (what "no memory" means in
  image mode) is the image embedding, the stride-4 and stride-8 maps go through the decoder's
  ``conv_s0`` / ``conv_s1`` once here instead of on every click;
- coordinates: divided by the image's width/height, times 1024 (independent axes, like the resize);
- decode: a box is two points labelled 2 and 3 placed before the clicks;
- postprocess: the 256×256 logits bilinearly resized straight to the image's size.

The official files also hold the video-tracking modules; :data:`VIDEO_ONLY_PREFIXES` names them and
the loader skips them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import ClickModel
from .hiera import HieraConfig, ImageEncoder
from .registry import ClickSpec, register_click_model
from .sam2_parts import MaskDecoder, PromptEncoder

__all__ = ["SAM2", "SAM2_CONFIGS", "VIDEO_ONLY_PREFIXES", "SAM2Config"]

# Keys of the official checkpoints that only video tracking reads (SAM2Base's memory machinery):
VIDEO_ONLY_PREFIXES: tuple[str, ...] = (
    "memory_attention.",       # cross-attention of the current frame to the memory bank
    "memory_encoder.",         # turns a predicted mask + frame features into a memory
    "mask_downsample.",        # shrinks input masks for the memory encoder
    "maskmem_tpos_enc",        # temporal position of each remembered frame
    "no_mem_pos_enc",          # position encoding of the "no memory" token in memory attention
    "no_obj_ptr",              # object pointer used when the object is absent
    "no_obj_embed_spatial",    # memory embedding added when the object is absent
    "obj_ptr_proj.",           # mask token → object pointer
    "obj_ptr_tpos_proj.",      # temporal position of object pointers
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SAM2Config:
    """One official size: its Hiera settings (from sam2.1_hiera_*.yaml) and a line for the catalog."""
    trunk: HieraConfig
    description: str
    image_size: int = 1024
    d_model: int = 256


SAM2_CONFIGS: dict[str, SAM2Config] = {
    "sam2.1_hiera_tiny": SAM2Config(
        HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                    window_pos_embed_bkg_spatial_size=(7, 7)),
        "SAM 2.1 Hiera-T (31 M parameters in image mode)"),
    "sam2.1_hiera_small": SAM2Config(
        HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                    window_pos_embed_bkg_spatial_size=(7, 7)),
        "SAM 2.1 Hiera-S (39 M parameters in image mode)"),
    "sam2.1_hiera_base_plus": SAM2Config(
        HieraConfig(embed_dim=112, num_heads=2),   # the remaining settings are Hiera's defaults
        "SAM 2.1 Hiera-B+ (73 M parameters in image mode)"),
    "sam2.1_hiera_large": SAM2Config(
        HieraConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                    window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7)),
        "SAM 2.1 Hiera-L (217 M parameters in image mode)"),
}


class SAM2(ClickModel):
    family = "sam2"
    low_res_limit = 32.0    # the authors' predictor clamps the logits it returns to ±32

    def __init__(self, name: str, cfg: SAM2Config) -> None:
        super().__init__(name)
        self.image_size = cfg.image_size
        self.image_encoder = ImageEncoder(cfg.trunk, cfg.d_model, scalp=1)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.sam_prompt_encoder = PromptEncoder(cfg.d_model, cfg.image_size // 16, cfg.image_size)
        self.sam_mask_decoder = MaskDecoder(cfg.d_model)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0   # (read-only arrays too)
        s = self.image_size
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std, (s, s)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s0, s1, s2 = self.image_encoder(x)
        dec = self.sam_mask_decoder
        return {"image_embed": s2 + self.no_mem_embed.view(1, -1, 1, 1),
                "high_res_s0": dec.conv_s0(s0), "high_res_s1": dec.conv_s1(s1)}

    def transform_coords(self, xy: np.ndarray, original_size: tuple[int, int],
                         input_size: tuple[int, int]) -> np.ndarray:
        # The authors compute in float32 torch; doing the same keeps the last bit equal.
        h, w = original_size
        t = torch.as_tensor(np.asarray(xy), dtype=torch.float32).clone()
        t[..., 0] = t[..., 0] / w
        t[..., 1] = t[..., 1] / h
        return (t * self.image_size).numpy()

    def decode(self, features: dict[str, torch.Tensor], points: torch.Tensor | None,
               labels: torch.Tensor | None, box: torch.Tensor | None, mask_input: torch.Tensor | None,
               multimask: bool, prepared: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pts, lbl = [], []
        if box is not None:
            pts.append(box.reshape(-1, 2, 2))
            # Made on the device (no host copy), so a recorded CUDA graph can hold it.
            lbl.append(torch.arange(2, 4, dtype=torch.int32, device=box.device).expand(box.shape[0], 2))
        if points is not None:
            pts.append(points.float())
            lbl.append(labels.to(torch.int32))
        if not pts:
            raise ValueError("SAM 2.1 needs at least one point or a box")
        pe, side = self.sam_prompt_encoder, None
        if prepared is not None and mask_input is not None:   # the prepared rows, changed by the mask
            side = self.sam_mask_decoder.transformer.with_dense(
                prepared["side"], pe.mask_downscaling[:-1](mask_input), pe.mask_downscaling[-1],
                pe.no_mask_embed.weight, self.sam_mask_decoder.output_upscaling)
            mask_input = None
        sparse, dense = pe(torch.cat(pts, dim=1), torch.cat(lbl, dim=1), mask_input)
        return self.sam_mask_decoder(features["image_embed"], pe.dense_pe(), sparse, dense,
                                     (features["high_res_s0"], features["high_res_s1"]), multimask,
                                     prepared=prepared, side=side)

    def prepare(self, features: dict[str, torch.Tensor]) -> dict[str, object]:
        pe = self.sam_prompt_encoder
        return self.sam_mask_decoder.prepare(features["image_embed"], pe.dense_pe(),
                                             pe.no_mask_embed.weight.reshape(1, -1, 1, 1),
                                             (features["high_res_s0"], features["high_res_s1"]))

    def postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(low_res.float(), tuple(original_size), mode="bilinear", align_corners=False)


def _register() -> None:
    for name, cfg in SAM2_CONFIGS.items():
        register_click_model(ClickSpec(name=name, family="sam2", builder=lambda n=name, c=cfg: SAM2(n, c),
                                       description=cfg.description, unused_prefixes=VIDEO_ONLY_PREFIXES))


_register()
