"""The texture cue of the "contrast" merge cost (issue 15): gradient-orientation histograms per region."""

import numpy as np
import pytest

from segsoft.regions import MERGE_THRESHOLD, merge_regions, region_hierarchy


def stripes(seed=0):
    """Two halves of the same two colours in the same proportions: horizontal stripes left, vertical right.

    The memberships are the same mixture on both sides and nothing but the grain tells them apart.
    """
    rng = np.random.default_rng(seed)
    h, w = 60, 80
    y, x = np.mgrid[:h, :w]
    dark = np.where(x < w // 2, (y // 2) % 2, (x // 2) % 2).astype(bool)
    c0, c1 = np.array([0.35, 0.45, 0.3]), np.array([0.45, 0.55, 0.4])
    rgb = np.clip(np.where(dark[..., None], c0, c1) + rng.normal(0, 0.01, (h, w, 3)), 0, 1)
    p = np.stack([dark, ~dark], -1).astype(float) * 0.6 + 0.2
    return rgb, p


def test_texture_keeps_apart_what_colour_alone_merges():
    rgb, p = stripes()
    colour_only = merge_regions(rgb, p, MERGE_THRESHOLD, cost="contrast")
    assert int(colour_only.max()) + 1 == 1  # same mixture on both sides: one region
    textured = merge_regions(rgb, p, MERGE_THRESHOLD, cost="contrast", texture=1.0)
    left, right = textured[:, :36], textured[:, 44:]  # away from the seam, where a superpixel may straddle it
    assert int(textured.max()) + 1 == 2
    assert np.unique(left).size == 1 and np.unique(right).size == 1 and left[0, 0] != right[0, 0]


def test_texture_zero_is_the_default_and_colour_only():
    rgb, p = stripes(seed=1)
    default = region_hierarchy(rgb, p, cost="contrast")
    zero = region_hierarchy(rgb, p, cost="contrast", texture=0)
    assert np.array_equal(default.merges, zero.merges) and np.array_equal(default.superpixels, zero.superpixels)
    # the cue only ever raises a merge's cost (it lowers the likeness), so the texture hierarchy has more regions
    textured = region_hierarchy(rgb, p, cost="contrast", texture=2.0)
    assert np.array_equal(textured.superpixels, zero.superpixels)
    assert textured.n_regions(MERGE_THRESHOLD) >= zero.n_regions(MERGE_THRESHOLD)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "rough", None])
def test_bad_texture_weight_is_one_clear_error(bad):
    rgb, p = stripes()
    with pytest.raises(ValueError, match="texture must be a finite number >= 0"):
        region_hierarchy(rgb, p, cost="contrast", texture=bad)
