"""Re-record tests/data/click_keys_sam2.1_hiera_*.json from the authors' SAM 2.1 code (dev-only).

What it writes, per size: ``keys`` (the authors' full state dict, video-tracking modules included, key
→ shape, in their order), ``num_params`` (parameters image mode uses), and for Hiera-T ``references``:
probes of SAM2ImagePredictor's embedding and of its outputs for tests/test_click_sam2.py's image and
prompts, under that test's formula weights.

Install the peer outside the repository (never a dependency of the project):

    pip download sam2==1.1.0 --no-deps -d /tmp/peers            # the sdist
    mkdir -p /work/peers/sam2 && tar xzf /tmp/peers/sam2-1.1.0.tar.gz -C /tmp
    cp -r /tmp/sam2-1.1.0/sam2 /work/peers/sam2/                 # no CUDA extension needed
    pip download hydra-core omegaconf iopath antlr4-python3-runtime==4.9.3 portalocker pyyaml tqdm \\
        --no-deps -d /tmp/peers/deps
    pip install --no-deps --target /work/peers/sam2 /tmp/peers/deps/*
    # its transforms import torchvision: a CPU build in /work/peers/tv (see the SAM recorder)

Run from the repository root:

    PYTHONPATH=/work/peers/sam2:/work/peers/tv .venv/bin/python tests/data/record_click_sam2.py
"""
from __future__ import annotations

import json
import math
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.checkpoints.formats import SkipRandomInit
from engine.click.sam2 import VIDEO_ONLY_PREFIXES
from tests import test_click_sam2 as spec

__all__ = ["record"]


def _peer(size: str):
    from sam2.build_sam import build_sam2
    with SkipRandomInit():   # the layout is all that is read unless formula weights are loaded
        return build_sam2(f"configs/sam2.1/sam2.1_hiera_{size}.yaml", device="cpu")


def _references(peer) -> list[dict]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    shapes = {k: list(v.shape) for k, v in peer.state_dict().items()}
    peer.load_state_dict(spec.fixed_state(shapes))
    pred = SAM2ImagePredictor(peer)
    torch.set_num_threads(1)
    with torch.inference_mode():
        pred.set_image(spec.fixed_image())
        emb = pred._features["image_embed"].float().numpy()

        def predict(pts, lbl, box, mask_in, multimask):
            return pred.predict(point_coords=pts, point_labels=lbl, box=box, mask_input=mask_in,
                                multimask_output=multimask)
        cases = spec.run_cases(predict)
    return [{"image": [spec.H, spec.W], "formula": list(map(str, spec.FORMULA.__dict__.values())),
             "embedding": spec.embedding_probe(emb), "cases": cases}]


def record(name: str, size: str) -> None:
    import sam2
    peer = _peer(size)
    sd = peer.state_dict()
    keys = {k: list(v.shape) for k, v in sd.items()}
    used = sum(math.prod(s) for k, s in keys.items() if not k.startswith(VIDEO_ONLY_PREFIXES))
    out = {"source": f"sam2 {getattr(sam2, '__version__', '1.1.0')} (facebookresearch/sam2), "
                     f"configs/sam2.1/sam2.1_hiera_{size}.yaml via build_sam2",
           "num_params": used, "keys": keys,
           "references": _references(peer) if name == spec.GOLDEN_MODEL else []}
    path = spec.DATA / f"click_keys_{name}.json"
    path.write_text(json.dumps(out) + "\n", encoding="utf-8")
    print(f"{path.name}: {len(keys)} keys, {used} image-mode parameters")


if __name__ == "__main__":
    for n, s in spec.SIZES.items():
        record(n, s)
