"""Chunked EM (issue 12, item 3): chunk statistics in the engine, and the dask layer
giving the in-memory numbers (same seed, same sample, probabilities within 1e-6,
mean log-likelihood within 1e-10 relative)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from segsoft.features import FeatureSpec, extract
from segsoft.io import Image
from segsoft.mixture import EMStatistics, FuzzyCMeans, GaussianMixture, SoftKMeans
from segsoft.segment import _memberships, make_model

try:
    import dask
    import dask.array as da

    from segsoft.cluster import em
except ImportError:  # the dask extra is not installed
    dask = da = em = None

needs_dask = pytest.mark.skipif(da is None, reason="dask is not installed (pip install 'segsoft[dask]')")

MODELS = [
    ("gmm", {"covariance": "full"}),
    ("gmm", {"covariance": "diag"}),
    ("soft-kmeans", {}),
    ("fcm", {}),
]
MODEL_IDS = ["gmm-full", "gmm-diag", "soft-kmeans", "fcm"]


def _blobs(n: int = 3000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(m, 1.0, (n, 3)) for m in (-3.0, 0.0, 4.0)]).astype(np.float32)


def _engines():
    return [
        GaussianMixture(3, covariance="full", sample_size=2000, polish_iter=3),
        GaussianMixture(3, covariance="diag", sample_size=2000, polish_iter=2),
        GaussianMixture(3, covariance="tied", sample_size=2000, polish_iter=2),
        SoftKMeans(3, sample_size=2000, polish_iter=2),
        FuzzyCMeans(3, sample_size=2000, polish_iter=2),
    ]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --------------------------------------------------------------------------
# The engine (plain numpy; no dask needed)


@pytest.mark.parametrize("ref", _engines(), ids=repr)
def test_chunk_statistics_are_additive(ref):
    X = _blobs()
    model = type(ref)(**ref.get_params()).fit(X)
    whole = model.chunk_statistics(X)
    cuts = np.sort(np.random.default_rng(3).choice(np.arange(1, X.shape[0]), size=6, replace=False))
    pieces = np.split(np.arange(X.shape[0]), cuts)
    parts = [model.chunk_statistics(X[p], offset=int(p[0])) for p in pieces]
    parts.append(model.chunk_statistics(X[:0]))  # an empty chunk (an all-transparent tile) adds nothing
    tree = (parts[0] + parts[1]) + sum(parts[2:])
    assert tree.n == whole.n == X.shape[0]
    np.testing.assert_allclose(tree.s, whole.s, rtol=1e-12)
    assert _rel(tree.score_sum, whole.score_sum) < 1e-12
    assert tree.worst_row == whole.worst_row and tree.worst_score == whole.worst_score
    np.testing.assert_array_equal(tree.worst_point, X[whole.worst_row])
    back = pickle.loads(pickle.dumps(tree))
    assert isinstance(back, EMStatistics) and back.n == tree.n and np.array_equal(back.s, tree.s)


@pytest.mark.parametrize("ref", _engines(), ids=repr)
def test_polish_from_summed_chunk_statistics_is_the_in_memory_polish(ref):
    """fit_from_chunks with statistics summed over arbitrary chunks == fit(X)."""
    X = _blobs()
    mem = type(ref)(**ref.get_params()).fit(X)
    cuts = [1, 17, 2500, 2501, 7000]
    pieces = np.split(np.arange(X.shape[0]), cuts)
    chunked = type(ref)(**ref.get_params())
    seen = []

    def statistics(stats=True):
        seen.append(stats)
        return sum(chunked.chunk_statistics(X[p], offset=int(p[0]), stats=stats) for p in pieces)

    X64 = X.astype(np.float64)
    mean = X64.mean(axis=0)
    chunked.fit_from_chunks(
        X.shape[0],
        X.shape[1],
        column_moments=(mean, float(np.square(X - mean).sum()) / X.size),
        take_rows=lambda idx: X if idx is None else X[idx],
        statistics=statistics,
    )
    assert len(seen) >= ref.polish_iter
    np.testing.assert_array_equal(chunked.sample_indices(X.shape[0]), mem.sample_indices(X.shape[0]))
    for name in ("means_", "weights_", "covariances_"):
        if hasattr(mem, name):
            np.testing.assert_allclose(getattr(chunked, name), getattr(mem, name), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked.polish_trace_, mem.polish_trace_, rtol=1e-12)
    np.testing.assert_array_equal(chunked.log_likelihood_trace_, mem.log_likelihood_trace_)
    assert chunked.n_iter_ == mem.n_iter_
    np.testing.assert_allclose(chunked.predict_proba(X), mem.predict_proba(X), atol=1e-12)


def test_update_from_statistics_is_one_em_iteration():
    X = _blobs()
    a = GaussianMixture(3, sample_size=2000, polish_iter=0).fit(X)
    b = GaussianMixture(3, sample_size=2000, polish_iter=1).fit(X)
    a.update_from_statistics(a.chunk_statistics(X[:4000]) + a.chunk_statistics(X[4000:], offset=4000))
    a._sort_components()
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-12)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="stats=False"):
        a.update_from_statistics(a.chunk_statistics(X, stats=False))


def test_sample_indices_are_the_rows_fit_draws():
    gm = GaussianMixture(2, sample_size=50, seed=7)
    idx = gm.sample_indices(1000)
    assert idx.size == 50 and np.all(np.diff(idx) > 0)
    assert GaussianMixture(2, sample_size=None).sample_indices(1000) is None
    assert GaussianMixture(2, sample_size=5000).sample_indices(1000) is None


# --------------------------------------------------------------------------
# The dask layer


def _image(masked: bool, h: int = 40, w: int = 50) -> Image:
    rng = np.random.default_rng(0)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (200, 30, 30)
    arr[: h // 2, w // 2 :] = (30, 200, 30)
    arr[h // 2 :, w // 2 :] = (30, 30, 200)
    arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
    if masked:
        alpha = np.full((h, w), 255, np.uint8)
        alpha[3:15, 8:33] = 0  # a transparent hole across the chunk borders
        alpha[25:, 40:] = 0  # one whole chunk corner transparent
        arr = np.dstack([arr, alpha])
    return Image.from_array(arr)


def _compare(img: Image, sw: float, name: str, kw: dict, chunks=(20, 25), sample: int = 900):
    spec0 = FeatureSpec(spatial_weight=sw)
    X = extract(img, spec0)
    mem = make_model(name, 3, sample=sample, seed=0, **kw).fit(X)
    p_mem, ll_mem = _memberships(img, mem, X)

    bands, mask = em.image_to_dask(img, chunks=chunks)
    F = em.extract_chunked(bands, spec0, mask=mask, bit_depth=img.bit_depth)
    assert F.numblocks[:2] == (2, 2)
    ch = make_model(name, 3, sample=sample, seed=0, **kw)
    em.fit_chunked(ch, F, mask=mask)
    probs, mean = em.memberships_chunked(ch, F, mask=mask)
    p_ch, ll_ch = dask.compute(probs, mean)
    assert p_ch.dtype == np.float32 and p_ch.shape == p_mem.shape
    np.testing.assert_array_equal(np.isnan(p_ch), np.isnan(p_mem))  # the same pixels left out
    assert np.nanmax(np.abs(p_ch - p_mem)) <= 1e-6
    assert _rel(float(ll_ch), ll_mem) <= 1e-10
    assert _rel(ch.log_likelihood_, mem.log_likelihood_) <= 1e-10
    np.testing.assert_allclose(ch.means_, mem.means_, rtol=1e-10, atol=1e-10)
    assert ch.n_iter_ == mem.n_iter_ and ch.polish_trace_.size == mem.polish_trace_.size
    return ch, mem


@needs_dask
@pytest.mark.parametrize("masked", [False, True], ids=["opaque", "mask"])
@pytest.mark.parametrize("sw", [0.0, 0.7], ids=["colour", "position"])
@pytest.mark.parametrize(("name", "kw"), MODELS, ids=MODEL_IDS)
def test_chunked_equals_in_memory(name, kw, sw, masked):
    with dask.config.set(scheduler="synchronous"):
        _compare(_image(masked), sw, name, kw)


@needs_dask
@pytest.mark.parametrize("masked", [False, True], ids=["opaque", "mask"])
@pytest.mark.parametrize("sw", [0.0, 0.7], ids=["colour", "position"])
def test_features_per_chunk_are_extract_exactly(sw, masked):
    img = _image(masked)
    spec0 = FeatureSpec(spatial_weight=sw)
    X, spec = extract(img, spec0, return_spec=True)
    bands, mask = em.image_to_dask(img, chunks=(13, 17))  # ragged tiles
    with dask.config.set(scheduler="threads"):
        F, spec_c = em.extract_chunked(bands, spec0, mask=mask, bit_depth=img.bit_depth, return_spec=True)
        grid = F.compute()
    assert spec_c == spec  # the standardisation is fitted once, on the same pixels
    rows = grid.reshape(-1, grid.shape[2]) if img.mask is None else grid[img.mask]
    np.testing.assert_array_equal(rows, X)
    # a fitted spec is applied as it is
    with dask.config.set(scheduler="threads"):
        again = em.extract_chunked(bands, spec, mask=mask, bit_depth=img.bit_depth).compute()
    np.testing.assert_array_equal(again, grid)


@needs_dask
def test_same_sample_gathered_from_the_chunks():
    img = _image(True)
    X = extract(img, FeatureSpec(spatial_weight=0.5))
    bands, mask = em.image_to_dask(img, chunks=(20, 25))
    F = em.extract_chunked(bands, FeatureSpec(spatial_weight=0.5), mask=mask)
    gm = GaussianMixture(3, sample_size=700, seed=4)
    idx = gm.sample_indices(X.shape[0])
    with dask.config.set(scheduler="synchronous"):
        g = em._Grid(F, mask)
        assert g.n_used == X.shape[0]
        ys, xs = g.pixels_of_rows(idx)
        np.testing.assert_array_equal(em._gather(g.X, ys, xs), X[idx])


@needs_dask
def test_rows_form_and_threads():
    X = _blobs()
    Xd = da.from_array(X, chunks=(1234, 3))
    with dask.config.set(scheduler="threads"):
        for ref in _engines():
            mem = type(ref)(**ref.get_params()).fit(X)
            ch = em.fit_chunked(type(ref)(**ref.get_params()), Xd, split_every=3)
            p = em.predict_proba_chunked(ch, Xd).compute()
            assert p.shape == (X.shape[0], 3)
            assert np.abs(p - mem.predict_proba(X)).max() <= 1e-6
            assert _rel(ch.log_likelihood_, mem.log_likelihood_) <= 1e-10
            _, mean = em.memberships_chunked(ch, Xd)
            assert _rel(float(mean.compute()), mem.score(X)) <= 1e-10


@needs_dask
def test_overrides_and_unfitted():
    X = _blobs(500)
    Xd = da.from_array(X, chunks=(400, 3))
    with dask.config.set(scheduler="synchronous"):
        ch = em.fit_chunked(SoftKMeans(3), Xd, sample=300, seed=5, polish_iter=2)
        mem = SoftKMeans(3, sample_size=300, seed=5, polish_iter=2).fit(X)
    assert ch.sample_size == 300 and ch.polish_trace_.size == 2
    np.testing.assert_allclose(ch.means_, mem.means_, rtol=1e-12)
    with pytest.raises(RuntimeError, match="not fitted"):
        em.predict_proba_chunked(SoftKMeans(3), Xd)


@needs_dask
def test_on_a_local_cluster_of_processes():
    distributed = pytest.importorskip("distributed", reason="distributed is not installed")
    img = _image(True)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False},
    )
    try:
        with distributed.Client(cluster):
            ch, mem = _compare(img, 0.7, "gmm", {"covariance": "full"})
    finally:
        cluster.close()
    assert ch.converged_ == mem.converged_
