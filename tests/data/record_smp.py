"""Dev-only: record segmentation_models_pytorch's DeepLab layouts and logits into tests/data.

Not run by the tests and not needed by the app.  smp is installed outside the project's environment:

    pip download segmentation-models-pytorch==0.6.0 --no-deps -d /tmp/smp
    pip install --no-deps --target /work/peers/smp /tmp/smp/*.whl "huggingface_hub<1.0" requests urllib3 \
        idna certifi charset_normalizer pyyaml
    PYTHONPATH=/work/peers/smp:/work/peers/timm:/work/peers/tv .venv/bin/python tests/data/record_smp.py

writes ``tests/data/keys_smp.json``.  The older layout (smp 0.3.x, DeepLabV3's decoder a Sequential) is
recorded the same way from a 0.3.3 install (it also needs pretrainedmodels, efficientnet_pytorch, munch
and six, ``--no-deps --target /work/peers/smp033``) with
``PYTHONPATH=/work/peers/smp033:/work/peers/smp:/work/peers/timm:/work/peers/tv ... --legacy``, which
writes ``tests/data/keys_smp_legacy.json``.

For each family x encoder the file holds smp's state-dict key -> shape map (21 classes), its trainable
parameter count, and probes of its logits on a fixed input under tests/weights_formula weights at output
strides 8 and 16.  The weights are made from the *current* key names and renamed for the legacy peer, so
both files' logits must agree when the layouts differ only in names.
"""
from __future__ import annotations

import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_models_smp import (  # noqa: E402
    ENCODERS,
    FAMILIES,
    FORMULA,
    fixed_input,
    probe,
)
from tests.weights_formula import fixed_state  # noqa: E402


def _peer(smp, family: str, encoder: str, output_stride: int, legacy: bool):
    cls = smp.DeepLabV3Plus if family == "deeplabv3plus" else smp.DeepLabV3
    kw = {"encoder_name": encoder, "encoder_weights": None, "classes": 21}
    if not (legacy and family == "deeplabv3"):  # smp 0.3's DeepLabV3 is fixed at output stride 8
        kw["encoder_output_stride"] = output_stride
    elif output_stride != 8:
        return None
    return cls(**kw).eval()


def _current_name(key: str) -> str:
    from engine.models.smp import smp_legacy_to_current
    return next(iter(smp_legacy_to_current({key: None})))


def main() -> None:
    import segmentation_models_pytorch as smp

    legacy = "--legacy" in sys.argv
    torch.manual_seed(0)
    models = {}
    for family in FAMILIES:
        for encoder in ENCODERS:
            refs, keys, count = [], None, None
            for os_ in (8, 16):
                peer = _peer(smp, family, encoder, os_, legacy)
                if peer is None:
                    continue
                keys = {k: list(v.shape) for k, v in peer.state_dict().items()}
                count = sum(p.numel() for p in peer.parameters() if p.requires_grad)
                weights = fixed_state({_current_name(k): v for k, v in keys.items()}, FORMULA)
                peer.load_state_dict({k: weights[_current_name(k)] for k in keys})
                with torch.no_grad():
                    out = peer(fixed_input())
                refs.append({"output_stride": os_, "out": probe(out)})
            models[f"smp_{family}_{encoder}"] = {"num_params": count, "keys": keys, "references": refs}
    doc = {"source": f"segmentation_models_pytorch {smp.__version__}", "models": models}
    name = "keys_smp_legacy.json" if legacy else "keys_smp.json"
    (ROOT / "tests" / "data" / name).write_text(json.dumps(doc), encoding="utf-8")
    print(f"wrote {name} from smp {smp.__version__}")


if __name__ == "__main__":
    main()
