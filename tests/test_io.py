"""Tests for segsoft.io: reading every kind of image, finding images, atomic writes."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps

from segsoft.errors import SegsoftError
from segsoft.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Image,
    as_image,
    atomic_path,
    atomic_write_bytes,
    find_images,
    read_image,
)


def unit16(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32) / np.float32(65535)


def unit8(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32) / np.float32(255)


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def save(pil: PILImage.Image, path: Path, **kw) -> Path:
    pil.save(path, **kw)
    return path


def write_png16(path: Path, arr: np.ndarray, trns: tuple[int, ...] | None = None) -> Path:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA), which Pillow cannot write.

    Rows cycle through the five PNG filters so that the reader's unfiltering is
    exercised with the real bytes-per-pixel.
    """
    arr = np.asarray(arr, dtype=np.uint16)
    arr = arr[..., None] if arr.ndim == 2 else arr
    h, w, c = arr.shape
    bpp = 2 * c
    raw = np.frombuffer(arr.astype(">u2").tobytes(), np.uint8).reshape(h, w * bpp).astype(np.int32)
    rows, prev = [], np.zeros(w * bpp, np.int32)
    for y in range(h):
        cur = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = y % 5
        if f == 4:  # Paeth
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        else:
            pred = [0, left, prev, (left + prev) // 2][f]
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    extra = b"" if trns is None else chunk(b"tRNS", struct.pack(f">{len(trns)}H", *trns))
    body = chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + extra + body)
    return path


def check_layout(img: Image) -> None:
    assert img.pixels.dtype == np.float32 and img.pixels.flags.c_contiguous
    assert img.pixels.shape == (img.height, img.width, 3)
    assert img.pixels.min() >= 0 and img.pixels.max() <= 1
    if img.mask is not None:
        assert img.mask.dtype == bool and img.mask.shape == (img.height, img.width)
        assert img.mask.flags.c_contiguous and not img.mask.all() and img.mask.any()


# ---------------------------------------------------------------- 8-bit modes


def test_rgb_png_is_exactly_uint8_over_255(tmp_path):
    rgb = noise((7, 9, 3))
    img = read_image(save(PILImage.fromarray(rgb), tmp_path / "a.png"))
    check_layout(img)
    assert (img.mode, img.bit_depth, img.is_gray, img.mask) == ("RGB", 8, False, None)
    assert img.path == tmp_path / "a.png"
    np.testing.assert_array_equal(img.pixels, unit8(rgb))
    np.testing.assert_array_equal(np.round(img.pixels * 255).astype(np.uint8), rgb)
    assert (img.height, img.width, img.n_pixels, img.n_used) == (7, 9, 63, 63)


def test_grey_l_gives_three_equal_channels(tmp_path):
    grey = noise((5, 6))
    img = read_image(save(PILImage.fromarray(grey), tmp_path / "g.png"))
    check_layout(img)
    assert (img.mode, img.bit_depth, img.is_gray) == ("L", 8, True)
    for c in range(3):
        np.testing.assert_array_equal(img.pixels[..., c], unit8(grey))


def test_one_bit_image(tmp_path):
    bits = np.zeros((4, 8), dtype=bool)
    bits[:, ::2] = True
    img = read_image(save(PILImage.fromarray(bits), tmp_path / "b.png"))
    assert (img.mode, img.bit_depth, img.is_gray) == ("1", 8, True)
    np.testing.assert_array_equal(img.pixels[..., 1], bits.astype(np.float32))


def test_la_alpha_becomes_mask(tmp_path):
    la = np.stack([noise((4, 5)), np.full((4, 5), 255, np.uint8)], axis=2)
    la[1, 2, 1] = 0
    img = read_image(save(PILImage.fromarray(la, "LA"), tmp_path / "la.png"))
    check_layout(img)
    assert img.is_gray and img.n_used == 19 and not img.mask[1, 2]
    np.testing.assert_array_equal(img.pixels[..., 2], unit8(la[..., 0]))


