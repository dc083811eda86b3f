"""Record tests/data/click_keys_mobile_sam.json from the authors' MobileSAM code (dev-only).

The authors' package is not on PyPI and is never a dependency of this project. To re-record:

1. Put the ``mobile_sam`` package of github.com/ChaoningZhang/MobileSAM (its folder ``mobile_sam/``)
   under e.g. /work/peers/mobilesam/; recorded from commit 34bbbfd.
2. Its encoder imports timm and its predictor torchvision:
   ``pip download timm --no-deps`` and ``pip install --no-deps --target /work/peers/timm timm-*.whl``;
   a CPU torchvision matching the installed torch likewise into /work/peers/tv.
3. From the repository root:
   ``PYTHONPATH=/work/peers/mobilesam:/work/peers/timm:/work/peers/tv:. .venv/bin/python
   tests/data/record_click_mobile_sam.py``

It writes the layout of ``sam_model_registry["vit_t"]()`` (keys, shapes, trainable parameter count)
and, under the formula weights of tests/test_click_mobile_sam.FORMULA, probes of the TinyViT encoder
on a fixed tensor and of ``SamPredictor`` on the fixed image and prompt rounds that test defines.
"""
from __future__ import annotations

import json
import pathlib
import sys
import warnings

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.fileio import atomic_write_bytes
from tests import test_click_mobile_sam as t
from tests import weights_formula


def main() -> None:
    warnings.filterwarnings("ignore")   # timm's registry complains about the authors' re-registrations
    from mobile_sam import SamPredictor, sam_model_registry

    model = sam_model_registry["vit_t"]()
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.load_state_dict(weights_formula.fixed_state(keys, t.FORMULA))
    # eval() after loading: the authors' attention caches its bias table when switched to eval mode.
    model.eval()

    with torch.no_grad():
        enc = model.image_encoder(t.fixed_encoder_input())
    references = [{"what": "encoder", "input": "fixed_encoder_input()", "probe": t.emb_probe(enc)}]

    pred = SamPredictor(model)
    pred.set_image(t.fixed_image())

    def predict(points, labels, box, mask, multimask):
        return pred.predict(None if points is None else np.asarray(points, dtype=np.float64),
                            None if labels is None else np.asarray(labels),
                            None if box is None else np.asarray(box, dtype=np.float64),
                            mask, multimask, return_logits=True)

    cases = {name: {"low_res": t.low_probe(low), "iou": iou.tolist(), "logits": t.img_probe(full)}
             for name, (full, iou, low) in t._run_cases(predict).items()}
    references.append({"what": "predictor", "image": [t.H, t.W], "embedding": t.emb_probe(pred.features),
                       "cases": cases})

    out = {"source": "ChaoningZhang/MobileSAM@34bbbfd mobile_sam.sam_model_registry['vit_t'] and SamPredictor",
           "num_params": num_params, "keys": keys, "references": references}
    atomic_write_bytes(t.GOLDEN, (json.dumps(out) + "\n").encode("utf-8"))
    print(f"wrote {t.GOLDEN}: {len(keys)} keys, {num_params} parameters")


if __name__ == "__main__":
    main()
