"""Checkpoints are refused from what they declare, before anything is inflated or loaded.

The crafted files here are what an attacker (or a damaged download) can hand over: a torch zip whose
deflated records inflate to gigabytes, zip records whose sizes cannot be true, a legacy pickle or a
safetensors header declaring more than the file holds.  Each refusal is one line naming the file.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import build_model, list_models, load_model, read_checkpoint, save_model
from engine.checkpoints.limits import (
    HEADER_LIMIT,
    LIMIT_MARGIN,
    VGG16_IMAGENET_BYTES,
    CheckpointError,
    default_limit,
    largest_model,
)

ROOT = Path(__file__).resolve().parents[1]
MiB, GiB = 1 << 20, 1 << 30
_MARK = 77777  # element count of the template tensor, patched in the pickle to declare other sizes


def _zero_chunk() -> bytes:
    """Raw deflate bytes that inflate to 1 MiB of zeros and can be repeated back to back (a full
    flush resets the compressor, so every chunk is the same self-contained bytes)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    co.compress(b"\0" * MiB)
    co.flush(zlib.Z_FULL_FLUSH)
    return co.compress(b"\0" * MiB) + co.flush(zlib.Z_FULL_FLUSH)


def _zeros_deflated(mib: int) -> tuple[bytes, int]:
    """A deflate stream of ``mib`` MiB of zeros (about 1 KiB per MiB) and the CRC-32 of its output."""
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(b"\0" * MiB, crc)
    return _zero_chunk() * mib + b"\x03\x00", crc  # b"\x03\x00": an empty final block


def _torch_records(numel: int) -> list[tuple[str, bytes]]:
    """The records torch.save writes for ``{"w": torch.zeros(numel)}`` (float32), its data record
    empty: data.pkl is torch's own, with the element count patched to ``numel``."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(_MARK)}, buf)
    zf = zipfile.ZipFile(buf)
    out = []
    for name in zf.namelist():
        data = zf.read(name)
        if name.endswith("data.pkl"):
            assert data.count(b"J" + struct.pack("<i", _MARK)) == 2  # the storage size and the shape
            data = data.replace(b"J" + struct.pack("<i", _MARK), b"J" + struct.pack("<i", numel))
        elif name.endswith("data/0"):
            data = b""
        out.append((name, data))
    return out


def _write_zip(path: Path, entries: list[tuple], aliases: dict[str, str] | None = None) -> Path:
    """A zip written field by field, so sizes can say what the bytes do not.  Each entry is
    ``(name, data)`` (stored) or ``(name, data, method, declared_size, crc)``.  ``aliases``: extra
    directory entries ``{alias: name}`` pointing at the same bytes as ``name``."""
    body, central, count = bytearray(), bytearray(), 0
    for entry in entries:
        name, data = entry[0], entry[1]
        method, declared, crc = entry[2:] if len(entry) > 2 else (0, len(data), zlib.crc32(data))
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0, crc, len(data), declared)
        for listed in [name] + [a for a, target in (aliases or {}).items() if target == name]:
            n = listed.encode()
            central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HH", len(n), 0)
                        + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + n)
            count += 1
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(name.encode()), 0) + name.encode() + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def _bomb(path: Path, declared: int, inflates_mib: int, pad: int = 0) -> Path:
    """A torch checkpoint whose one tensor record is deflated zeros: ``declared`` bytes in the zip
    directory and in data.pkl, ``inflates_mib`` MiB really in the stream, ``pad`` junk bytes after it."""
    stream, crc = _zeros_deflated(inflates_mib)
    entries = []
    for name, data in _torch_records(declared // 4):
        if name.endswith("data/0"):
            entries.append((name, stream + b"\xff" * pad, zipfile.ZIP_DEFLATED, declared, crc))
        else:
            entries.append((name, data))
    return _write_zip(path, entries)


def _refusal(path, **kw) -> str:
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path, **kw)
    message = str(e.value)
    assert str(path) in message and "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------
# the limit

def test_default_limit_fits_the_largest_model_with_optimizer_state():
    name, size = largest_model()
    assert name in list_models() and size > 200 * MiB  # the ResNet-101 families, in fp32
    limit = default_limit()
    assert limit >= LIMIT_MARGIN * size and limit >= VGG16_IMAGENET_BYTES
    assert limit < 2 * GiB  # still refuses what no model here needs


@pytest.mark.slow
def test_vainf_checkpoint_of_the_largest_vainf_model_with_momentum_loads(tmp_path):
    # VainF's train script saves SGD momentum next to the weights: twice the model's size on disk.
    model = build_model("deeplabv3plus_resnet101", num_classes=21)
    sd = model.state_dict()
    params = [v for v in model.parameters()]
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(range(len(params)))}]}
    torch.save({"cur_itrs": 30000, "model_state": sd, "optimizer_state": optimizer,
                "scheduler_state": {"last_epoch": 30000}, "best_score": 0.77}, tmp_path / "best.pth")
    del optimizer, params
    assert (tmp_path / "best.pth").stat().st_size > 400 * MiB
    loaded = load_model(tmp_path / "best.pth")
    assert loaded.meta.arch == "deeplabv3plus_resnet101" and loaded.meta.source_format == "vainf"


# --------------------------------------------------------------------------------------------
# torch zip files

def test_deflated_records_are_what_torch_reads_and_are_checked(tmp_path):
    # torch.save writes records stored, yet torch.load inflates deflated ones just as well.
    path = _bomb(tmp_path / "deflated.pth", 64 * MiB, 64)
    assert path.stat().st_size < 100_000
    raw = read_checkpoint(path)
    assert raw.state_dict["w"].shape == (16 * MiB,) and not raw.state_dict["w"].any()
    message = _refusal(path, max_bytes=32 * MiB)
    assert "declares 64 MiB of tensor data, more than the 32 MiB limit; refused" in message


_RSS_PROBE = """
import json, resource, sys
from engine import CheckpointError, read_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_checkpoint(sys.argv[1])
    message = None