def test_rgba_alpha_zero_is_masked_out(tmp_path):
    rgba = noise((6, 4, 4))
    rgba[..., 3] = np.where(np.arange(4) < 1, 0, 1 + np.arange(4))  # 0 in column 0, small non-zero elsewhere
    img = read_image(save(PILImage.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    check_layout(img)
    np.testing.assert_array_equal(img.mask, rgba[..., 3] > 0)
    np.testing.assert_array_equal(img.pixels, unit8(rgba[..., :3]))
    assert img.n_used == 18 and not img.is_gray


def test_opaque_rgba_has_no_mask(tmp_path):
    rgba = noise((3, 3, 4))
    rgba[..., 3] = 255
    assert read_image(save(PILImage.fromarray(rgba, "RGBA"), tmp_path / "a.png")).mask is None


def test_fully_transparent_is_an_error(tmp_path):
    path = save(PILImage.new("RGBA", (4, 4), (10, 20, 30, 0)), tmp_path / "clear.png")
    with pytest.raises(SegsoftError, match=r"clear\.png: every pixel is transparent"):
        read_image(path)


def test_palette_without_and_with_transparency(tmp_path):
    pal = PILImage.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    img = read_image(save(pal, tmp_path / "p.png"))
    assert (img.mode, img.mask, img.is_gray) == ("P", None, False)
    np.testing.assert_array_equal(img.pixels[0, :3], np.eye(3, dtype=np.float32))

    img = read_image(save(pal, tmp_path / "pt.png", transparency=1))
    check_layout(img)
    np.testing.assert_array_equal(img.mask, np.array([[1, 0, 1, 1], [0, 1, 1, 0]], bool))
    np.testing.assert_array_equal(img.pixels[0, 0], [1, 0, 0])

    img = read_image(save(pal, tmp_path / "pt.gif", transparency=2))
    assert img.mode == "P" and img.n_used == 6


def test_grey_png_transparent_colour(tmp_path):
    grey = np.array([[0, 50, 100], [50, 200, 50]], np.uint8)
    img = read_image(save(PILImage.fromarray(grey), tmp_path / "t.png", transparency=50))
    np.testing.assert_array_equal(img.mask, grey != 50)


def test_cmyk_jpeg_becomes_roughly_right_rgb(tmp_path):
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)
    rgb[:, 8:16] = (30, 200, 30)
    rgb[:, 16:24] = (30, 30, 200)
    rgb[:, 24:] = (240, 240, 240)
    path = save(PILImage.fromarray(rgb).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    assert PILImage.open(path).mode == "CMYK"
    img = read_image(path)
    assert (img.mode, img.bit_depth, img.is_gray) == ("CMYK", 8, False)
    np.testing.assert_allclose(img.pixels[4:12, 2:6], np.broadcast_to(unit8(rgb[4:12, 2:6]), (8, 4, 3)), atol=0.06)
    for x in (4, 12, 20, 28):
        np.testing.assert_allclose(img.pixels[8, x], unit8(rgb[8, x]), atol=0.06)


def test_ycbcr_pillow_image_is_converted():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 180
    img = as_image(PILImage.fromarray(rgb).convert("YCbCr"))
    assert img.mode == "YCbCr" and img.path is None
    np.testing.assert_allclose(img.pixels[0, 0], unit8([180, 0, 0]), atol=0.02)


# ---------------------------------------------------------------- deep modes


def test_16bit_grey_png_keeps_full_precision(tmp_path):
    values = np.array([[0, 1, 1000], [255, 256, 65535]], np.uint16)
    img = read_image(save(PILImage.fromarray(values), tmp_path / "g16.png"))
    assert img.mode.startswith("I;16") and img.bit_depth == 16 and img.is_gray
    np.testing.assert_array_equal(img.pixels[..., 0], unit16(values))
    assert img.pixels[0, 2, 1] == np.float32(1000 / 65535)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_keeps_full_precision(tmp_path, channels):
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, size=(11, 7, channels), dtype=np.uint16)
    values[0, 0, :] = 1000
    if channels in (2, 4):  # 16-bit alpha 1..255 has a zero high byte: still opaque enough to use
        values[..., -1] = rng.choice(np.array([0, 1, 255, 256, 65535], np.uint16), size=(11, 7))
    img = read_image(write_png16(tmp_path / "c16.png", values))
    check_layout(img)
    assert img.bit_depth == 16 and img.is_gray == (channels == 2)
    colour = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=2)
    np.testing.assert_array_equal(img.pixels, unit16(colour))
    if channels in (2, 4):
        np.testing.assert_array_equal(img.mask, values[..., -1] > 0)


