"""segmentation_models_pytorch (smp) DeepLabV3 / DeepLabV3Plus against smp itself.

Golden data (tests/data/keys_smp.json from smp 0.6.0, keys_smp_legacy.json from smp 0.3.3) was recorded
from smp's own modules by tests/data/record_smp.py: each model's key -> shape map, trainable parameter
count, and logits on a fixed input under formula weights (tests/weights_formula), so the layout and the
numerics are checked without smp installed.  With smp importable (PYTHONPATH), the live tests compare
against it directly; otherwise they skip.
"""
from __future__ import annotations

import json
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import build_model, list_models, load_model  # noqa: E402
from engine.checkpoints import CheckpointError  # noqa: E402
from engine.checkpoints.formats import SkipRandomInit, detect_format, match_architecture  # noqa: E402
from engine.meta import IMAGENET  # noqa: E402
from engine.models.smp import smp_legacy_to_current  # noqa: E402
from tests import weights_formula  # noqa: E402
from tests.weights_formula import Formula  # noqa: E402

DATA = ROOT / "tests" / "data"
FAMILIES = ("deeplabv3", "deeplabv3plus")
ENCODERS = ("resnet34", "resnet50", "resnet101", "mobilenet_v2")
NAMES = [f"smp_{f}_{e}" for f in FAMILIES for e in ENCODERS]
# smp only takes sides that are multiples of the output stride.  224 / 16 = 14 feature columns, more
# than the smallest ASPP rate (12), so a wrong rate or dilation changes the logits.
H, W = 64, 224
ROWS, COLS = [0, 17, 40, 63], [0, 31, 100, 171, 223]
# The constants the golden logits were recorded with (the same as the MobileNet goldens).
FORMULA = Formula(10007, 7.0, 12.9898, 43758.5453, 0.25, (1.0, 0.2))


def fixed_input() -> torch.Tensor:
    return (torch.sin(torch.arange(3 * H * W, dtype=torch.float64) * 0.37) * 1.5).float().reshape(1, 3, H, W)


def probe(logits: torch.Tensor) -> list:
    return logits[0][:, ROWS][:, :, COLS].tolist()


def _golden(legacy: bool = False) -> dict:
    name = "keys_smp_legacy.json" if legacy else "keys_smp.json"
    return json.loads((DATA / name).read_text(encoding="utf-8"))["models"]


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _formula_state(name: str, num_classes: int = 21) -> dict[str, torch.Tensor]:
    keys = dict(_golden()[name]["keys"])
    if num_classes != 21:
        keys = {k: [num_classes, *v[1:]] if k.startswith("segmentation_head.0.") else v for k, v in keys.items()}
    return weights_formula.fixed_state(keys, FORMULA)


# --------------------------------------------------------------------------- layout


def test_registered_with_smp_defaults():
    assert set(NAMES) <= set(list_models())
    for name in NAMES:
        with torch.device("meta"):
            m = build_model(name, num_classes=3)
        plus = "plus" in name
        assert m.meta.output_stride == (16 if plus else 8)
        assert m.meta.preprocessing == IMAGENET
        assert m.meta.options == {"aspp_separable": plus, "classification_classes": 0}
    with pytest.raises(ValueError, match="output stride"):
        build_model("smp_deeplabv3_resnet34", output_stride=32)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_layout_matches_smp(name):
    gold = _golden()[name]
    model = build_model(name)
    assert _shapes(model) == gold["keys"]
    assert list(model.state_dict()) == list(gold["keys"])  # smp's order, too
    assert _trainable(model) == gold["num_params"]


# --------------------------------------------------------------------------- numerics


