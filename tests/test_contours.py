"""The BSDS500 boundary benchmark (segsoft.contours): known answers, and the matching against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from segsoft.contours import (
    BSDS_THRESHOLDS,
    BoundaryCounts,
    boundary_pr,
    correspond_pixels,
    human_boundaries,
    ods_ois,
    pixel_grid,
)
from segsoft.errors import SegsoftError

# 300 x 300: the tolerance is 0.0075 * 424.3 = 3.18 px, so a 3 px shift is matched and a 4 px one is not
SIDE = 300
TOL = 0.0075 * math.hypot(SIDE, SIDE)


def column_map(*cols: int, shape=(SIDE, SIDE)) -> np.ndarray:
    b = np.zeros(shape, bool)
    for c in cols:
        b[:, c] = True
    return b


def halves(col: int, shape=(SIDE, SIDE)) -> np.ndarray:
    """A segmentation whose boundary (as seg2bdry draws it) is pixel column ``col``."""
    seg = np.ones(shape, np.uint16)
    seg[:, col + 1 :] = 2
    return seg


def test_tolerance_of_the_test_images():
    assert 3 < TOL < 4


def test_human_boundaries_follow_seg2bdry():
    seg = np.array([[1, 1, 2, 2]] * 4)
    assert human_boundaries(seg).astype(int).tolist() == [[0, 1, 0, 0]] * 4  # the left pixel, every row
    seg = np.array([[1] * 4, [1] * 4, [2] * 4, [2] * 4])
    assert human_boundaries(seg).astype(int).tolist() == [[0] * 4, [1] * 4, [0] * 4, [0] * 4]
    # a corner: the junction of the 2x2 block below right of a pixel counts; the last row and column copy
    seg = np.array([[1, 1, 1], [1, 2, 2], [1, 2, 2]])
    assert human_boundaries(seg).astype(int).tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    one = human_boundaries(np.zeros((5, 6), int))
    assert one.shape == (5, 6) and not one.any()
    assert human_boundaries(halves(140)).sum() == SIDE and human_boundaries(halves(140))[:, 140].all()


def test_pixel_grid_reads_ucm2_as_the_benchmark():
    ucm2 = np.zeros((2 * 4 + 1, 2 * 5 + 1), np.float32)
    ucm2[:, 2 * 2 + 2] = 0.7  # the boundary right of pixel column 2
    pb = pixel_grid(ucm2, (4, 5))
    assert pb.shape == (4, 5) and (pb[:, 2] == np.float32(0.7)).all() and pb.sum() == pytest.approx(4 * 0.7)
    flat = np.arange(20.0).reshape(4, 5)
    assert np.array_equal(pixel_grid(flat, (4, 5)), flat)
    with pytest.raises(SegsoftError, match="does not fit a 4x5 image"):
        pixel_grid(np.zeros((9, 10)), (4, 5))
    with pytest.raises(SegsoftError, match="NaN"):
        pixel_grid(np.full((4, 5), np.nan), (4, 5))


@pytest.mark.parametrize(
    ("shift", "matched"),
    [((0, 1), True), ((0, 2), True), ((0, 3), True), ((0, 4), False), ((2, 2), True), ((3, 3), False), ((1, 3), True)],
)
def test_a_shifted_boundary_is_matched_within_the_tolerance_only(shift, matched):
    a = np.zeros((SIDE, SIDE), bool)
    a[50:250:10, 100] = True  # dots 10 px apart: each can reach its shifted copy only
    dy, dx = shift
    b = np.roll(np.roll(a, dy, axis=0), dx, axis=1)
    m1, m2, cost = correspond_pixels(a, b)
    n = int(a.sum())
    if matched:
        assert (m1[a] >= 0).all() and (m2[b] >= 0).all()
        assert cost == pytest.approx(n * math.hypot(dy, dx))  # half the distance on each side of every pair
    else:
        assert (m1 < 0).all() and (m2 < 0).all()
        assert cost == pytest.approx(2 * n * 100 * TOL)
    # the partners are real: inverse of each other, on the other map
    pairs = np.flatnonzero(m1 >= 0)
    assert (m2.ravel()[m1.ravel()[pairs]] == pairs).all()


def test_a_line_is_matched_along_its_length():
    a = column_map(100)
    m1, m2, cost = correspond_pixels(a, column_map(103))
    assert (m1[a] >= 0).all() and cost == pytest.approx(3 * SIDE)
    m1, m2, cost = correspond_pixels(a, column_map(104))
    assert (m1 < 0).all() and (m2 < 0).all()


def test_identical_maps_give_precision_and_recall_one():
    seg = halves(120)
    seg[200:, :] = 3
    pb = human_boundaries(seg).astype(float)
    c = boundary_pr(pb, [seg], [0.5])
    assert c.precision.tolist() == [1.0] and c.recall.tolist() == [1.0] and c.f.tolist() == [1.0]
    assert c.cnt_p[0] == c.sum_p[0] == c.sum_r[0] == c.cnt_r[0] == pb.sum()


def test_shift_within_and_beyond_the_tolerance_in_the_counts():
    seg = halves(140)
    near = boundary_pr(column_map(143).astype(float), [seg], [0.5])
    far = boundary_pr(column_map(144).astype(float), [seg], [0.5])
    assert (near.precision[0], near.recall[0]) == (1.0, 1.0)
    assert (far.precision[0], far.recall[0], far.f[0]) == (0.0, 0.0, 0.0)


def test_empty_machine_map_and_thresholds_above_every_level():
    seg = halves(140)
    c = boundary_pr(np.zeros((SIDE, SIDE)), [seg], [0.5])
    assert c.sum_p[0] == 0 and c.cnt_p[0] == 0 and c.sum_r[0] == SIDE and c.cnt_r[0] == 0
    assert c.precision[0] == 0.0 and c.recall[0] == 0.0 and c.f[0] == 0.0
    s = ods_ois([c])
    assert s.ods["f"] == 0.0 and s.ois["f"] == 0.0 and s.ap == 0.0
    # a human that drew no boundary adds nothing to recall's denominator
    c = boundary_pr(column_map(140).astype(float), [np.ones((SIDE, SIDE), int)], [0.5])
    assert c.sum_r[0] == 0 and c.recall[0] == 0.0 and c.precision[0] == 0.0


def test_several_humans_recall_pools_them_and_a_machine_pixel_counts_once_if_any_human_has_it():
    a = halves(100)  # one boundary at column 100
    b = halves(100)
    b[:, 201:] = 3  # and one at column 200
    one = boundary_pr(column_map(101).astype(float), [a, b], [0.5])
    assert one.sum_r[0] == 3 * SIDE and one.cnt_r[0] == 2 * SIDE  # column 100 of both humans
    assert one.sum_p[0] == SIDE and one.cnt_p[0] == SIDE  # matched in both humans, counted once
    both = boundary_pr(column_map(101, 202).astype(float), [a, b], [0.5])
    assert both.cnt_r[0] == both.sum_r[0] == 3 * SIDE
    assert both.cnt_p[0] == both.sum_p[0] == 2 * SIDE  # column 202 only in human b: still correct
    assert both.precision[0] == 1.0 and both.recall[0] == 1.0
    extra = boundary_pr(column_map(101, 260).astype(float), [a, b], [0.5])
    assert extra.precision[0] == 0.5 and extra.recall[0] == pytest.approx(2 / 3)


def test_one_machine_pixel_matches_one_human_pixel_only():
    # two humans' boundaries on top of each other, one machine line: each human matches it in full
    a = np.zeros((SIDE, SIDE), bool)
    a[:, 50] = True
    b = a.copy()
    b[:, 51] = True  # a double line in the second map: only one of each pair can be matched
    m1, m2, _ = correspond_pixels(a, b)
    assert (m1[a] >= 0).sum() == SIDE and (m2[b] >= 0).sum() == SIDE


def test_a_ucm2_is_thresholded_thinned_and_scored_at_each_level():
    seg = halves(140)
    seg[150:, :141] = 3
    ucm2 = np.zeros((2 * SIDE + 1, 2 * SIDE + 1))
    ucm2[:, 2 * 140 + 2] = 0.6  # the vertical boundary, strong
    ucm2[2 * 149 + 2, : 2 * 140 + 3] = 0.2  # the horizontal one, weak
    c = boundary_pr(ucm2, [seg], [0.1, 0.4, 0.7])
    assert c.recall[0] > 0.99 and c.precision[0] == 1.0  # thinning takes one pixel off the T junction
    assert 0.6 < c.recall[1] < 0.8 and c.precision[1] == 1.0  # only the vertical boundary above 0.4
    assert c.sum_p[2] == 0 and c.recall[2] == 0.0
    # a thick boundary is thinned to one pixel first
    thick = np.zeros((SIDE, SIDE))
    thick[:, 139:142] = 1.0
    c = boundary_pr(thick, [halves(140)], [0.5])
    assert SIDE - 5 <= c.sum_p[0] <= SIDE and c.precision[0] == 1.0  # the band's ends are thinned away
    unthinned = boundary_pr(thick, [halves(140)], [0.5], thin=False)
    assert unthinned.sum_p[0] == 3 * SIDE and unthinned.precision[0] == pytest.approx(1 / 3)


def test_ground_truth_as_boundary_maps():
    gt = column_map(140)
    c = boundary_pr(column_map(142).astype(float), [gt], [0.5], gt_boundaries=True)
    assert c.recall[0] == 1.0 and c.precision[0] == 1.0


def brute_force_objective(a: np.ndarray, b: np.ndarray, max_dist: float) -> tuple[int, int]:
    """(matched pairs, integer cost) of the benchmark's matching by a dense assignment of every pair.

    The CSA objective, ``sum(round(100 d)) + (n1 + n2 - k) * ceil(100 * oc)``, written as a
    rectangular assignment: a pair in reach costs ``round(100 d) - outlier``, any other 0 (unmatched).
    """
    h, w = a.shape
    radius = max_dist * math.hypot(h, w)
    ow = math.ceil(100 * 100 * radius)
    p1 = np.argwhere(a)
    p2 = np.argwhere(b)
    if len(p1) == 0 or len(p2) == 0:
        return 0, (len(p1) + len(p2)) * ow
    d2 = ((p1[:, None, :] - p2[None, :, :]) ** 2).sum(-1)
    reach = d2 <= radius * radius
    cost = np.where(reach, np.rint(np.sqrt(d2) * 100) - ow, 0.0)
    r, c = linear_sum_assignment(cost)
    real = reach[r, c]
    k = int(real.sum())
    return k, int(cost[r, c][real].sum() + ow * k) + (len(p1) + len(p2) - k) * ow


def objective_of(m1: np.ndarray, a: np.ndarray, b: np.ndarray, max_dist: float) -> tuple[int, int]:
    h, w = a.shape
    radius = max_dist * math.hypot(h, w)
    ow = math.ceil(100 * 100 * radius)
    src = np.flatnonzero(m1.ravel() >= 0)
    dst = m1.ravel()[src]
    d = np.hypot(src // w - dst // w, src % w - dst % w)
    assert (d <= radius + 1e-9).all() and len(set(dst.tolist())) == len(dst)  # in reach, one to one
    assert b.ravel()[dst].all() and a.ravel()[src].all()
    k = len(src)
    return k, int(np.rint(d * 100).sum()) + (int(a.sum()) + int(b.sum()) - k) * ow


@pytest.mark.parametrize("seed", range(12))
def test_matching_is_the_exact_optimum_of_a_brute_force_assignment(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(8, 20)), int(rng.integers(8, 20)))
    max_dist = float(rng.choice([0.05, 0.1, 0.2]))
    density = float(rng.uniform(0.05, 0.35))
    a = rng.random(shape) < density
    b = rng.random(shape) < density
    if seed % 4 == 0:  # boundary-like: a line and a jittered copy of it
        a = np.zeros(shape, bool)
        a[shape[0] // 2, :] = True
        b = np.roll(a, int(rng.integers(-2, 3)), axis=0) | (rng.random(shape) < 0.05)
    m1, m2, _ = correspond_pixels(a, b, max_dist=max_dist)
    assert ((m1 >= 0).sum(), (m2 >= 0).sum()) == ((m1 >= 0).sum(),) * 2
    assert objective_of(m1, a, b, max_dist) == brute_force_objective(a, b, max_dist)


def test_ods_ois_and_ap_from_counts():
    ts = np.array([0.1, 0.2, 0.3])
    # image 1 is best at t=0.1, image 2 at t=0.3
    one = BoundaryCounts(
        ts, np.array([90, 60, 10]), np.array([100] * 3), np.array([50, 50, 10]), np.array([100, 60, 10])
    )
    two = BoundaryCounts(
        ts, np.array([20, 40, 80]), np.array([100] * 3), np.array([10, 40, 80]), np.array([100, 80, 90])
    )
    s = ods_ois([one, two])
    r = np.array([110, 100, 90]) / 200
    p = np.array([60, 90, 90]) / np.array([200, 140, 100])
    assert np.allclose(s.recall, r) and np.allclose(s.precision, p)
    f = 2 * p * r / (p + r)
    assert s.ods["f"] >= f.max() - 1e-12 and s.ods["f"] < f.max() + 0.01  # interpolated, a little above
    # OIS: image 1 at t=0.2 (F 0.698 > 0.643 and 0.18), image 2 at t=0.3
    r_ois, p_ois = (60 + 80) / 200, (50 + 80) / (60 + 90)
    assert s.ois["recall"] == pytest.approx(r_ois) and s.ois["precision"] == pytest.approx(p_ois)
    assert s.ois["f"] == pytest.approx(2 * r_ois * p_ois / (r_ois + p_ois))
    assert s.n_images == 2 and np.array_equal(s.thresholds, ts)


def test_ods_interpolates_between_thresholds_as_maxF():
    ts = np.array([0.1, 0.2])
    c = BoundaryCounts(ts, np.array([10, 0]), np.array([10, 10]), np.array([0, 10]), np.array([10, 10]))
    s = ods_ois([c])  # R = (1, 0), P = (0, 1): F 0 at both ends, about 0.5 halfway
    assert s.f.tolist() == [0.0, 0.0]
    d = 50 / 99  # the best of linspace(0, 1, 100): 49/99 or 50/99, the same F but for rounding
    assert s.ods["f"] == pytest.approx(2 * d * (1 - d))
    assert min(abs(s.ods["threshold"] - (0.1 + 0.1 * k / 99)) for k in (49, 50)) < 1e-12
    assert s.ois["f"] == 0.0


def test_ap_is_the_area_under_the_interpolated_curve():
    ts = np.array([0.1, 0.2, 0.3])
    # R = 1, 0.5, 0 and P = 0.5, 0.75, 1: P = 1 - R / 2, area 0.01 * sum(1 - r / 2 for r in 0:0.01:1)
    c = BoundaryCounts(ts, np.array([4, 2, 0]), np.array([4] * 3), np.array([2, 3, 4]), np.array([4] * 3))
    assert ods_ois([c]).ap == pytest.approx(0.7575)
    # recall only up to 0.5: nothing beyond it
    c = BoundaryCounts(ts, np.array([2, 1, 0]), np.array([4] * 3), np.array([2, 3, 4]), np.array([4] * 3))
    assert ods_ois([c]).ap == pytest.approx(0.01 * sum(1 - r / 100 for r in range(51)))


def test_default_thresholds_are_the_benchmarks():
    assert len(BSDS_THRESHOLDS) == 99 and BSDS_THRESHOLDS[0] == pytest.approx(0.01)
    assert BSDS_THRESHOLDS[-1] == pytest.approx(0.99)


def test_validation_and_no_input_mutation():
    seg = halves(20, shape=(40, 50))
    ucm2 = np.zeros((81, 101), np.float32)
    ucm2[:, 42] = 0.5
    before = (seg.copy(), ucm2.copy())
    c = boundary_pr(ucm2, seg, [0.3, 0.1, 0.3])
    assert c.thresholds.tolist() == [0.1, 0.3]  # sorted, once each
    assert np.array_equal(seg, before[0]) and np.array_equal(ucm2, before[1])
    with pytest.raises(SegsoftError, match="no ground truth"):
        boundary_pr(ucm2, [], [0.1])
    with pytest.raises(SegsoftError, match="does not fit"):
        boundary_pr(np.zeros((81, 99)), seg, [0.1])
    with pytest.raises(SegsoftError, match="ground truth 2"):
        boundary_pr(ucm2, [seg, seg[:, :10]], [0.1])
    with pytest.raises(SegsoftError, match="finite"):
        boundary_pr(ucm2, seg, [np.nan])
    with pytest.raises(SegsoftError, match="at least one"):
        boundary_pr(ucm2, seg, [])
    with pytest.raises(SegsoftError, match="max_dist"):
        boundary_pr(ucm2, seg, [0.1], max_dist=0)
    with pytest.raises(SegsoftError, match="same shape"):
        correspond_pixels(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(SegsoftError, match="outlier_cost"):
        correspond_pixels(np.zeros((3, 3)), np.zeros((3, 3)), outlier_cost=1)
    with pytest.raises(SegsoftError, match="same thresholds"):
        ods_ois([c, boundary_pr(ucm2, seg, [0.1])])
    with pytest.raises(SegsoftError, match="no image"):
        ods_ois([])
