"""engine.checkpoints: native round trip, peer layouts detected from keys, refusals and mismatches."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from engine import (
    CheckpointError,
    build_model,
    list_models,
    load_backbone_weights,
    load_model,
    read_checkpoint,
    read_meta,
    save_model,
)
from engine.meta import CAFFE_BGR, IMAGENET, TORCHVISION_SEG, VOC_CLASSES
from engine.models.deeplabv3 import native_to_vainf_v3
from engine.models.mmseg import MMSEG

DATA = Path(__file__).parent / "data"
NATIVE_ONLY = {"deeplabv1_vgg16", "deeplabv3plus_xception65"}  # no public peer checkpoints exist
X = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(1))


def _vainf(sd):
    return {"model_state": sd, "cur_itrs": 30000, "optimizer_state": {}, "best_score": 0.7}


def _drop_base(sd):
    return {k.removeprefix("base."): v for k, v in sd.items()}


def _ddp(sd):
    return {"module." + k: v for k, v in sd.items()}


def _mmseg(sd):  # an mmsegmentation zoo file without class names in its meta
    return {"meta": {"mmseg_version": "0.5.0", "iter": 80000}, "state_dict": sd}


# (arch, builder kwargs, classes, output stride the peer evaluates at, writer of the peer file,
#  expected format, expected preprocessing)
PEER_CASES = {
    "tv_r50_aux": ("deeplabv3_resnet50", {"aux": True}, 21, 8, dict, "torchvision", TORCHVISION_SEG),
    "tv_r101": ("deeplabv3_resnet101", {}, 5, 8, dict, "torchvision", TORCHVISION_SEG),
    "tv_mbv3_aux": ("deeplabv3_mobilenet_v3_large", {"aux": True}, 21, 16, dict, "torchvision", TORCHVISION_SEG),
    "vainf_v3_r50_ddp": ("deeplabv3_resnet50", {}, 21, 16, lambda sd: _vainf(_ddp(native_to_vainf_v3(sd))),
                         "vainf", IMAGENET),
    "vainf_v3plus_r101": ("deeplabv3plus_resnet101", {}, 19, 16, _vainf, "vainf", IMAGENET),
    "vainf_v3plus_r50_sep": ("deeplabv3plus_resnet50", {"separable": True}, 21, 16, _vainf, "vainf", IMAGENET),
    "vainf_v3_mbv2": ("deeplabv3_mobilenet_v2", {}, 21, 16, _vainf, "vainf", IMAGENET),
    "vainf_v3plus_mbv2_sep_bare": ("deeplabv3plus_mobilenet_v2", {"separable": True}, 3, 16, dict, "vainf",
                                   IMAGENET),
    "kazuto_msc": ("deeplabv2_resnet101", {}, 21, 8, dict, "kazuto1011", CAFFE_BGR),
    "kazuto_plain": ("deeplabv2_resnet101", {}, 4, 8, _drop_base, "kazuto1011", CAFFE_BGR),
    "mmseg_v3plus_r50_aux": ("mmseg_deeplabv3plus_r50v1c", {"aux": True}, 19, 8, _mmseg, "mmseg", MMSEG),
    "mmseg_v3plus_r101": ("mmseg_deeplabv3plus_r101v1c", {}, 21, 8, _mmseg, "mmseg", MMSEG),
    "mmseg_v3_r50": ("mmseg_deeplabv3_r50v1c", {}, 3, 8, _mmseg, "mmseg", MMSEG),
    "mmseg_v3_r101_aux": ("mmseg_deeplabv3_r101v1c", {"aux": True}, 60, 8, _mmseg, "mmseg", MMSEG),
    # segmentation_models_pytorch: bare, {"state_dict"}, {"model_state_dict"}, DataParallel; smp's strides
    "smp_v3_r34": ("smp_deeplabv3_resnet34", {}, 2, 8, dict, "smp", IMAGENET),
    "smp_v3_r50_ddp": ("smp_deeplabv3_resnet50", {}, 5, 8, _ddp, "smp", IMAGENET),
    "smp_v3_r101": ("smp_deeplabv3_resnet101", {}, 3, 8, lambda sd: {"state_dict": sd}, "smp", IMAGENET),
    "smp_v3_mbv2": ("smp_deeplabv3_mobilenet_v2", {}, 4, 8, lambda sd: {"model_state_dict": sd}, "smp", IMAGENET),
    "smp_v3plus_r34": ("smp_deeplabv3plus_resnet34", {}, 6, 16, lambda sd: {"model_state_dict": sd}, "smp",
                       IMAGENET),
    "smp_v3plus_r50": ("smp_deeplabv3plus_resnet50", {}, 2, 16, dict, "smp", IMAGENET),
    "smp_v3plus_r101_ddp": ("smp_deeplabv3plus_resnet101", {}, 7, 16, _ddp, "smp", IMAGENET),
    "smp_v3plus_mbv2": ("smp_deeplabv3plus_mobilenet_v2", {}, 3, 16, lambda sd: {"state_dict": sd}, "smp", IMAGENET),
}


def test_every_peer_loadable_model_is_covered():
    covered = {case[0] for case in PEER_CASES.values()}
    assert set(list_models()) - NATIVE_ONLY <= covered


def _randomise_bn(model):
    # Fresh BatchNorm statistics are 0/1: make them matter so a wrong mapping shows in the logits.
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("case", sorted(PEER_CASES))
def test_peer_checkpoint_detected_and_same_logits(case, tmp_path):
    arch, kw, nc, stride, write, fmt, prep = PEER_CASES[case]
    src = _randomise_bn(build_model(arch, num_classes=nc, output_stride=stride, **kw))
    path = tmp_path / "peer.pth"
    torch.save(write(src.state_dict()), path)

    model = load_model(path)
    meta = model.meta
    assert (meta.arch, meta.num_classes, meta.output_stride, meta.source_format) == (arch, nc, stride, fmt)
    assert meta.preprocessing == prep
    assert meta.aux == kw.get("aux", False)
    assert meta.options.get("separable", False) == kw.get("separable", False)
    assert meta.class_names == (list(VOC_CLASSES) if nc == 21 else [f"class_{i}" for i in range(nc)])
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(X), src(X), rtol=0, atol=1e-5)


def _golden(name):
    d = json.loads((DATA / f"{name}.json").read_text())
    keys = d["keys"]
    return dict(keys) if isinstance(keys, list) else keys


# Golden key lists written from the peers' own code: fake checkpoints of that exact layout (zero-
# stride tensors, a few bytes on disk) must be recognised without the peers installed.
GOLDEN_CASES = {
    "keys_deeplabv2_resnet101": ("deeplabv2_resnet101", "kazuto1011", {}, False),
    "keys_deeplabv3_mobilenet_v2": ("deeplabv3_mobilenet_v2", "vainf", {}, True),
    "keys_deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", "torchvision", {"aux": True}, False),
    "keys_deeplabv3_resnet101": ("deeplabv3_resnet101", "torchvision", {"aux": True}, False),
    "keys_deeplabv3_resnet50": ("deeplabv3_resnet50", "torchvision", {"aux": True}, False),
    "keys_deeplabv3_resnet50_vainf": ("deeplabv3_resnet50", "vainf", {}, True),
    "keys_deeplabv3plus_mobilenet_v2": ("deeplabv3plus_mobilenet_v2", "vainf", {}, True),
    "keys_deeplabv3plus_mobilenet_v2_separable": ("deeplabv3plus_mobilenet_v2", "vainf", {"separable": True}, True),
    "keys_deeplabv3plus_resnet101": ("deeplabv3plus_resnet101", "vainf", {}, True),
    "keys_deeplabv3plus_resnet50_separable": ("deeplabv3plus_resnet50", "vainf", {"separable": True}, False),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_peer_layouts_are_recognised(name, tmp_path):
    arch, fmt, kw, wrap = GOLDEN_CASES[name]
    try:
        shapes = _golden(name)
    except FileNotFoundError:
        pytest.skip(f"{name}.json not present")
    sd = {k: torch.zeros(1).expand(*s) if s else torch.tensor(0) for k, s in shapes.items()}
    torch.save(_vainf(sd) if wrap else sd, tmp_path / "g.pth")
    assert (tmp_path / "g.pth").stat().st_size < 2_000_000  # expanded tensors store one element
    model = load_model(tmp_path / "g.pth")
    assert (model.meta.arch, model.meta.source_format, model.meta.num_classes) == (arch, fmt, 21)
    assert model.meta.aux == kw.get("aux", False)
    assert model.meta.options.get("separable", False) == kw.get("separable", False)


@pytest.mark.parametrize("arch", list_models())
def test_native_round_trip_is_bit_exact(arch, tmp_path):
    src = _randomise_bn(build_model(arch, num_classes=6))
    path = save_model(src, tmp_path / "m.safetensors", parent="some/parent.safetensors",
                      training={"iterations": 3, "miou": 0.5})
    model = load_model(path)
    assert model.meta.arch == arch and model.meta.source_format == src.meta.source_format
    assert model.meta.extra == {"parent": "some/parent.safetensors", "training": {"iterations": 3, "miou": 0.5}}
    a, b = src.state_dict(), model.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert read_meta(path) == model.meta
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_native_metadata_classes_stride_and_errors(tmp_path):
    src = build_model("deeplabv3plus_mobilenet_v2", num_classes=3)
    names, colors = ["void", "cat", "dog"], [(0, 0, 0), (10, 20, 30), (40, 50, 60)]
    path = save_model(src, tmp_path / "m.safetensors", class_names=names, class_colors=colors)
    assert src.meta.class_names != names  # the model's own meta is left alone
    model = load_model(path, output_stride=8)
    assert model.meta.class_names == names and model.meta.class_colors == colors
    assert model.meta.output_stride == 8
    with torch.no_grad():  # same weights, the trunk now dilated: twice the feature resolution
        assert model.backbone(X)["out"].shape[-1] > src.backbone(X)["out"].shape[-1]
    with pytest.raises(CheckpointError, match="not deeplabv3_resnet50"):
        load_model(path, arch="deeplabv3_resnet50")
    with pytest.raises(CheckpointError, match="3 classes, not 21"):
        load_model(path, num_classes=21)

    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON"):
        save_model(src, path, training={"bad": object()})
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


@pytest.fixture(scope="module")
def tv_r50_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "deeplabv3_resnet50_coco.pth"
    torch.save(build_model("deeplabv3_resnet50", aux=True).state_dict(), path)
    return path


def test_wrong_architecture_names_the_keys(tv_r50_file):
    with pytest.raises(CheckpointError) as e:
        load_model(tv_r50_file, arch="deeplabv3_resnet101")
    msg = str(e.value)
    assert str(tv_r50_file) in msg and "deeplabv3_resnet101" in msg
    assert "missing key(s): backbone.layer3.6." in msg  # R101 has 23 layer3 blocks, R50 has 6


def test_wrong_num_classes_names_the_final_conv(tv_r50_file):
    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\): classifier\.4\.weight \[21, 256, 1, 1\] vs "
                                              r"\[5, 256, 1, 1\]"):
        load_model(tv_r50_file, num_classes=5)


def test_strict_false_loads_what_fits(tmp_path):
    src = build_model("deeplabv3_mobilenet_v2")
    sd = src.state_dict()
    sd.pop("classifier.classifier.4.bias")
    sd["extra.weight"] = torch.zeros(2)
    torch.save(_vainf(sd), tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): classifier\.classifier\.4\.bias; "
                                              r"1 unexpected key\(s\): extra\.weight"):
        load_model(tmp_path / "partial.pth")
    model = load_model(tmp_path / "partial.pth", arch="deeplabv3_mobilenet_v2", strict=False)
    report = model.meta.extra["load_report"]
    assert report["missing"] == ["classifier.classifier.4.bias"] and report["unexpected"] == ["extra.weight"]
    assert torch.equal(model.state_dict()["classifier.classifier.4.weight"], sd["classifier.classifier.4.weight"])


def test_unknown_layout(tmp_path):
    torch.save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.weight": torch.zeros(2)},
               tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not fit any known architecture .*missing key"):
        load_model(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        load_model(tmp_path / "other.pth", arch="nope")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # loading would create the marker file


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_code_carrying_pickle_is_refused_without_running(writer, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    payload = {"backbone.conv1.weight": torch.zeros(1), "x": _Evil(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused to load") as e:
        load_model(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_damaged_and_foreign_files(tmp_path, tv_r50_file):
    cases = {}
    cases["empty.pth"] = b""
    cases["notes.pth"] = b"just some text, not weights\n"
    cases["trunc.pth"] = tv_r50_file.read_bytes()[:5000]
    src = build_model("deeplabv3_mobilenet_v2")
    good = save_model(src, tmp_path / "good.safetensors").read_bytes()
    cases["trunc.safetensors"] = good[: len(good) // 2]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    expected = {"empty.pth": "is empty", "notes.pth": "not a checkpoint",
                "trunc.pth": "corrupt or truncated", "trunc.safetensors": "corrupt or truncated"}
    for name, text in expected.items():
        with pytest.raises(CheckpointError, match=text) as e:
            load_model(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="folder"):
        load_model(tmp_path)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "hist.pth")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_model(tmp_path / "hist.pth")


def test_read_checkpoint_keeps_vainf_extras(tmp_path):
    torch.save(_vainf({"a.weight": torch.ones(2)}), tmp_path / "v.pth")
    raw = read_checkpoint(tmp_path / "v.pth")
    assert raw.wrapper == "model_state" and raw.extras == {"cur_itrs": 30000, "best_score": 0.7}
    assert raw.native_meta is None and read_meta(tmp_path / "v.pth") is None


def test_extension_does_not_matter(tmp_path):
    src = build_model("deeplabv3_mobilenet_v2", num_classes=2)
    save_model(src, tmp_path / "weights.bin")
    torch.save(src.state_dict(), tmp_path / "weights.safetensors")  # misnamed torch file
    assert load_model(tmp_path / "weights.bin").meta.source_format == "random"
    assert load_model(tmp_path / "weights.safetensors").meta.source_format == "vainf"


def test_bare_native_layout_state_dict(tmp_path):
    src = build_model("deeplabv1_vgg16", num_classes=2)
    torch.save({"state_dict": _ddp(src.state_dict()), "epoch": 4}, tmp_path / "v1.pt")
    model = load_model(tmp_path / "v1.pt")
    assert (model.meta.arch, model.meta.source_format, model.meta.num_classes) == ("deeplabv1_vgg16", "state_dict", 2)
    assert model.meta.preprocessing == IMAGENET and model.meta.extra["source_info"] == {"epoch": 4}


# ---------------------------------------------------------------------------------- backbone

def _imagenet_like(name):
    return {k: torch.randn(s) if s else torch.tensor(0) for k, s in _golden(name).items()}


def test_backbone_weights_resnet50(tmp_path):
    sd = _imagenet_like("keys_imagenet_resnet50")
    torch.save(sd, tmp_path / "resnet50-0676ba61.pth")
    model = build_model("deeplabv3plus_resnet50")
    head_before = model.classifier.classifier[0].weight.clone()
    report = load_backbone_weights(model, tmp_path / "resnet50-0676ba61.pth")
    assert report.network == "resnet" and report.complete
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.backbone.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    assert torch.equal(model.classifier.classifier[0].weight, head_before)
    with pytest.raises(CheckpointError, match=r"backbone key\(s\) not covered \['backbone\.layer3\.6"):
        load_backbone_weights(build_model("deeplabv3_resnet101"), sd)
    partial = load_backbone_weights(build_model("deeplabv3_resnet101"), sd, strict=False)
    assert partial.missing and partial.missing[0].startswith("backbone.layer3.6.")


@pytest.mark.parametrize("name,arch", [("keys_imagenet_mobilenet_v2", "deeplabv3plus_mobilenet_v2"),
                                       ("keys_imagenet_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")])
def test_backbone_weights_mobilenets(name, arch):
    sd = _imagenet_like(name)
    model = build_model(arch)
    report = load_backbone_weights(model, sd)
    assert report.complete and report.loaded and all(k.startswith("backbone.") for k in report.loaded)
    assert all(k.startswith(("classifier.", "features.18.")) for k in report.skipped)


def test_backbone_weights_vgg16_and_refusals(tmp_path):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    sd, cin, i = {}, 3, 0
    for v in cfg:  # torchvision VGG16 ``features`` indices: convs, ReLUs and pools share the counter
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = torch.randn(v, cin, 3, 3), torch.randn(v)
        cin, i = v, i + 2
    sd["classifier.0.weight"] = torch.zeros(1).expand(4096, 25088)
    model = build_model("deeplabv1_vgg16")
    report = load_backbone_weights(model, sd)
    assert report.network == "vgg16" and report.complete and len(report.loaded) == 26
    assert report.skipped == ["classifier.0.weight"]
    with pytest.raises(CheckpointError, match="none of its resnet weights fit"):
        load_backbone_weights(build_model("deeplabv2_resnet101"), _imagenet_like("keys_imagenet_resnet50"))
    with pytest.raises(CheckpointError, match="not a torchvision ImageNet"):
        load_backbone_weights(model, {"foo": torch.zeros(1)})


# ---------------------------------------------------------------------------------- reference

@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_reference_torchvision_weights_give_same_logits(arch, tmp_path):
    tvseg = pytest.importorskip("torchvision.models.segmentation")
    ref = _randomise_bn(getattr(tvseg, arch)(weights=None, weights_backbone=None, num_classes=21,
                                             aux_loss=True)).eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model = load_model(tmp_path / "tv.pth")
    assert model.meta.arch == arch and model.meta.aux and model.meta.source_format == "torchvision"
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X)["out"], rtol=0, atol=1e-5)
