"""The EM engine on plain arrays: known answers, invariants, scikit-learn parity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from segsoft.mixture import FuzzyCMeans, GaussianMixture, SoftKMeans, model_from_dict

COV_TYPES = ["full", "diag", "spherical", "tied"]


def blobs(n=6000, seed=0):
    """Three 2-D Gaussians with known weights, means and covariances."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.2, 0.3, 0.5])
    means = np.array([[-5.0, 0.0], [0.0, 4.0], [5.0, -1.0]])
    covs = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.7], [-0.7, 1.0]]])
    counts = rng.multinomial(n, weights)
    X = np.vstack([rng.multivariate_normal(m, c, size=c_n) for m, c, c_n in zip(means, covs, counts)])
    return X, weights, means, covs


def test_recovers_known_parameters():
    X, weights, means, covs = blobs(30000)
    gm = GaussianMixture(3, seed=0).fit(X)
    # components come out sorted by the first coordinate, as the truth is
    np.testing.assert_allclose(gm.weights_, weights, atol=0.01)
    np.testing.assert_allclose(gm.means_, means, atol=0.05)
    np.testing.assert_allclose(gm.covariances_, covs, atol=0.08)
    assert gm.converged_
    assert gm.means_.shape == (3, 2) and gm.precisions_cholesky_.shape == (3, 2, 2)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_recovers_axis_aligned_parameters(cov):
    rng = np.random.default_rng(3)
    sd = np.array([[0.5, 1.5], [1.0, 1.0]]) if cov == "diag" else np.array([[0.7, 0.7], [1.2, 1.2]])
    means = np.array([[-4.0, 0.0], [4.0, 1.0]])
    X = np.vstack([rng.normal(means[i], sd[i], size=(10000, 2)) for i in range(2)])
    gm = GaussianMixture(2, covariance=cov, seed=0).fit(X)
    np.testing.assert_allclose(gm.means_, means, atol=0.05)
    expected = sd**2 if cov == "diag" else sd[:, 0] ** 2
    np.testing.assert_allclose(gm.covariances_, expected, rtol=0.05)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_log_likelihood_never_decreases(cov):
    X, *_ = blobs(4000, seed=1)
    gm = GaussianMixture(3, covariance=cov, max_iter=200, tol=0, init="random", seed=2).fit(X)
    trace = gm.log_likelihood_trace_
    assert len(trace) == gm.n_iter_ >= 50
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[:-1]))


@pytest.mark.parametrize(
    "model",
    [
        SoftKMeans(3, init="random", tol=0, max_iter=60),
        SoftKMeans(3, beta=0.3, tol=0, max_iter=60),
        FuzzyCMeans(3, init="random", tol=0, max_iter=60),
    ],
)
def test_relatives_objective_never_decreases(model):
    X, *_ = blobs(3000, seed=4)
    trace = model.fit(X).log_likelihood_trace_
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[:-1]))


def _sklearn_start(X, means0, cov, reg):
    """scikit-learn's initial parameters for the start segsoft uses with
    means_init: every row assigned to its nearest mean, then one M-step."""
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky, _estimate_gaussian_parameters

    labels = ((X[:, None, :] - means0[None]) ** 2).sum(-1).argmin(1)
    resp = np.eye(len(means0))[labels]
    w, m, c = _estimate_gaussian_parameters(X, resp, reg, cov)
    pc = _compute_precision_cholesky(c, cov)
    prec = pc @ np.swapaxes(pc, -1, -2) if cov in ("full", "tied") else pc**2
    return w / len(X), m, prec