except CheckpointError as e:
    message = str(e)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
print(json.dumps({"message": message, "grown_mib": grown * unit / 2**20}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="peak memory is read with the POSIX resource module")
def test_small_zip_declaring_gigabytes_is_refused_without_inflating(tmp_path):
    # 3.5 GiB declared and plausible for deflate (3.5 MiB of compressed bytes), 512 MiB of it real:
    # reading it costs 512 MiB of memory before anything could refuse it.
    path = _bomb(tmp_path / "bomb.pth", 3584 * MiB, 512, pad=3 * MiB)
    assert path.stat().st_size < 4 * MiB
    r = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    message = result["message"]
    assert message and message.startswith(f"{path}: declares 3.5 GiB of tensor data, more than the ")
    assert "largest supported model" in message and "\n" not in message
    assert result["grown_mib"] < 200, result


def test_zip_records_whose_sizes_cannot_be_true(tmp_path):
    records = _torch_records(_MARK)
    data_name = next(n for n, _ in records if n.endswith("data/0"))
    pkl_name = next(n for n, _ in records if n.endswith("data.pkl"))
    real = torch.zeros(_MARK).numpy().tobytes()

    def variant(name, replace):
        return _write_zip(tmp_path / name, [replace(n, d) if n == data_name else (n, d) for n, d in records])

    stream, crc = _zeros_deflated(1)
    cases = {
        # more than 1032:1: no deflate stream inflates that far
        variant("ratio.pth", lambda n, d: (n, stream, zipfile.ZIP_DEFLATED, 3 * GiB, crc)):
            "declares 3.0 GiB inflated from 1.0 KiB, more than deflate can produce",
        variant("stored.pth", lambda n, d: (n, real, zipfile.ZIP_STORED, 2 * GiB, 0)):
            "stored uncompressed yet declares 2.0 GiB from 304 KiB",
        variant("short.pth", lambda n, d: (n, real[:1000])):
            "record data/0 holds 1000 bytes, its tensors declare 311108",
    }
    for path, text in cases.items():
        assert text in _refusal(path)
    good = [(n, real if n == data_name else d) for n, d in records]
    assert read_checkpoint(_write_zip(tmp_path / "good.pth", good)).state_dict["w"].shape == (_MARK,)
    # the one data record listed three times in the directory: entries overlapping each other
    alias = {data_name[:-1] + "1": data_name, data_name[:-1] + "2": data_name}
    assert "overlapping records" in _refusal(_write_zip(tmp_path / "overlap.pth", good, alias))
    # a pickle record inflating far past what a weights file's pickle needs
    stream, crc = _zeros_deflated(64)
    _write_zip(tmp_path / "pkl.pth", [(n, stream, zipfile.ZIP_DEFLATED, 64 * MiB, crc) if n == pkl_name
                                      else (n, real if n == data_name else d) for n, d in records])
    assert "declares 64 MiB of pickled objects" in _refusal(tmp_path / "pkl.pth")


def test_zip_directory_listing_too_many_records(tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(3)}, tmp_path / "ok.pth")
    monkeypatch.setattr("engine.checkpoints.limits.MAX_ZIP_ENTRIES", 3)
    assert "zip directory lists 7 records" in _refusal(tmp_path / "ok.pth")


# --------------------------------------------------------------------------------------------
# legacy (pre-zip) torch files