def _assert_probe(got: torch.Tensor, expected: list) -> None:
    want = torch.tensor(expected)
    torch.testing.assert_close(torch.tensor(probe(got)), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_smp_reference(name):
    """smp's logits under the same formula weights, at output strides 8 and 16."""
    gold = _golden()[name]
    state = _formula_state(name)
    for ref in gold["references"]:
        with SkipRandomInit():  # every weight is overwritten
            model = build_model(name, output_stride=ref["output_stride"])
        model.load_state_dict(state)
        with torch.no_grad():
            out = model(fixed_input())
        assert out.shape == (1, 21, H, W)
        _assert_probe(out, ref["out"])


def test_legacy_layout_differs_only_in_names_and_gives_the_same_logits():
    """smp 0.3's DeepLabV3 decoder keys (decoder.0/1/2) rename onto the current ones; the recorded
    0.3.3 logits (weights from the current names) equal the current ones."""
    old, new = _golden(legacy=True), _golden()
    for name in NAMES:
        renamed = smp_legacy_to_current(old[name]["keys"])
        assert list(renamed) == list(new[name]["keys"]) and renamed == new[name]["keys"]
        if "plus" in name:
            assert old[name]["keys"] == new[name]["keys"]  # DeepLabV3Plus never changed
        else:
            assert any(k.startswith("decoder.0.") for k in old[name]["keys"])
        for ref in old[name]["references"]:
            current = next(r for r in new[name]["references"] if r["output_stride"] == ref["output_stride"])
            assert ref["out"] == current["out"]


# --------------------------------------------------------------------------- live smp (dev machines only)


def _smp_peer(smp, name: str, num_classes: int, output_stride: int, **kw) -> torch.nn.Module:
    _, family, encoder = name.split("_", 2)
    cls = smp.DeepLabV3Plus if family == "deeplabv3plus" else smp.DeepLabV3
    peer = cls(encoder_name=encoder, encoder_weights=None, classes=num_classes,
               encoder_output_stride=output_stride, **kw)
    with torch.no_grad():  # BatchNorm statistics away from the identity, so a misplaced BN shows
        for m in peer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return peer.eval()


@pytest.mark.parametrize("name", NAMES)
def test_live_smp_equal_logits(name):
    smp = pytest.importorskip("segmentation_models_pytorch")
    x = torch.randn(1, 3, 64, 96)
    for os_ in (8, 16):
        peer = _smp_peer(smp, name, 4, os_)
        with SkipRandomInit():
            ours = build_model(name, num_classes=4, output_stride=os_)
        ours.load_state_dict(peer.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), peer(x), rtol=1e-4, atol=1e-4)