@pytest.mark.parametrize("cov", COV_TYPES)
def test_same_log_likelihood_as_sklearn(cov):
    sklearn = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(7)
    A = rng.normal(size=(3, 3))
    X = np.vstack([rng.normal(size=(2500, 3)) @ A * (i + 1) / 2 + rng.normal(0, 5, 3) for i in range(4)])
    means0 = X[rng.choice(len(X), 4, replace=False)]
    gm = GaussianMixture(4, covariance=cov, max_iter=25, tol=0).fit(X, means_init=means0)
    # segsoft's reg_covar is relative to the data's variance; scikit-learn's is absolute
    assert gm.reg_covar_ == pytest.approx(1e-6 * X.var(axis=0).mean(), rel=1e-9)
    w, m, prec = _sklearn_start(X, means0, cov, gm.reg_covar_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 runs every iteration on purpose
        sk = sklearn.GaussianMixture(
            4,
            covariance_type=cov,
            weights_init=w,
            means_init=m,
            precisions_init=prec,
            max_iter=25,
            tol=0,
            reg_covar=gm.reg_covar_,
        ).fit(X)
    assert gm.n_iter_ == sk.n_iter_ == 25
    ours, theirs = gm.score(X), sk.score(X)
    assert abs(ours - theirs) / abs(theirs) < 1e-6
    np.testing.assert_allclose(gm.score_samples(X), sk.score_samples(X), rtol=1e-6, atol=1e-8)
    # the same parameters, up to segsoft's stable ordering of the components
    order = np.lexsort(sk.means_.T[::-1])
    np.testing.assert_allclose(gm.means_, sk.means_[order], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gm.weights_, sk.weights_[order], rtol=1e-6, atol=1e-10)
    assert abs(gm.bic(X) - sk.bic(X)) / abs(sk.bic(X)) < 1e-6
    assert abs(gm.aic(X) - sk.aic(X)) / abs(sk.aic(X)) < 1e-6


def test_memberships_sum_to_one_and_keep_dtype():
    X, *_ = blobs(2000)
    for model in (GaussianMixture(3), SoftKMeans(3), FuzzyCMeans(3)):
        model.fit(X)
        p64 = model.predict_proba(X)
        p32 = model.predict_proba(X.astype(np.float32))
        assert p64.dtype == np.float64 and p32.dtype == np.float32
        np.testing.assert_allclose(p64.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(p32.sum(1), 1.0, atol=1e-5)
        assert (p64 >= 0).all()
        np.testing.assert_array_equal(model.predict(X), p64.argmax(1))


def test_deterministic_under_seed_and_independent_of_chunks_and_threads():
    X, *_ = blobs(5000)
    a = GaussianMixture(3, seed=5, n_init=2).fit(X)
    b = GaussianMixture(3, seed=5, n_init=2, chunk_size=333, n_jobs=1).fit(X)
    c = GaussianMixture(3, seed=5, n_init=2, chunk_size=333, n_jobs=2).fit(X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_array_equal(b.means_, c.means_)
    np.testing.assert_array_equal(
        a.log_likelihood_trace_, GaussianMixture(3, seed=5, n_init=2).fit(X).log_likelihood_trace_
    )


def test_components_sorted_by_first_coordinate():
    X, *_ = blobs(3000)
    for seed in range(3):
        gm = GaussianMixture(3, seed=seed, init="random").fit(X)
        assert np.all(np.diff(gm.means_[:, 0]) > 0)


def test_constant_data_reports_collapsed_components():
    X = np.ones((500, 3))
    gm = GaussianMixture(3).fit(X)
    p = gm.predict_proba(X)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert gm.collapsed_.sum() == 2
    assert np.isfinite(gm.score(X))


def test_empty_component_is_reseeded_not_left_at_zero():
    X, *_ = blobs(6000)
    far = np.array([[-5.0, 0.0], [0.0, 4.0], [500.0, 500.0]])  # nobody is nearest to the third mean
    gm = GaussianMixture(3, max_iter=200).fit(X, means_init=far)
    assert gm.n_reseeds_ >= 1
    assert not gm.collapsed_.any()
    trace = gm.log_likelihood_trace_
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[:-1]))  # re-seeding never lowers it
    assert gm.weights_.min() > 0.1


def test_sample_fit_with_polish_matches_full_fit():
    X, *_ = blobs(60000)
    full = GaussianMixture(3, seed=0, tol=1e-6).fit(X)
    sampled = GaussianMixture(3, seed=0, tol=1e-6, sample_size=5000).fit(X)
    assert sampled.n_iter_sample_ > 0
    # the sample trace never decreases; the full-data polish has its own trace
    assert len(sampled.log_likelihood_trace_) == sampled.n_iter_sample_ and len(sampled.polish_trace_) == 1
    assert np.all(np.diff(sampled.log_likelihood_trace_) >= -1e-10)
    assert sampled.n_iter_ == sampled.n_iter_sample_ + 1
    assert abs(sampled.score(X) - full.score(X)) < 1e-4
    np.testing.assert_allclose(sampled.means_, full.means_, atol=0.02)


def test_soft_kmeans_memberships_follow_their_definition():
    X, *_ = blobs(1000)
    skm = SoftKMeans(3, beta=0.5).fit(X)
    d2 = ((X[:, None, :] - skm.means_[None]) ** 2).sum(-1)
    logits = -0.5 * d2
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(skm.predict_proba(X), expected, atol=1e-10)
    assert skm.beta_ == 0.5


def test_fuzzy_cmeans_memberships_follow_their_definition():
    X, *_ = blobs(1000)
    fcm = FuzzyCMeans(3, m=1.7).fit(X)
    d2 = ((X[:, None, :] - fcm.means_[None]) ** 2).sum(-1)
    inv = d2 ** (-1 / 0.7)
    np.testing.assert_allclose(fcm.predict_proba(X), inv / inv.sum(1, keepdims=True), rtol=1e-8)
    u = fcm.predict_proba(X)
    centres = (u**1.7).T @ X / (u**1.7).sum(0)[:, None]
    np.testing.assert_allclose(centres, fcm.means_, atol=1e-2)  # a fixed point, to the tolerance
    assert not hasattr(fcm, "bic")


@pytest.mark.parametrize("model", [GaussianMixture(3, covariance="tied"), SoftKMeans(3), FuzzyCMeans(3)])
def test_round_trip_through_dict(model):
    import json

    X, *_ = blobs(2000)
    model.fit(X)
    again = model_from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), atol=1e-12)
    assert again.score(X) == pytest.approx(model.score(X), abs=1e-12)


