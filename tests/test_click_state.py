"""session.click: choosing a click model loads it in the background, embeddings are made off the UI
thread for the current image (then its neighbours), cached in the store, and dropped with their model."""
from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from engine.click import LOW_RES, ClickModel, ClickSpec, registry


class Toy(ClickModel):
    """Encoder: a 1×1 conv over a 32×32 downscale (records the thread it ran on, and can be held);
    decoder: a disc around the first point."""
    family = "toy"
    image_size = 64
    threads: ClassVar[list[int]] = []
    gate: threading.Event | None = None
    running = 0
    most_at_once = 0

    def __init__(self, name: str = "toy") -> None:
        super().__init__(name)
        self.conv = nn.Conv2d(3, 4, 1)

    def preprocess(self, image):
        h, w = image.shape[:2]
        s = self.image_size / max(h, w)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        pad = torch.zeros(1, 3, self.image_size, self.image_size)
        pad[:, :, :x.shape[2], :x.shape[3]] = x
        return pad, (x.shape[2], x.shape[3])

    def encode(self, x):
        cls = type(self)
        cls.threads.append(threading.get_ident())
        cls.running += 1
        cls.most_at_once = max(cls.most_at_once, cls.running)
        try:
            if cls.gate is not None:
                assert cls.gate.wait(10)
            return {"embed": self.conv(F.avg_pool2d(x, 2))}
        finally:
            cls.running -= 1

    def transform_coords(self, xy, original_size, input_size):
        return (np.asarray(xy) * (input_size[1] / original_size[1])).astype(np.float32)

    def decode(self, features, points, labels, box, mask_input, multimask):
        yy, xx = torch.meshgrid(torch.arange(LOW_RES), torch.arange(LOW_RES), indexing="ij")
        cx, cy = points[0, 0] * (LOW_RES / self.image_size)
        d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
        radii = (8.0, 16.0, 24.0) if multimask else (16.0,)
        return torch.stack([r - d for r in radii])[None], features["embed"].mean().expand(1, len(radii))

    def postprocess(self, low, input_size, original_size):
        up = F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.interpolate(up[..., :input_size[0], :input_size[1]], size=original_size, mode="bilinear",
                             align_corners=False)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Only the toy click model is registered; ``toy(seed)`` saves one with its own weights, returns its path."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_FAMILIES", ())
    registry.expected_click_shapes.cache_clear()
    registry.largest_click_bytes.cache_clear()
    registry.register_click_model(ClickSpec("toy", "toy", Toy))
    monkeypatch.setattr(Toy, "threads", [])
    monkeypatch.setattr(Toy, "gate", None)
    monkeypatch.setattr(Toy, "most_at_once", 0)
    monkeypatch.setenv("DEEPLAB_GUI_CACHE", str(tmp_path / "cache"))

    def make(seed: int = 0):
        torch.manual_seed(seed)
        path = tmp_path / f"toy{seed}.pt"
        torch.save(Toy().state_dict(), path)
        return path
    yield make
    registry.expected_click_shapes.cache_clear()
    registry.largest_click_bytes.cache_clear()


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / name)
    return d


def _choose(qtbot, s, path):
    before = s.click.model
    with qtbot.waitSignal(s.click.changed, timeout=10_000):
        s.click.choose_file(str(path))
        assert s.click.model is before and s.click.busy   # the load runs in the background


def _ready(qtbot, s, image_id):
    qtbot.waitUntil(lambda: s.click._ready.get(image_id) is not None, timeout=10_000)
    return s.click.predictor(image_id)


def _go(qtbot, s, image_id):
    with qtbot.waitSignal(s.current_changed, timeout=10_000):
        s.select(image_id)


def test_choosing_a_file_loads_it_and_the_current_image_is_embedded_off_the_ui_thread(qtbot, sessions, folder,
                                                                                       toy):
    s = sessions(folder)
    s.click.neighbours = False
    path = toy()
    _choose(qtbot, s, path)
    assert s.click.model_name == "toy0.pt"
    assert s.settings.click_model() == str(path.resolve())   # remembered for the next start
    p = _ready(qtbot, s, "a.png")
    assert Toy.threads and threading.get_ident() not in Toy.threads
    assert s.click.encoder_calls == 1
    out = p.predict(points=[[10, 12]], labels=[1])
    assert out.masks.shape == (3, 24, 32) and out.masks[0, 12, 10]
    assert s.click.status_text == "toy0.pt: ready"
    assert s.store.load_embedding("a.png", s.click.model_id) is not None   # cached in the store


