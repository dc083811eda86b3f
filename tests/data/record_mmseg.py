"""Dev-only: record mmsegmentation's DeepLab v3 / v3+ layouts and logits into tests/data/keys_mmseg_*.json.

Not part of the app and never imported by it.  Needs mmsegmentation's own code, installed apart from
the virtualenv (mmseg is no dependency of deeplab-gui):

    pip download mmsegmentation mmengine mmcv-lite==2.1.0 addict yapf termcolor rich pyyaml \
        opencv-python-headless platformdirs --no-deps -d /tmp/mmdl
    pip install --no-deps --target /work/peers/mmseg /tmp/mmdl/*.whl
    PYTHONPATH=/work/peers/mmseg .venv/bin/python tests/data/record_mmseg.py

mmcv-lite has no compiled ``mmcv._ext`` (nor does this need mmseg's text tokenizer's ``ftfy``/``regex``):
:func:`stub_missing` puts inert modules in their place before mmseg is imported; nothing used here
calls them.  Each file holds the key -> shape map of mmseg's ``EncoderDecoder`` built with the zoo
configs' arguments (BatchNorm where the zoo trained with SyncBN: same keys), its parameter count,
and the segmentor's logits (``EncoderDecoder.inference``, mode 'whole') plus the auxiliary head's,
resized as mmseg does, on tests/test_models_mmseg.py's fixed input under formula weights.
"""
from __future__ import annotations

import json
import pathlib
import sys
import types

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

__all__ = ["stub_missing", "peer_segmentor", "CONFIGS", "main"]


class _Inert(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


def stub_missing() -> None:
    """Inert stand-ins for modules mmseg imports but these heads never use."""
    import importlib.util

    for name in ("mmcv._ext", "ftfy", "regex"):
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            sys.modules[name] = _Inert(name)


# golden stem -> (registry name, v3+?, depth, num_classes, output strides with recorded logits)
CONFIGS = {
    "keys_mmseg_deeplabv3_r50v1c": ("mmseg_deeplabv3_r50v1c", False, 50, 19, (8, 16)),
    "keys_mmseg_deeplabv3_r101v1c": ("mmseg_deeplabv3_r101v1c", False, 101, 60, (8,)),
    "keys_mmseg_deeplabv3plus_r50v1c": ("mmseg_deeplabv3plus_r50v1c", True, 50, 19, (8, 16)),
    "keys_mmseg_deeplabv3plus_r101v1c": ("mmseg_deeplabv3plus_r101v1c", True, 101, 150, (8,)),
}


def peer_segmentor(plus: bool, depth: int, num_classes: int, output_stride: int, aux: bool = True,
                   multi_grid=None):
    """mmseg's EncoderDecoder as the zoo configs build it (configs/_base_/models/deeplabv3*_r50-d8.py;
    D16 as in the -d16-mg124 configs, optionally without their multi_grid)."""
    stub_missing()
    from mmengine.config import ConfigDict
    from mmseg.models.segmentors import EncoderDecoder

    norm = dict(type="BN", requires_grad=True)
    if output_stride == 8:
        strides, dilations, rates = (1, 2, 1, 1), (1, 1, 2, 4), (1, 12, 24, 36)
    else:
        strides, dilations, rates = (1, 2, 2, 1), (1, 1, 1, 2), (1, 6, 12, 18)
    head = dict(type="DepthwiseSeparableASPPHead" if plus else "ASPPHead", in_channels=2048, in_index=3,
                channels=512, dilations=rates, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm,
                align_corners=False)
    if plus:
        head.update(c1_in_channels=256, c1_channels=48)
    aux_head = dict(type="FCNHead", in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False,
                    dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False)
    backbone = dict(type="ResNetV1c", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), dilations=dilations,
                    strides=strides, norm_cfg=norm, norm_eval=False, style="pytorch", contract_dilation=True,
                    multi_grid=multi_grid)
    return EncoderDecoder(backbone=backbone, decode_head=head, auxiliary_head=aux_head if aux else None,
                          test_cfg=ConfigDict(mode="whole")).eval()


def peer_logits(seg, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The segmentor's logits at the input size (its ``inference``: decode head, then mmseg's resize)
    and the auxiliary head's, resized the same way (bilinear, align_corners False)."""
    from mmseg.models.utils import resize

    h, w = x.shape[-2:]
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))]
    with torch.no_grad():
        out = seg.inference(x, metas)
        aux = None
        if seg.with_auxiliary_head:
            aux = resize(seg.auxiliary_head(seg.extract_feat(x)), size=(h, w), mode="bilinear",
                         align_corners=False)
    return out, aux


def main() -> None:
    from tests.test_models_mmseg import _probe, fixed_input, fixed_state

    data = ROOT / "tests" / "data"
    for stem, (name, plus, depth, nc, strides) in CONFIGS.items():
        seg = peer_segmentor(plus, depth, nc, 8)
        keys = {k: list(v.shape) for k, v in seg.state_dict().items()}
        refs = []
        for os_ in strides:
            seg = peer_segmentor(plus, depth, nc, os_)
            seg.load_state_dict(fixed_state(keys), strict=True)
            out, aux = peer_logits(seg, fixed_input())
            refs.append({"output_stride": os_, "out": _probe(out), "aux": _probe(aux)})
        doc = {"source": f"mmsegmentation {__import__('mmseg').__version__} EncoderDecoder "
                         f"{'DepthwiseSeparableASPPHead' if plus else 'ASPPHead'} ResNetV1c-{depth} "
                         f"+ FCNHead aux, {nc} classes",
               "arch": name, "num_classes": nc,
               "num_params": sum(p.numel() for p in seg.parameters()), "references": refs, "keys": keys}
        (data / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(stem, len(keys), doc["num_params"])


if __name__ == "__main__":
    main()
