"""The chunked E-step pass (issue 14, item 3): the shifted softmax and its exact fallback, the
grouped thread tasks, and the quadratic features built in blocks -- the same numbers as the
plain per-row definitions, and the same for any n_jobs or group size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from segsoft.mixture import FuzzyCMeans, GaussianMixture, SoftKMeans
from segsoft.mixture import base as engine
from segsoft.mixture.base import _Layout


def _reference(gm: GaussianMixture, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p(x) and the memberships from scipy's densities and logsumexp, row by row."""
    X = np.asarray(X, dtype=np.float64)
    covs = gm.covariances_
    if gm.covariance == "diag":
        covs = [np.diag(c) for c in covs]
    elif gm.covariance == "spherical":
        covs = [np.eye(X.shape[1]) * c for c in covs]
    elif gm.covariance == "tied":
        covs = [covs] * gm.n_components
    joint = np.stack(
        [np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(gm.weights_, gm.means_, covs)], axis=1
    )
    score = logsumexp(joint, axis=1)
    return score, np.exp(joint - score[:, None])


def _far_rows_data() -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters (to fit on), and those with rows between them and far out (to score):
    every log-density of the far rows lies thousands of nats below the bound, so
    exp(logit - bound) underflows to 0."""
    rng = np.random.default_rng(4)
    tight = [rng.normal(c, 1e-3, (400, 2)) for c in (0.0, 10.0)]
    far = np.array([[5.0, 5.0], [5.0, -3.0], [-40.0, 2.0], [0.3, 0.0], [10.0, 9.9]])
    return np.vstack(tight), np.vstack([tight[0][:50], far[:2], tight[1][:50], far[2:]])


@pytest.mark.parametrize("cov", ["full", "diag", "spherical", "tied"])
def test_far_rows_get_the_exact_log_sum_exp(cov):
    fit_rows, X = _far_rows_data()
    gm = GaussianMixture(2, covariance=cov, seed=0).fit(fit_rows)
    ref_score, ref_resp = _reference(gm, X)
    assert ref_score.min() < -1e4  # the far rows are far indeed
    score = gm.score_samples(X)
    np.testing.assert_allclose(score, ref_score, rtol=1e-9)
    resp = gm.predict_proba(X)
    assert np.isfinite(resp).all()
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(resp, ref_resp, atol=1e-9)
    # the same per-row numbers whichever chunk a far row falls in
    gm.chunk_size = 3
    np.testing.assert_allclose(gm.score_samples(X), score, rtol=1e-12)
    # and a fit through such rows stays finite
    assert np.isfinite(GaussianMixture(2, covariance=cov, seed=0, max_iter=3).fit(X).log_likelihood_trace_).all()


def test_shifted_softmax_equals_the_per_row_maximum():
    """The default posterior with the bound's shift gives the memberships and scores of the
    classic per-row-maximum log-sum-exp (forced here with an explicit posterior) to rounding."""
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(m, s, (3000, 3)) for m, s in ((0, 1), (3, 0.2), (-2, 3))]).astype(np.float32)
    for model in (GaussianMixture(3, seed=1), GaussianMixture(3, covariance="diag", seed=1), SoftKMeans(3, seed=1)):
        model.fit(X)
        resp_a, resp_b = np.empty((len(X), 3)), np.empty((len(X), 3))
        score_a, score_b = np.empty(len(X)), np.empty(len(X))
        classic = engine._EMBase._posterior.__get__(model)  # forces the per-row maximum
        ta, sa, _ = model._pass_sums(X, resp_out=resp_a, score_out=score_a)
        tb, sb, _ = model._pass_sums(X, resp_out=resp_b, score_out=score_b, posterior=classic)
        np.testing.assert_allclose(resp_a, resp_b, rtol=1e-12, atol=1e-15)
        # the GEMM form's rounding is absolute (~ulp of its largest term), the same either way
        np.testing.assert_allclose(score_a, score_b, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(sa, sb, rtol=1e-12)
        assert abs(ta - tb) <= 1e-13 * abs(tb)


@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_quadratic_features_built_in_blocks_are_the_products(kind):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 6)).astype(np.float32)
    center = rng.normal(size=6)
    lay = _Layout(6, kind)
    q = lay.fill(x, center, lay.buffer(50))
    lin = x.astype(np.float64) - center
    assert np.array_equal(q[0], np.ones(37)) and np.array_equal(q[1:7], lin.T)
    if kind == "full":
        expected = np.stack([lin[:, i] * lin[:, j] for i, j in lay.pairs])
    elif kind == "diag":
        expected = (lin * lin).T
    else:
        expected = (lin * lin).sum(1)[None]  # einsum's own order of the sum: to rounding
    np.testing.assert_allclose(q[7:], expected, rtol=1e-15 if kind == "iso" else 0)
    out = np.full((lay.p, 40), np.nan)
    assert np.array_equal(lay.build(x, center, out), q)  # build() sets the constant row itself


@pytest.mark.parametrize(
    "make",
    [
        lambda j: GaussianMixture(3, chunk_size=256, n_jobs=j, seed=3),
        lambda j: GaussianMixture(3, covariance="spherical", chunk_size=256, n_jobs=j, seed=3),
        lambda j: SoftKMeans(3, chunk_size=256, n_jobs=j, seed=3),
        lambda j: FuzzyCMeans(3, chunk_size=256, n_jobs=j, seed=3),
    ],
)
def test_any_group_size_and_thread_count_gives_the_same_bits(monkeypatch, make):
    rng = np.random.default_rng(6)
    X = np.vstack([rng.normal(m, 1.0, (2100, 4)) for m in (-2.0, 0.5, 3.0)]).astype(np.float32)
    X[7] = 60.0  # a far row: its chunk takes the exact fallback
    w = rng.integers(1, 4, X.shape[0]).astype(np.float64)
    ref = make(1).fit(X)
    ref_p, ref_s = ref.predict_proba_and_score(X)
    ref_w = make(1).fit(X, sample_weight=w)
    for group_rows, jobs in ((256, 2), (1024, 2), (4096, 3), (1 << 20, 2)):
        monkeypatch.setattr(engine, "GROUP_ROWS", group_rows)
        got = make(jobs).fit(X)
        assert np.array_equal(got.log_likelihood_trace_, ref.log_likelihood_trace_)
        assert np.array_equal(got.means_, ref.means_)
        p, s = got.predict_proba_and_score(X)
        assert np.array_equal(p, ref_p) and s == ref_s
        assert np.array_equal(got.score_samples(X), ref.score_samples(X))
        got_w = make(jobs).fit(X, sample_weight=w)
        assert np.array_equal(got_w.log_likelihood_trace_, ref_w.log_likelihood_trace_)
        assert np.array_equal(got_w.means_, ref_w.means_)


def test_group_size():
    assert engine._group_chunks(8192, 100, 1) == 1
    assert engine._group_chunks(8192, 100, 2) == engine.GROUP_ROWS // 8192
    assert engine._group_chunks(8192, 6, 2) == 1  # at least two tasks a thread
    assert engine._group_chunks(1 << 20, 100, 2) == 1
