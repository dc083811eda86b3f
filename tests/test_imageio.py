"""engine.imageio: every Pillow mode to H×W×3 uint8, EXIF orientation, size limit, clear errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.imageio import (
    ImageReadError,
    image_size,
    list_images,
    read_image,
    read_image_preview,
    to_rgb_uint8,
)


def _save(tmp_path, im: Image.Image, name: str, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_rgb_png_roundtrip_exact(tmp_path):
    arr = np.random.randint(0, 256, (7, 11, 3), dtype=np.uint8)
    out = read_image(_save(tmp_path, Image.fromarray(arr), "a.png"))
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_grey_and_bilevel_expand_to_three_equal_channels(tmp_path):
    g = np.random.randint(0, 256, (5, 6), dtype=np.uint8)
    out = read_image(_save(tmp_path, Image.fromarray(g), "g.png"))
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)
    bits = Image.fromarray(g > 128).convert("1")
    out1 = read_image(_save(tmp_path, bits, "b.png"))
    np.testing.assert_array_equal(out1[:, :, 0], np.where(g > 128, 255, 0))


def test_palette_expands_with_its_colours(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (256 * 3 - 9))
    out = read_image(_save(tmp_path, im, "p.png"))
    np.testing.assert_array_equal(out[0, 1], [40, 50, 60])
    np.testing.assert_array_equal(out[1, 0], [70, 80, 90])


def test_alpha_composited_on_black_by_default_or_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0  # transparent
    rgba[1, :, 3] = 128  # half
    path = _save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png")
    black = read_image(path)
    np.testing.assert_array_equal(black[0, 0], [200, 200, 200])
    np.testing.assert_array_equal(black[0, 1], [0, 0, 0])
    assert abs(int(black[1, 0, 0]) - round(200 * 128 / 255)) <= 1
    white = read_image(path, alpha_background="white")
    np.testing.assert_array_equal(white[0, 1], [255, 255, 255])
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    np.testing.assert_array_equal(read_image(_save(tmp_path, la, "la.png"))[0, 1], [0, 0, 0])


def test_palette_transparency_is_alpha(tmp_path):
    im = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    path = _save(tmp_path, im, "t.png", transparency=1)
    out = read_image(path)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


@pytest.mark.parametrize("mode,dtype", [("I;16", np.uint16), ("I", np.int32), ("F", np.float32)])
def test_high_bit_depth_scaled_by_range(tmp_path, mode, dtype):
    vals = np.array([[1000, 2000], [3000, 1000]], dtype=dtype)
    im = Image.fromarray(vals)
    assert im.mode == mode
    out = read_image(_save(tmp_path, im, "h.tif"))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 128], [255, 0]])


def test_constant_high_bit_depth_is_black(tmp_path):
    im = Image.fromarray(np.full((3, 3), 777, dtype=np.uint16))
    assert not read_image(_save(tmp_path, im, "c.png")).any()


def test_cmyk_converted(tmp_path):
    im = Image.new("CMYK", (3, 2), (0, 0, 0, 0))  # no ink = white paper
    out = read_image(_save(tmp_path, im, "c.tif"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, 255)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, im, "o.png", exif=exif.tobytes())
    out = read_image(path)
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out, np.rot90(arr, k=-1))
    assert image_size(path) == (2, 3)


def test_pixel_limit_replaces_pillow_bomb_guard(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (40, 30)), "big.png")
    with pytest.raises(ImageReadError) as err:
        read_image(path, max_pixels=1000)
    assert "40x30" in err.value.reason and "limit" in err.value.reason
    # Pillow's own guard would refuse this (1200 px > 2 × 100); ours allows it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(path, max_pixels=2000).shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the open


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "truncated" in err.value.reason
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_corrupt_png_and_non_image_and_missing(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = b"\x00" * 20  # damage the compressed stream
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    for path, word in [(bad, ""), (text, "not an image"), (tmp_path / "nope.png", "no such file"),
                       (tmp_path, "directory")]:
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        assert word in err.value.reason
        assert "\n" not in str(err.value)


def test_list_images_filters_and_recurses(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.JPG", "a.png", "sub/c.tif", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.JPG", "c.tif"]


def test_to_rgb_uint8_forms():
    rgb = np.random.randint(0, 256, (4, 5, 3), dtype=np.uint8)
    assert to_rgb_uint8(rgb) is rgb  # already right: no copy
    g = rgb[:, :, 0].copy()
    np.testing.assert_array_equal(to_rgb_uint8(g)[:, :, 2], g)
    np.testing.assert_array_equal(to_rgb_uint8(g[:, :, None])[:, :, 1], g)
    rgba = np.concatenate([rgb, np.zeros((4, 5, 1), np.uint8)], axis=2)
    assert not to_rgb_uint8(rgba).any()  # fully transparent over black
    rgba[..., 3] = 255
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    u16 = np.array([[100, 300], [500, 100]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(u16)[:, :, 0], [[0, 128], [255, 0]])
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(to_rgb_uint8(unit)[:, :, 0], [[0, 128], [255, 64]])
    wide = np.array([[-1.0, 1.0], [3.0, -1.0]])
    np.testing.assert_array_equal(to_rgb_uint8(wide)[:, :, 0], [[0, 128], [255, 0]])
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[True, False]]))[0, :, 0], [255, 0])
    u16a = np.zeros((1, 2, 4), dtype=np.uint16)
    u16a[0, :, :3] = [[0, 0, 0], [65535, 65535, 65535]]
    u16a[..., 3] = 65535  # uint16 alpha: 65535 is opaque
    np.testing.assert_array_equal(to_rgb_uint8(u16a)[0, 1], [255, 255, 255])


@pytest.mark.parametrize("shape", [(4,), (4, 5, 2), (4, 5, 3, 1), (0, 5, 3)])
def test_to_rgb_uint8_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="expected an image"):
        to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


# ---------------------------------------------------------------------------- engine.masks
from engine.labels import VOID_COLOR, load_mask_png, save_mask_png  # noqa: E402
from engine.meta import voc_colormap  # noqa: E402


def test_mask_png_roundtrip_palette_and_void(tmp_path):
    mask = np.random.randint(0, 21, (9, 13)).astype(np.uint8)
    mask[0, :4] = 255
    path = tmp_path / "m.png"
    save_mask_png(path, mask)
    with Image.open(path) as im:
        assert im.mode == "P"
        pal = im.getpalette()
    assert tuple(pal[15 * 3:16 * 3]) == voc_colormap(21)[15]  # person
    assert tuple(pal[255 * 3:256 * 3]) == VOID_COLOR == (224, 224, 192)
    back = load_mask_png(path)
    assert back.dtype == np.uint8 and back.shape == (9, 13)
    np.testing.assert_array_equal(back, mask)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temp file left behind


def test_mask_png_custom_colours_keep_void(tmp_path):
    path = tmp_path / "m.png"
    save_mask_png(path, np.array([[0, 1, 255]], dtype=np.uint8), colors=[(1, 2, 3), (4, 5, 6)])
    with Image.open(path) as im:
        pal = im.getpalette()
    assert pal[:6] == [1, 2, 3, 4, 5, 6] and tuple(pal[765:768]) == VOID_COLOR
    np.testing.assert_array_equal(read_image(path)[0], [(1, 2, 3), (4, 5, 6), VOID_COLOR])


def test_mask_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    save_mask_png(path, np.zeros((4, 4), np.uint8))
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("engine.fileio.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_mask_png(path, np.ones((4, 4), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_mask_load_rejects_colour_png_and_save_rejects_bad_masks(tmp_path):
    rgb = _save(tmp_path, Image.new("RGB", (3, 3)), "rgb.png")
    with pytest.raises(ValueError, match="mode RGB"):
        load_mask_png(rgb)
    grey = _save(tmp_path, Image.fromarray(np.full((2, 2), 7, np.uint8)), "l.png")
    np.testing.assert_array_equal(load_mask_png(grey), 7)  # 8-bit grey holds indices too
    with pytest.raises(ValueError):
        save_mask_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        save_mask_png(tmp_path / "x.png", np.full((2, 2), 300))
    save_mask_png(tmp_path / "i.png", np.full((2, 2), 3, dtype=np.int64))  # small ints are fine
    np.testing.assert_array_equal(load_mask_png(tmp_path / "i.png"), 3)


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth colour ramp: survives JPEG and reduced decoding nearly unchanged."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // (w + h)],
                    axis=2).astype(np.uint8)


def test_preview_reduces_a_jpeg_and_reports_the_full_size(tmp_path):
    arr = _smooth(240, 320)
    path = _save(tmp_path, Image.fromarray(arr), "p.jpg", quality=95)
    small, size = read_image_preview(path, max_side=80)
    assert size == (240, 320)
    # The largest power-of-two reduction keeping the longer side >= 80: 1/4.
    assert small.shape == (60, 80, 3) and small.dtype == np.uint8 and small.flags.c_contiguous
    ref = np.asarray(Image.fromarray(read_image(path)).resize((80, 60), Image.BOX), dtype=np.int16)
    assert np.abs(small.astype(np.int16) - ref).mean() < 4
    # Asking for more than the image has decodes it whole, exactly as read_image does.
    whole, size2 = read_image_preview(path, max_side=400)
    assert size2 == (240, 320)
    np.testing.assert_array_equal(whole, read_image(path))


def test_preview_of_a_rotated_jpeg_matches_read_image_orientation(tmp_path):
    arr = _smooth(64, 128)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, Image.fromarray(arr), "r.jpg", quality=95, exif=exif.tobytes())
    small, size = read_image_preview(path, max_side=32)
    full = read_image(path)
    assert size == full.shape[:2] == (128, 64)
    assert small.shape == (32, 16, 3)  # 1/4, rotated like the full decode


def test_preview_of_other_formats_is_the_full_image(tmp_path):
    arr = np.random.randint(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(arr), "a.png")
    img, size = read_image_preview(path, max_side=8)
    assert size == (20, 30)
    np.testing.assert_array_equal(img, arr)


def test_preview_errors_like_read_image(tmp_path):
    path = _save(tmp_path, Image.fromarray(_smooth(64, 64)), "t.jpg")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError):
        read_image_preview(path, max_side=16)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image_preview(tmp_path / "missing.jpg")
    with pytest.raises(ValueError):
        read_image_preview(path, max_side=0)
