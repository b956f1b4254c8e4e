"""The lean paths of `segsoft run` give the same numbers and bytes as the eager ones.

An 8-bit RGB file is read into an Image that keeps its uint8 samples and makes the float32
pixels only when asked for; the exact fit on distinct colours makes the (H, W, k)
memberships only when asked for, and writes probabilities.npy block by block. Each test
compares the lean path with the eager one (an Image built from the float pixels, the
materialised memberships, ``np.save``), value for value and byte for byte.
"""

from __future__ import annotations

import hashlib
import importlib
import io as _io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft.io import _LUT8, Image, read_image
from segsoft.outputs import _save_probabilities_npy, encode_probabilities

seg_mod = importlib.import_module("segsoft.segment")


def _posterised(h: int, w: int, seed: int = 0, levels: int = 6) -> np.ndarray:
    """A smooth uint8 RGB picture with few distinct colours (the exact fit applies)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=-1)
    noisy = base + rng.normal(0, 0.05, base.shape)
    q = np.clip(np.round(noisy * (levels - 1)), 0, levels - 1) * (255 // (levels - 1))
    return q.astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    if alpha is None:
        PILImage.fromarray(rgb).save(path)
    else:
        PILImage.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def _eager(img: Image) -> Image:
    """The same image as the eager reader makes it: float32 pixels, no kept samples."""
    rgb8 = img._rgb8_rows()
    assert rgb8 is not None
    pixels = np.divide(rgb8.reshape(img.height, img.width, 3), np.float32(255), dtype=np.float32)
    out = Image(pixels, img.mask, img.path, 8, img.mode, False)
    assert out._rgb8_rows() is None
    return out


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return _write_png(tmp_path / "poster.png", _posterised(90, 120))


@pytest.fixture
def masked_photo(tmp_path: Path) -> Path:
    rgb = _posterised(70, 101, seed=3)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[10:30, 5:60] = 0
    return _write_png(tmp_path / "masked.png", rgb, alpha)


def test_lazy_image_makes_the_same_pixels(photo: Path) -> None:
    img = read_image(photo)
    assert img._rgb8_rows() is not None  # the samples are kept, the float pixels not yet made
    assert img.__dict__.get("_pixels") is None
    assert (img.height, img.width, img.n_bands, img.is_color, img.is_gray) == (90, 120, 3, True, False)
    assert img.band_names == ("R", "G", "B") and img.n_used == 90 * 120 and img.mask is None
    rgb8 = np.asarray(PILImage.open(photo).convert("RGB"))
    pixels = img.pixels
    assert pixels.dtype == np.float32 and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, _LUT8[rgb8])  # exactly v / 255, as the eager reader made them
    assert img.bands is img.pixels  # a colour image's bands are its pixels, as before
    assert img._rgb8_rows() is None  # dropped once made: changing pixels in place cannot go stale


def test_lazy_pixels_made_once_across_threads(photo: Path) -> None:
    img = read_image(photo)
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(img.pixels)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(p is got[0] for p in got)


def test_unit_window_and_rows_match_pixels(masked_photo: Path) -> None:
    img = read_image(masked_photo)
    eager = _eager(img)
    rows = img._band_rows()
    flat = eager.pixels.reshape(-1, 3)
    for key in (slice(None, None, 7), slice(100, 2000), np.array([5, 0, 7069, 3])):
        np.testing.assert_array_equal(rows[key], flat[key])
    win = img._unit_window(slice(3, 40), slice(7, 99))
    np.testing.assert_array_equal(win, eager.pixels[3:40, 7:99])
    assert img.__dict__.get("_pixels") is None


def test_codes_from_samples_equal_codes_from_floats(masked_photo: Path) -> None:
    img = read_image(masked_photo)
    from_bytes = seg_mod._color_codes(img)
    from_floats = seg_mod._color_codes(_eager(img))
    rgb8 = np.asarray(PILImage.open(masked_photo).convert("RGB")).astype(np.int64)[img.mask]
    expect = rgb8[:, 0] << 16 | rgb8[:, 1] << 8 | rgb8[:, 2]
    np.testing.assert_array_equal(from_bytes, expect)
    np.testing.assert_array_equal(from_floats, expect)


@pytest.mark.parametrize(
    "bad", [np.float32(0.5), np.float32(np.nan), np.float32(2.0), np.float32(-1 / 255), np.float32(np.inf)]
)
def test_float_codes_refuse_what_is_not_8_bit(bad: np.float32) -> None:
    pixels = _LUT8[_posterised(20, 30)]
    pixels[4, 7, 1] = bad
    assert seg_mod._color_codes(Image(pixels)) is None
    assert seg_mod._distinct_colors(Image(pixels)) is None


def test_float_codes_take_every_8_bit_value_and_negative_zero() -> None:
    pixels = np.zeros((256, 1, 3), np.float32)
    pixels[:, 0, 0] = _LUT8
    pixels[:, 0, 1] = _LUT8[::-1]
    pixels[0, 0, 2] = -0.0  # equal to 0.0 as a number: code 0, as before
    codes = seg_mod._color_codes(Image(pixels))
    v = np.arange(256)
    np.testing.assert_array_equal(codes, v << 16 | (255 - v) << 8)


@pytest.mark.parametrize("bitmap", [False, True])
def test_distinct_colours_same_on_both_routes(
    masked_photo: Path, monkeypatch: pytest.MonkeyPatch, bitmap: bool
) -> None:
    if bitmap:  # the route of large images (a 2^24 bitmap and an in-place lookup) on a small one
        monkeypatch.setattr(seg_mod, "_DISTINCT_BINCOUNT_PIXELS", 1)
    img = read_image(masked_photo)
    lazy = seg_mod._distinct_colors(img)
    eager = seg_mod._distinct_colors(_eager(img))
    # the reference: np.unique of the used pixels' float rows
    rows = _eager(img).pixels[img.mask]
    colors, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    for got in (lazy, eager):
        np.testing.assert_array_equal(got[0], colors)
        np.testing.assert_array_equal(got[1], counts.astype(np.float64))
        np.testing.assert_array_equal(got[2], inverse.reshape(-1))
        assert got[2].dtype == np.int32
    n_d = len(colors)
    assert seg_mod._distinct_colors(img, limit=n_d - 1) is None
    assert seg_mod._distinct_colors(img, limit=n_d) is not None


def _same_segmentations(a: segsoft.SoftSegmentation, b: segsoft.SoftSegmentation) -> None:
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mean_rgb, b.mean_rgb)
    np.testing.assert_array_equal(a.overlay(), b.overlay())
    for w in (None, 16, 33):
        np.testing.assert_array_equal(a.original(w, None, True), b.original(w, None, True))
    assert a.log_likelihood == b.log_likelihood
    np.testing.assert_array_equal(a.model.means_, b.model.means_)
    for (name, _, make_a), (_, _, make_b) in zip(a.pictures(), b.pictures()):
        pa, pb = make_a(), make_b()
        if isinstance(pa, np.ndarray):
            np.testing.assert_array_equal(pa, pb, err_msg=name)
        else:
            np.testing.assert_array_equal(pa.indices, pb.indices, err_msg=name)
            np.testing.assert_array_equal(pa.palette, pb.palette, err_msg=name)


@pytest.mark.parametrize("which", ["photo", "masked_photo"])
def test_lazy_image_segments_like_the_eager_one(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    lazy_img = read_image(path)
    lazy = segsoft.segment(lazy_img, k=3)
    assert lazy.settings.get("exact_fit") is not None
    assert lazy_img.__dict__.get("_pixels") is None  # the fit and memberships never made the float pixels
    eager = segsoft.segment(_eager(read_image(path)), k=3)
    _same_segmentations(lazy, eager)


def test_lazy_probabilities_equal_the_materialised_ones(photo: Path) -> None:
    seg = segsoft.segment(read_image(photo), k=4)
    assert seg._distinct is not None
    assert seg._probabilities is None  # not made by segment()
    assert seg.k == 4 and seg._probabilities is None
    labels, counts = seg.labels, seg.label_counts
    assert seg._probabilities is None  # labels, counts and pictures come from the colours
    blocks = [b.copy() for b in seg._probability_blocks(step=1000)]
    assert seg._probabilities is None
    inverse, table = seg._distinct[0], seg._distinct[1]
    expect = table[inverse].reshape(90, 120, 4)
    np.testing.assert_array_equal(np.concatenate(blocks).reshape(90, 120, 4), expect)
    probs = seg.probabilities
    assert probs.dtype == np.float32 and probs.shape == (90, 120, 4)
    np.testing.assert_array_equal(probs, expect)
    assert seg.probabilities is probs  # made once
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=-1))
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=4))


def test_lazy_probabilities_masked(masked_photo: Path) -> None:
    seg = segsoft.segment(read_image(masked_photo), k=3)
    assert seg._distinct is not None and seg._probabilities is None
    p = seg.probabilities
    mask = seg.mask
    assert np.isnan(p[~mask]).all() and not np.isnan(p[mask]).any()
    np.testing.assert_array_equal(p[mask], seg._distinct[1][seg._distinct[0]])
    np.testing.assert_array_equal(np.concatenate(list(seg._probability_blocks(step=777))), p.reshape(-1, 3))


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("which", ["photo", "masked_photo", "many_colours"])
def test_npy_blocks_equal_np_save(which: str, dtype: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if which == "many_colours":  # the per-pixel path: no distinct colours, memberships made by segment()
        rgb = np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        seg = segsoft.segment(rgb, k=3)
        assert seg._distinct is None
    else:
        seg = segsoft.segment(read_image(request.getfixturevalue(which)), k=3)
        assert seg._distinct is not None
    path = tmp_path / "p.npy"
    _save_probabilities_npy(path, seg, dtype)
    buf = _io.BytesIO()
    np.save(buf, encode_probabilities(seg.probabilities, dtype))
    assert path.read_bytes() == buf.getvalue()
    np.testing.assert_array_equal(np.load(path), encode_probabilities(seg.probabilities, dtype))


def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.iterdir()):
        if f.name != "model.json":
            out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("which", ["photo", "masked_photo"])
def test_saved_outputs_identical_to_the_eager_path(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(which)
    lazy_img = read_image(path)
    lazy = segsoft.segment(lazy_img, k=3)
    lazy.save(tmp_path / "lazy")
    if lazy.mask is None:  # written from the colours and the samples (a masked overlay blends the pixels)
        assert lazy_img.__dict__.get("_pixels") is None and lazy._probabilities is None
    eager = segsoft.segment(_eager(read_image(path)), k=3)
    eager.probabilities  # noqa: B018 - materialised: the old path
    eager.save(tmp_path / "eager")
    a, b = _digest(tmp_path / "lazy"), _digest(tmp_path / "eager")
    assert a == b and "probabilities.npy" in a and "overlay.png" in a
    ra = json.loads((tmp_path / "lazy" / "model.json").read_text())
    rb = json.loads((tmp_path / "eager" / "model.json").read_text())
    for r in (ra, rb):
        for key in ("timings", "created"):
            r.pop(key)
        r["image"].pop("source")
    assert ra == rb


def test_new_pixels_on_a_lazy_image_keep_its_bands(photo: Path) -> None:
    img = read_image(photo)
    old = _LUT8[np.asarray(PILImage.open(photo).convert("RGB"))]
    img.pixels = np.zeros_like(old)  # as on an eager image, the bands stay the pixels they were
    np.testing.assert_array_equal(img.bands, old)
    assert not img.pixels.any() and img._rgb8_rows() is None


def test_block_mean_equals_numpys_mean() -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        fy, fx, r, c = (int(v) for v in rng.integers(1, [18, 18, 6, 40]))
        scale = rng.choice([1.0, 1e-3, 1e3])
        block = (rng.random((r * fy, c * fx, 3)) * scale).astype(np.float32)
        if rng.random() < 0.3:
            block = _LUT8[np.round(block / scale * 255).astype(np.uint8)]
        expect = block.reshape(r, fy, c, fx, 3).mean(axis=(1, 3), dtype=np.float32)
        got = seg_mod._block_mean(block, fy, fx)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expect)


def _original_reference(pixels: np.ndarray, width: int) -> np.ndarray:
    """SoftSegmentation.original(width) as it was written before _block_mean (no mask)."""
    from segsoft import render

    fy, fx = render.shrink_factors(pixels.shape, width, None)
    h, w = pixels.shape[0] // fy, pixels.shape[1] // fx
    block = pixels[: h * fy, : w * fx]
    if fy > 1 or fx > 1:
        block = block.reshape(h, fy, w, fx, 3).mean(axis=(1, 3), dtype=np.float32)
    return np.rint(np.clip(block, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


@pytest.mark.parametrize("shape", [(90, 120), (301, 47), (1000, 1700), (5, 3000)])
def test_original_tile_unchanged(shape: tuple[int, int], tmp_path: Path) -> None:
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    rgb[: shape[0] // 2] //= 40  # some few-colour area
    path = _write_png(tmp_path / "o.png", rgb)
    seg = segsoft.segment(read_image(path), k=2, max_iter=3)
    for width in (16, 64, 256):
        expect = _original_reference(_LUT8[rgb], width)
        np.testing.assert_array_equal(seg.original(width), expect)
        np.testing.assert_array_equal(segsoft.segment(rgb, k=2, max_iter=3).original(width), expect)