def test_bad_arguments_raise_clear_errors():
    X, *_ = blobs(100)
    with pytest.raises(ValueError, match="smaller than n_components"):
        GaussianMixture(200).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixture(2, covariance="banana").fit(X)
    with pytest.raises(ValueError, match="fuzzifier"):
        FuzzyCMeans(2, m=1.0).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianMixture(2).predict_proba(X)
    with pytest.raises(ValueError, match="max_iter"):
        GaussianMixture(2, max_iter=0).fit(X)
    with pytest.raises(ValueError, match="seed"):
        GaussianMixture(2, seed=-1).check_params()
    with pytest.raises(ValueError, match="tol"):
        SoftKMeans(2, tol=float("nan")).check_params()
    fitted = GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="fitted on 2"):
        fitted.predict(X[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict_proba(np.array([[np.nan, 0.0]]))


def test_matches_sklearn_at_a_tiny_variance_floor():
    """A near-constant cluster drives a variance down to reg_covar: the
    quadratic-feature E-step must stay accurate there (float32 products would not)."""
    sklearn = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(11)
    flat = np.full((3000, 3), 0.3) + rng.normal(0, 1e-4, (3000, 3))  # like a saturated sky
    X = np.vstack([flat, rng.normal(0, 1, (3000, 3)), rng.normal(4, 2, (3000, 3))]).astype(np.float32)
    means0 = np.array([[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    gm = GaussianMixture(3, max_iter=15, tol=0, reg_covar=1e-7).fit(X, means_init=means0)
    w, m, prec = _sklearn_start(X.astype(np.float64), means0, "full", gm.reg_covar_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sklearn.GaussianMixture(
            3, weights_init=w, means_init=m, precisions_init=prec, max_iter=15, tol=0, reg_covar=gm.reg_covar_
        ).fit(X)
    assert gm.covariances_[:, 0, 0].min() < 3 * gm.reg_covar_  # the noise variance is 1e-8: reg_covar dominates
    theirs = sk.score(X.astype(np.float64))
    assert abs(gm.score(X) - theirs) / abs(theirs) < 1e-6
