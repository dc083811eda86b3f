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


# --------------------------------------------------------------------------- zoo files


import os  # noqa: E402
import types  # noqa: E402
import contextlib  # noqa: E402

import numpy as np  # noqa: E402

from engine.checkpoints import CheckpointError, load_model, read_checkpoint  # noqa: E402
from engine.checkpoints.formats import detect_format  # noqa: E402
from engine.models.mmseg_classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, classes_from_meta  # noqa: E402


@contextlib.contextmanager
def _fake_module(qualname: str, obj):
    """Make ``obj`` picklable under ``qualname`` (e.g. mmengine's HistoryBuffer) without mmengine."""
    module, name = qualname.rsplit(".", 1)
    parts = module.split(".")
    added = []
    for i in range(1, len(parts) + 1):
        mod = ".".join(parts[:i])
        if mod not in sys.modules:
            sys.modules[mod] = types.ModuleType(mod)
            added.append(mod)
    setattr(sys.modules[module], name, obj)
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    try:
        yield
    finally:
        for mod in added:
            del sys.modules[mod]


class _HistoryBuffer:  # pickles like mmengine's: NEWOBJ + BUILD with numpy arrays in its __dict__
    def __init__(self):
        self._max_length = 1000000
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvilFramework:  # a callable in a framework namespace: becomes an inert placeholder, never runs
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def _touch(path):
    pathlib.Path(path).write_text("ran")


@functools.lru_cache(maxsize=None)
def _zoo_state(stem: str, num_classes: int) -> dict[str, torch.Tensor]:
    """Small non-zero weights in mmseg's layout (values do not matter to loading)."""
    gold = _golden(stem)
    out = {}
    for k, shape in gold["keys"].items():
        if "conv_seg" in k:
            shape = [num_classes] + shape[1:]
        out[k] = torch.zeros(shape, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.full(shape, 0.01)
    return out


def _meta_v0(nc=19):
    return {"mmseg_version": "0.5.0+b2724da", "config": "model = dict(type='EncoderDecoder')\n",
            "CLASSES": CITYSCAPES_CLASSES[:nc], "PALETTE": [list(c) for c in CITYSCAPES_PALETTE[:nc]],
            "mmcv_version": "1.0.0", "time": "Sat Jun  6 11:40:49 2020", "epoch": 1, "iter": 80000,
            "hook_msgs": {"best_score": np.float64(0.8), "best_ckpt": "iter_80000.pth"}}


def test_zoo_file_loads_with_architecture_classes_and_palette(tmp_path):
    sd = _zoo_state("keys_mmseg_deeplabv3plus_r50v1c", 19)
    path = tmp_path / "deeplabv3plus_r50-d8_512x1024_80k_cityscapes_20200606_114049-f9fb496d.pth"
    meta = _meta_v0()
    meta["PALETTE"] = np.array(meta["PALETTE"], dtype=np.uint8)  # some zoo files keep numpy arrays
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}, path)
    assert detect_format(sd) == "mmseg"
    model = load_model(path)
    m = model.meta
    assert (m.arch, m.num_classes, m.output_stride, m.aux, m.source_format) == (
        "mmseg_deeplabv3plus_r50v1c", 19, 8, True, "mmseg")
    assert m.class_names == list(CITYSCAPES_CLASSES) and m.class_colors == list(CITYSCAPES_PALETTE)
    assert m.preprocessing == MMSEG
    torch.testing.assert_close(model.state_dict()["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.weight"])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 24, 32)).shape == (1, 19, 24, 32)


