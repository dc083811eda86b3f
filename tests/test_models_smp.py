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

import engine  # noqa: E402
from engine import build_model, list_models, load_model  # noqa: E402
from engine.checkpoints import CheckpointError  # noqa: E402
from engine.checkpoints.formats import detect_format, match_architecture  # noqa: E402
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
