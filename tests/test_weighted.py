"""Weighted EM: a weighted fit on distinct rows with their counts is the fit on all rows."""

from __future__ import annotations

import numpy as np
import pytest

from segsoft.mixture import FuzzyCMeans, GaussianMixture, SoftKMeans

TOL = 1e-10

MODELS = [
    pytest.param(lambda c=c, **kw: GaussianMixture(3, covariance=c, **kw), id=f"gmm-{c}")
    for c in ("full", "diag", "spherical", "tied")
] + [
    pytest.param(lambda **kw: SoftKMeans(3, **kw), id="soft-kmeans"),
    pytest.param(lambda **kw: SoftKMeans(3, beta=0.05, **kw), id="soft-kmeans-beta"),
    pytest.param(lambda **kw: FuzzyCMeans(3, **kw), id="fcm"),
]


def _integer_data(seed: int = 0, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [12, 3, -4], [-5, 10, 6]])
    X = centres[rng.integers(3, size=n)] + np.round(rng.normal(0, 1.2, (n, 3)))
    return X.astype(np.float64)


def _grouped(X: np.ndarray):
    """(all rows grouped by distinct row, distinct rows, counts)."""
    distinct, inverse, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    return np.repeat(distinct, counts, axis=0), distinct, counts, inverse.ravel()


def _params(model) -> list[np.ndarray]:
    names = ("means_", "weights_", "covariances_")
    return [np.asarray(getattr(model, n)) for n in names if hasattr(model, n)]


def _close(a, b, tol=TOL):
    for x, y in zip(_params(a), _params(b)):
        scale = max(1.0, float(np.abs(y).max()))
        assert np.abs(x - y).max() <= tol * scale, (x, y)
    assert abs(a.log_likelihood_ - b.log_likelihood_) <= tol * max(1.0, abs(b.log_likelihood_))


@pytest.mark.parametrize("make", MODELS)
def test_distinct_rows_with_counts_equal_all_rows(make):
    X_all, distinct, counts, _ = _grouped(_integer_data())
    assert distinct.shape[0] < X_all.shape[0] / 3  # really a compression
    full = make().fit(X_all)
    weighted = make().fit(distinct, sample_weight=counts)
    _close(weighted, full)
    assert weighted.n_iter_ == full.n_iter_
    np.testing.assert_allclose(weighted.predict_proba(distinct), full.predict_proba(distinct), rtol=0, atol=TOL)
    assert abs(weighted.score(distinct, sample_weight=counts) - full.score(X_all)) <= TOL * abs(full.score(X_all))
    if hasattr(full, "bic"):
        assert weighted.bic(distinct, sample_weight=counts) == pytest.approx(full.bic(X_all), rel=TOL)
        assert weighted.aic(distinct, sample_weight=counts) == pytest.approx(full.aic(X_all), rel=TOL)


@pytest.mark.parametrize("make", MODELS)
def test_shuffled_rows_same_means_init(make):
    """Rows in any order: the EM from the same start agrees (the k-means++ draw
    matches only for grouped rows, so the start is given)."""
    X = _integer_data(1)
    _, distinct, counts, _ = _grouped(X)
    start = make().fit(X).means_
    full = make().fit(X, means_init=start)
    weighted = make().fit(distinct, sample_weight=counts, means_init=start)
    _close(weighted, full)


@pytest.mark.parametrize("make", MODELS)
def test_weight_two_equals_weight_one(make):
    X = _integer_data(2, 800) + np.random.default_rng(0).normal(0, 0.1, (800, 3))
    one = make().fit(X, sample_weight=np.ones(len(X)))
    two = make().fit(X, sample_weight=np.full(len(X), 2.0))
    plain = make().fit(X, means_init=one.means_)
    _close(two, one)
    _close(one, make().fit(X, means_init=one.means_, sample_weight=np.ones(len(X))))
    _close(plain, one, tol=1e-9)


@pytest.mark.parametrize("make", MODELS)
def test_zero_weight_rows_have_no_influence(make):
    rng = np.random.default_rng(3)
    X = _integer_data(3, 1000) + rng.normal(0, 0.1, (1000, 3))
    w = rng.uniform(0.5, 3.0, 1000)
    junk = rng.normal(100, 50, (300, 3))
    Xj = np.vstack([X[:500], junk, X[500:]])
    wj = np.concatenate([w[:500], np.zeros(300), w[500:]])
    _close(make().fit(Xj, sample_weight=wj), make().fit(X, sample_weight=w))