def test_live_smp_options_load_from_its_files(tmp_path):
    """Files smp writes with non-default ASPP convs or an aux classification head are detected."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    x = torch.randn(1, 3, 32, 48)
    cases = [("smp_deeplabv3_resnet34", {"decoder_aspp_separable": True}),
             ("smp_deeplabv3plus_mobilenet_v2", {"decoder_aspp_separable": False}),
             ("smp_deeplabv3plus_resnet34", {"aux_params": {"classes": 7}})]
    for name, kw in cases:
        default = 16 if "plus" in name else 8
        peer = _smp_peer(smp, name, 3, default, **kw)
        path = tmp_path / f"{name}.pth"
        torch.save({"model_state_dict": peer.state_dict()}, path)
        model = load_model(path)
        assert model.meta.arch == name and model.meta.source_format == "smp"
        want = peer(x)[0] if "aux_params" in kw else peer(x)
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- loading people's files


def _meta_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    # shapes without memory: detection reads only key names and shapes
    return {k: torch.empty(v, device="meta") for k, v in keys.items()}


@pytest.mark.parametrize("legacy", [False, True], ids=["smp0.6", "smp0.3"])
def test_detection_picks_family_encoder_and_classes(legacy):
    for name, gold in _golden(legacy).items():
        keys = {k: [6, *v[1:]] if k.startswith("segmentation_head.0.") else v for k, v in gold["keys"].items()}
        sd = _meta_state(keys)
        assert detect_format(sd) == "smp"
        match = match_architecture(sd, "smp")
        assert match.ok and match.arch == name and match.num_classes == 6, (name, match.diff)
        assert match.options == {"aspp_separable": "plus" in name}
        assert set(match.state_dict) == set(_golden()[name]["keys"])  # legacy names renamed


def test_detection_reads_non_default_aspp_and_classification_head():
    keys = dict(_golden()["smp_deeplabv3_resnet34"]["keys"])
    for i in (1, 2, 3):  # smp's decoder_aspp_separable=True: depthwise + pointwise branch convs
        w = keys.pop(f"decoder.aspp.convs.{i}.0.weight")
        keys[f"decoder.aspp.convs.{i}.0.0.weight"] = [w[1], 1, 3, 3]
        keys[f"decoder.aspp.convs.{i}.0.1.weight"] = [w[0], w[1], 1, 1]
    keys["classification_head.3.weight"], keys["classification_head.3.bias"] = [5, 512], [5]
    match = match_architecture(_meta_state(keys), "smp")
    assert match.ok and match.arch == "smp_deeplabv3_resnet34"
    assert match.options == {"aspp_separable": True, "classification_classes": 5}


def _random_state(name: str, num_classes: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        sd = build_model(name, num_classes=num_classes).state_dict()
        return {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in sd.items()}


def test_wrappers_and_dataparallel_prefix_load(tmp_path):
    name = "smp_deeplabv3plus_mobilenet_v2"
    sd = _random_state(name, 3)
    files = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 7},
        "model_state_dict": {"model_state_dict": sd, "optimizer_state_dict": {}, "classes": ["sky", "road", "car"]},
        "module": {f"module.{k}": v for k, v in sd.items()},
    }
    x = torch.randn(1, 3, 32, 48)
    reference = None
    for stem, obj in files.items():
        path = tmp_path / f"{stem}.pth"
        torch.save(obj, path)
        model = load_model(path)
        meta = model.meta
        assert (meta.arch, meta.num_classes, meta.source_format, meta.output_stride) == (name, 3, "smp", 16)
        assert meta.preprocessing == IMAGENET and meta.options["aspp_separable"] is True
        want_names = ["sky", "road", "car"] if stem == "model_state_dict" else ["class_0", "class_1", "class_2"]
        assert meta.class_names == want_names
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        with torch.no_grad():
            out = model(x)
        reference = out if reference is None else reference
        torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_class_names_only_from_a_plain_list_of_strings(tmp_path):
    sd = _random_state("smp_deeplabv3_mobilenet_v2", 2)
    for classes, expected in ((["bg", "crack"], ["bg", "crack"]), (("bg", "crack"), None), (["bg"], None),
                              (["bg", 1], None), (["a", "a"], None), (2, None)):
        path = tmp_path / "m.pth"
        torch.save({"state_dict": sd, "classes": classes}, path)
        assert load_model(path).meta.class_names == (expected or ["class_0", "class_1"]), classes


def test_output_stride_is_smps_default_unless_given(tmp_path):
    for name, default in (("smp_deeplabv3_mobilenet_v2", 8), ("smp_deeplabv3plus_mobilenet_v2", 16)):
        path = tmp_path / f"{name}.pth"
        torch.save(_random_state(name, 2), path)
        assert load_model(path).meta.output_stride == default
        other = 24 - default
        model = load_model(path, output_stride=other)
        assert model.meta.output_stride == other and model.output_stride == other


def test_wrong_model_or_missing_key_refused_naming_the_keys(tmp_path):
    sd = _random_state("smp_deeplabv3plus_mobilenet_v2", 2)
    missing = dict(sd)
    del missing["decoder.block1.0.weight"]
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert str(path) in str(e.value) and "decoder.block1.0.weight" in str(e.value) and "\n" not in str(e.value)

    path = tmp_path / "plus.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): decoder\.aspp\.0\.convs"):
        load_model(path, arch="smp_deeplabv3_mobilenet_v2")
    with pytest.raises(CheckpointError,
                       match=r"missing key\(s\): encoder\.conv1\.weight.*unexpected key\(s\): encoder\.features"):
        load_model(path, arch="smp_deeplabv3plus_resnet34")

    four = dict(sd)  # in_channels=4: only 3-channel encoders are supported
    four["encoder.features.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    path = tmp_path / "four.pth"
    torch.save(four, path)
    with pytest.raises(CheckpointError, match=r"encoder\.features\.0\.0\.weight \[32, 4, 3, 3\]"):
        load_model(path)


# --------------------------------------------------------------------------- any input size, training


def test_sides_not_multiple_of_the_stride_are_padded_by_reflection_and_cropped():
    torch.manual_seed(1)
    model = build_model("smp_deeplabv3plus_mobilenet_v2", num_classes=2)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 10, 0, 14), mode="reflect"))  # to 64 x 80
        tiny = model(torch.randn(2, 3, 5, 3))
    assert out.shape == (1, 2, 50, 70) and tiny.shape == (2, 2, 5, 3)
    torch.testing.assert_close(out, padded[..., :50, :70])


def test_trains_and_returns_no_aux_map():
    model = build_model("smp_deeplabv3_resnet34", num_classes=3).train()
    out, aux = model(torch.randn(2, 3, 40, 40), return_aux=True)
    assert out.shape == (2, 3, 40, 40) and aux is None
    out.logsumexp(1).mean().backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.segmentation_head[0].weight.grad.abs().sum() > 0
