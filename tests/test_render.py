"""Tests for segsoft.render: colours, overlays, heatmaps, labels, entropy and montages."""

from __future__ import annotations

import numpy as np
import pytest

from segsoft import render
from segsoft.errors import SegsoftError


def _random_probabilities(h: int, w: int, k: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((h, w, k), dtype=np.float32) + 1e-3
    return p / p.sum(-1, keepdims=True)


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels]


def _assert_rgb(a: np.ndarray, h: int, w: int) -> None:
    assert a.dtype == np.uint8
    assert a.shape == (h, w, 3)
    assert a.flags.c_contiguous


# ----------------------------------------------------------------------------- colours


def test_cluster_colors_distinct_and_deterministic():
    for k in range(1, 31):
        c = render.cluster_colors(k)
        assert c.dtype == np.uint8 and c.shape == (k, 3)
        assert len({tuple(row) for row in c.tolist()}) == k
        np.testing.assert_array_equal(c, render.cluster_colors(k))
        # growing k only appends colours
        np.testing.assert_array_equal(c, render.cluster_colors(30)[:k])
    assert render.cluster_colors(10)[0].tolist() == [31, 119, 180]  # tab10 blue
    with pytest.raises(SegsoftError):
        render.cluster_colors(0)


def test_colormap_lut_cached_read_only_and_unknown_name():
    lut = render.colormap_lut("gray")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 0] and lut[255].tolist() == [255, 255, 255]
    assert render.colormap_lut("gray") is lut
    assert not lut.flags.writeable
    with pytest.raises(SegsoftError, match="unknown colormap 'no-such-map'"):
        render.colormap_lut("no-such-map")


# ----------------------------------------------------------------------------- overlay


def test_overlay_alpha_zero_is_image():
    img = np.random.default_rng(1).random((5, 7, 3), dtype=np.float32)
    out = render.soft_overlay(img, _random_probabilities(5, 7, 3), alpha=0.0)
    _assert_rgb(out, 5, 7)
    assert np.abs(out.astype(int) - np.rint(img * 255)).max() <= 1


def test_overlay_alpha_one_one_hot_is_cluster_colours():
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    colors = render.cluster_colors(3)
    out = render.soft_overlay(np.full((2, 3, 3), 0.3, np.float32), _one_hot(labels, 3), alpha=1.0)
    np.testing.assert_array_equal(out, colors[labels])


def test_overlay_blends_memberships():
    p = np.array([[[0.5, 0.5]]], np.float32)
    out = render.soft_overlay(np.ones((1, 1, 3), np.float32), p, alpha=0.5, colors=[[0, 0, 0], [0, 0, 200]])
    # 0.5 * 255 + 0.5 * (0.5 * (0, 0, 0) + 0.5 * (0, 0, 200))
    assert out[0, 0].tolist() == [128, 128, 178]


def test_overlay_masked_pixels_keep_image():
    img = np.random.default_rng(2).random((4, 6, 3), dtype=np.float32)
    p = _random_probabilities(4, 6, 2)
    mask = np.ones((4, 6), bool)
    mask[1, 2] = mask[3, 5] = False
    p[~mask] = np.nan
    expected = np.rint(img * 255)
    for m in (mask, None):  # NaN alone marks the pixel too
        out = render.soft_overlay(img, p, alpha=1.0, mask=m)
        assert np.abs(out[~mask].astype(int) - expected[~mask]).max() <= 1
        assert np.isfinite(out).all()
    # a mask False on a finite pixel also keeps the image there
    out = render.soft_overlay(img, _random_probabilities(4, 6, 2), alpha=1.0, mask=mask)
    assert np.abs(out[~mask].astype(int) - expected[~mask]).max() <= 1


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_bad_alpha(alpha):
    with pytest.raises(SegsoftError, match="alpha"):
        render.soft_overlay(np.zeros((2, 2, 3), np.float32), _random_probabilities(2, 2, 2), alpha=alpha)


def test_overlay_shape_mismatch():
    with pytest.raises(SegsoftError):
        render.soft_overlay(np.zeros((3, 2, 3), np.float32), _random_probabilities(2, 2, 2))


def test_overlay_spans_several_chunks(monkeypatch):
    # Force tiny chunks so the chunk boundaries are exercised on a small array.
    monkeypatch.setattr(render, "_CHUNK_PIXELS", 7)
    img = np.random.default_rng(3).random((9, 5, 3), dtype=np.float32)
    p = _random_probabilities(9, 5, 3)
    p[4] = np.nan
    out = render.soft_overlay(img, p, alpha=0.4)
    monkeypatch.setattr(render, "_CHUNK_PIXELS", 1 << 18)
    np.testing.assert_array_equal(out, render.soft_overlay(img, p, alpha=0.4))


