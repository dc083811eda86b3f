"""Re-record tests/data/click_keys_sam_vit_{b,l,h}.json from segment-anything's own code (dev only).

The files hold what tests/test_click_sam.py compares against without the peer installed: the peer's
state-dict key → shape map and parameter count for each size (built on the meta device, so ViT-H costs
nothing), and for sam_vit_b the peer's SamPredictor outputs (embedding probe, predicted IoU,
low-resolution logit probes and mask areas) for the test's fixed image and prompts under its formula
weights.

Install the peer outside the repository (never a dependency of this project):

    pip download segment-anything==1.0 --no-deps -d /tmp/peers
    pip install --no-deps --target /work/peers/segment_anything /tmp/peers/segment_anything-1.0-py3-none-any.whl
    # its package imports torchvision: a CPU build matching torch, e.g.
    pip download torchvision==0.28.0 --no-deps -d /tmp/peers
    pip install --no-deps --target /work/peers/tv /tmp/peers/torchvision-0.28.0-*.whl
    # (drop ``_meta_registrations`` from /work/peers/tv/torchvision/__init__.py's import list if it
    #  fails to import against a CPU-only torch)

Run from the repository root (about a minute on two cores):

    PYTHONPATH=/work/peers/tv:/work/peers/segment_anything .venv/bin/python tests/data/record_click_sam.py
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from segment_anything import SamPredictor, sam_model_registry

from tests import weights_formula
from tests.test_click_sam import FORMULA, fixed_image, probe_embed, run_prompts

__all__ = ["record"]

DATA = ROOT / "tests" / "data"
SOURCE = "segment-anything 1.0 (facebookresearch/segment-anything), build_sam.sam_model_registry"


def _layout(size: str) -> tuple[dict[str, list[int]], int]:
    with torch.device("meta"):
        peer = sam_model_registry[size]()
    return ({k: list(v.shape) for k, v in peer.state_dict().items()},
            sum(p.numel() for p in peer.parameters()))


def _references(keys: dict[str, list[int]]) -> dict:
    peer = sam_model_registry["vit_b"]().eval()
    peer.load_state_dict(weights_formula.fixed_state(keys, FORMULA))
    predictor = SamPredictor(peer)
    predictor.set_image(fixed_image())
    prompts, _ = run_prompts(lambda p, lab, box, mask, multi: predictor.predict(p, lab, box, mask, multi))
    return {"embed": probe_embed(predictor.features.numpy()), "input_size": list(predictor.input_size),
            "prompts": prompts}


def record() -> None:
    for size in ("vit_b", "vit_l", "vit_h"):
        keys, count = _layout(size)
        doc = {"source": SOURCE, "num_params": count, "keys": keys, "references": []}
        if size == "vit_b":
            with torch.no_grad():
                doc["references"] = [_references(keys)]
        path = DATA / f"click_keys_sam_{size}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"{path.name}: {len(keys)} keys, {count:,} parameters")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    record()
