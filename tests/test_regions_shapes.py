"""Regions on images of any shape (segsoft.regions): the block-averaged working copy and very tall or wide images."""

from __future__ import annotations

import numpy as np
import pytest

from segsoft import regions as R
from segsoft.regions import region_hierarchy


def block_mean(rgb, p, used, f):
    """Direct reference: means over the used pixels of each f x f block (float64), and the used share."""
    H, W = used.shape
    h, w = -(-H // f), -(-W // f)
    pad = ((0, h * f - H), (0, w * f - W))
    u = np.pad(used, pad).astype(np.float64)
    inside = np.pad(np.ones((H, W)), pad)

    def blocks(x):
        return x.reshape(h, f, w, f, *x.shape[2:]).sum(axis=(1, 3))

    weight = blocks(u)
    safe = np.maximum(weight, 1)[..., None]
    means = []
    for x in (rgb, p):
        x = np.where(used[..., None], np.asarray(x, np.float64), 0.0)
        means.append(blocks(np.pad(x, pad + ((0, 0),))) / safe)
    return means[0], means[1], weight / blocks(inside)


def images(shape, k, seed, how):
    rng = np.random.default_rng(seed)
    rgb = rng.random((*shape, 3)).astype(np.float32)
    p = rng.dirichlet(np.ones(k), shape).astype(np.float32)
    mask = None
    if how == "mask":
        mask = rng.random(shape) > 0.3
    elif how == "nan":
        p[rng.random(shape) > 0.6] = np.nan
    used = np.isfinite(p).all(axis=-1) & (True if mask is None else mask)
    return rgb, p, mask, used


SHAPES = [(1, 1), (1, 11), (11, 1), (7, 10), (31, 29), (64, 3), (3, 64), (2, 1001), (1001, 2), (50, 50)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("f", [2, 3, 5])
@pytest.mark.parametrize("how", ["all", "mask", "nan"])
def test_working_copy_equals_a_direct_block_mean(shape, f, how):
    rgb, p, mask, used = images(shape, 4, seed=sum(shape) + f, how=how)
    rgb_w, p_w, share, used_out = R._working_copy(rgb, p, mask, f)
    ref_rgb, ref_p, ref_share = block_mean(rgb, p, used, f)
    h, w = -(-shape[0] // f), -(-shape[1] // f)
    assert rgb_w.shape == (h, w, 3) and p_w.shape == (h, w, 4) and share.shape == (h, w)
    assert rgb_w.dtype == p_w.dtype == share.dtype == np.float32
    np.testing.assert_array_equal(used_out, used)
    np.testing.assert_allclose(rgb_w, ref_rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_w, ref_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(share, ref_share, rtol=1e-6)
    assert np.isfinite(p_w).all() and (p_w[share == 0] == 0).all()


@pytest.mark.parametrize("shape", [(1, 1000), (1000, 1), (2, 777), (777, 3), (41, 53), (100, 101)])
@pytest.mark.parametrize("tile", [1, 20, 50, 333])
def test_tiles_of_any_size_give_the_same_working_copy(monkeypatch, shape, tile):
    """Cut into tiles of whole blocks, across and along the rows, the result is bit for bit the same."""
    rgb, p, mask, _ = images(shape, 3, seed=5, how="mask")
    whole = R._working_copy(rgb, p, mask, 4)
    monkeypatch.setattr(R, "_TILE_PIXELS", tile)
    for a, b in zip(whole, R._working_copy(rgb, p, mask, 4)):
        np.testing.assert_array_equal(a, b)


def test_working_copy_at_full_resolution_zeroes_unused_pixels():
    rgb, p, mask, used = images((9, 13), 3, seed=1, how="nan")
    rgb_w, p_w, share, used_out = R._working_copy(rgb, p, mask, 1)
    np.testing.assert_array_equal(used_out, used)
    np.testing.assert_array_equal(share, used.astype(np.float32))
    assert (p_w[~used] == 0).all() and (rgb_w[~used] == 0).all()
    np.testing.assert_array_equal(p_w[used], p[used])


def test_float64_inputs_give_the_same_hierarchy_as_float32(monkeypatch):
    """Inputs are converted a tile at a time, exactly as a float32 copy of the whole would be."""
    monkeypatch.setattr(R, "WORK_PIXELS", 500)
    rng = np.random.default_rng(3)
    rgb, p = rng.random((60, 70, 3)), rng.dirichlet(np.ones(3), (60, 70))
    a = region_hierarchy(rgb, p)
    b = region_hierarchy(rgb.astype(np.float32), p.astype(np.float32))
    assert a.factor == b.factor > 1
    np.testing.assert_array_equal(a.superpixels, b.superpixels)
    np.testing.assert_array_equal(a.merges, b.merges)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (24, 26), (26, 24), (2, 101), (101, 2)])
@pytest.mark.parametrize("f", [1, 2, 5, 25])
def test_upscale_gives_each_pixel_its_block(shape, f):
    small = np.random.default_rng(0).integers(0, 5, (-(-shape[0] // f), -(-shape[1] // f))).astype(np.int32)
    out = R._upscale(small, f, shape, None)
    assert out.shape == shape and out.dtype == np.int32
    np.testing.assert_array_equal(out, small[np.arange(shape[0])[:, None] // f, np.arange(shape[1])[None, :] // f])


def two_halves(n, axis):
    """A strip of n pixels along ``axis``: two colours with noise, one-hot memberships of the two halves."""
    shape = (n, 1) if axis == 0 else (1, n)
    half = (np.arange(n) >= n // 2).reshape(shape)
    rgb = np.where(half[..., None], np.float32([0.9, 0.2, 0.1]), np.float32([0.1, 0.1, 0.6]))
    rgb = rgb + np.random.default_rng(0).normal(0, 0.02, rgb.shape).astype(np.float32)
    p = np.stack([~half, half], axis=-1).astype(np.float32)
    return np.clip(rgb, 0, 1), p, half


@pytest.mark.parametrize("axis", [0, 1], ids=["tall-2Mx1", "wide-1x2M"])
def test_a_very_thin_image_gives_its_regions(axis):
    n = 2_000_000
    rgb, p, half = two_halves(n, axis)
    h = region_hierarchy(rgb, p)
    assert h.factor == 4 and h.shape == half.shape
    labels = h.labels()
    assert labels.shape == half.shape and labels.dtype == np.int32
    flat, truth = labels.ravel(), half.ravel()
    assert (flat >= 0).all() and int(flat.max()) + 1 == 2
    # a strip too thin for SLIC is cut into fixed runs of superpixel_size working pixels (blocks of factor
    # pixels), so the run across the boundary may go either way
    away = np.abs(np.arange(n) - n // 2) >= R.SUPERPIXEL_SIZE * h.factor
    assert len(np.unique(flat[away & truth])) == 1 and len(np.unique(flat[away & ~truth])) == 1
    assert flat[away & truth][0] != flat[away & ~truth][0]


@pytest.mark.parametrize("shape", [(1_000_000, 2), (2, 1_000_000), (400_000, 3), (1_000_000, 1)])
def test_thin_images_with_holes_label_every_used_pixel(shape):
    """Holes along one edge (the strip stays connected) and a transparent stretch across it: two regions."""
    rng = np.random.default_rng(1)
    rgb = rng.random((*shape, 3)).astype(np.float32)
    p = np.full((*shape, 2), 0.5, np.float32)
    tall = shape[0] >= shape[1]
    long, thin = max(shape), min(shape)
    mask = np.ones((long, thin), bool)
    if thin > 1:
        mask[:, 0] = rng.random(long) > 0.3
    mask[long // 3 : long // 3 + 1000] = False
    labels = region_hierarchy(rgb, p, mask=mask if tall else mask.T).labels(1e9)
    assert labels.shape == shape and labels.dtype == np.int32
    along = labels if tall else labels.T  # (long, thin) like mask
    np.testing.assert_array_equal(along < 0, ~mask)
    before, after = along[: long // 3][mask[: long // 3]], along[long // 3 :][mask[long // 3 :]]
    assert len(np.unique(before)) == len(np.unique(after)) == 1 and before[0] != after[0]  # the two sides of the cut
    assert sorted(np.unique(labels[labels >= 0]).tolist()) == [0, 1]
