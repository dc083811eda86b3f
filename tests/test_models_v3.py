"""DeepLab v3 / v3+ on ResNet against their peers (torchvision, VainF/DeepLabV3Plus-Pytorch).

Golden files tests/data/keys_deeplabv3*_resnet*.json hold each peer's state-dict key -> shape map
and the peer's logits on a fixed input under fixed, formula-made weights, so layout and numerics are
checked without the peers.  Regenerate (needs the reference torchvision and a VainF checkout):
``PYTHONPATH=/tmp/tvlib VAINF_ROOT=/tmp/vainf python tests/test_models_v3.py --regen``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import sys

import pytest
import torch
import torch.nn as nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.meta import IMAGENET, TORCHVISION_SEG  # noqa: E402
from engine.models import build_model, model_spec  # noqa: E402
from engine.models.deeplabv3 import native_to_vainf_v3, vainf_v3_to_native  # noqa: E402
from engine.models.heads import (  # noqa: E402
    ASPP,
    AtrousSeparableConvolution,
    DeepLabHead,
    DeepLabHeadV3Plus,
    VainFDeepLabHead,
    convert_to_separable_conv,
)
from engine.models.resnet import atrous_config, resnet  # noqa: E402
from tests import weights_formula  # noqa: E402
from tests.weights_formula import Formula  # noqa: E402

DATA = ROOT / "tests" / "data"
H, W = 35, 41  # odd: exercises the ceil halving and the final resize
ROWS, COLS = [0, 11, 23, 34], [0, 13, 27, 40]

# golden stem -> (registry name, builder kwargs, peer's key naming is VainF v3, output strides checked)
GOLDEN = {
    "keys_deeplabv3_resnet50": ("deeplabv3_resnet50", {"aux": True}, False, (8,)),
    "keys_deeplabv3_resnet101": ("deeplabv3_resnet101", {"aux": True}, False, ()),
    "keys_deeplabv3_resnet50_vainf": ("deeplabv3_resnet50", {}, True, (16,)),
    "keys_deeplabv3plus_resnet50": ("deeplabv3plus_resnet50", {}, False, (16,)),
    "keys_deeplabv3plus_resnet50_separable": ("deeplabv3plus_resnet50", {"separable": True}, False, (8,)),
    "keys_deeplabv3plus_resnet101": ("deeplabv3plus_resnet101", {}, False, ()),
}


def _golden(stem: str) -> dict:
    return json.loads((DATA / f"{stem}.json").read_text(encoding="utf-8"))


def _model(name: str, output_stride: int | None = None, **kw) -> nn.Module:
    """Built once per process: ResNet init costs ~1-2 s on CPU.  Callers only read or fully reload it."""
    os_ = model_spec(name).default_stride if output_stride is None else output_stride
    return _cached_model(name, os_, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _cached_model(name: str, output_stride: int, kw: tuple) -> nn.Module:
    return build_model(name, output_stride=output_stride, **dict(kw))


def _shapes(sd) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The constants the golden logits in tests/data were recorded with.
FORMULA = Formula(9973, 11.0, 78.233, 24634.6345, 0.3, (0.9, 0.1))


def fixed_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return weights_formula.fixed_state(shapes, FORMULA)


def fixed_input() -> torch.Tensor:
    """1×3×H×W float32, a smooth deterministic pattern."""
    return (torch.cos(torch.arange(3 * H * W, dtype=torch.float64) * 0.21) * 1.2).float().reshape(1, 3, H, W)


def _probe(logits: torch.Tensor) -> list:
    return logits[0][:, ROWS][:, :, COLS].tolist()


# --------------------------------------------------------------------------- layout and sizes


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_state_dict_layout_matches_peer(stem):
    name, kw, vainf_v3, _ = GOLDEN[stem]
    gold = _golden(stem)
    model = _model(name, **kw)
    keys = vainf_v3_to_native(gold["keys"]) if vainf_v3 else gold["keys"]
    assert _shapes(model.state_dict()) == keys
    assert list(model.state_dict()) == list(keys)  # the peer's order too
    assert _trainable(model) == gold["num_params"]


@pytest.mark.parametrize("name,kw,expected", [
    ("deeplabv3_resnet50", {"aux": True}, 42_004_074),
    ("deeplabv3_resnet50", {}, 39_638_869),
    ("deeplabv3_resnet101", {"aux": True}, 60_996_202),
    ("deeplabv3plus_resnet50", {}, 39_761_845),
    ("deeplabv3plus_resnet101", {}, 58_753_973),
])
def test_exact_parameter_counts(name, kw, expected):
    assert _trainable(_model(name, **kw)) == expected


def test_registry_defaults():
    v3, plus = _model("deeplabv3_resnet50"), _model("deeplabv3plus_resnet50", separable=True)
    assert v3.meta.output_stride == 8 and v3.meta.preprocessing == TORCHVISION_SEG and not v3.meta.aux
    assert plus.meta.output_stride == 16 and plus.meta.preprocessing == IMAGENET
    assert plus.meta.options == {"separable": True}
    with pytest.raises(ValueError, match="auxiliary"):
        build_model("deeplabv3plus_resnet50", aux=True)


@pytest.mark.parametrize("os_", [8, 16])
def test_output_stride_sets_dilations_rates_and_feature_sizes(os_):
    v3 = _model("deeplabv3_resnet50", output_stride=os_, aux=True)
    bb = v3.backbone
    conv2 = {name: [(b.conv2.stride[0], b.conv2.dilation[0]) for b in getattr(bb, name)]
             for name in ("layer2", "layer3", "layer4")}
    assert conv2["layer2"] == [(2, 1)] + [(1, 1)] * 3
    if os_ == 16:
        assert conv2["layer3"] == [(2, 1)] + [(1, 1)] * 5
        assert conv2["layer4"] == [(1, 1), (1, 2), (1, 2)]  # first block keeps the previous dilation
    else:
        assert conv2["layer3"] == [(1, 1)] + [(1, 2)] * 5
        assert conv2["layer4"] == [(1, 2), (1, 4), (1, 4)]
    rates = (6, 12, 18) if os_ == 16 else (12, 24, 36)
    aspp = v3.classifier[0]
    assert [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == list(rates) == list(atrous_config(os_)[1])
    assert [aspp.convs[i][0].padding[0] for i in (1, 2, 3)] == list(rates)
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, 64, 64))
        assert feats["out"].shape == (1, 2048, 64 // os_, 64 // os_)
        assert feats["aux"].shape == (1, 1024, 64 // os_, 64 // os_)  # layer3 runs at OS 8 or 16 too
        plus = _model("deeplabv3plus_resnet50", output_stride=os_)
        assert [plus.classifier.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == list(rates)
        feats = plus.backbone(torch.zeros(1, 3, 64, 64))
        assert set(feats) == {"out", "low_level"}
        assert feats["low_level"].shape == (1, 256, 16, 16) and feats["out"].shape[-1] == 64 // os_


def test_aux_head_on_and_off():
    with_aux, without = _model("deeplabv3_resnet50", aux=True), _model("deeplabv3_resnet50")
    aux_keys = {k for k in with_aux.state_dict() if k.startswith("aux_classifier.")}
    assert aux_keys and {"aux_classifier.0.weight", "aux_classifier.4.bias"} <= aux_keys
    assert set(without.state_dict()) == set(with_aux.state_dict()) - aux_keys
    assert with_aux.meta.aux and not without.meta.aux
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        out, aux = with_aux(x, return_aux=True)
        assert out.shape == aux.shape == (2, 21, 33, 47)
        torch.testing.assert_close(with_aux(x), out)
        out2, none = without(x, return_aux=True)
    assert out2.shape == (2, 21, 33, 47) and none is None
    assert with_aux.aux_classifier[0].weight.shape == (256, 1024, 3, 3)


def test_other_class_counts_and_train_mode_backward():
    model = build_model("deeplabv3plus_resnet50", num_classes=3, output_stride=16).train()
    out = model(torch.randn(2, 3, 33, 33))
    assert out.shape == (2, 3, 33, 33)
    out.logsumexp(1).mean().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.classifier.project[0].weight.grad.abs().sum() > 0  # the decoder's low-level path is used


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("stem", [s for s, v in GOLDEN.items() if v[3]])
def test_logits_match_peer_reference(stem):
    """Peer logits recorded under the same fixed weights and input (see the module docstring)."""
    name, kw, vainf_v3, _ = GOLDEN[stem]
    gold = _golden(stem)
    state = fixed_state(gold["keys"])
    for ref in gold["references"]:
        model = _model(name, output_stride=ref["output_stride"], **kw)
        model.load_state_dict(vainf_v3_to_native(state) if vainf_v3 else state, strict=True)
        with torch.no_grad():
            out, aux = model(fixed_input(), return_aux=True)
        for got, key in ((out, "out"), (aux, "aux")):
            if key not in ref:
                continue
            expected = torch.tensor(ref[key])
            torch.testing.assert_close(torch.tensor(_probe(got)), expected, rtol=1e-4,
                                       atol=1e-4 * float(expected.abs().max()))


def test_live_torchvision_peer_equal_logits():
    tvseg = pytest.importorskip("torchvision.models.segmentation")
    peer = tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    ours = _model("deeplabv3_resnet50", output_stride=8, aux=True)
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        ref = peer(x)
        out, aux = ours(x, return_aux=True)
    torch.testing.assert_close(out, ref["out"])
    torch.testing.assert_close(aux, ref["aux"])


# --------------------------------------------------------------------------- VainF conversions


def test_vainf_v3_key_conversion_round_trips():
    vainf = {k: torch.zeros(0) for k in _golden("keys_deeplabv3_resnet50_vainf")["keys"]}
    native = vainf_v3_to_native(vainf)
    tv_no_aux = [k for k in _golden("keys_deeplabv3_resnet50")["keys"] if not k.startswith("aux_classifier.")]
    assert list(native) == tv_no_aux  # backbone untouched, only the head prefix moves
    assert list(native_to_vainf_v3(native)) == list(vainf)
    with_aux = {k: torch.zeros(0) for k in _golden("keys_deeplabv3_resnet50")["keys"]}
    with pytest.raises(ValueError, match="aux"):
        native_to_vainf_v3(with_aux)
    assert list(native_to_vainf_v3(with_aux, drop_aux=True)) == list(vainf)
    plus = {k: torch.zeros(0) for k in _golden("keys_deeplabv3plus_resnet50")["keys"]}
    with pytest.raises(ValueError, match="classifier.project"):
        vainf_v3_to_native(plus)


# --------------------------------------------------------------------------- heads and separable convs


def test_separable_head_layout():
    model = _model("deeplabv3plus_resnet50", output_stride=8, separable=True)
    head = model.classifier
    for i, rate in zip((1, 2, 3), (12, 24, 36)):
        sep = head.aspp.convs[i][0]
        assert isinstance(sep, AtrousSeparableConvolution)
        dw, pw = sep.body
        assert dw.groups == 2048 and dw.weight.shape == (2048, 1, 3, 3) and dw.dilation == (rate, rate)
        assert pw.weight.shape == (256, 2048, 1, 1) and dw.bias is None and pw.bias is None
    assert head.classifier[0].body[0].weight.shape == (304, 1, 3, 3)
    dense = [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.groups == 1]
    assert dense == []
    assert all(not isinstance(m, AtrousSeparableConvolution) for m in model.backbone.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 41)).shape == (1, 21, 33, 41)


def test_convert_to_separable_conv_keeps_geometry():
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2, bias=True)
    seq = nn.Sequential(conv, nn.BatchNorm2d(10), nn.Conv2d(10, 4, 1))
    x = torch.randn(1, 6, 17, 19)
    expected = seq(x).shape
    assert convert_to_separable_conv(seq) is seq  # containers change in place
    assert isinstance(seq[0], AtrousSeparableConvolution) and isinstance(seq[2], nn.Conv2d)
    dw, pw = seq[0].body
    assert (dw.stride, dw.padding, dw.dilation, dw.groups) == ((2, 2), (2, 2), (2, 2), 6)
    assert dw.bias is not None and pw.bias is not None and pw.weight.shape == (10, 6, 1, 1)
    assert seq(x).shape == expected
    assert isinstance(convert_to_separable_conv(nn.Conv2d(3, 3, 5, padding=2)), AtrousSeparableConvolution)


def test_aspp_and_heads_shapes_and_dropout():
    aspp = ASPP(8, (1, 2), out_channels=16)
    assert len(aspp.convs) == 4 and aspp.project[0].in_channels == 64 and aspp.project[3].p == 0.5
    x = torch.randn(2, 8, 9, 7)
    assert aspp.eval()(x).shape == (2, 16, 9, 7)
    pooled = aspp.convs[-1](x)
    torch.testing.assert_close(pooled, pooled[..., :1, :1].expand_as(pooled))  # image-level branch: constant
    tv, vf = DeepLabHead(8, 3, (1, 2, 3)), VainFDeepLabHead(8, 3, (1, 2, 3))
    assert tv[0].project[3].p == 0.5 and vf.classifier[0].project[3].p == 0.1
    assert [k for k, _ in tv.state_dict().items()] == [
        k.removeprefix("classifier.") for k in vf.state_dict()]
    vf.load_state_dict({"classifier." + k: v for k, v in tv.state_dict().items()})
    tv.eval(), vf.eval()
    with torch.no_grad():
        torch.testing.assert_close(vf({"out": x}), tv(x))
        torch.testing.assert_close(vf(x), tv(x))


def test_v3plus_decoder_forward_and_vainf_init():
    head = DeepLabHeadV3Plus(32, 24, 5, (1, 2, 3)).eval()
    feats = {"out": torch.randn(1, 32, 5, 6), "low_level": torch.randn(1, 24, 17, 21)}
    with torch.no_grad():
        assert head(feats).shape == (1, 5, 17, 21)  # at the low-level (stride 4) size
    assert head.project[0].weight.shape == (48, 24, 1, 1) and head.classifier[0].weight.shape == (256, 304, 3, 3)
    # VainF: Kaiming-normal (std sqrt(2/fan_in)), not PyTorch's default (std 1/sqrt(3 fan_in)).
    std = head.classifier[0].weight.std().item()
    assert abs(std - math.sqrt(2 / (304 * 9))) < 0.1 * math.sqrt(2 / (304 * 9))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
               for m in head.modules() if isinstance(m, nn.BatchNorm2d))


# --------------------------------------------------------------------------- backbone weights


def test_imagenet_backbone_layout_and_pretrained_loading():
    gold = _golden("keys_imagenet_resnet50")["keys"]
    assert _shapes(resnet(50).state_dict()) == gold
    donor = _model("deeplabv3plus_resnet50")
    state = donor.backbone.state_dict()  # ImageNet keys minus fc.* (IntermediateLayerGetter drops it)
    assert set(state) == {k for k in gold if not k.startswith("fc.")}
    model = build_model("deeplabv3_resnet50", output_stride=16, pretrained_backbone=state)
    assert "pretrained_backbone" not in model.meta.options
    for k in ("conv1.weight", "layer4.2.bn3.running_var", "layer3.5.conv2.weight"):
        assert torch.equal(model.backbone.state_dict()[k], state[k])
    with pytest.raises(ValueError, match="unexpected.*extra"):
        build_model("deeplabv3_resnet50", pretrained_backbone={**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="needs a file"):
        build_model("deeplabv3_resnet50", pretrained_backbone=True)


# --------------------------------------------------------------------------- regeneration from the peers


def _regen() -> None:  # pragma: no cover - dev tool, needs torchvision and a VainF checkout
    sys.path.insert(0, os.environ.get("VAINF_ROOT", "/tmp/vainf"))
    import network  # VainF/DeepLabV3Plus-Pytorch
    import torchvision
    from torchvision.models import resnet50 as tv_resnet50
    from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

    def peer(stem, os_):
        name, kw, vainf_v3, _ = GOLDEN[stem]
        if stem in ("keys_deeplabv3_resnet50", "keys_deeplabv3_resnet101"):
            fn = deeplabv3_resnet50 if "50" in stem else deeplabv3_resnet101
            return fn(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
        m = network.modeling.__dict__[name](num_classes=21, output_stride=os_, pretrained_backbone=False)
        if kw.get("separable"):
            network.convert_to_separable_conv(m.classifier)
        return m

    def dump(path, doc):  # one key per line: reviewable diffs
        lines = ["{"] + [f"{json.dumps(k)}: {json.dumps(v)}," for k, v in doc.items() if k != "keys"]
        lines += ['"keys": {', ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc["keys"].items()),
                  "}", "}"]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    for stem, (name, kw, vainf_v3, strides) in GOLDEN.items():
        model = peer(stem, 16 if not strides else strides[0]).eval()
        keys = _shapes(model.state_dict())
        src = (f"torchvision {torchvision.__version__.split('+')[0]}" if "torchvision" in type(model).__module__
               else "VainF/DeepLabV3Plus-Pytorch") + f" {name}{kw or ''}"
        doc = {"source": src, "num_params": _trainable(model), "references": [], "keys": keys}
        for os_ in strides:
            model = peer(stem, os_).eval()
            model.load_state_dict(fixed_state(keys), strict=True)
            with torch.no_grad():
                res = model(fixed_input())
            ref = {"output_stride": os_}
            if isinstance(res, dict):
                ref.update(out=_probe(res["out"]), aux=_probe(res["aux"]))
            else:
                ref["out"] = _probe(res)
            doc["references"].append(ref)
        dump(DATA / f"{stem}.json", doc)
        print("wrote", stem, len(keys))
    keys = _shapes(tv_resnet50(weights=None).state_dict())
    dump(DATA / "keys_imagenet_resnet50.json", {"source": "torchvision resnet50 ImageNet classifier", "keys": keys})


if __name__ == "__main__" and "--regen" in sys.argv:
    torch.set_num_threads(1)
    _regen()
