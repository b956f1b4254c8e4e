"""Regions by boundary-aware merging of superpixels (segsoft.regions): known answers, the merge rule, edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as components

import segsoft
from segsoft import regions as R
from segsoft.regions import RegionHierarchy, merge_regions, region_hierarchy

BSDS_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds-dev"


# ----------------------------------------------------------------------------- helpers


def painted(truth, colors, noise=0.02, seed=0):
    """An image painting class ``truth[y, x]`` with ``colors[class]`` (sRGB in [0, 1]) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    rgb = np.asarray(colors, float)[truth] + rng.normal(0, noise, truth.shape + (3,))
    return np.clip(rgb, 0, 1)


def one_hot(truth, k=None):
    k = int(truth.max()) + 1 if k is None else k
    return np.eye(k)[truth]


def halves(h=40, w=60, split=None):
    truth = np.zeros((h, w), int)
    truth[:, w // 2 if split is None else split :] = 1
    return truth


def same_partition(labels, truth):
    """True when the regions are exactly the classes of ``truth`` (a one-to-one relabelling)."""
    labels, truth = np.asarray(labels).ravel(), np.asarray(truth).ravel()
    pairs = np.unique(np.stack([labels, truth]), axis=1).shape[1]
    return pairs == np.unique(labels).size == np.unique(truth).size


def assert_valid(labels, shape, used=None):
    """int32 (H, W); -1 exactly off ``used``; ids on used pixels are exactly 0..n-1."""
    assert labels.shape == shape and labels.dtype == np.int32
    used = np.ones(shape, bool) if used is None else used
    np.testing.assert_array_equal(labels < 0, ~used)
    assert (labels[~used] == -1).all()
    ids = np.unique(labels[used])
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    return ids.size


def assert_regions_connected(labels):
    """Each region is a single 4-connected patch."""
    for r in range(int(labels.max()) + 1):
        assert components(labels == r, connectivity=1, background=0).max() == 1, f"region {r} is in pieces"


def partition_of(ids):
    """The groups of an id array, as a set of frozensets of positions (ids < 0 ignored)."""
    groups = {}
    for i, g in enumerate(np.asarray(ids).tolist()):
        if g >= 0:
            groups.setdefault(g, set()).add(i)
    return {frozenset(s) for s in groups.values()}


# ----------------------------------------------------------------------------- known answers


def test_two_flat_halves_give_exactly_the_halves():
    truth = halves()
    rgb = painted(truth, [[0.05, 0.05, 0.05], [0.9, 0.2, 0.1]])
    labels = merge_regions(rgb, one_hot(truth))
    assert assert_valid(labels, truth.shape) == 2
    assert same_partition(labels, truth)


def test_two_halves_through_segment():
    truth = halves(48, 64)
    img = (painted(truth, [[0.1, 0.2, 0.6], [0.85, 0.75, 0.2]], seed=3) * 255).round().astype(np.uint8)
    seg = segsoft.segment(img, k=2)
    labels = seg.regions()
    assert assert_valid(labels, truth.shape) == 2
    assert same_partition(labels, truth)
    # regions() cuts the cached hierarchy: the same as merging the segmentation's memberships directly
    np.testing.assert_array_equal(labels, merge_regions(seg.image.pixels, seg.probabilities))
    assert seg.hierarchy is seg.hierarchy


def test_four_quadrants_give_the_quadrants():
    truth = np.zeros((64, 64), int)
    truth[:32, 32:], truth[32:, :32], truth[32:, 32:] = 1, 2, 3
    colors = [[0.08, 0.08, 0.08], [0.85, 0.15, 0.15], [0.15, 0.75, 0.25], [0.9, 0.9, 0.95]]
    rgb = painted(truth, colors, seed=1)
    labels = merge_regions(rgb, one_hot(truth))
    assert assert_valid(labels, truth.shape) == 4
    assert same_partition(labels, truth)


def test_noisier_halves_still_give_exactly_the_halves():
    # SLIC's own connectivity repair hands stray fragments to whichever neighbour it meets first, across
    # strong edges; _superpixels gives them to the neighbour of closest colour instead
    # the same two flat halves with a little more noise (sd 0.03 of the range, 7.7 levels of 255)
    truth = halves(64, 64)
    wrong = []
    for seed in range(10):
        rgb = painted(truth, [[0.1, 0.2, 0.6], [0.85, 0.75, 0.2]], noise=0.03, seed=seed)
        labels = merge_regions(rgb, one_hot(truth))
        if not same_partition(labels, truth):
            wrong.append((seed, int(min(np.sum(labels != truth), np.sum(labels != 1 - truth)))))
    assert not wrong, f"(seed, pixels in the wrong region): {wrong}"


# the texture test: a fine two-colour checkerboard (2x2 cells) beside a flat third colour
TEXTURE_COLORS = [[0.2, 0.6, 0.2], [0.3, 0.45, 0.1], [0.8, 0.3, 0.6]]


def textured_halves(h=48, w=64, cell=2):
    yy, xx = np.mgrid[:h, :w]
    checker = (yy // cell + xx // cell) % 2
    return np.where(xx < w // 2, checker, 2)


def test_texture_beside_a_flat_region_gives_two_regions():
    comp = textured_halves()
    rgb = painted(comp, TEXTURE_COLORS)
    labels = merge_regions(rgb, one_hot(comp))
    truth = (comp == 2).astype(int)
    assert assert_valid(labels, truth.shape) == 2
    assert same_partition(labels, truth)


def test_texture_superpixels_are_held_together_by_their_mean_memberships():
    # the merge stage alone, on superpixels that follow the boundary (12 x 16 blocks): the checkerboard's
    # blocks all have the mean membership (1/2, 1/2, 0) and merge; the flat half's have (0, 0, 1)
    comp = textured_halves()
    rgb = painted(comp, TEXTURE_COLORS).astype(np.float32)
    p = one_hot(comp)
    yy, xx = np.mgrid[:48, :64]
    sp = (yy // 12) * 4 + xx // 16
    counts = np.bincount(sp.ravel(), minlength=16).astype(float)
    sums = np.stack([np.bincount(sp.ravel(), p[..., j].ravel(), minlength=16) for j in range(3)], axis=1)
    contrast = contrast_of(rgb)
    # no two neighbouring pixels of the texture share a component, but every block of it has the same mix
    np.testing.assert_allclose(sums[[0, 1, 4, 5, 8, 9, 12, 13]] / 192, [[0.5, 0.5, 0.0]] * 8)
    merges = R._greedy_merges(sp, sums, counts, contrast)
    h = RegionHierarchy(sp.astype(np.int32), merges, sp.shape)
    assert same_partition(h.labels(R.MERGE_THRESHOLD), comp == 2)
    assert h.n_regions(R.MERGE_THRESHOLD) == 2


def contrast_of(rgb):
    """The module's contrast map, recomputed: Sobel magnitude of the blurred Lab image in CONTRAST_UNITs."""
    from scipy import ndimage

    from segsoft.features import rgb_to_lab

    lab = rgb_to_lab(np.asarray(rgb, np.float32).reshape(-1, 3)).reshape(rgb.shape)
    g = np.zeros(rgb.shape[:2])
    for c in range(3):
        ch = ndimage.gaussian_filter(lab[..., c].astype(np.float64), 1.0)
        g += ndimage.sobel(ch, 0) ** 2 + ndimage.sobel(ch, 1) ** 2
    return np.sqrt(g) / R.CONTRAST_UNIT


# ----------------------------------------------------------------------------- the threshold


def blobs_image(seed=0, h=48, w=56):
    """A few soft colour blobs, with three-component memberships that follow them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    centres = rng.uniform([0, 0], [h, w], size=(3, 2))
    d = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres], -1)
    p = np.exp(-d / 6.0)
    p /= p.sum(-1, keepdims=True)
    colors = np.array([[0.9, 0.2, 0.1], [0.1, 0.5, 0.9], [0.95, 0.9, 0.3]])
    rgb = np.clip(p @ colors + rng.normal(0, 0.03, (h, w, 3)), 0, 1)
    return rgb, p


def test_threshold_zero_gives_the_superpixels():
    rgb, p = blobs_image()
    h = region_hierarchy(rgb, p, superpixel_size=60)
    assert h.n_superpixels > 20 and h.factor == 1
    assert h.n_regions(0.0) == h.n_superpixels
    labels = h.labels(0.0)
    # the superpixels relabelled: same partition, ids 0..n-1 in the superpixels' order
    assert same_partition(labels, h.superpixels)
    np.testing.assert_array_equal(labels, h.superpixels)
    assert_valid(labels, rgb.shape[:2])
    assert_regions_connected(labels)


def test_more_threshold_fewer_regions_and_every_region_connected():
    rgb, p = blobs_image(seed=1)
    h = region_hierarchy(rgb, p, superpixel_size=40)
    grid = [0.0, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.15, 0.3, 1.0, 3.0, 1e9]
    counts = [h.n_regions(t) for t in grid]
    assert np.all(np.diff(counts) <= 0), counts
    assert counts[0] == h.n_superpixels and counts[-1] == 1
    assert len(set(counts)) >= 4  # the grid really walks through the hierarchy
    previous = None
    for t, n in zip(grid, counts):
        labels = h.labels(t)
        assert assert_valid(labels, rgb.shape[:2]) == n
        assert_regions_connected(labels)
        if previous is not None:  # a coarser cut only joins regions of a finer one
            pairs = np.unique(np.stack([previous.ravel(), labels.ravel()]), axis=1)
            assert np.unique(pairs[0]).size == pairs.shape[1]
        previous = labels
    # the merge costs come out in the order they are applied, so the cut is "merges costing <= t"
    np.testing.assert_array_equal(
        [h.n_regions(t) for t in grid],
        [h.n_superpixels - np.sum(np.maximum.accumulate(h.merges[:, 2]) <= t) for t in grid],
    )


def test_huge_threshold_gives_one_region_per_connected_part_of_the_used_pixels():
    rgb, p = blobs_image(seed=2)
    mask = np.ones(rgb.shape[:2], bool)
    mask[:, 20:23] = False  # a wall: left and right parts
    mask[30:33, 23:] = False  # another: the right part in two
    mask[5:8, 5:8] = False  # a hole inside, which joins nothing
    labels = merge_regions(rgb, p, 1e12, mask=mask, superpixel_size=50)
    assert assert_valid(labels, mask.shape, mask) == 3
    assert same_partition(labels[mask], components(mask, connectivity=1)[mask])


# ----------------------------------------------------------------------------- the greedy merge, by brute force


def brute_force_merges(sp, sums, counts, contrast):
    """Slow reference: every step recomputes every adjacent pair's cost from the pixels and merges the cheapest.

    Groups are named by their smallest superpixel id. Returns [(partition after the merge, cost), ...].
    """
    n = len(counts)
    total = counts.sum()
    group = np.arange(n)  # superpixel -> its group's name
    h, w = sp.shape
    out = []
    while True:
        g = np.where(sp >= 0, group[np.maximum(sp, 0)], -1)
        boundary = {}  # (a, b) -> [sum of contrast, number of pixel pairs]
        for y in range(h):
            for x in range(w):
                for y2, x2 in ((y, x + 1), (y + 1, x)):
                    if y2 >= h or x2 >= w:
                        continue
                    a, b = g[y, x], g[y2, x2]
                    if a < 0 or b < 0 or a == b:
                        continue
                    key = (min(a, b), max(a, b))
                    e = boundary.setdefault(key, [0.0, 0])
                    e[0] += max(contrast[y, x], contrast[y2, x2])
                    e[1] += 1
        if not boundary:
            return out
        best = None
        for (a, b), (s, ln) in boundary.items():
            na, nb = counts[group == a].sum(), counts[group == b].sum()
            pa, pb = sums[group == a].sum(0) / na, sums[group == b].sum(0) / nb
            bc = np.sum(np.sqrt(pa * pb))
            cost = math.sqrt(na * nb / (na + nb) / total) * max(1.0 - bc, 1e-9) * (R.CONTRAST_FLOOR + s / ln)
            if best is None or (cost, a, b) < best:
                best = (cost, a, b)
        cost, a, b = best
        group[group == b] = a
        out.append((partition_of(group), cost))


def module_partitions(merges, n):
    """Partitions after each row of ``merges``, applying the documented rule: group rooted at b joins a's."""
    root = np.arange(n)
    out = []
    for a, b, cost in merges:
        a, b = int(a), int(b)
        assert root[a] == a and root[b] == b and a != b, "a merge row must name two current groups by their roots"
        root[root == b] = a
        out.append((partition_of(root), cost))
    return out


def random_superpixels(seed, shape=(12, 12), n_seeds=16, holes=0):
    """A small superpixel map: Voronoi cells of random seeds, split into 4-connected pieces, ids 0..n-1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    seeds = rng.uniform(0, shape, size=(n_seeds, 2))
    cell = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    used = np.ones(shape, bool)
    if holes:
        used[rng.integers(0, shape[0], holes), rng.integers(0, shape[1], holes)] = False
    sp = components(np.where(used, cell + 1, 0), connectivity=1, background=0) - 1
    return sp.astype(np.int32), used


@pytest.mark.parametrize("seed, holes", [(0, 0), (1, 0), (2, 15), (3, 30), (4, 0)])
def test_greedy_merges_match_a_brute_force_reference(seed, holes):
    sp, used = random_superpixels(seed, holes=holes)
    rng = np.random.default_rng(100 + seed)
    n = int(sp.max()) + 1
    assert n >= 10
    k = 4
    # random memberships: a Dirichlet draw per pixel, sharper in some superpixels than others
    p = rng.dirichlet(np.full(k, 0.5), size=sp.shape)
    contrast = rng.uniform(0, 2, sp.shape)
    flat = sp[used]
    counts = np.bincount(flat, minlength=n).astype(float)
    sums = np.stack([np.bincount(flat, p[used][:, j], minlength=n) for j in range(k)], axis=1)

    merges = R._greedy_merges(sp, sums, counts, contrast)
    expected = brute_force_merges(sp, sums, counts, contrast)
    got = module_partitions(merges, n)
    assert merges.shape == (len(expected), 3)
    # every superpixel ends in its connected part of the map: n minus the number of parts merges in all
    assert len(expected) == n - components(used, connectivity=1).max()
    for i, ((part, cost), (want_part, want_cost)) in enumerate(zip(got, expected)):
        assert part == want_part, f"merge {i} joins different groups"
        assert cost == pytest.approx(want_cost, rel=1e-9, abs=1e-15), f"merge {i}"


def test_greedy_merge_ties_go_to_the_smallest_pair():
    # a 4 x 4 grid of equal 3 x 3 blocks, equal contrast and identical memberships: every merge of two
    # equal-sized groups costs the same, so the order is decided by the (a, b) tie-break alone
    yy, xx = np.mgrid[:12, :12]
    sp = ((yy // 3) * 4 + xx // 3).astype(np.int32)
    counts = np.full(16, 9.0)
    sums = np.zeros((16, 3))
    sums[:, 0] = 9.0
    contrast = np.full(sp.shape, 0.5)
    merges = R._greedy_merges(sp, sums, counts, contrast)
    expected = brute_force_merges(sp, sums, counts, contrast)
    assert [p for p, _ in module_partitions(merges, 16)] == [p for p, _ in expected]
    np.testing.assert_allclose(merges[:, 2], [c for _, c in expected], rtol=1e-12)
    assert tuple(merges[0, :2]) == (0, 1)  # the first of many equal costs: the smallest pair


def test_adjacency_sums_the_stronger_contrast_of_each_boundary_pixel_pair():
    sp = np.array([[0, 0, 1], [2, 2, 1], [-1, 2, 1]], np.int32)
    contrast = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    a, b, s, ln = R._adjacency(sp, contrast)
    got = {(int(x), int(y)): (float(u), float(v)) for x, y, u, v in zip(a, b, s, ln)}
    # 0|1: (0,1)-(0,2) -> 3; 0/2: (0,0)-(1,0) -> 4, (0,1)-(1,1) -> 5; 1|2: (1,1)-(1,2) -> 6, (2,1)-(2,2) -> 9
    # the unused pixel (2, 0) borders nothing
    assert got == {(0, 1): (3.0, 1.0), (0, 2): (9.0, 2.0), (1, 2): (15.0, 2.0)}


# ----------------------------------------------------------------------------- masks and unused pixels


def test_mask_gives_minus_one_exactly_off_the_mask():
    truth = halves(40, 60)
    rgb = painted(truth, [[0.1, 0.1, 0.1], [0.9, 0.8, 0.2]], seed=5)
    mask = np.ones(truth.shape, bool)
    mask[::3, ::3] = False  # a lattice of single-pixel holes: the used pixels stay connected
    mask[10:20, 5:15] = False
    mask[25:, 28:33] = False  # a notch across the boundary
    labels = merge_regions(rgb, one_hot(truth), mask=mask)
    assert assert_valid(labels, truth.shape, mask) == 2
    assert same_partition(labels[mask], truth[mask])


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_give_valid_connected_regions(seed):
    rng = np.random.default_rng(seed)
    rgb, p = blobs_image(seed=seed)
    mask = rng.random(rgb.shape[:2]) > 0.25  # some used pixels end up cut off from all others
    for threshold in (0.0, R.MERGE_THRESHOLD, 1e12):
        labels = merge_regions(rgb, p, threshold, mask=mask, superpixel_size=60)
        n = assert_valid(labels, mask.shape, mask)
        assert_regions_connected(labels)
        assert n >= components(mask, connectivity=1).max()


def test_nan_memberships_are_unused():
    truth = halves(40, 60)
    rgb = painted(truth, [[0.1, 0.1, 0.1], [0.9, 0.8, 0.2]], seed=6)
    p = one_hot(truth)
    p[:8] = np.nan  # a band of whole NaN rows
    p[20:30, 25:35, 1] = np.nan  # one NaN component is enough to drop a pixel
    p[35, 40:50, 0] = np.inf  # so is an infinite one
    used = np.isfinite(p).all(-1)
    labels = merge_regions(rgb, p)
    assert assert_valid(labels, truth.shape, used) == 2
    assert same_partition(labels[used], truth[used])
    # a mask and NaNs together: the pixels in both
    mask = np.ones(truth.shape, bool)
    mask[:, :3] = False
    labels = merge_regions(rgb, p, mask=mask)
    assert_valid(labels, truth.shape, used & mask)


def test_all_unused_gives_an_empty_hierarchy():
    rgb = np.random.default_rng(0).random((20, 30, 3))
    h = region_hierarchy(rgb, np.full((20, 30, 2), np.nan))
    assert h.merges.shape == (0, 3) and h.n_superpixels == 0 and h.n_regions() == 0
    assert h.shape == (20, 30) and (h.superpixels == -1).all()


@pytest.mark.parametrize("how", ["nan", "mask"])
def test_all_unused_gives_all_minus_one(how):
    rgb = np.random.default_rng(0).random((20, 30, 3))
    if how == "nan":
        labels = merge_regions(rgb, np.full((20, 30, 2), np.nan))
    else:
        labels = merge_regions(rgb, np.full((20, 30, 2), 0.5), mask=np.zeros((20, 30), bool))
    assert labels.shape == (20, 30) and labels.dtype == np.int32 and (labels == -1).all()


# ----------------------------------------------------------------------------- large images: block averages


def test_large_image_is_merged_on_block_averages(monkeypatch):
    monkeypatch.setattr(R, "WORK_PIXELS", 1200)  # 90 x 120 -> factor 3, a 30 x 40 working copy
    truth = halves(90, 120, split=59)  # the boundary falls inside a block
    rgb = painted(truth, [[0.1, 0.15, 0.6], [0.9, 0.7, 0.2]], seed=7)
    h = region_hierarchy(rgb, one_hot(truth))
    assert h.factor == 3 and h.superpixels.shape == (30, 40) and h.shape == (90, 120)
    labels = h.labels()
    assert assert_valid(labels, (90, 120)) == 2
    x = np.arange(120)
    away = np.abs(x - 59) >= h.factor  # a band of width < factor around the boundary may go either way
    assert same_partition(labels[:, away], truth[:, away])


def test_large_image_with_holes_labels_every_used_pixel(monkeypatch):
    monkeypatch.setattr(R, "WORK_PIXELS", 1200)
    rng = np.random.default_rng(8)
    truth = halves(90, 120, split=59)
    rgb = painted(truth, [[0.1, 0.15, 0.6], [0.9, 0.7, 0.2]], seed=8)
    mask = np.ones(truth.shape, bool)
    mask[1::3, 1::3] = False  # a lattice of holes: one in every 3 x 3 block, which stays used
    mask[40:50, 20:26] = False  # a hole bigger than a block
    mask[::3, 90:] = False  # a striped patch: its blocks keep 6 of their 9 pixels
    mask[60:66, 30:36] = rng.random((6, 6)) > 0.8  # sparse blocks, unused at the working size, with used pixels
    away = np.abs(np.arange(120) - 59)[None, :].repeat(90, 0) >= 3
    # the mask's handling, on the "contrast" cost: with 1200 working pixels SLIC leaves a one-block sliver of the
    # left half along the edge, and the learned cost keeps the part of the half it borders apart (below)
    h = region_hierarchy(rgb, one_hot(truth), mask=mask, cost="contrast")
    assert h.factor == 3
    labels = h.labels()
    assert assert_valid(labels, mask.shape, mask) == 2
    assert same_partition(labels[mask & away], truth[mask & away])
    # the learned cost: every used pixel labelled, and no region crosses the edge
    labels = region_hierarchy(rgb, one_hot(truth), mask=mask).labels()
    assert 2 <= assert_valid(labels, mask.shape, mask) <= 3
    inside = mask & away
    assert np.unique(np.stack([labels[inside], truth[inside]]), axis=1).shape[1] == np.unique(labels[inside]).size


def test_scattered_used_pixels_too_sparse_for_any_block(monkeypatch):
    """Dithered alpha: no block is half used, so any use counts; crumbs stay with their region."""
    monkeypatch.setattr(R, "WORK_PIXELS", 1200)
    rgb = np.random.default_rng(9).random((90, 120, 3))
    mask = np.zeros((90, 120), bool)
    mask[::4, ::4] = True  # 1 pixel in 16: no 3 x 3 block is half used
    h = region_hierarchy(rgb, np.ones((90, 120, 2)) / 2, mask=mask)
    assert h.factor == 3  # stays on the block grid, not one region per isolated pixel
    labels = h.labels()
    n = assert_valid(labels, mask.shape, mask)
    # at most one region per used block (the used blocks form a lattice here), far fewer than one per pixel
    assert n <= (h.superpixels >= 0).sum() and n < mask.sum() / 4


def test_a_transparent_line_splits_a_region_at_any_size(monkeypatch):
    """Regions are connected: cut by a one-pixel transparent line, the two sides are two regions."""
    truth = np.zeros((90, 120), np.int64)
    mask = np.ones((90, 120), bool)
    mask[:, 61] = False
    rgb = painted(truth, [[0.5, 0.5, 0.5]])
    for work in (100_000, 1200):  # full resolution, then 3 x 3 blocks
        monkeypatch.setattr(R, "WORK_PIXELS", work)
        labels = merge_regions(rgb, one_hot(truth), 1e9, mask=mask)
        assert assert_valid(labels, mask.shape, mask) == 2
        assert len(np.unique(labels[:, :61])) == 1 and len(np.unique(labels[:, 62:])) == 1


# ----------------------------------------------------------------------------- degenerate shapes


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (1, 400), (9, 1), (2, 50), (2, 400), (3, 3), (4, 4), (5, 300)])
def test_degenerate_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.random(shape + (3,))
    p = rng.dirichlet([1.0, 1.0, 1.0], size=shape)
    for threshold in (0.0, R.MERGE_THRESHOLD, 1e9):
        labels = merge_regions(rgb, p, threshold)
        assert_valid(labels, shape)
        assert_regions_connected(labels)
    assert merge_regions(rgb, p, 1e9).max() == 0  # the pixels of a strip are connected: one region at the end
    for size in (1, 5):
        assert_valid(merge_regions(rgb, p, superpixel_size=size), shape)
    mask = np.zeros(shape, bool)
    mask.flat[::2] = True
    assert_valid(merge_regions(rgb, p, mask=mask), shape, mask)


# ----------------------------------------------------------------------------- determinism and the hierarchy


def test_deterministic_and_hierarchy_cuts_equal_merge_regions():
    rgb, p = blobs_image(seed=3)
    first = region_hierarchy(rgb, p, superpixel_size=50)
    second = region_hierarchy(rgb, p, superpixel_size=50)
    np.testing.assert_array_equal(first.superpixels, second.superpixels)
    np.testing.assert_array_equal(first.merges, second.merges)
    for t in (0.0, 0.01, R.MERGE_THRESHOLD, 0.5, 1e9):
        labels = merge_regions(rgb, p, t, superpixel_size=50)
        np.testing.assert_array_equal(labels, merge_regions(rgb, p, t, superpixel_size=50))
        np.testing.assert_array_equal(first.labels(t), labels)
        assert first.n_regions(t) == int(labels.max()) + 1
    np.testing.assert_array_equal(first.labels(), merge_regions(rgb, p, superpixel_size=50))
    assert first.n_regions() == first.n_regions(R.MERGE_THRESHOLD)
    # float32 and float64 inputs are the same to the module
    np.testing.assert_array_equal(
        merge_regions(rgb.astype(np.float32), p.astype(np.float32), superpixel_size=50), first.labels()
    )


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "rgb_shape, p_shape, kwargs, match",
    [
        ((10, 12), (10, 12, 2), {}, r"rgb must be \(H, W, 3\)"),
        ((10, 12, 4), (10, 12, 2), {}, r"rgb must be \(H, W, 3\)"),
        ((10, 12, 3), (10, 11, 2), {}, "probabilities must be"),
        ((10, 12, 3), (10, 12), {}, "probabilities must be"),
        ((10, 12, 3), (10, 12, 2), {"superpixel_size": 0}, "superpixel_size must be >= 1"),
        ((10, 12, 3), (10, 12, 2), {"superpixel_size": -5}, "superpixel_size must be >= 1"),
        ((10, 12, 3), (10, 12, 2), {"mask": np.ones((12, 10), bool)}, "mask must be"),
    ],
)
def test_bad_shapes_raise(rgb_shape, p_shape, kwargs, match):
    rgb, p = np.zeros(rgb_shape), np.full(p_shape, 0.5)
    with pytest.raises(ValueError, match=match):
        merge_regions(rgb, p, **kwargs)
    with pytest.raises(ValueError, match=match):
        region_hierarchy(rgb, p, **kwargs)


@pytest.mark.parametrize("threshold", [-0.1, -1e-12, float("nan"), float("inf"), -float("inf")])
def test_bad_threshold_raises(threshold):
    rgb, p = np.zeros((10, 12, 3)), np.full((10, 12, 2), 0.5)
    with pytest.raises(ValueError, match="region threshold must be a finite number >= 0"):
        merge_regions(rgb, p, threshold)
    h = region_hierarchy(rgb, p)
    with pytest.raises(ValueError, match="region threshold"):
        h.labels(threshold)
    with pytest.raises(ValueError, match="region threshold"):
        h.n_regions(threshold)


# ----------------------------------------------------------------------------- the shared BSDS500 development set


@pytest.mark.parametrize("name", ["2092", "22090"])  # the first two ids of the set
def test_bsds_merged_regions_beat_connected_cluster_patches(name):
    if not (BSDS_DEV / "gt").is_dir():
        pytest.skip(f"shared BSDS data not found at {BSDS_DEV}")
    from segsoft.evaluate import evaluate_labels, load_ground_truth
    from segsoft.regions import connected_regions

    image = BSDS_DEV / "images" / f"{name}.jpg"
    gts = load_ground_truth(BSDS_DEV / "gt" / f"{name}.npz")
    merged = segsoft.segment(image, k=12, seed=0).regions()
    labels = segsoft.segment(image, k=4, seed=0).labels
    patches = connected_regions(labels, int(0.01 * labels.size))
    assert merged.shape == labels.shape and (merged >= 0).all()
    assert evaluate_labels(merged, gts)["pri"] > evaluate_labels(patches, gts)["pri"]


def test_n_regions_counts_the_pieces_a_mask_cuts_on_a_big_image(monkeypatch):
    monkeypatch.setattr(R, "WORK_PIXELS", 1200)  # 90 x 120 -> 3 x 3 blocks
    truth = np.zeros((90, 120), np.int64)
    mask = np.ones((90, 120), bool)
    mask[:, 61] = False
    h = region_hierarchy(painted(truth, [[0.5, 0.5, 0.5]]), one_hot(truth), mask=mask)
    assert h.factor == 3
    for t in (0.0, 0.15, 1e9):
        assert h.n_regions(t) == int(h.labels(t).max()) + 1
    assert h.n_regions(1e9) == 2


@pytest.mark.parametrize("bad", [None, "x", [0.1], True])
def test_check_threshold_turns_every_bad_value_into_a_value_error(bad):
    with pytest.raises(ValueError, match="region threshold must be a number"):
        R.check_threshold(bad)


def test_regions_rejects_a_bool_threshold_even_when_that_cut_is_cached():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:, 10:] = 200
    seg = segsoft.segment(rgb, k=2)
    seg.regions(1.0)
    with pytest.raises(ValueError, match="region threshold must be a number"):
        seg.regions(True)