def test_a_second_visit_takes_the_embedding_from_memory_or_the_store(qtbot, sessions, folder, toy):
    s = sessions(folder)
    s.click.neighbours = False
    _choose(qtbot, s, toy())
    first = None
    for k, image_id in enumerate(("a.png", "b.png", "c.png", "d.png"), 1):
        if image_id != "a.png":
            _go(qtbot, s, image_id)
        got = _ready(qtbot, s, image_id)
        if first is None:
            first = {k: v.copy() for k, v in got.get_embedding().features.items()}
        assert s.click.encoder_calls == k
    _go(qtbot, s, "c.png")        # still in memory
    assert s.click.predictor("c.png") is not None
    _go(qtbot, s, "a.png")        # only in the store's cache by now
    assert s.click.predictor("a.png") is None   # being read back, not computed here
    again = _ready(qtbot, s, "a.png")
    assert again is not None
    assert s.click.encoder_calls == 4
    # The first visit already used the features at the cache's precision: the same bits come back.
    assert all(np.array_equal(v, again.get_embedding().features[k]) for k, v in first.items())
    assert len(s.click._ready) <= 3   # a few embeddings in memory, however many images were seen


def test_neighbours_are_prepared_after_the_current_image(qtbot, sessions, folder, toy):
    s = sessions(folder)
    s.click.neighbour_quiet_s = 0.0
    _choose(qtbot, s, toy())
    _ready(qtbot, s, "a.png")
    _ready(qtbot, s, "b.png")      # the next image, made while the person looks at a.png
    assert s.click.encoder_calls == 2
    _go(qtbot, s, "b.png")
    assert s.click.predictor("b.png") is not None
    _ready(qtbot, s, "c.png")
    assert s.click.encoder_calls == 3
    assert Toy.most_at_once == 1


def test_neighbours_wait_while_the_click_tool_is_in_use(qtbot, sessions, folder, toy):
    s = sessions(folder)
    s.click.neighbour_quiet_s = 0.5
    _choose(qtbot, s, toy())
    _ready(qtbot, s, "a.png")
    s.click.note_prompt()                    # a click on a.png: b.png's encoder run must not start yet
    qtbot.wait(300)
    assert s.click.encoder_calls == 1
    _ready(qtbot, s, "b.png")                # once the tool has been quiet for a while, it does
    assert s.click.encoder_calls == 2


class PausingToy(Toy):
    """Toy whose encoder has four (identity) blocks; while ``hold`` is closed a run waits after its first."""
    hold: ClassVar[threading.Event | None] = None
    order: ClassVar[list[str]] = []

    def __init__(self, name: str = "toy") -> None:
        super().__init__(name)
        self.image_encoder = nn.Module()
        self.image_encoder.blocks = nn.ModuleList(nn.Identity() for _ in range(4))

    def encode(self, x):
        for i, block in enumerate(self.image_encoder.blocks):
            x = block(x)
            if i == 0 and type(self).hold is not None:
                type(self).order.append("encoder paused")
                assert type(self).hold.wait(10)
        type(self).order.append("encoder done")
        return super().encode(x)


def test_a_click_during_a_neighbours_encoder_run_is_answered_at_its_next_pause(qtbot, sessions, folder, toy,
                                                                                 monkeypatch):
    from deeplab_gui.state.click_models import CLICK_LANE
    monkeypatch.setattr(registry, "_REGISTRY", {})
    registry.register_click_model(ClickSpec("toy", "toy", PausingToy))
    monkeypatch.setattr(PausingToy, "order", [])
    s = sessions(folder)
    s.click.neighbour_quiet_s = 0.3
    _choose(qtbot, s, toy())
    _ready(qtbot, s, "a.png")
    monkeypatch.setattr(PausingToy, "hold", threading.Event())
    qtbot.waitUntil(lambda: PausingToy.order[-1:] == ["encoder paused"], timeout=10_000)   # b.png's run
    threads = []
    click = s.run_task(lambda: PausingToy.order.append("click") or threads.append(threading.get_ident()),
                       lane=CLICK_LANE, priority=1, task_name="Click region")
    PausingToy.hold.set()
    _ready(qtbot, s, "b.png")
    qtbot.waitUntil(lambda: click.done, timeout=10_000)
    assert PausingToy.order[-3:] == ["encoder paused", "click", "encoder done"]
    assert threads == [Toy.threads[-1]]        # on the lane's thread, inside the encoder's run


