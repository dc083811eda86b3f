"""MobileNet DeepLab models against their peers (torchvision, VainF/DeepLabV3Plus-Pytorch).

Golden data in tests/data/keys_*mobilenet*.json was produced from the real peers by running this file:
``PYTHONPATH=/tmp/tvlib VAINF_ROOT=/tmp/vainf python tests/test_models_mobilenet.py --regen`` (VAINF_ROOT: a
checkout holding VainF's ``network`` package).  Each file holds the peer's state-dict key -> shape map and
the peer's logits on a fixed input under fixed, formula-generated weights, so the layout *and* the
numerics are checked without the peers installed.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine import build_model, list_models  # noqa: E402
from engine.meta import IMAGENET, TORCHVISION_SEG  # noqa: E402
from engine.models.mobilenet import (  # noqa: E402
    MobileNetV2Backbone,
    features_from_imagenet_mobilenet_v2,
    features_from_imagenet_mobilenet_v3_large,
)
from tests import weights_formula  # noqa: E402
from tests.weights_formula import Formula  # noqa: E402

DATA = ROOT / "tests" / "data"
# Odd sizes exercise the padding rules and the final resize; large enough (7×9 at OS 16) that ASPP
# rates 6 and 12 see different taps, so a wrong rate changes the logits.
H, W = 97, 131
ROWS, COLS = [0, 24, 48, 72, 96], [0, 32, 65, 98, 130]

# golden file stem -> (our registry name, builder kwargs for the key layout)
GOLDEN = {
    "keys_deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", {"aux": True}),
    "keys_deeplabv3_mobilenet_v2": ("deeplabv3_mobilenet_v2", {}),
    "keys_deeplabv3plus_mobilenet_v2": ("deeplabv3plus_mobilenet_v2", {}),
    "keys_deeplabv3plus_mobilenet_v2_separable": ("deeplabv3plus_mobilenet_v2", {"separable": True}),
}


def _golden(stem: str) -> dict:
    return json.loads((DATA / f"{stem}.json").read_text(encoding="utf-8"))


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The constants the golden logits in tests/data were recorded with.
FORMULA = Formula(10007, 7.0, 12.9898, 43758.5453, 0.25, (1.0, 0.2))


def fixed_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return weights_formula.fixed_state(shapes, FORMULA)


def fixed_input() -> torch.Tensor:
    return (torch.sin(torch.arange(3 * H * W, dtype=torch.float64) * 0.37) * 1.5).float().reshape(1, 3, H, W)


def _probe(logits: torch.Tensor) -> list:
    return logits[0][:, ROWS][:, :, COLS].tolist()


# --------------------------------------------------------------------------- layout


def test_registered_with_strides_and_preprocessing():
    names = set(list_models())
    assert {"deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v2", "deeplabv3plus_mobilenet_v2"} <= names
    m = build_model("deeplabv3_mobilenet_v3_large")
    assert m.meta.output_stride == 16 and m.meta.preprocessing == TORCHVISION_SEG and not m.meta.aux
    v2 = build_model("deeplabv3plus_mobilenet_v2", separable=True)
    assert v2.meta.output_stride == 16 and v2.meta.preprocessing == IMAGENET
    assert v2.meta.options == {"separable": True}
    with pytest.raises(ValueError, match="output stride"):
        build_model("deeplabv3_mobilenet_v3_large", output_stride=8)
    with pytest.raises(ValueError, match="output stride"):
        build_model("deeplabv3_mobilenet_v2", output_stride=32)


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_state_dict_layout_matches_peer(stem):
    name, kw = GOLDEN[stem]
    gold = _golden(stem)
    for os_ in (8, 16) if name != "deeplabv3_mobilenet_v3_large" else (16,):
        model = build_model(name, output_stride=os_, **kw)
        assert _shapes(model) == gold["keys"], f"{name} OS {os_}"
        assert list(model.state_dict()) == list(gold["keys"])  # same order as the peer, too
        assert _trainable(model) == gold["num_params"]


def test_exact_param_counts():
    assert _trainable(build_model("deeplabv3_mobilenet_v3_large", aux=True)) == 11_029_328
    assert _trainable(build_model("deeplabv3_mobilenet_v2")) == 5_113_877
    assert _trainable(build_model("deeplabv3plus_mobilenet_v2")) == 5_225_717
    assert _trainable(build_model("deeplabv3plus_mobilenet_v2", separable=True)) < 5_225_717 // 1.5


def test_aux_off_drops_only_the_aux_head():
    with_aux = _golden("keys_deeplabv3_mobilenet_v3_large")["keys"]
    expected = {k: v for k, v in with_aux.items() if not k.startswith("aux_classifier.")}
    model = build_model("deeplabv3_mobilenet_v3_large")
    assert _shapes(model) == expected
    assert model.aux_classifier is None
    out, aux = model(torch.zeros(1, 3, 33, 33), return_aux=True)
    assert out.shape == (1, 21, 33, 33) and aux is None


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_logits_match_peer_reference(stem):
    """Peer logits (torchvision or VainF) recorded under the same fixed weights and input."""
    name, kw = GOLDEN[stem]
    gold = _golden(stem)
    for ref in gold["references"]:
        model = build_model(name, output_stride=ref["output_stride"], **kw)
        model.load_state_dict(fixed_state(gold["keys"]))
        with torch.no_grad():
            out, aux = model(fixed_input(), return_aux=True)
        assert out.shape == (1, 21, H, W)
        expected = torch.tensor(ref["out"])
        torch.testing.assert_close(torch.tensor(_probe(out)), expected, rtol=1e-4,
                                   atol=1e-4 * float(expected.abs().max()))
        if "aux" in ref:
            expected = torch.tensor(ref["aux"])
            torch.testing.assert_close(torch.tensor(_probe(aux)), expected, rtol=1e-4,
                                       atol=1e-4 * float(expected.abs().max()))


def test_output_stride_feature_sizes():
    x = torch.zeros(1, 3, 64, 64)
    m3 = build_model("deeplabv3_mobilenet_v3_large", aux=True)
    feats = m3.backbone(x)
    assert feats["out"].shape == (1, 960, 4, 4) and feats["aux"].shape == (1, 40, 8, 8)
    sizes = {}
    for os_ in (8, 16):
        feats = build_model("deeplabv3plus_mobilenet_v2", output_stride=os_).backbone(x)
        assert feats["low_level"].shape[:2] == (1, 24) and feats["out"].shape[1] == 320
        sizes[os_] = (feats["low_level"].shape[-1], feats["out"].shape[-1])
    # VainF's unpadded stem gives 31 after it; then ceil halving: 16 (OS 4), 8 (OS 8), 4 (OS 16).
    assert sizes == {8: (16, 8), 16: (16, 4)}


def test_dilation_schedule_follows_vainf():
    def dilations(os_):
        trunk = MobileNetV2Backbone(os_)
        blocks = list(trunk.low_level_features)[1:] + list(trunk.high_level_features)
        return [(b.conv[-3][0].stride[0], b.conv[-3][0].dilation[0]) for b in blocks]
    # (stride, dilation) of each block's depthwise conv, blocks 1..17
    assert dilations(16) == [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1),
                             (1, 1), (1, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 2)]
    assert dilations(8) == [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 2),
                            (1, 2), (1, 2), (1, 2), (1, 2), (1, 4), (1, 4), (1, 4)]


def test_trains_in_train_mode():
    model = build_model("deeplabv3plus_mobilenet_v2", num_classes=3).train()
    out = model(torch.randn(2, 3, 33, 33))
    assert out.shape == (2, 3, 33, 33)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.backbone.low_level_features[0][0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- ImageNet backbones


def _imagenet_state(stem: str) -> dict[str, torch.Tensor]:
    keys = _golden(stem)["keys"]
    return {k: torch.full(v, float(i % 97) / 97.0 + 0.01) if not k.endswith("num_batches_tracked")
            else torch.zeros(v, dtype=torch.long) for i, (k, v) in enumerate(keys.items())}


def test_features_from_imagenet_mobilenet_v2_maps_every_backbone_tensor():
    sd = _imagenet_state("keys_imagenet_mobilenet_v2")
    mapped = features_from_imagenet_mobilenet_v2(sd)
    assert mapped["backbone.low_level_features.3.conv.3.running_var"] is sd["features.3.conv.3.running_var"]
    assert mapped["backbone.high_level_features.17.conv.2.weight"] is sd["features.17.conv.2.weight"]
    assert not any(".18." in k or "classifier" in k for k in mapped)
    for name in ("deeplabv3_mobilenet_v2", "deeplabv3plus_mobilenet_v2"):
        model = build_model(name, output_stride=8, pretrained_backbone=sd)
        ours = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
        assert set(ours) == set(mapped)
        assert all(torch.equal(ours[k], mapped[k]) for k in ours)
    with pytest.raises(ValueError, match="features"):
        features_from_imagenet_mobilenet_v2({"fc.weight": torch.zeros(1)})


def test_pretrained_backbone_from_file_and_mismatch(tmp_path):
    sd = _imagenet_state("keys_imagenet_mobilenet_v3_large")
    path = tmp_path / "mbv3.pth"
    torch.save(sd, path)
    model = engine.build_model("deeplabv3_mobilenet_v3_large", pretrained_backbone=str(path))
    assert torch.equal(model.state_dict()["backbone.16.0.weight"], sd["features.16.0.weight"])
    assert set(features_from_imagenet_mobilenet_v3_large(sd)) == {
        k for k in model.state_dict() if k.startswith("backbone.")}
    with pytest.raises(ValueError, match="missing"):
        build_model("deeplabv3_mobilenet_v2", pretrained_backbone={"features.0.0.weight": torch.zeros(32, 3, 3, 3)})


# --------------------------------------------------------------------------- live peers (dev machines only)


def test_live_torchvision_peer_equal_logits():
    seg = pytest.importorskip("torchvision.models.segmentation")
    for aux in (False, True):
        peer = seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=aux).eval()
        ours = build_model("deeplabv3_mobilenet_v3_large", aux=aux)
        ours.load_state_dict(peer.state_dict())
        x = torch.randn(1, 3, 37, 45)
        with torch.no_grad():
            want, got = peer(x), ours(x, return_aux=True)
        torch.testing.assert_close(got[0], want["out"])
        if aux:
            torch.testing.assert_close(got[1], want["aux"])


# --------------------------------------------------------------------------- regeneration from the peers


def _regen() -> None:  # pragma: no cover - dev tool, needs torchvision and a VainF checkout
    import torchvision.models as tvm
    import torchvision.models.segmentation as tvs
    sys.path.insert(0, os.environ["VAINF_ROOT"])
    import network

    def vainf(plus: bool, separable: bool):
        def make(os_):
            m = (network.deeplabv3plus_mobilenet if plus else network.deeplabv3_mobilenet)(
                num_classes=21, output_stride=os_, pretrained_backbone=False)
            if separable:
                network.convert_to_separable_conv(m.classifier)
            return m
        return make

    peers = {
        "keys_deeplabv3_mobilenet_v3_large": (lambda os_: tvs.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, aux_loss=True), (16,), "torchvision"),
        "keys_deeplabv3_mobilenet_v2": (vainf(False, False), (8, 16), "VainF"),
        "keys_deeplabv3plus_mobilenet_v2": (vainf(True, False), (8, 16), "VainF"),
        "keys_deeplabv3plus_mobilenet_v2_separable": (vainf(True, True), (16,), "VainF --separable_conv"),
    }
    for stem, (make, strides, source) in peers.items():
        refs, keys, count = [], None, None
        for os_ in strides:
            peer = make(os_).eval()
            keys = {k: list(v.shape) for k, v in peer.state_dict().items()}
            count = sum(p.numel() for p in peer.parameters() if p.requires_grad)
            peer.load_state_dict(fixed_state(keys))
            with torch.no_grad():
                y = peer(fixed_input())
            ref = {"output_stride": os_}
            if isinstance(y, dict):
                ref["out"], ref["aux"] = _probe(y["out"]), _probe(y["aux"])
            else:
                ref["out"] = _probe(y)
            refs.append(ref)
        doc = {"source": source, "num_params": count, "keys": keys, "references": refs}
        (DATA / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")
    for stem, net in (("keys_imagenet_mobilenet_v2", tvm.mobilenet_v2()),
                      ("keys_imagenet_mobilenet_v3_large", tvm.mobilenet_v3_large())):
        doc = {"source": "torchvision ImageNet classifier", "keys": {k: list(v.shape) for k, v in
                                                                    net.state_dict().items()}}
        (DATA / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")


if __name__ == "__main__" and "--regen" in sys.argv:
    _regen()
