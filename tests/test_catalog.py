"""engine.catalog / engine.download against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import socket
import threading
import urllib.request

import pytest
import torch

from engine import build_model, list_models
from engine.meta import IMAGENET, TORCHVISION_SEG, VOC_CLASSES
from engine.weights import catalog
from engine.weights.catalog import (
    CATALOG,
    WeightsEntry,
    default_cache_dir,
    download,
    get_weights,
    is_downloaded,
    list_weights,
    load_catalog_model,
    resolve_weights,
    weights_path,
)
from engine.weights.download import (
    DownloadCancelled,
    TqdmProgress,
    WeightsError,
    WeightsHashMismatch,
    WeightsUnavailable,
)

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # several 1 MiB chunks
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.hits.append(self.path)
        name = self.path.lstrip("/")
        if name.startswith("short/"):  # announces the full length, sends half, hangs up
            data = self.files[name[len("short/"):]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    _Handler.files = {f"w-{PREFIX}.pth": PAYLOAD, "w-deadbeef.pth": PAYLOAD, "nohash.pth": PAYLOAD}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    _Handler.hits = []


def _entry(url, **kw):
    return WeightsEntry("test_weights", "deeplabv3_mobilenet_v2", url, 21, IMAGENET, "vainf", **kw)


def _closed_port_url(name):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/{name}"


def test_catalog_entries_match_the_design():
    seg = {e.id: e for e in list_weights("segmentation")}
    backbones = {e.id: e for e in list_weights("backbone")}
    clicks = {e.id: e for e in list_weights("click")}
    assert len(seg) == 9 and len(backbones) == 4 and len(clicks) == 8 and len(CATALOG) == 21
    assert set(clicks) == {"sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
                           "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam"}
    assert all(e.arch == e.id and e.approx_mb > 0 and e.license for e in clicks.values())
    assert clicks["sam_vit_b"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert clicks["sam2.1_hiera_large"].url.endswith("/segment_anything_2/092824/sam2.1_hiera_large.pt")
    assert clicks["mobile_sam"].url.endswith("ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt")
    r50 = get_weights("deeplabv3_resnet50_coco")
    assert r50.file_name == "deeplabv3_resnet50_coco-cd0a2569.pth" and r50.sha256_prefix == "cd0a2569"
    assert r50.preprocessing == TORCHVISION_SEG and r50.class_names == VOC_CLASSES and r50.aux
    assert r50.metrics["miou"] == 66.4
    assert get_weights("deeplabv3_mobilenet_v3_large_coco").sha256_prefix == "fc3c493d"
    v2 = get_weights("deeplabv2_resnet101_msc_vocaug")
    assert v2.sha256_prefix is None and v2.format == "kazuto1011" and v2.preprocessing.channel_order == "BGR"
    assert v2.metrics == {"miou": 76.65, "miou_crf": 77.93}
    assert {e.sha256_prefix for e in backbones.values()} == {"397923af", "0676ba61", "63fe2227", "b0353104"}
    for e in CATALOG.values():
        assert e.url.startswith("https://")
        if e.kind == "segmentation":
            assert e.arch in list_models() and len(e.class_names) == e.num_classes
        elif e.kind == "backbone":
            assert e.backbone_for and set(e.backbone_for) <= set(list_models())
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        get_weights("nope")


def test_mmseg_entries_and_datasets():
    by_dataset = {}
    for e in list_weights("segmentation"):
        assert e.dataset, e.id
        by_dataset.setdefault(e.dataset, []).append(e.id)
    assert by_dataset["COCO (VOC classes)"] == ["deeplabv3_resnet50_coco", "deeplabv3_resnet101_coco",
                                               "deeplabv3_mobilenet_v3_large_coco"]
    assert by_dataset["Pascal VOC"] == ["deeplabv2_resnet101_msc_vocaug"]
    assert by_dataset["Cityscapes"] == ["mmseg_deeplabv3plus_r50_cityscapes", "mmseg_deeplabv3plus_r101_cityscapes"]
    assert by_dataset["ADE20K"] == ["mmseg_deeplabv3plus_r50_ade20k", "mmseg_deeplabv3plus_r101_ade20k"]
    assert by_dataset["Pascal Context"] == ["mmseg_deeplabv3_r101_pascal_context"]
    city = get_weights("mmseg_deeplabv3plus_r50_cityscapes")
    assert city.url == ("https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3plus/"
                        "deeplabv3plus_r50-d8_512x1024_80k_cityscapes/"
                        "deeplabv3plus_r50-d8_512x1024_80k_cityscapes_20200606_114049-f9fb496d.pth")
    assert city.sha256_prefix == "f9fb496d" and city.format == "mmseg" and city.output_stride == 8 and city.aux
    assert city.num_classes == 19 and city.class_names[:2] == ("road", "sidewalk")
    assert city.class_colors[0] == (128, 64, 128) and city.metrics == {"miou": 80.09, "miou_ms_flip": 81.13}
    assert city.preprocessing.resize_short == 1024 and city.preprocessing.sliding_window is None
    assert city.preprocessing.mean == (123.675, 116.28, 103.53) and city.preprocessing.scale == 1.0
    assert city.license.startswith("Apache-2.0")
    ade = get_weights("mmseg_deeplabv3plus_r101_ade20k")
    assert ade.num_classes == len(ade.class_colors) == 150 and ade.class_names[0] == "wall"
    assert ade.metrics["miou"] == 45.47 and ade.preprocessing.resize_short == 512
    ctx = get_weights("mmseg_deeplabv3_r101_pascal_context")
    assert ctx.arch == "mmseg_deeplabv3_r101v1c" and ctx.num_classes == 60 and ctx.class_names[0] == "background"
    assert ctx.preprocessing.sliding_window == (480, 480, 320, 320) and ctx.metrics["miou"] == 46.55


def test_load_mmseg_catalog_model_takes_classes_and_evaluation_from_the_entry(tmp_path, monkeypatch):
    # A zoo-layout file whose meta names no classes: names, palette and the zoo's test-time
    # resizing come from the entry.  (Hash check stubbed: no network is reachable.)
    src = build_model("mmseg_deeplabv3plus_r50v1c", num_classes=19, aux=True)
    dest = weights_path("mmseg_deeplabv3plus_r50_cityscapes")
    dest.parent.mkdir(parents=True)
    torch.save({"meta": {"mmseg_version": "0.5.0"}, "state_dict": src.state_dict()}, dest)
    monkeypatch.setattr(catalog, "_hash_ok", lambda path, prefix: True)
    model = load_catalog_model("mmseg_deeplabv3plus_r50_cityscapes")
    m = model.meta
    assert (m.arch, m.num_classes, m.output_stride, m.aux, m.source_format) == (
        "mmseg_deeplabv3plus_r50v1c", 19, 8, True, "mmseg")
    assert m.class_names[-1] == "bicycle" and m.class_colors[-1] == (119, 11, 32)
    assert m.preprocessing.resize_short == 1024 and m.extra["dataset"] == "Cityscapes"


def test_cache_dir_env_override(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "cache" / "weights"
    assert weights_path("resnet50_imagenet") == tmp_path / "cache" / "weights" / "resnet50-0676ba61.pth"
    monkeypatch.delenv(catalog.CACHE_ENV)
    assert default_cache_dir().name == "weights" and "deeplab-gui" in str(default_cache_dir())


def test_download_streams_with_progress_and_hash(server, tmp_path):
    entry = _entry(server + f"w-{PREFIX}.pth")
    events = []
    path = download(entry, progress=lambda done, total: events.append((done, total)))
    assert path == tmp_path / "cache" / "weights" / f"w-{PREFIX}.pth"
    assert path.read_bytes() == PAYLOAD
    assert events[0] == (0, len(PAYLOAD)) and events[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(events) >= 4 and [d for d, _ in events] == sorted(d for d, _ in events)
    assert not list(path.parent.glob("*.part")) and is_downloaded(entry)

    # in place and valid: no network at all
    _Handler.hits.clear()
    assert download(entry) == path and resolve_weights(entry) == path
    assert _Handler.hits == []


def test_bad_hash_leaves_nothing(server, tmp_path):
    entry = _entry(server + "w-deadbeef.pth")
    with pytest.raises(WeightsHashMismatch, match="deadbeef"):
        download(entry)
    folder = tmp_path / "cache" / "weights"
    assert list(folder.iterdir()) == []
    assert not is_downloaded(entry)


def test_wrong_file_in_place_is_replaced(server, tmp_path):
    entry = _entry(server + f"w-{PREFIX}.pth")
    dest = weights_path(entry)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the weights")
    assert not is_downloaded(entry)
    assert download(entry).read_bytes() == PAYLOAD and len(_Handler.hits) == 1


def test_truncated_transfer_leaves_nothing_usable(server, tmp_path):
    entry = _entry(server + "short/nohash.pth")  # no hash to catch it: the length check must
    with pytest.raises(WeightsUnavailable, match="interrupted") as e:
        download(entry)
    assert str(weights_path(entry)) in str(e.value)
    assert list((tmp_path / "cache" / "weights").iterdir()) == []
    ok = download(_entry(server + "nohash.pth"))  # a later good transfer works
    assert ok.read_bytes() == PAYLOAD


def test_offline_names_the_path_to_drop_the_file(tmp_path):
    entry = _entry(_closed_port_url("resnet50-0676ba61.pth"))
    with pytest.raises(WeightsUnavailable) as e:
        download(entry, timeout=5)
    dest = tmp_path / "cache" / "weights" / "resnet50-0676ba61.pth"
    assert f"save it as {dest}" in str(e.value) and entry.url in str(e.value)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    # ... dropping the file by hand is enough (hash-valid): no network needed
    dest.parent.mkdir(parents=True, exist_ok=True)
    entry2 = dataclasses.replace(entry, url=_closed_port_url(f"w-{PREFIX}.pth"))
    dest2 = weights_path(entry2)
    dest2.write_bytes(PAYLOAD)
    assert download(entry2) == dest2


def test_http_error_is_unavailable(server, tmp_path):
    with pytest.raises(WeightsUnavailable, match="HTTP 404"):
        download(_entry(server + "missing-0123abcd.pth"))


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_midway(server, tmp_path, kind):
    stop = threading.Event()
    cancel = stop if kind == "event" else stop.is_set
    events = []

    def progress(done, total):
        events.append(done)
        if done > 0:
            stop.set()

    with pytest.raises(DownloadCancelled):
        download(_entry(server + f"w-{PREFIX}.pth"), progress=progress, cancel=cancel)
    assert 0 < events[-1] < len(PAYLOAD)
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


def test_resolve_weights(tmp_path, monkeypatch):
    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(b"x")
    assert resolve_weights(ckpt) == ckpt and resolve_weights(str(ckpt)) == ckpt
    with pytest.raises(WeightsError, match="neither an existing file nor a catalog id"):
        resolve_weights(tmp_path / "absent.pth")

    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsUnavailable, match="is not downloaded"):
        resolve_weights("deeplabv2_resnet101_msc_vocaug", allow_download=False)
    dest = weights_path("deeplabv2_resnet101_msc_vocaug")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"kazuto")  # no hash in this catalog entry: a file in place is taken as is
    assert resolve_weights("deeplabv2_resnet101_msc_vocaug") == dest


def test_load_catalog_model_from_cache(tmp_path, monkeypatch):
    # A torchvision-layout file planted under the catalog's name loads with the entry's metadata.
    # (Its hash cannot match the real file's, so the check is stubbed; no network is reachable.)
    src = build_model("deeplabv3_mobilenet_v3_large", aux=True)
    dest = weights_path("deeplabv3_mobilenet_v3_large_coco")
    dest.parent.mkdir(parents=True)
    torch.save(src.state_dict(), dest)
    monkeypatch.setattr(catalog, "_hash_ok", lambda path, prefix: True)
    model = load_catalog_model("deeplabv3_mobilenet_v3_large_coco")
    assert model.meta.arch == "deeplabv3_mobilenet_v3_large" and model.meta.aux
    assert model.meta.extra["weights_id"] == "deeplabv3_mobilenet_v3_large_coco"
    assert model.meta.extra["reported_metrics"]["miou"] == 60.3
    with pytest.raises(WeightsError, match="ImageNet backbone"):
        load_catalog_model("vgg16_imagenet")


def test_tqdm_progress_callback(capsys):
    bar = TqdmProgress("w.pth")
    for done in (0, 10, 30):
        bar(done, 30)
    bar.close()
    assert "w.pth" in capsys.readouterr().err
