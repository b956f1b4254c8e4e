"""Threads on the one-image path: bit-identical results for any thread count, one BLAS thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import segsoft
from segsoft import batch
from segsoft.errors import SegsoftError
from segsoft.mixture import FuzzyCMeans, GaussianMixture, SoftKMeans, available_cores, using_threads
from segsoft.spatial import PottsPrior


def _blobs(n: int = 6000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.5, -1.0], [-2.0, 2.5, 1.0]])
    return (centres[rng.integers(0, 3, n)] + rng.normal(scale=0.6, size=(n, 3))).astype(np.float32)


def _image(h: int = 96, w: int = 160, seed: int = 1) -> np.ndarray:
    """Three colour blocks with noise: 15,360 pixels, two engine chunks of 8192."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.float32)
    img[:, : w // 3] = (0.8, 0.2, 0.2)
    img[:, w // 3 : 2 * w // 3] = (0.2, 0.7, 0.3)
    img[:, 2 * w // 3 :] = (0.2, 0.3, 0.9)
    return np.clip(img + rng.normal(scale=0.08, size=img.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize(
    "make",
    [
        lambda j: GaussianMixture(3, chunk_size=500, n_jobs=j, seed=2),
        lambda j: GaussianMixture(3, covariance="diag", chunk_size=500, n_jobs=j, seed=2, sample_size=2000),
        lambda j: SoftKMeans(3, chunk_size=500, n_jobs=j, seed=2),
        lambda j: FuzzyCMeans(3, chunk_size=500, n_jobs=j, seed=2),
    ],
)
def test_models_identical_on_one_and_two_threads(make):
    X = _blobs()
    w = np.random.default_rng(3).integers(0, 4, X.shape[0]).astype(np.float64)
    for weights in (None, w):
        a, b = make(1).fit(X, sample_weight=weights), make(2).fit(X, sample_weight=weights)
        assert np.array_equal(a.log_likelihood_trace_, b.log_likelihood_trace_)
        assert a.log_likelihood_ == b.log_likelihood_
        assert np.array_equal(a.means_, b.means_)
        pa, sa = a.predict_proba_and_score(X)
        pb, sb = b.predict_proba_and_score(X)
        assert np.array_equal(pa, pb) and sa == sb


def test_prior_fit_identical_on_one_and_two_threads():
    # the smoothed fit adds its statistics through _stats: also chunked on threads
    X = _blobs(64 * 64)

    def fit(j: int) -> GaussianMixture:
        return GaussianMixture(3, chunk_size=700, n_jobs=j, seed=0, max_iter=8).fit(X, prior=PottsPrior((64, 64), 1.0))

    a, b = fit(1), fit(2)
    assert np.array_equal(a.log_likelihood_trace_, b.log_likelihood_trace_)
    assert np.array_equal(a.covariances_, b.covariances_)


def test_ambient_threads_reach_the_features_not_the_em_passes(monkeypatch):
    from segsoft import features
    from segsoft.features import extract
    from segsoft.io import Image

    X = _blobs(4000)
    gm = GaussianMixture(2, chunk_size=500).fit(X)
    seen: set[int] = set()

    def posterior(logits):
        seen.add(threading.get_ident())
        return gm._posterior(logits)

    with using_threads(2):
        gm._pass(X, stats=False, posterior=posterior)
    assert seen == {threading.get_ident()}  # n_jobs=None: the passes stay on this thread
    gm.n_jobs = 2
    seen.clear()
    gm._pass(X, stats=False, posterior=posterior)
    assert threading.get_ident() not in seen  # an explicit n_jobs uses the pool

    # features: chunks (made small here) split over threads, the same numbers as on one
    monkeypatch.setattr(features, "_CHUNK", 1000)
    img = Image.from_array(np.random.default_rng(0).random((64, 70, 3), dtype=np.float32))
    one = extract(img)
    with using_threads(2):
        assert np.array_equal(extract(img), one)
    with pytest.raises(ValueError, match="n_jobs"), using_threads(0):
        pass


@pytest.mark.parametrize("smoothing", [0.0, 1.0])
def test_segment_identical_on_one_and_two_threads(smoothing):
    img = _image()
    kw = {"k": 3, "seed": 0, "smoothing": smoothing, "sample": 4000}
    a = segsoft.segment(img, n_jobs=1, **kw)
    b = segsoft.segment(img, n_jobs=2, **kw)
    assert np.array_equal(a.probabilities, b.probabilities, equal_nan=True)
    assert a.log_likelihood == b.log_likelihood
    assert np.array_equal(a.model.log_likelihood_trace_, b.model.log_likelihood_trace_)
    # the thread count is not a model parameter: model.json stays the same on any machine
    assert a.model.n_jobs is None and a.model.to_dict() == b.model.to_dict()


def test_segment_runs_blas_on_one_thread():
    seen: list[int] = []

    def on_stage(name: str) -> None:
        seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    segsoft.segment(_image(32, 32), k=2, on_stage=on_stage)
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_segment_refuses_a_bad_n_jobs(bad):
    with pytest.raises(SegsoftError, match="n_jobs must be a whole number"):
        segsoft.segment(_image(8, 8), k=2, n_jobs=bad)


def test_batch_workers_use_one_thread(monkeypatch):
    assert available_cores() >= 1
    assert batch._task_jobs() is None  # in process (batch --jobs 1): all the cores
    monkeypatch.setattr(batch, "_IN_WORKER", True)
    assert batch._task_jobs() == 1


@pytest.mark.parametrize("shape", [(7, 9), (8, 10), (1, 5), (6, 1), (2, 2)])
def test_neighbour_sums_by_band_equal_the_whole(shape):
    from segsoft.spatial import _SUBLATTICES, _lattice_neighbour_sum

    c = np.random.default_rng(4).random((3, *shape)).astype(np.float32)
    subs = [c[sl] for sl in _SUBLATTICES]
    for t in range(4):
        whole = _lattice_neighbour_sum(t, *subs)
        for band in (1, 2, 3):
            parts = [_lattice_neighbour_sum(t, *subs, r0, r0 + band) for r0 in range(0, whole.shape[1], band)]
            assert np.array_equal(np.concatenate(parts, axis=1) if parts else whole, whole)


@pytest.mark.parametrize("k", [3, 12])
def test_potts_sweeps_identical_for_any_band_and_thread_count(monkeypatch, k):
    from segsoft import spatial

    rng = np.random.default_rng(5)
    h, w = 37, 53
    mask = rng.random((h, w)) > 0.1
    log_joint = np.log(rng.dirichlet(np.ones(k), size=int(mask.sum()))).astype(np.float32)

    def run(band_bytes: int, jobs: int) -> tuple[np.ndarray, float]:
        monkeypatch.setattr(spatial, "_BAND_BYTES", band_bytes)
        with using_threads(jobs):
            return PottsPrior((h, w), 1.5, mask).memberships(log_joint, sweeps=4)

    ref, ref_obj = run(1 << 30, 1)  # one band: the whole sub-lattice at once
    for band_bytes, jobs in ((1, 1), (1, 2), (3 * 4 * k * 27, 2), (1 << 30, 2)):
        c, obj = run(band_bytes, jobs)
        assert np.array_equal(c, ref) and obj == ref_obj


def test_one_blas_thread_limits_blas_and_looks_the_libraries_up_once(monkeypatch, request):
    # threadpool_limits walks every loaded library on each call (1.5 ms in a batch worker, four
    # times an image); the limit must still hold inside and be undone after
    from threadpoolctl import threadpool_info

    from segsoft.mixture import base, one_blas_thread

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library that threadpoolctl can see")
    before = [i["num_threads"] for i in blas]
    made = []
    real = base.ThreadpoolController
    base._controller.cache_clear()  # looked up anew, with the counting stand-in below
    request.addfinalizer(base._controller.cache_clear)
    monkeypatch.setattr(base, "ThreadpoolController", lambda: made.append(1) or real())
    for _ in range(3):
        with one_blas_thread():
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
    assert made == [1]
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
