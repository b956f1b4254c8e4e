"""The final smoothing step on the contiguous sub-lattices: the same numbers as the plain sweep."""

from __future__ import annotations

import numpy as np
import pytest

from segsoft import spatial
from segsoft.features import extract
from segsoft.io import Image
from segsoft.mixture import GaussianMixture
from segsoft.mixture.base import using_threads
from segsoft.spatial import PottsPrior


def _plain_sweeps(log_joint: np.ndarray, beta: float, mask: np.ndarray | None, sweeps: int) -> np.ndarray:
    """Checkerboard sweeps on the whole grid, written the obvious way, as rows (N, K).

    Each pixel's neighbour sum is ((left + right) + up) + down (an off-grid one
    is 0), then ``* beta`` (skipped for 1), ``+ log_joint``, minus the maximum,
    exp, divided by the sum: pixel by pixel the operations of the sweep, in the
    same order and dtype, so the results must agree bit for bit.
    """
    k, h, w = log_joint.shape
    c = log_joint - log_joint.max(axis=0)
    np.exp(c, out=c)
    c /= c.sum(axis=0)
    if mask is not None:
        c *= mask
    parity = (np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0
    for _ in range(sweeps):
        for color in (parity, ~parity):
            pad = np.zeros((k, h + 2, w + 2), dtype=c.dtype)
            pad[:, 1:-1, 1:-1] = c
            s = pad[:, 1:-1, :-2].copy()  # left
            s += pad[:, 1:-1, 2:]  # right
            s += pad[:, :-2, 1:-1]  # up
            s += pad[:, 2:, 1:-1]  # down
            if beta != 1:
                s *= c.dtype.type(beta)
            s += log_joint
            s -= s.max(axis=0)
            np.exp(s, out=s)
            s /= s.sum(axis=0)
            if mask is not None:
                s *= mask
            np.copyto(c, s, where=color)
    rows = c.transpose(1, 2, 0).reshape(h * w, k)
    return rows if mask is None else rows[mask.ravel()]


def _grid(shape: tuple[int, int], k: int, dtype: type, mask: np.ndarray | None, seed: int) -> np.ndarray:
    lj = (np.random.default_rng(seed).standard_normal((k, *shape)) * 3).astype(dtype)
    if mask is not None:
        lj[:, ~mask] = 0  # the layout smooth_grid takes: zero where masked
    return lj


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (7, 1), (2, 2), (5, 7), (6, 8), (9, 4), (33, 20), (40, 51)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_smooth_grid_equals_the_plain_sweeps_bit_for_bit(shape, masked, dtype, beta):
    rng = np.random.default_rng(sum(shape) + 7 * masked)
    mask = rng.random(shape) > 0.3 if masked else None
    lj = _grid(shape, 3, dtype, mask, seed=sum(shape))
    expected = _plain_sweeps(lj, beta, mask, sweeps=4)
    got = PottsPrior(shape, beta, mask).smooth_grid(lj.copy(), sweeps=4)
    assert got.dtype == dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    # and the E-step's path (memberships on the grid, split and merged around the sweeps)
    rows = lj.reshape(3, -1).T if mask is None else lj[:, mask].T
    c, _ = PottsPrior(shape, beta, mask).memberships(np.ascontiguousarray(rows), sweeps=4)
    assert np.array_equal(c, expected)


@pytest.mark.parametrize("k", [2, 4])
def test_smooth_grid_identical_for_any_band_and_thread_count(monkeypatch, k):
    h, w = 45, 62
    mask = np.random.default_rng(1).random((h, w)) > 0.1
    lj = _grid((h, w), k, np.float32, mask, seed=2)

    def run(band_bytes: int, jobs: int) -> np.ndarray:
        monkeypatch.setattr(spatial, "_BAND_BYTES", band_bytes)
        with using_threads(jobs):
            return PottsPrior((h, w), 1.0, mask).smooth_grid([lj.copy()], sweeps=5)

    ref = run(1 << 30, 1)  # one band: each sub-lattice at once
    for band_bytes, jobs in ((1, 1), (1, 2), (4 * k * 31 * 3, 2), (1 << 30, 2)):
        assert np.array_equal(run(band_bytes, jobs), ref)


def test_smooth_grid_objective_never_decreases_sweep_by_sweep():
    # the sweeps are still exact coordinate ascent of U: one more sweep never lowers it
    h, w, k = 30, 41, 3
    lj = _grid((h, w), k, np.float64, None, seed=3)
    prior = PottsPrior((h, w), 1.2)
    values = []
    for sweeps in range(6):
        c = prior.smooth_grid(lj.copy(), sweeps=sweeps)
        values.append(prior.objective(np.ascontiguousarray(c.T.reshape(k, h, w)), lj))
    assert np.all(np.diff(values) >= -1e-9 * np.abs(values[:-1]))
    assert values[-1] > values[0]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("jobs", [1, 2])
def test_smoothed_memberships_mean_is_the_row_wise_log_sum_exp(masked, jobs):
    from segsoft.segment import _smoothed_memberships

    rng = np.random.default_rng(4)
    h, w, k = 700, 800, 3  # more than two 2**18-row chunks
    pixels = rng.random((h, w, 3), dtype=np.float32)
    if masked:
        rgba = np.dstack([pixels, np.ones((h, w), np.float32)])
        rgba[:200, :300, 3] = 0
        image = Image.from_array(rgba)
    else:
        image = Image.from_array(pixels)
    X = extract(image)  # one row per used pixel, as segment makes them
    model = GaussianMixture(k, seed=0, max_iter=5).fit(X[::50])
    with using_threads(jobs):
        probs, mean = _smoothed_memberships(image, model, [X.copy()], 1.0)
    # the formula it replaced: a log-sum-exp along each (m, K) row, chunk sums added in order
    total, step = 0.0, 1 << 18
    for a in range(0, X.shape[0], step):
        block = model.weighted_log_prob(X[a : a + step], out=np.empty((min(step, X.shape[0] - a), k), np.float32))
        top = block.max(axis=1, keepdims=True)
        total += float(np.sum(top[:, 0] + np.log(np.exp(block - top).sum(axis=1)), dtype=np.float64))
    assert mean == total / X.shape[0]
    assert probs.shape == (h, w, k) and probs.dtype == np.float32
    used = np.ones((h, w), bool) if image.mask is None else image.mask
    np.testing.assert_allclose(probs[used].sum(-1), 1.0, atol=1e-5)
    assert np.isnan(probs[~used]).all()


def test_e_step_buffers_reused_across_calls_give_the_same_memberships():
    # EM calls memberships() every iteration; the sub-lattice copies are kept between calls and
    # remade when k or a dtype changes: the numbers must be those of fresh copies every time
    h, w = 23, 30
    rng = np.random.default_rng(6)
    calls = [rng.standard_normal((h * w, 3)) * 2 for _ in range(3)]
    calls.append(calls[-1].astype(np.float32))
    calls.append(rng.standard_normal((h * w, 4)))
    kept, fresh = PottsPrior((h, w), 0.9, sweeps=2), PottsPrior((h, w), 0.9, sweeps=2)
    for lj in calls:
        fresh._buffers = None
        c, u = kept.memberships(lj)
        assert kept._buffers is not None
        c_ref, u_ref = fresh.memberships(lj)
        assert np.array_equal(c, c_ref) and u == u_ref