def test_16bit_rgb_png_transparent_colour(tmp_path):
    values = np.full((2, 3, 3), 7, np.uint16)
    values[0, 1] = (1000, 2000, 3000)
    values[1, 2] = (1000, 2000, 3001)
    img = read_image(write_png16(tmp_path / "t16.png", values, trns=(1000, 2000, 3000)))
    np.testing.assert_array_equal(img.mask, [[True, False, True], [True, True, True]])


@pytest.mark.parametrize("options", [{}, {"compression": "zlib"}, {"byteorder": ">"}])
def test_16bit_rgb_tiff_keeps_full_precision(tmp_path, options):
    tifffile = pytest.importorskip("tifffile")
    values = np.random.default_rng(1).integers(0, 65536, size=(5, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", values, photometric="rgb", **options)
    img = read_image(tmp_path / "c16.tif")
    assert (img.mode, img.bit_depth) == ("RGB", 16)
    np.testing.assert_array_equal(img.pixels, unit16(values))


def test_int32_mode_i_scaling():
    small = np.array([[0, 1000], [65535, 7]], np.int32)
    img = as_image(PILImage.fromarray(small))
    assert (img.mode, img.bit_depth, img.is_gray) == ("I", 16, True)
    np.testing.assert_array_equal(img.pixels[..., 0], unit16(small))
    big = np.array([[0, 100_000], [200_000, 50_000]], np.int32)
    img = as_image(PILImage.fromarray(big))
    assert img.bit_depth == 32
    # outside 0..65535 the int32 type's own range, not the data's: a dark picture stays dark
    span = 2.0**32 - 1
    np.testing.assert_allclose(img.pixels[..., 0], (big + 2.0**31) / span, rtol=1e-6)
    signed = np.array([[-10, 0], [10, 30]], np.int32)
    np.testing.assert_allclose(
        as_image(PILImage.fromarray(signed)).pixels[..., 0], (signed + 2.0**31) / span, rtol=1e-6
    )


def test_int32_tiff_file(tmp_path):
    # the TIFF states int32: its full range, even when every value would fit 16 bits
    values = np.array([[0, 300], [40_000, 65535]], np.int32)
    img = read_image(save(PILImage.fromarray(values), tmp_path / "i.tif"))
    assert (img.mode, img.bit_depth) == ("I", 32)
    ii = np.iinfo(np.int32)
    expected = ((values.astype(np.float64) - ii.min) / (float(ii.max) - ii.min)).astype(np.float32)
    np.testing.assert_array_equal(img.pixels[..., 2], expected)


def test_float_tiff(tmp_path):
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    img = read_image(save(PILImage.fromarray(unit), tmp_path / "f.tif"))
    assert (img.mode, img.bit_depth, img.is_gray) == ("F", 32, True)
    np.testing.assert_array_equal(img.pixels[..., 0], unit)
    wide = np.array([[0.0, 2.0], [-1.0, 4.0]], np.float32)
    img = read_image(save(PILImage.fromarray(wide), tmp_path / "w.tif"))
    np.testing.assert_array_equal(img.pixels[..., 1], [[0.0, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_or_inf_is_an_error(tmp_path, bad):
    values = np.array([[0.0, bad], [0.5, 1.0]], np.float32)
    path = save(PILImage.fromarray(values), tmp_path / "nan.tif")
    with pytest.raises(SegsoftError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: image contains NaN or infinite values"


# ---------------------------------------------------------------- orientation


def test_exif_orientation_6_rotates_jpeg(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red, right half blue
    rgb[:, 20:] = (0, 0, 255)
    pil = PILImage.fromarray(rgb)
    exif = pil.getexif()
    exif[0x0112] = 6
    img = read_image(save(pil, tmp_path / "r.jpg", exif=exif, quality=95))
    assert (img.height, img.width) == (40, 20)
    # 6 = rotate 90 degrees clockwise for display: the left of the stored image is now the top
    assert img.pixels[5, 10, 0] > 0.9 and img.pixels[5, 10, 2] < 0.1
    assert img.pixels[35, 10, 2] > 0.9 and img.pixels[35, 10, 0] < 0.1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    rgba = noise((3, 5, 4), seed=orientation)
    rgba[0, 0, 3] = 0
    pil = PILImage.fromarray(rgba, "RGBA")
    exif = pil.getexif()
    exif[0x0112] = orientation
    path = save(pil, tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(path)))
    img = read_image(path)
    check_layout(img)
    np.testing.assert_array_equal(img.pixels, unit8(expected[..., :3]))
    np.testing.assert_array_equal(img.mask, expected[..., 3] > 0)


# ---------------------------------------------------------------- size limit


def test_pixel_limit(tmp_path):
    path = save(PILImage.new("RGB", (10, 10)), tmp_path / "big.png")
    with pytest.raises(SegsoftError) as info:
        read_image(path, max_pixels=99)
    assert str(info.value) == (
        f"{path}: 10x10 = 100 pixels exceeds the limit of 99 "
        "(use --max-pixels to raise it, or --scheduler local to segment it tile by tile)"
    )
    assert read_image(path, max_pixels=100).n_pixels == 100
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # a header claiming 100000 x 100000 pixels with next to no data behind it
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))
    with pytest.raises(SegsoftError, match=r"100000x100000 = 10000000000 pixels .*--max-pixels"):
        read_image(path)


def test_our_limit_replaces_pillows_and_restores_it(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)
    path = save(PILImage.new("RGB", (10, 10)), tmp_path / "a.tif")
    assert read_image(path, max_pixels=1000).n_pixels == 100
    assert not [w for w in recwarn if issubclass(w.category, PILImage.DecompressionBombWarning)]
    assert PILImage.MAX_IMAGE_PIXELS == 10
    with pytest.raises(SegsoftError):
        read_image(path, max_pixels=50)
    assert PILImage.MAX_IMAGE_PIXELS == 10


# ---------------------------------------------------------------- unreadable files


def assert_one_line_error(path: Path, pattern: str, **kw) -> None:
    with pytest.raises(SegsoftError) as info:
        read_image(path, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert pattern in message, message


def test_missing_directory_empty_and_text_files(tmp_path):
    assert_one_line_error(tmp_path / "nope.png", "nope.png: no such file")
    assert_one_line_error(tmp_path / "nope" / "x.png", "x.png: no such file")
    (tmp_path / "folder.png").mkdir()
    assert_one_line_error(tmp_path / "folder.png", "folder.png: is a directory, not an image")
    (tmp_path / "empty.jpg").touch()
    assert_one_line_error(tmp_path / "empty.jpg", "empty.jpg: empty file")
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n" * 20)
    assert_one_line_error(tmp_path / "text.jpg", "text.jpg: not an image (Pillow cannot identify it)")


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_files(tmp_path, fmt):
    path = save(PILImage.fromarray(noise((64, 64, 3))), tmp_path / f"cut.{fmt}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(path, f"cut.{fmt}: truncated or corrupt image data (")


def test_corrupt_png_data(tmp_path):
    path = save(PILImage.fromarray(noise((32, 32, 3))), tmp_path / "bad.png")
    data = bytearray(path.read_bytes())
    data[100:140] = bytes(40)  # inside the compressed pixel data
    path.write_bytes(bytes(data))
    assert_one_line_error(path, "bad.png: truncated or corrupt image data (")


def test_permission_denied(tmp_path, monkeypatch):
    path = save(PILImage.new("RGB", (2, 2)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: simulate what Pillow would meet

            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))

            monkeypatch.setattr(PILImage, "open", refuse)
        assert_one_line_error(path, "locked.png: permission denied")
    finally:
        path.chmod(0o644)


def test_image_without_pixels_is_an_error():
    with pytest.raises(SegsoftError, match="no pixels"):
        as_image(PILImage.new("RGB", (0, 5)))
    with pytest.raises(SegsoftError, match="no pixels"):
        Image.from_array(np.zeros((0, 4, 3), np.uint8))


# ---------------------------------------------------------------- arrays and as_image


def test_from_array_dtypes_and_shapes():
    u8 = noise((3, 4, 3))
    img = Image.from_array(u8)
    assert (img.mode, img.bit_depth, img.is_gray, img.path, img.mask) == ("array", 8, False, None, None)
    np.testing.assert_array_equal(img.pixels, unit8(u8))

    u16 = np.array([[0, 1000], [2, 65535]], np.uint16)
    img = Image.from_array(u16)
    assert img.bit_depth == 16 and img.is_gray
    np.testing.assert_array_equal(img.pixels[..., 2], unit16(u16))

    img = Image.from_array(np.array([[True, False]]))
    assert img.bit_depth == 8
    np.testing.assert_array_equal(img.pixels[0, :, 0], [1.0, 0.0])

    img = Image.from_array(np.array([[[-0.05], [0.25], [1.05]]]))  # an overshoot of up to FLOAT_SLACK: clipped
    assert img.bit_depth == 32 and img.is_gray and img.pixels.shape == (1, 3, 3)
    np.testing.assert_array_equal(img.pixels[0, :, 1], [0.0, 0.25, 1.0])
    with pytest.raises(SegsoftError, match=r"float grey values must lie in \[0, 1\], these span -0.5 to 1.5"):
        Image.from_array(np.array([[[-0.5], [0.25], [1.5]]]))
    check_layout(img)


def test_from_array_alpha_and_mask():
    rgba = np.ones((2, 3, 4), np.float32)
    rgba[0, 0, 3] = 0
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    img = Image.from_array(rgba, mask=mask)
    np.testing.assert_array_equal(img.mask, [[False, True, True], [True, True, False]])
    assert img.n_used == 4
    assert Image.from_array(rgba[..., :3], mask=np.ones((2, 3), bool)).mask is None
    with pytest.raises(SegsoftError, match="every pixel is transparent"):
        Image.from_array(rgba[..., :3], mask=np.zeros((2, 3), bool))
    with pytest.raises(SegsoftError, match="does not match"):
        Image.from_array(rgba, mask=np.ones((3, 2), bool))


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.array([[0.5, np.nan]]), "array contains NaN or infinite values"),
        (np.array([[0.5, -np.inf]], np.float32), "array contains NaN or infinite values"),
        (np.zeros((2, 2, 3, 1), np.uint8), "not an image"),
        (np.zeros((2, 2), np.complex64), "unsupported array dtype complex64"),
    ],
)
def test_from_array_rejects(arr, message):
    with pytest.raises(SegsoftError, match=message):
        Image.from_array(arr)


def test_as_image_dispatch(tmp_path):
    rgb = noise((4, 5, 3))
    path = save(PILImage.fromarray(rgb), tmp_path / "x.png")
    img = as_image(str(path))
    assert img.path == path
    assert as_image(img) is img
    np.testing.assert_array_equal(as_image(path).pixels, img.pixels)
    np.testing.assert_array_equal(as_image(rgb).pixels, img.pixels)
    from_pil = as_image(PILImage.open(path))
    assert from_pil.path is None and from_pil.mode == "RGB"
    np.testing.assert_array_equal(from_pil.pixels, img.pixels)
    with pytest.raises(SegsoftError, match="--max-pixels"):
        as_image(path, max_pixels=10)
    with pytest.raises(TypeError):
        as_image(42)


def test_image_repr_and_validation():
    img = Image.from_array(np.zeros((2, 3, 4), np.uint8) + np.array([0, 0, 0, 255], np.uint8))
    assert repr(img) == "Image(3x2, mode='array', bit_depth=8, is_gray=False, path=None)"
    with pytest.raises(ValueError):
        Image(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- find_images


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    tiny = PILImage.new("RGB", (2, 2))
    for name in ["a.jpg", "b.PNG", "sub/c.tif", "sub/deeper/d.bmp", ".hidden/e.png", ".f.png"]:
        tiny.save(root / name, format=PILImage.registered_extensions()[Path(name).suffix.lower()])
    tiny.save(root / "no_extension", format="PNG")
    tiny.save(root / "wrong.dat", format="JPEG")
    (root / "notes.txt").write_text("hello")
    (root / "sub" / "data.csv").write_text("1,2\n")
    return root


def names(found):
    return [(p.name, stem.as_posix()) for p, stem in found]


def test_find_images_in_a_folder(tree):
    found = find_images([tree])
    assert names(found) == [("a.jpg", "a"), ("b.PNG", "b"), ("no_extension", "no_extension"), ("wrong.dat", "wrong")]
    assert all(p.parent == tree for p, _ in found)


def test_find_images_recursive(tree):
    found = find_images([str(tree)], recursive=True)
    assert names(found) == [
        ("a.jpg", "a"),
        ("b.PNG", "b"),
        ("no_extension", "no_extension"),
        ("c.tif", "sub/c"),
        ("d.bmp", "sub/deeper/d"),
        ("wrong.dat", "wrong"),
    ]


def test_find_images_files_and_globs(tree, monkeypatch):
    # an explicit file is taken whatever it is; it is checked when read
    assert names(find_images([tree / "notes.txt"])) == [("notes.txt", "notes")]
    found = find_images([str(tree / "**" / "*.*")])
    assert names(found) == [
        ("a.jpg", "a"),
        ("b.PNG", "b"),
        ("c.tif", "sub/c"),
        ("d.bmp", "sub/deeper/d"),
        ("wrong.dat", "wrong"),
    ]
    monkeypatch.chdir(tree)
    assert names(find_images(["sub/*.tif", "*.jpg"])) == [("a.jpg", "a"), ("c.tif", "c")]


def test_find_images_deduplicates(tree):
    found = find_images([tree, tree / "a.jpg", str(tree / "*.jpg")])
    assert [p.name for p, _ in found].count("a.jpg") == 1 and len(found) == 4


def test_find_images_missing_input(tree):
    with pytest.raises(SegsoftError, match=r"missing\.jpg: no such file or folder"):
        find_images([tree / "missing.jpg"])
    with pytest.raises(SegsoftError, match="no such file or folder"):
        find_images([str(tree / "*.gif")])
    assert find_images([]) == []


def test_find_images_name_collisions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    tiny = PILImage.new("RGB", (2, 2))
    for name in ["a/img.jpg", "b/img.png", "c/img.png", "c/img.jpg", "c/Img.JPG", "c/img_jpg.bmp"]:
        tiny.save(tmp_path / name, format=PILImage.registered_extensions()[Path(name).suffix.lower()])
    found = find_images([tmp_path / "a" / "img.jpg", tmp_path / "b" / "img.png"])
    assert names(found) == [("img.jpg", "img_jpg"), ("img.png", "img_png")]
    found = find_images([tmp_path / "c"])
    # "img_jpg" is taken by a real file, and Img.JPG / img.jpg collide on case-insensitive file systems
    assert names(found) == [
        ("Img.JPG", "Img_jpg_2"),
        ("img.jpg", "img_jpg_3"),
        ("img.png", "img_png"),
        ("img_jpg.bmp", "img_jpg"),
    ]
    found = find_images([tmp_path / "a" / "img.jpg", tmp_path / "c" / "img.jpg"])
    assert names(found) == [("img.jpg", "img_jpg"), ("img.jpg", "img_jpg_2")]
    stems = [stem for _, stem in find_images([tmp_path], recursive=True)]
    assert len(stems) == 6 and len({s.as_posix().lower() for s in stems}) == 6


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    readable = PILImage.registered_extensions()
    assert all(e in readable for e in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_target_and_cleans_up(tmp_path):
    target = tmp_path / "out" / "deep" / "probs.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".probs.") and tmp.name.endswith(".tmp.npy")
        assert not target.exists()
        np.save(tmp, np.arange(4))
    np.testing.assert_array_equal(np.load(target), np.arange(4))
    assert os.listdir(target.parent) == ["probs.npy"]
    with atomic_path(target) as tmp:
        np.save(tmp, np.arange(2))
    np.testing.assert_array_equal(np.load(target), np.arange(2))
    assert os.listdir(target.parent) == ["probs.npy"]


def test_atomic_path_with_pillow_uses_the_suffix(tmp_path):
    with atomic_path(tmp_path / "img.png") as tmp:
        PILImage.new("RGB", (3, 2), (1, 2, 3)).save(tmp)
    assert PILImage.open(tmp_path / "img.png").format == "PNG"


def test_atomic_path_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_atomic_path_turns_write_errors_into_segsoft_errors(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(SegsoftError) as info, atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"{target}: cannot write ({os.strerror(errno.ENOSPC)})"
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_to_unwritable_places(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(SegsoftError) as info:
        atomic_write_bytes(blocker / "x.png", b"data")
    message = str(info.value)
    assert message.startswith(str(blocker / "x.png")) and "cannot write" in message and "not a folder" in message
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(SegsoftError, match="cannot write"):
        atomic_write_bytes(tmp_path / "dir.png", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "file.txt"]


def test_atomic_write_bytes_respects_umask(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.txt", b"hello")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"hello"
    if os.name == "posix":
        umask = os.umask(0o022)
        os.umask(umask)
        assert (tmp_path / "a" / "b.txt").stat().st_mode & 0o777 == 0o666 & ~umask