def test_mmengine_file_with_message_hub_loads_and_nothing_runs(tmp_path):
    sd = _zoo_state("keys_mmseg_deeplabv3_r50v1c", 3)
    marker = tmp_path / "ran"
    path = tmp_path / "iter_40000.pth"
    with _fake_module("mmengine.logging.history_buffer.HistoryBuffer", _HistoryBuffer), \
            _fake_module("mmengine.utils.misc.touch", _touch):
        torch.save({"meta": {"dataset_meta": {"classes": ("a", "b", "c"), "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
                             "seed": 0, "mmengine_version": "0.10.7", "iter": 40000, "cfg": "model = ..."},
                    "state_dict": sd,
                    "message_hub": {"log_scalars": {"train/loss": _HistoryBuffer()},
                                    "runtime_info": {"iter": 40000, "stamp": _EvilFramework(marker)},
                                    "resumed_keys": {"iter": True}},
                    "param_schedulers": [{"by_epoch": False, "last_step": 40000}]}, path)
    raw = read_checkpoint(path)
    assert raw.wrapper == "state_dict" and raw.peer_meta["dataset_meta"]["classes"] == ("a", "b", "c")
    model = load_model(path)
    assert model.meta.arch == "mmseg_deeplabv3_r50v1c" and model.meta.class_names == ["a", "b", "c"]
    assert model.meta.class_colors == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert not marker.exists()


def _tiny_mmseg_file(path, **top):
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.ones(2, 4, 1, 1)}, **top}, path)
    return path


def test_malicious_meta_is_refused_and_never_called(tmp_path):
    marker = tmp_path / "ran"
    cases = {
        "os.system in meta": {"meta": {"CLASSES": ("a", "b"), "hook": _Evil(marker)}},
        "os.system in message_hub": {"meta": {}, "message_hub": {"x": _Evil(marker)}},
        "an arbitrary class in meta": {"meta": {"x": types.SimpleNamespace(a=1)}},
    }
    for what, top in cases.items():
        path = _tiny_mmseg_file(tmp_path / f"{len(what)}.pth", **top)
        with pytest.raises(CheckpointError, match="refused to load") as e:
            read_checkpoint(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), what
    # a framework-namespace object is inert bookkeeping elsewhere, but never allowed in meta
    with _fake_module("mmengine.utils.misc.touch", _touch):
        path = _tiny_mmseg_file(tmp_path / "fw.pth", meta={"stamp": _EvilFramework(marker)})
    with pytest.raises(CheckpointError, match="'meta' entry holds a mmengine.utils.misc.touch object"):
        read_checkpoint(path)
    assert not marker.exists()


def test_wrong_model_missing_key_and_nan_are_refused(tmp_path):
    sd = dict(_zoo_state("keys_mmseg_deeplabv3_r50v1c", 3))
    path = tmp_path / "v3.pth"
    torch.save({"meta": _meta_v0(3), "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="does not fit the mmseg_deeplabv3plus_r50v1c architecture"):
        load_model(path, arch="mmseg_deeplabv3plus_r50v1c")
    with pytest.raises(CheckpointError, match="has 3 classes|with 5 classes"):
        load_model(path, num_classes=5)
    del sd["decode_head.bottleneck.conv.weight"]
    torch.save({"meta": _meta_v0(3), "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"mmseg checkpoint .*1 missing key\(s\): decode_head.bottleneck.conv"):
        load_model(path)
    bad = _tiny_mmseg_file(tmp_path / "nan.pth")
    torch.save({"meta": {}, "state_dict": {"decode_head.conv_seg.weight": torch.full((2, 4, 1, 1), float("nan"))}},
               bad)
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        read_checkpoint(bad)


def test_classes_from_meta_forms():
    v0 = {"CLASSES": ("x", "y"), "PALETTE": [[1, 2, 3], [4, 5, 6]]}
    v1 = {"dataset_meta": {"classes": ["x", "y"], "palette": np.array([[1, 2, 3], [4, 5, 6]])}}
    assert classes_from_meta(v0, 2) == classes_from_meta(v1, 2) == (["x", "y"], [(1, 2, 3), (4, 5, 6)])
    assert classes_from_meta(v0, 3) is None and classes_from_meta(None, 2) is None
    assert classes_from_meta({"CLASSES": ("x", "y"), "PALETTE": [[1, 2]]}, 2) == (["x", "y"], [])