# ----------------------------------------------------------------------------- heatmap


def test_heatmap_constant_one_is_top_colour():
    p = np.zeros((3, 4, 2), np.float32)
    p[..., 1] = 1.0
    lut = render.colormap_lut("viridis")
    out = render.heatmap(p, 1)
    _assert_rgb(out, 3, 4)
    assert (out == lut[255]).all()
    assert (render.heatmap(p, 0) == lut[0]).all()


def test_heatmap_quantises_with_rounding():
    p = np.array([[[0.5, 0.5], [0.1, 0.9]]], np.float32)
    out = render.heatmap(p, 0, cmap="gray")
    assert out[0, :, 0].tolist() == [128, 26]  # rint(127.5), rint(25.5)


def test_heatmap_masked_black_and_bad_index():
    p = _random_probabilities(4, 4, 3)
    mask = np.ones((4, 4), bool)
    mask[0, :2] = False
    p[0, 0] = np.nan  # NaN and masked
    out = render.heatmap(p, 2, cmap="gray", mask=mask)
    assert (out[~mask] == 0).all()
    assert (render.heatmap(p, 2, cmap="gray")[0, 0] == 0).all()  # NaN alone
    for j in (3, -1):
        with pytest.raises(SegsoftError, match="out of range"):
            render.heatmap(p, j)
    with pytest.raises(SegsoftError, match="unknown colormap"):
        render.heatmap(p, 0, cmap="nope")


# ----------------------------------------------------------------------------- labels