def test_a_model_change_drops_the_old_models_embeddings(qtbot, sessions, folder, toy):
    s = sessions(folder)
    s.click.neighbours = False
    first, second = toy(0), toy(1)
    Toy.gate = threading.Event()      # hold the first model's encoder mid-run
    _choose(qtbot, s, first)
    qtbot.waitUntil(lambda: len(Toy.threads) == 1, timeout=10_000)
    _choose(qtbot, s, second)
    assert s.click.predictor("a.png") is None
    Toy.gate.set()
    p = _ready(qtbot, s, "a.png")
    assert p.model is s.click.model and s.click.model_name == "toy1.pt"
    assert s.click.encoder_calls == 2 and Toy.most_at_once == 1   # never two encoder runs at once
    # The first model's run finished after the change: its embedding was not taken for the second's.
    ref = type(p)(s.click.model)
    ref.set_image(s.image)
    np.testing.assert_allclose(p.get_embedding().features["embed"], ref.get_embedding().features["embed"],
                               atol=1e-3)


def test_the_choice_comes_back_with_the_next_session(qtbot, sessions, folder, toy):
    s = sessions(folder)
    path = toy()
    _choose(qtbot, s, path)
    s.shutdown()
    s2 = sessions(folder)
    qtbot.waitUntil(lambda: s2.click.model is not None, timeout=10_000)
    assert s2.click.model_name == "toy0.pt"


def test_without_a_model_the_status_says_how_to_get_one(qtbot, sessions, folder, toy, tmp_path):
    from engine.weights import catalog
    s = sessions(folder)
    text = s.click.status_text
    assert "mobile_sam" in text and str(catalog.weights_path("mobile_sam")) in text and "\n" not in text
    assert s.click.predictor("a.png") is None and s.click.model_name is None
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    said = []
    s.message.connect(lambda level, text: said.append((level, text)))
    s.click.choose_file(str(bad))
    qtbot.waitUntil(lambda: not s.click.busy, timeout=10_000)
    assert s.click.model is None and "broken.pt" in s.click.status_text
    assert "Error" not in s.click.status_text and "\n" not in s.click.status_text
    # The panel's one line cuts it: the whole message goes to the window's message box too.
    assert said == [("error", s.click.error)]


def test_model_panel_lists_the_catalog_and_shows_the_status(qtbot, sessions, folder, toy):
    from deeplab_gui.widgets.panels.click_model_box import FROM_FILE, ClickModelBox
    from engine.weights import catalog
    s = sessions(folder)
    box = ClickModelBox(s)
    qtbot.addWidget(box)
    ids = [box.combo.itemData(i) for i in range(box.combo.count())]
    assert ids == [e.id for e in catalog.list_weights("click")] + [FROM_FILE] and len(ids) == 9
    assert "41 MB download" in box.combo.itemText(ids.index("mobile_sam"))
    assert box.status.text() == s.click.status_text
    path = toy()
    with qtbot.waitSignal(s.click.changed, timeout=10_000):
        s.click.choose_file(str(path))
    qtbot.waitUntil(lambda: box.status.text() == "toy0.pt: ready", timeout=10_000)
    assert box.combo.currentData() == str(path.resolve()) and not box.button.isEnabled()


def test_picking_from_file_asks_for_the_file_at_once_near_the_one_in_use(qtbot, sessions, folder, toy, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from deeplab_gui.widgets.panels.click_model_box import FROM_FILE, ClickModelBox
    s = sessions(folder)
    box = ClickModelBox(s)
    qtbot.addWidget(box)
    path = toy()
    with qtbot.waitSignal(s.click.changed, timeout=10_000):
        s.click.choose_file(str(path))
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda parent, title, start, filters: asked.append(start) or ("", "")))
    i = box.combo.findData(FROM_FILE)
    box.combo.setCurrentIndex(i)
    box.combo.activated.emit(i)                     # what a person's pick sends
    assert asked == [str(path.resolve().parent)]
