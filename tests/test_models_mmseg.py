"""mmsegmentation DeepLab v3 / v3+ (ResNetV1c) against mmseg's own code, and its zoo files.

Golden files tests/data/keys_mmseg_*.json hold mmseg's EncoderDecoder key -> shape maps and its logits
on a fixed input under formula weights, recorded by tests/data/record_mmseg.py (mmseg is no dependency;
see that script's docstring).  The live comparison runs when mmseg is importable, e.g.
``PYTHONPATH=/work/peers/mmseg pytest tests/test_models_mmseg.py``.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import sys

import pytest
import torch
import torch.nn as nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.models import build_model, model_spec  # noqa: E402
from engine.models.mmseg import MMSEG  # noqa: E402
from tests import weights_formula  # noqa: E402
from tests.weights_formula import Formula  # noqa: E402

DATA = ROOT / "tests" / "data"
H, W = 35, 41  # odd: exercises the ceil halving and the final resize
ROWS, COLS = [0, 11, 23, 34], [0, 13, 27, 40]
STEMS = ("keys_mmseg_deeplabv3_r50v1c", "keys_mmseg_deeplabv3_r101v1c", "keys_mmseg_deeplabv3plus_r50v1c",
         "keys_mmseg_deeplabv3plus_r101v1c")
FORMULA = Formula(9973, 11.0, 78.233, 24634.6345, 0.3, (0.9, 0.1))


def fixed_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return weights_formula.fixed_state(shapes, FORMULA)


def fixed_input() -> torch.Tensor:
    """1×3×H×W float32, a smooth deterministic pattern."""
    return (torch.cos(torch.arange(3 * H * W, dtype=torch.float64) * 0.21) * 1.2).float().reshape(1, 3, H, W)


def _probe(logits: torch.Tensor) -> list:
    return logits[0][:, ROWS][:, :, COLS].tolist()


def _golden(stem: str) -> dict:
    return json.loads((DATA / f"{stem}.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _model(name: str, num_classes: int, output_stride: int, aux: bool = True) -> nn.Module:
    """Built once per process (a ResNet-101 takes a second or two); callers only read or fully reload it."""
    return build_model(name, num_classes=num_classes, output_stride=output_stride, aux=aux)


# --------------------------------------------------------------------------- layout and numerics


@pytest.mark.parametrize("stem", STEMS)
def test_state_dict_layout_matches_mmseg(stem):
    gold = _golden(stem)
    model = _model(gold["arch"], gold["num_classes"], 8)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == gold["keys"]
    assert list(got) == list(gold["keys"])  # same order too
    assert sum(p.numel() for p in model.parameters()) == gold["num_params"]
    # without the auxiliary head only its keys go
    bare = build_model(gold["arch"], num_classes=gold["num_classes"], output_stride=16)
    assert list(bare.state_dict()) == [k for k in gold["keys"] if not k.startswith("auxiliary_head.")]


def test_named_keys_exist():
    plus = _golden("keys_mmseg_deeplabv3plus_r50v1c")["keys"]
    for k in ("backbone.stem.0.weight", "backbone.stem.7.running_var", "backbone.layer1.0.conv1.weight",
              "backbone.layer1.0.downsample.1.weight", "decode_head.aspp_modules.1.depthwise_conv.conv.weight",
              "decode_head.image_pool.1.conv.weight", "decode_head.c1_bottleneck.conv.weight",
              "decode_head.sep_bottleneck.1.pointwise_conv.bn.bias", "decode_head.conv_seg.weight",
              "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.bias"):
        assert k in plus, k
    assert plus["decode_head.conv_seg.weight"] == [19, 512, 1, 1]
    v3 = _golden("keys_mmseg_deeplabv3_r101v1c")["keys"]
    assert "backbone.layer3.22.conv3.weight" in v3 and "decode_head.bottleneck.conv.weight" in v3
    assert v3["decode_head.aspp_modules.3.conv.weight"] == [512, 2048, 3, 3]


@pytest.mark.parametrize("stem", STEMS)
def test_logits_match_mmseg_reference(stem):
    """mmseg's segmentor logits (and aux head's) recorded under the same weights and input."""
    gold = _golden(stem)
    state = fixed_state(gold["keys"])
    for ref in gold["references"]:
        model = build_model(gold["arch"], num_classes=gold["num_classes"], output_stride=ref["output_stride"],
                            aux=True)
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            out, aux = model(fixed_input(), return_aux=True)
        assert out.shape == (1, gold["num_classes"], H, W)
        for got, key in ((out, "out"), (aux, "aux")):
            expected = torch.tensor(ref[key])
            torch.testing.assert_close(torch.tensor(_probe(got)), expected, rtol=1e-4,
                                       atol=1e-4 * float(expected.abs().max()))


def test_registry_entries_and_dilations():
    for name in ("mmseg_deeplabv3_r50v1c", "mmseg_deeplabv3_r101v1c", "mmseg_deeplabv3plus_r50v1c",
                 "mmseg_deeplabv3plus_r101v1c"):
        spec = model_spec(name)
        assert spec.default_stride == 8 and spec.output_strides == (8, 16) and spec.preprocessing == MMSEG
    assert MMSEG.channel_order == "RGB" and MMSEG.scale == 1.0
    assert MMSEG.mean == (123.675, 116.28, 103.53) and MMSEG.std == (58.395, 57.12, 57.375)
    d8 = _model("mmseg_deeplabv3plus_r50v1c", 19, 8)
    l3, l4 = d8.backbone.layer3, d8.backbone.layer4
    assert [b.conv2.dilation[0] for b in l3][:2] == [1, 2] and [b.conv2.dilation[0] for b in l4] == [2, 4, 4]
    assert l3[0].conv2.stride == (1, 1) and d8.decode_head.aspp_modules[3].depthwise_conv.conv.dilation == (36, 36)
    d16 = build_model("mmseg_deeplabv3_r50v1c", num_classes=3, output_stride=16)
    assert d16.backbone.layer3[0].conv2.stride == (2, 2)
    assert [b.conv2.dilation[0] for b in d16.backbone.layer4] == [1, 2, 2]
    assert d16.decode_head.aspp_modules[1].conv.dilation == (6, 6)
    mg = build_model("mmseg_deeplabv3_r50v1c", num_classes=3, output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in mg.backbone.layer4] == [1, 2, 4]
    with pytest.raises(ValueError, match="output stride"):
        build_model("mmseg_deeplabv3_r50v1c", output_stride=32)


def test_train_mode_backward_and_aux():
    model = build_model("mmseg_deeplabv3plus_r50v1c", num_classes=2, output_stride=16, aux=True).train()
    out, aux = model(torch.randn(2, 3, 33, 29), return_aux=True)
    assert out.shape == aux.shape == (2, 2, 33, 29)
    (out.mean() + aux.mean()).backward()
    assert model.backbone.stem[0].weight.grad is not None
    plain = build_model("mmseg_deeplabv3_r50v1c", num_classes=2, output_stride=16).eval()
    with torch.no_grad():
        assert plain(torch.randn(1, 3, 20, 24), return_aux=True)[1] is None


# --------------------------------------------------------------------------- live mmseg


def _mmseg_importable() -> bool:
    try:
        return importlib.util.find_spec("mmseg") is not None and importlib.util.find_spec("mmengine") is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not _mmseg_importable(), reason="mmsegmentation not on PYTHONPATH")
@pytest.mark.parametrize("plus,os_", [(False, 8), (True, 16)])
def test_live_mmseg_equal_logits(plus, os_):
    from tests.data.record_mmseg import peer_logits, peer_segmentor

    torch.manual_seed(0)
    peer = peer_segmentor(plus, 50, 5, os_)
    for m in peer.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = build_model("mmseg_deeplabv3plus_r50v1c" if plus else "mmseg_deeplabv3_r50v1c", num_classes=5,
                       output_stride=os_, aux=True)
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(1, 3, 37, 45)
    ref_out, ref_aux = peer_logits(peer, x)
    with torch.no_grad():
        out, aux = ours(x, return_aux=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(aux, ref_aux)
