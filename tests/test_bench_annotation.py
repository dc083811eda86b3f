"""benchmarks/bench_annotation.py: the command line other code relies on, its JSON, and the loop."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import annotation_loop
import bench_annotation

from engine import default_classes


@pytest.fixture
def scenes(tmp_path) -> Path:
    return bench_annotation.write_scenes(tmp_path / "scenes", 3, (72, 96), seed=3)


def test_cli_writes_the_documented_json_for_each_tool_set(scenes, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                                "--start", str(scenes / "noisy"), "--tools", "manual,snap",
                                "--target", "0.85,0.9", "--max-actions", "40", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["target"] == [0.85, 0.9] and report["images"] == 3
    for name in ("manual", "snap"):
        row = report["tool_sets"][name]
        assert {"noc85", "noc90", "clicks", "seconds", "final_miou", "failed", "per_image"} <= set(row)
        assert len(row["per_image"]) == 3 and row["failed"] == 0 and row["final_miou"] >= 0.9
        assert 0 < row["noc85"] <= row["noc90"] <= row["clicks"]
        assert row["start_miou"] < 0.9    # the noisy start was read, not the truth
    table = capsys.readouterr().out
    assert "| manual |" in table and "| snap |" in table and "NoC@90" in table


def test_rgb_voc_colour_masks_are_read_as_indices(tmp_path):
    colors = [c.color for c in default_classes()]
    truth = np.zeros((8, 10), np.uint8)
    truth[2:6, 3:7] = 2
    truth[0, 0] = 255
    rgb = np.array([colors[v] if v != 255 else (224, 224, 192) for v in truth.ravel()], np.uint8).reshape(8, 10, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert np.array_equal(bench_annotation.read_truth(tmp_path / "m.png"), truth)


def test_a_start_from_the_truth_needs_nothing_and_bad_input_is_one_line(scenes, tmp_path, capsys):
    rc = bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                                "--start", str(scenes / "masks"), "--tools", "manual", "--json",
                                str(tmp_path / "p.json")])
    row = json.loads((tmp_path / "p.json").read_text())["tool_sets"]["manual"]
    assert rc == 0 and row["clicks"] == 0 and row["noc90"] == 0 and row["final_miou"] == 1.0
    with pytest.raises(SystemExit) as e:
        bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                               "--tools", "lasso"])
    assert e.value.code == 2 and "unknown tool set lasso" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --weights"):
        bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                               "--start", "prelabel"])


def test_the_loop_runs_one_round_on_a_tiny_model(tmp_path):
    lines = []
    report = annotation_loop.annotation_loop(batches=1, batch_size=2, iterations=2, tools=("manual",),
                                             size=(48, 64), heldout=1, pretrain_iterations=2,
                                             max_actions=30, workdir=tmp_path, log=lines.append)
    (row,) = report["rounds"]
    assert row["batch"] == 1 and 0 <= row["heldout_prelabel_miou"] <= 1
    manual = row["tool_sets"]["manual"]
    assert manual["clicks"] > 0 and manual["seconds"] > 0
    assert row["finetune"]["status"] == "done" and row["finetune"]["images"] == 2
    from engine import AnnotationStore, Status
    with AnnotationStore.open(tmp_path / "to_label", read_only=True) as store:
        assert sorted(i for i, s in store.statuses().items() if s == Status.REVIEWED) == ["img000.png", "img001.png"]
    assert any("| 1 |" in line for line in lines)


def test_prelabel_start_runs_the_given_weights(scenes, tmp_path):
    import engine
    from trainer.synthetic import CLASSES
    model = engine.build_model("deeplabv3plus_mobilenet_v2", num_classes=3, class_names=[c for c, _ in CLASSES])
    ckpt = tmp_path / "m.safetensors"
    engine.save_model(model.eval(), ckpt)
    items, n = bench_annotation.load_items(scenes / "images", scenes / "masks", "prelabel", str(ckpt))
    assert n == 3 and len(items) == 3
    predictor = engine.Predictor(engine.load_model(ckpt), device="cpu")
    assert np.array_equal(items[0].start, predictor.predict_labels(items[0].image))
    assert items[0].probs is not None and items[0].probs.shape[0] == 3   # the snap gets the model's probabilities


def test_click_tool_sets_run_and_random_weight_rows_say_so(scenes, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace
    calls = []

    class Whole:      # a stand-in click model: the whole image, every time
        def set_image(self, image):
            self.shape = image.shape[:2]

        def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
            calls.append(len(points))
            k = 3 if multimask else 1
            return SimpleNamespace(masks=np.ones((k,) + self.shape, bool), scores=np.ones(k),
                                   low_res_logits=np.zeros((k, 256, 256), np.float32))

    made = []

    def fake(name="mobile_sam", weights=None):
        made.append((name, weights))
        return Whole(), f"{name}, {bench_annotation.RANDOM_NOTE}"

    monkeypatch.setattr(bench_annotation, "click_predictor", fake)
    out = tmp_path / "c.json"
    rc = bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                                "--start", str(scenes / "noisy"), "--tools", "crfclick,click", "--click-model",
                                "tiny", "--click-images", "2", "--json", str(out)])
    assert rc == 0 and made == [("tiny", None)] and calls
    report = json.loads(out.read_text())["tool_sets"]
    assert report["click"]["note"] == "tiny, random weights: measures cost, not quality"
    assert report["click"]["images"] == 2 and report["crfclick"]["images"] == 3 and "note" not in report["crfclick"]
    assert report["crfclick"]["final_miou"] >= 0.9 and report["crfclick"]["failed"] == 0
    table = capsys.readouterr().out
    assert "| click (tiny, random weights: measures cost, not quality) |" in table and "| crfclick |" in table


def test_click_model_errors_are_one_line(scenes, capsys):
    with pytest.raises(SystemExit, match="bench_annotation: --click-model: unknown click model 'nope'"):
        bench_annotation.main(["--images", str(scenes / "images"), "--masks", str(scenes / "masks"),
                               "--tools", "click", "--click-model", "nope"])
    with pytest.raises(SystemExit) as e:
        bench_annotation.main(["--loop", "--tools", "manual,click"])
    assert e.value.code == 2 and "leave click out" in capsys.readouterr().err