def _legacy(path: Path, numel: int | None = None) -> Path:
    torch.save({"backbone.w": torch.zeros(_MARK), "n": torch.tensor(3)}, path,
               _use_new_zipfile_serialization=False)
    if numel is not None:
        blob = path.read_bytes()
        assert blob.count(b"J" + struct.pack("<i", _MARK)) == 2
        path.write_bytes(blob.replace(b"J" + struct.pack("<i", _MARK), b"J" + struct.pack("<i", numel)))
    return path


def test_legacy_pth_declared_storages_are_checked(tmp_path):
    raw = read_checkpoint(_legacy(tmp_path / "old.pth"))
    assert raw.state_dict["backbone.w"].shape == (_MARK,) and int(raw.state_dict["n"]) == 3
    assert "declares 304 KiB of tensor data, more than the 100 KiB limit" in \
        _refusal(tmp_path / "old.pth", max_bytes=100 << 10)
    # declaring 3.4 GiB: torch.load would allocate all of it before reading
    assert "declares 3.4 GiB of tensor data" in _refusal(_legacy(tmp_path / "huge.pth", 900_000_000))
    assert "corrupt or truncated" in _refusal(_legacy(tmp_path / "long.pth", _MARK + 1000))
    blob = (tmp_path / "old.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[:-5000])
    assert "corrupt or truncated" in _refusal(tmp_path / "cut.pth")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_legacy_pth_carrying_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.zeros(2), "x": _Evil(str(marker))}, tmp_path / "evil.pth",
               _use_new_zipfile_serialization=False)
    assert "refused to load" in _refusal(tmp_path / "evil.pth")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# safetensors

def _safetensors_header(path: Path, header: dict, size: int) -> Path:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + size)  # sparse: no disk space, no time
    return path


def test_safetensors_declarations_are_checked(tmp_path):
    save_file({"w": torch.zeros(MiB // 4)}, tmp_path / "w.safetensors")
    assert "declares 1.0 MiB of tensor data, more than the 512 KiB limit" in \
        _refusal(tmp_path / "w.safetensors", max_bytes=512 * 1024)
    big = 2400 * MiB  # above the default limit (4x the largest registered model, about 1.4 GiB)
    path = _safetensors_header(tmp_path / "big.safetensors",
                               {"w": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]}}, big)
    assert "declares 2.3 GiB of tensor data" in _refusal(path)
    path = _safetensors_header(tmp_path / "short.safetensors",
                               {"w": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]}}, 100)
    assert "corrupt or truncated safetensors file (its header declares 2.3 GiB" in _refusal(path)
    path = _safetensors_header(tmp_path / "noff.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, 4)
    assert "has no valid data offsets" in _refusal(path)
    # a header longer than any weights file's, yet within the file so it looks like safetensors
    path = tmp_path / "header.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", HEADER_LIMIT + MiB) + b'{"')
        f.truncate(HEADER_LIMIT + 2 * MiB)
    assert "safetensors header is 17 MiB, more than the 16 MiB" in _refusal(path)


# --------------------------------------------------------------------------------------------
# damaged weights and one-line messages

def test_weights_holding_nan_or_infinity_are_refused(tmp_path):
    sd = {"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")])}
    torch.save(sd, tmp_path / "nan.pth")
    assert "1 tensor(s) hold NaN or infinity (first b.weight)" in _refusal(tmp_path / "nan.pth")
    save_file({"a.weight": torch.tensor([float("inf")])}, tmp_path / "inf.safetensors")
    assert "hold NaN or infinity (first a.weight)" in _refusal(tmp_path / "inf.safetensors")
    torch.save({"n": torch.tensor([3]), "w": torch.ones(2)}, tmp_path / "fine.pth")  # ints are never NaN
    assert read_checkpoint(tmp_path / "fine.pth").state_dict["w"].sum() == 2


def test_model_mismatch_and_pickle_refusals_are_one_line(tmp_path):
    save_model(build_model("deeplabv3_mobilenet_v2", num_classes=3), tmp_path / "m.safetensors")
    torch.save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pth")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"x": _Evil(str(tmp_path / "PWNED"))}, protocol=2))
    cases = [(tmp_path / "m.safetensors", {"arch": "deeplabv3_resnet50"}, "holds a deeplabv3_mobilenet_v2 model"),
             (tmp_path / "m.safetensors", {"num_classes": 21}, "has 3 classes, not 21"),
             (tmp_path / "other.pth", {}, "does not fit any known architecture"),
             (tmp_path / "raw.pkl", {}, "refused to load")]
    for path, kw, text in cases:
        with pytest.raises(CheckpointError, match=text) as e:
            load_model(path, **kw)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "PWNED").exists()
