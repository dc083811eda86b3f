"""Trainer building blocks: schedule, split, augmentation, metrics, parameter groups, classes, versions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import engine
from trainer import (
    Recipe,
    Version,
    VersionError,
    Versions,
    adapt_classes,
    class_tensor_keys,
    confusion_matrix,
    is_backbone_param,
    miou,
    poly_lr,
    progress_fraction,
    split_heldout,
    split_params,
)
from trainer.augment import augment_pair, to_input
from trainer.dataset import InfiniteSampler, Sample
from trainer.params import freeze_bn_params, set_train_mode


def test_poly_schedule_is_papers_formula_and_follows_the_tighter_budget():
    assert poly_lr(0.01, 0.0) == pytest.approx(0.01)
    assert poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 1.0) == 0.0 and poly_lr(0.01, 3.0) == 0.0
    assert progress_fraction(10, 100) == pytest.approx(0.1)
    assert progress_fraction(10, 100, elapsed_s=30, time_budget_s=60) == pytest.approx(0.5)


def _samples(n):
    return [Sample(f"im{i}.png", None, None) for i in range(n)]  # type: ignore[arg-type]


def test_heldout_split_is_deterministic_and_never_empty_from_three_images():
    assert split_heldout(_samples(2), 0.2)[1] == []
    for n in (3, 4, 10, 50):
        train, held = split_heldout(_samples(n), 0.2, seed=0)
        assert len(held) >= 1 and len(train) >= 1 and len(train) + len(held) == n
        assert split_heldout(_samples(n), 0.2, seed=0) == (train, held)
    # Adding images keeps most earlier held-out images held out (hash-based, not positional).
    small = {s.id for s in split_heldout(_samples(20), 0.2)[1]}
    big = {s.id for s in split_heldout(_samples(21), 0.2)[1]}
    assert len(small & big) >= len(small) - 1


def test_augmentation_scales_pads_with_void_and_crops_any_size():
    rng = np.random.default_rng(0)
    image = np.full((20, 30, 3), 200, np.uint8)
    mask = np.ones((20, 30), np.uint8)
    for _ in range(10):
        img, m = augment_pair(image, mask, rng, crop=48, scale_min=0.5, scale_max=2.0)
        assert img.shape == (48, 48, 3) and m.shape == (48, 48)
        assert set(np.unique(m)) <= {1, 255}
        assert ((m == 255) == (img[..., 0] != 200)).all()  # padding only where the mask is void
    # A large image is cropped, never padded, at scale 1.
    big = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100)
    img, m = augment_pair(np.zeros((100, 100, 3), np.uint8), (big % 7).astype(np.uint8), rng, crop=32,
                          scale_min=1.0, scale_max=1.0, flip=False)
    assert (m != 255).all()


def test_to_input_matches_the_predictor_arithmetic():
    pp = engine.meta.CAFFE_BGR
    img = np.random.default_rng(0).integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    x = to_input(img, pp)
    expect = img[0, :, :, ::-1].astype(np.float32) - np.array(pp.mean, np.float32)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expect, rtol=1e-6)


def test_sampler_shards_epochs_evenly_over_ranks():
    take = lambda s, k: [next(it) for it in [iter(s)] for _ in range(k)]  # noqa: E731
    r0 = take(InfiniteSampler(5, seed=1, rank=0, world=2), 3)
    r1 = take(InfiniteSampler(5, seed=1, rank=1, world=2), 3)
    assert {i for i, _ in r0} | {i for i, _ in r1} == set(range(5))  # one epoch covers every image
    assert not {d for _, d in r0} & {d for _, d in r1}  # distinct augmentation draws


def test_confusion_and_miou_ignore_void():
    target = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.sum() == 3 and conf[0, 0] == 1 and conf[0, 1] == 1 and conf[1, 1] == 1
    assert miou(conf) == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 2 absent everywhere: not averaged


@pytest.mark.parametrize("arch", ["deeplabv3plus_mobilenet_v2", "deeplabv2_resnet101", "deeplabv1_vgg16",
                                  "smp_deeplabv3plus_resnet34", "mmseg_deeplabv3plus_r50v1c"])
def test_param_groups_split_backbone_from_head(arch):
    with torch.device("meta"):
        model = engine.build_model(arch, num_classes=3)
    backbone, head = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert backbone and head and len(backbone) + len(head) == len(names)
    head_names = [names[id(p)] for p in head]
    if arch.startswith("deeplabv2"):
        assert all(n.startswith("base.aspp.") for n in head_names)
    elif arch.startswith("smp_"):
        assert all(n.startswith(("decoder.", "segmentation_head.")) for n in head_names)
    elif arch.startswith("mmseg_"):
        assert all(n.startswith(("decode_head.", "auxiliary_head.")) for n in head_names)
    else:
        assert all(n.startswith(("classifier.", "aux_classifier.")) for n in head_names)
    assert is_backbone_param("module.backbone.x") and not is_backbone_param("module.classifier.x")


def test_frozen_bn_keeps_running_statistics():
    model = engine.build_model("deeplabv3_mobilenet_v2", num_classes=2)
    freeze_bn_params(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    set_train_mode(model, frozen_bn=True)
    assert model.training and not bn.training and not bn.weight.requires_grad
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)


def test_class_list_change_keeps_matched_rows_and_everything_else():
    old = engine.build_model("deeplabv3plus_mobilenet_v2", num_classes=3,
                             class_names=["background", "disc", "box"])
    keys = class_tensor_keys(old)
    assert keys == ["classifier.classifier.3.weight", "classifier.classifier.3.bias"]
    new, change = adapt_classes(old, ["background", "box", "cat", "dog"])
    assert change.kept == {"background": (0, 0), "box": (2, 1)}
    assert change.added == ["cat", "dog"] and change.removed == ["disc"]
    assert new.meta.num_classes == 4 and new.meta.class_names == ["background", "box", "cat", "dog"]
    o, n = old.state_dict(), new.state_dict()
    for k in o:
        if k in keys:
            assert torch.equal(n[k][0], o[k][0]) and torch.equal(n[k][1], o[k][2])
            assert not torch.equal(n[k][2], o[k][1])  # the new class did not inherit disc's row
        else:
            assert torch.equal(n[k], o[k]), k
    assert new(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    assert old.meta.num_classes == 3  # the input model is untouched
    # A rename that should keep its row, and a colour-only change, which copies the model unchanged.
    renamed, ch = adapt_classes(old, ["background", "ball", "box"], renames={"disc": "ball"})
    assert not ch.changed and torch.equal(renamed.state_dict()[keys[0]], o[keys[0]])
    assert renamed is not old and old.meta.class_names[1] == "disc"


def test_versions_index_add_promote_rollback_and_rebuild(tmp_path):
    model = engine.build_model("deeplabv3_mobilenet_v2", num_classes=2)
    vs = Versions(tmp_path)
    assert vs.list() == [] and vs.current is None
    for i, (before, after) in enumerate([(0.3, 0.5), (0.5, 0.4)], 1):
        v = Version(name=f"m-v00{i}.safetensors", parent=None if i == 1 else "m-v001.safetensors",
                    images=["a.png"], miou_before=before, miou_after=after, created=float(i))
        engine.save_model(model, tmp_path / v.name, version=v.to_dict())
        vs.add(v, make_current=bool(v.improved))
    assert vs.current.name == "m-v001.safetensors"  # the second run dropped: not made current
    vs.set_current("m-v002.safetensors")
    assert Versions(tmp_path).current_path() == tmp_path / "m-v002.safetensors"
    with pytest.raises(VersionError):
        vs.set_current("nope.safetensors")
    # A damaged index is rebuilt from the checkpoints' own metadata.
    (tmp_path / "versions.json").write_text("{not json")
    again = Versions(tmp_path)
    assert [v.name for v in again.list()] == ["m-v001.safetensors", "m-v002.safetensors"]
    assert again.get("m-v002.safetensors").parent == "m-v001.safetensors" and again.notice
    again.set_current("m-v001.safetensors")  # the next write replaces the damaged file
    assert json.loads((tmp_path / "versions.json").read_text())["current"] == "m-v001.safetensors"


def test_recipe_validates_and_round_trips():
    r = Recipe(iterations=5, crop=64, batch_size=2)
    assert r.bn_frozen() and not Recipe(batch_size=16).bn_frozen() and not Recipe(freeze_bn=False).bn_frozen()
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError):
        Recipe(crop=4)


def test_msc_loss_sums_one_cross_entropy_per_scale_output():
    from engine.models.deeplabv2 import DeepLabV2, DeepLabV2Base
    from trainer.loop import msc_loss, seg_loss

    torch.manual_seed(0)
    model = DeepLabV2(DeepLabV2Base(3, (1, 1, 1, 1), (6, 12, 18, 24)), msc_scales=(0.5, 0.75))
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    y[:, :8] = 255  # void rows stay void at every size
    outs = model(x, return_scales=True)
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 9), (5, 5), (7, 7), (9, 9)]  # full, 0.5, 0.75, max (Caffe ceil)
    loss = msc_loss(outs, y)
    expected = sum(seg_loss(o, torch.nn.functional.interpolate(y[:, None].float(), size=o.shape[-2:],
                                                               mode="nearest-exact")[:, 0].long()) for o in outs)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # Inference output is unchanged by the training hook: the max over scales, upsampled.
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3, 64, 64)
        fused = model(x, return_scales=True)[-1]
    assert torch.allclose(out, torch.nn.functional.interpolate(fused, size=(64, 64), mode="bilinear",
                                                               align_corners=False))


def test_finetune_trains_deeplab_v2_on_every_scale(tmp_path, monkeypatch):
    from engine import AnnotationStore
    from trainer import FineTune
    from trainer import loop as loop_mod
    from trainer.synthetic import make_folder

    calls = []
    real = loop_mod.msc_loss
    monkeypatch.setattr(loop_mod, "msc_loss", lambda outs, y: calls.append(len(outs)) or real(outs, y))
    make_folder(tmp_path / "f", 3, size=[(48, 56)], seed=4)
    torch.manual_seed(0)
    model = engine.build_model("deeplabv2_resnet101", num_classes=3)
    with AnnotationStore.open(tmp_path / "f") as store:
        result = FineTune(store, model, Recipe(iterations=1, crop=48, batch_size=1, eval_every=0, device="cpu",
                                               heldout_fraction=0, eval_max_side=None)).run()
    assert result.status == "done" and calls == [4]  # full, 0.5, 0.75 and their max


def test_untrained_batchnorm_is_trained_even_for_small_batches(tmp_path):
    from engine import AnnotationStore
    from trainer import FineTune
    from trainer.params import bn_statistics_trained
    from trainer.synthetic import make_folder

    fresh = engine.build_model("deeplabv3_mobilenet_v2", num_classes=3)
    assert not bn_statistics_trained(fresh)
    fresh.train()
    with torch.no_grad():
        fresh(torch.randn(2, 3, 32, 32))
    assert bn_statistics_trained(fresh)
    make_folder(tmp_path / "f", 3, size=[(48, 56)], seed=5)
    built = []

    def build():  # a builder runs on the iterating thread, once
        built.append(1)
        return engine.build_model("deeplabv3_mobilenet_v2", num_classes=3)
    events = []
    with AnnotationStore.open(tmp_path / "f") as store:
        run = FineTune(store, build, Recipe(iterations=2, crop=48, batch_size=2, eval_every=0, device="cpu",
                                            heldout_fraction=0, eval_max_side=None))
        result = run.run(events.append)
    assert built == [1] and result.status == "done"
    messages = [e.message for e in events if e.phase == "prepare"]
    assert "building a new model" in messages and any("untrained" in (m or "") for m in messages)
    assert bn_statistics_trained(result.model)  # BatchNorm learned running statistics from the crops