def test_label_image_colours_and_masked_black():
    labels = np.array([[0, 1, -1], [2, -1, 0]])
    out = render.label_image(labels)
    _assert_rgb(out, 2, 3)
    colors = render.cluster_colors(3)
    assert (out[labels == -1] == 0).all()
    np.testing.assert_array_equal(out[labels >= 0], colors[labels[labels >= 0]])
    custom = render.label_image(labels, colors=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert custom[1, 0].tolist() == [7, 8, 9]
    with pytest.raises(SegsoftError):
        render.label_image(labels, k=2)  # label 2 has no colour
    with pytest.raises(SegsoftError):
        render.label_image(np.array([[-2, 0]]))


# ----------------------------------------------------------------------------- entropy


def test_normalized_entropy_bounds():
    k = 4
    one_hot = _one_hot(np.random.default_rng(4).integers(0, k, (3, 5)), k)
    e = render.normalized_entropy(one_hot)
    assert e.dtype == np.float32 and e.shape == (3, 5)
    np.testing.assert_array_equal(e, 0.0)
    assert not np.signbit(e).any()
    np.testing.assert_allclose(render.normalized_entropy(np.full((2, 2, k), 1 / k, np.float32)), 1.0, atol=1e-6)
    r = render.normalized_entropy(_random_probabilities(6, 6, k))
    assert (r >= 0).all() and (r <= 1).all() and (r > 0).all()


def test_normalized_entropy_nan_and_single_cluster():
    p = _random_probabilities(2, 3, 2)
    p[1, 1] = np.nan
    e = render.normalized_entropy(p)
    assert np.isnan(e[1, 1]) and np.isfinite(e[0]).all()
    single = np.ones((2, 3, 1), np.float32)
    single[0, 0] = np.nan
    e1 = render.normalized_entropy(single)
    assert np.isnan(e1[0, 0]) and (e1.ravel()[1:] == 0).all()


def test_uncertainty_image():
    p = np.array([[[1.0, 0.0], [0.5, 0.5], [np.nan, np.nan]]], np.float32)
    lut = render.colormap_lut("magma")
    out = render.uncertainty_image(p)
    _assert_rgb(out, 1, 3)
    assert out[0, 0].tolist() == lut[0].tolist()
    assert out[0, 1].tolist() == lut[255].tolist()
    assert out[0, 2].tolist() == [0, 0, 0]
    masked = render.uncertainty_image(p, mask=np.array([[True, False, True]]))
    assert masked[0, 1].tolist() == [0, 0, 0]
    # K = 1: every used pixel is certain
    k1 = render.uncertainty_image(np.ones((2, 2, 1), np.float32), cmap="gray")
    assert (k1 == 0).all()


@pytest.mark.parametrize("shape", [(1, 5, 3), (5, 1, 3), (1, 1, 1)])
def test_degenerate_shapes(shape):
    h, w, k = shape
    p = _random_probabilities(h, w, k)
    img = np.full((h, w, 3), 0.5, np.float32)
    _assert_rgb(render.soft_overlay(img, p), h, w)
    _assert_rgb(render.heatmap(p, k - 1), h, w)
    _assert_rgb(render.uncertainty_image(p), h, w)
    _assert_rgb(render.label_image(np.zeros((h, w), int), k=k), h, w)
    assert render.normalized_entropy(p).shape == (h, w)


def test_all_masked():
    p = np.full((3, 4, 3), np.nan, np.float32)
    img = np.full((3, 4, 3), 0.25, np.float32)
    assert (render.heatmap(p, 0) == 0).all()
    assert (render.uncertainty_image(p) == 0).all()
    assert np.isnan(render.normalized_entropy(p)).all()
    assert (render.soft_overlay(img, p, alpha=1.0) == 64).all()


# ----------------------------------------------------------------------------- montage


def test_montage_dimensions():
    m, tw = render._MARGIN, 32
    square = np.full((16, 16, 3), 200, np.uint8)
    wide = np.zeros((40, 160, 3), np.uint8)  # shrinks to 32 x 8
    sheet = render.montage([("a", square), ("b", wide), ("c", square)], tile_width=tw, columns=2)
    _assert_rgb(sheet, sheet.shape[0], m + 2 * (tw + m))
    band = sheet.shape[0] - (m + 32 + m + 32 + m)
    assert band > 0 and band % 2 == 0  # two rows, each with the same title band
    # default columns = min(4, n)
    assert render.montage([("x", square)] * 6, tile_width=tw).shape[1] == m + 4 * (tw + m)
    assert render.montage([("x", square)] * 2, tile_width=tw).shape[1] == m + 2 * (tw + m)
    # background white, tiny tile upscaled (nearest) to the full tile width
    assert (sheet[0] == 255).all()
    top = m + band // 2
    np.testing.assert_array_equal(sheet[top : top + tw, m : m + tw], 200)


def test_montage_draws_titles_and_rejects_bad_input():
    blank = np.full((8, 8, 3), 255, np.uint8)
    sheet = render.montage([("title", blank)], tile_width=64)
    assert (sheet < 128).any()  # dark text on white
    with pytest.raises(SegsoftError):
        render.montage([])
    with pytest.raises(SegsoftError):
        render.montage([("f", np.zeros((4, 4, 3), np.float32))])
    with pytest.raises(SegsoftError):
        render.montage([("a", blank)], tile_width=0)


# ----------------------------------------------------------------------------- transparency


def test_indexed_pictures_mark_unused_pixels_transparent():
    p = np.array([[[0.2, 0.8], [np.nan, np.nan], [1.0, 0.0]]], np.float32)
    for pic in (render.heatmap_indexed(p, 0), render.uncertainty_indexed(p)):
        assert pic.transparent == 255 and pic.indices[0, 1] == 255
        assert pic.to_rgba()[0, :, 3].tolist() == [255, 0, 255]
        np.testing.assert_array_equal(pic.to_rgba()[..., :3], pic.to_rgb())
    labels = render.label_indexed(np.array([[0, -1, 1]]))
    assert labels.transparent == 2 and labels.to_rgba()[0, :, 3].tolist() == [255, 0, 255]
    # every pixel used: nothing transparent, and the full 256-level palette as before
    full = np.nan_to_num(p, nan=0.5)
    assert render.heatmap_indexed(full, 0).transparent is None and len(render.heatmap_indexed(full, 0).palette) == 256
    assert render.label_indexed(np.array([[0, 1]])).transparent is None
    regions = render.region_indexed(np.ones((1, 3, 3)), np.array([[0, 1, -1]]), boundaries=False)
    assert regions.transparent == 2


def test_with_alpha_only_when_some_pixel_is_masked():
    rgb = np.full((2, 3, 3), 7, np.uint8)
    assert render.with_alpha(rgb, None) is rgb
    assert render.with_alpha(rgb, np.ones((2, 3), bool)) is rgb
    out = render.with_alpha(rgb, np.array([[True, False, True], [True, True, False]]))
    assert out.shape == (2, 3, 4) and out[..., 3].tolist() == [[255, 0, 255], [255, 255, 0]]
    np.testing.assert_array_equal(out[..., :3], rgb)
    with pytest.raises(SegsoftError):
        render.with_alpha(rgb, np.ones((3, 3), bool))


def test_montage_draws_rgba_tiles_on_the_checkerboard():
    rgba = np.zeros((16, 16, 4), np.uint8)  # wholly transparent
    sheet, layout = render.montage([("clear", rgba)], tile_width=16, return_layout=True)
    x0, y0, x1, y1 = layout.tiles[0]
    np.testing.assert_array_equal(sheet[y0:y1, x0:x1], render.checkerboard(16, 16))