def test_weighted_sample_size_is_reproducible_and_polished():
    X_all, distinct, counts, _ = _grouped(_integer_data(4, 5000))
    gm = GaussianMixture(3, sample_size=200, seed=5).fit(distinct, sample_weight=counts)
    again = GaussianMixture(3, sample_size=200, seed=5).fit(distinct, sample_weight=counts)
    np.testing.assert_array_equal(gm.means_, again.means_)
    assert gm.n_iter_sample_ > 0 and gm.polish_trace_.size == 1
    # the sample fit drew rows by weight; the polish ran on every distinct row, weighted
    assert np.isfinite(gm.log_likelihood_)
    assert gm.score(distinct, sample_weight=counts) == pytest.approx(gm.score(X_all), rel=1e-12)


def test_float_weights_scale_invariant():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(600, 2)) + np.repeat([[0, 0], [6, 0]], 300, axis=0)
    w = rng.uniform(0.1, 5.0, 600)
    a = GaussianMixture(2).fit(X, sample_weight=w)
    b = GaussianMixture(2).fit(X, sample_weight=w * 3.7)
    assert np.abs(a.means_ - b.means_).max() < 1e-8


@pytest.mark.parametrize(
    "w, match",
    [
        (np.ones(9), "shape"),
        (np.ones((10, 1)), "shape"),
        (np.r_[np.ones(9), np.nan], "NaN"),
        (np.r_[np.ones(9), np.inf], "NaN or infinite"),
        (np.r_[np.ones(9), -1.0], ">= 0"),
        (np.zeros(10), "zero for every row"),
        (np.array(["a"] * 10), "numbers"),
        (np.r_[np.zeros(8), 1.0, 1.0], "n_components"),
    ],
)
def test_bad_weights(w, match):
    X = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3).fit(X, sample_weight=w)
    if match != "n_components":
        gm = GaussianMixture(2).fit(X)
        with pytest.raises(ValueError, match=match):
            gm.score(X, sample_weight=w)


def test_weights_and_prior_refused():
    from segsoft.spatial import PottsPrior

    X = np.random.default_rng(0).normal(size=(16, 1))
    with pytest.raises(ValueError, match="prior"):
        GaussianMixture(2).fit(X, prior=PottsPrior((4, 4), 1.0), sample_weight=np.ones(16))


# --------------------------------------------------------------------------
# segment(): the exact fit on distinct colours is the per-pixel full-data EM


def _few_colours(mask: bool = False):
    from PIL import Image as PILImage

    arr = np.asarray(PILImage.open("images/coffee.jpg").convert("RGB"))
    arr = (arr // 16 * 16).astype(np.uint8)
    if not mask:
        return arr
    rgba = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
    rgba[:40, :60, 3] = 0
    return rgba


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(color="rgb", model="soft-kmeans"),
        dict(color="hsv", model="fcm"),
        dict(color="gray", covariance="diag"),
        dict(mask=True),
    ],
    ids=["lab-gmm", "rgb-skm", "hsv-fcm", "gray-diag", "masked"],
)
def test_segment_exact_distinct_equals_per_pixel_em(kw):
    from segsoft.features import extract
    from segsoft.segment import make_model, segment

    kw = dict(kw)
    arr = _few_colours(kw.pop("mask", False))
    seg = segment(arr, k=3, sample=0, **kw)
    assert seg.settings["exact_fit"]["rows"] == "distinct colours"
    model = kw.pop("model", "gmm")
    X = extract(seg.image, seg.spec)
    # the k-means++ start on distinct colours cannot match the one on a pixel subsample:
    # the same start is given to the per-pixel EM, and the EM must then agree
    per = make_model(model, 3, sample=0, covariance=kw.get("covariance", "full")).fit(
        X, means_init=seg.model._start_means
    )
    probs = seg.probabilities.reshape(-1, 3)
    if seg.image.mask is not None:
        assert np.isnan(probs[~seg.image.mask.ravel()]).all()
        probs = probs[seg.image.mask.ravel()]
    assert np.abs(probs - per.predict_proba(X).astype(np.float32)).max() <= 1e-6
    # grey features come from a BLAS product whose float32 rounding depends on the row's
    # position: equal colours can differ by an ulp per pixel, so there float32 tolerance
    tol = 1e-6 if kw.get("color") == "gray" else 1e-10
    ll = per.score(X)
    assert abs(seg.log_likelihood - ll) <= tol * abs(ll)
    for x, y in zip(_params(seg.model), _params(per)):
        assert np.abs(x - y).max() <= tol * max(1.0, float(np.abs(y).max()))
    assert seg.model.n_iter_ == per.n_iter_


def test_segment_exact_path_not_used_when_it_does_not_apply():
    from segsoft.segment import segment

    arr = _few_colours()
    assert "exact_fit" not in segment(arr, k=3, sample=200_000).settings  # a sample given on purpose
    assert "exact_fit" not in segment(arr, k=3, sample=0, spatial_weight=1.0).settings
    noisy = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)  # all distinct
    assert "exact_fit" not in segment(noisy, k=3, sample=0).settings
