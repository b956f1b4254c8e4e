"""EM passes in forked children (segsoft.mixture.forked): the same numbers as one process, no child left behind."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from segsoft.mixture import FuzzyCMeans, GaussianMixture, SoftKMeans, forked

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked passes are used on Linux only")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def forks(monkeypatch):
    """The pids of the children forked during the test; at its end each must have been reaped and no
    descriptor left open."""
    pids: list[int] = []
    real = os.fork
    fds = _open_fds()

    def fork():
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    yield pids
    for pid in pids:
        with pytest.raises(ChildProcessError):  # reaped: no zombie, no child still running
            os.waitpid(pid, os.WNOHANG)
    assert _open_fds() == fds


def _blobs(n: int = 9000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.5, -1.0], [-2.0, 2.5, 1.0]])
    return (centres[rng.integers(0, 3, n)] + rng.normal(scale=0.6, size=(n, 3))).astype(np.float32)


@pytest.mark.parametrize("n_parts", [1, 2, 3, 7, 12])
def test_split_covers_items_in_order(n_parts):
    parts = forked.split(range(10), n_parts)
    assert [i for p in parts for i in p] == list(range(10))
    assert len(parts) == min(n_parts, 10) and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert forked.split([], 3) == [[]]


@pytest.mark.parametrize("n_jobs", [1, 2, 3, 5])
def test_map_forked_gives_the_values_in_order_from_other_processes(n_jobs, forks):
    parent = os.getpid()
    taken = forked.shared_array((1,), np.int64)  # items the children took

    def fn(i):
        if forked.in_child():
            taken[0] += 1
        elif n_jobs > 1:  # this process waits (up to 10 s) until a child has taken an item from the queue
            deadline = time.monotonic() + 10
            while taken[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        return i, os.getpid()

    out = forked.map_forked(fn, range(8), n_jobs)
    assert [i for i, _ in out] == list(range(8))
    assert len(forks) == n_jobs - 1
    pids = {pid for _, pid in out}
    if n_jobs == 1:
        assert pids == {parent}
    else:  # the children may take every item before this process reads one
        assert taken[0] >= 1 and len(pids - {parent}) >= 1


def test_a_small_pipe_or_many_items_fall_back_to_runs(monkeypatch, forks):
    monkeypatch.setattr(forked, "_MAX_QUEUED", 3)
    assert forked.map_forked(lambda i: 2 * i, range(10), 3) == [2 * i for i in range(10)]
    assert len(forks) == 2


def test_children_reaped_by_someone_else_still_count(forks):
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps every child at once
    try:
        assert forked.map_forked(lambda i: i + 3, range(7), 3) == [i + 3 for i in range(7)]
        assert forked.map_forked(lambda i: i + 3, range(7), 3, received=lambda part: None) == [i + 3 for i in range(7)]
    finally:
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_runs_of_items_with_outputs_copied_back(n_jobs, forks):
    parent, seen = os.getpid(), []
    out = forked.shared_array((9,), np.int64)
    mine = np.full(9, -1)

    def fn(i):
        (out if forked.in_child() else mine)[i] = 10 * i
        return os.getpid()

    def received(part):
        seen.append(list(part))
        mine[part[0] : part[-1] + 1] = out[part[0] : part[-1] + 1]

    pids = forked.map_forked(fn, range(9), n_jobs, received)
    assert pids[: 3 if n_jobs == 3 else 5] == [parent] * (3 if n_jobs == 3 else 5)  # the first run: this process
    assert parent not in pids[-3:] and len(forks) == n_jobs - 1
    assert seen == [list(p) for p in forked.split(range(9), n_jobs)[1:]]
    assert mine.tolist() == [10 * i for i in range(9)]


def test_a_failed_child_has_its_part_done_here(forks):
    parent = os.getpid()

    def fn(i):
        if os.getpid() != parent:
            os._exit(3)  # a child killed mid-way (out of memory, a signal)
        return i * i

    assert forked.map_forked(fn, range(6), 3) == [i * i for i in range(6)]
    assert len(forks) == 2


def test_an_error_is_raised_here_and_no_child_is_left(forks):
    def fn(i):
        if i == 0:
            raise ValueError("bad chunk")
        return i

    with pytest.raises(ValueError, match="bad chunk"):
        forked.map_forked(fn, range(4), 2)
    assert len(forks) == 1


def test_no_fork_while_another_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not forked.can_fork()
    finally:
        stop.set()
        t.join()


def _model(name: str, n_jobs: int):
    """The models of tests/test_threads.py: a full and a diagonal Gaussian mixture (this one on a sample), soft
    k-means, fuzzy c-means."""
    if name == "soft-kmeans":
        return SoftKMeans(3, chunk_size=500, n_jobs=n_jobs, seed=2)
    if name == "fcm":
        return FuzzyCMeans(3, chunk_size=500, n_jobs=n_jobs, seed=2)
    extra = {"covariance": "diag", "sample_size": 2000} if name == "diag" else {}
    return GaussianMixture(3, chunk_size=500, n_jobs=n_jobs, seed=2, **extra)


@pytest.mark.parametrize("name", ["full", "diag", "soft-kmeans", "fcm"])
def test_models_identical_with_forked_passes(name, monkeypatch, forks):
    X = _blobs()
    w = np.random.default_rng(3).integers(0, 4, X.shape[0]).astype(np.float64)
    calls: list[str] = []
    real_map, real_queued = forked.map_forked, forked._map_queued

    def spy(fn, items, n_jobs, received=None):
        calls.append("runs" if received else "queue")
        return real_map(fn, items, n_jobs, received)

    def queued(fn, items, n_jobs):
        calls.append("queued")
        return real_queued(fn, items, n_jobs)

    for weights in (None, w):
        a = _model(name, 1).fit(X, sample_weight=weights)
        pa, sa = a.predict_proba_and_score(X)
        with monkeypatch.context() as m:  # threads (the pool of an xdist worker) would keep it off: force it
            m.setattr(forked, "FORK_MIN_ROWS", 1000)
            m.setattr(forked, "can_fork", lambda: True)
            m.setattr(forked, "map_forked", spy)
            m.setattr(forked, "_map_queued", queued)
            b = _model(name, 2).fit(X, sample_weight=weights)
            assert forks and {"queue", "queued"} <= set(calls), "the fitting passes did not use the queue"
            calls.clear()
            pb, sb = b.predict_proba_and_score(X)  # memberships and scores written by a child too
            out = np.full((X.shape[0], 3), np.nan, np.float32)
            b.predict_proba(X, out=out)
            scores = b.score_samples(X)  # scores alone
            assert calls == ["runs"] * 3
        assert np.array_equal(a.log_likelihood_trace_, b.log_likelihood_trace_)
        assert a.log_likelihood_ == b.log_likelihood_
        assert np.array_equal(a.means_, b.means_)
        assert np.array_equal(pa, pb) and sa == sb
        assert np.array_equal(out, pa.astype(np.float32))
        np.testing.assert_array_equal(scores, a.score_samples(X))


@pytest.mark.parametrize(("n", "chunk", "n_jobs"), [(977, 100, 2), (1001, 7, 3), (64, 10, 2), (130, 13, 5)])
def test_odd_sizes_identical(n, chunk, n_jobs, monkeypatch, forks):
    X = _blobs(n, seed=4)
    a = GaussianMixture(3, chunk_size=chunk, seed=1, max_iter=5).fit(X)
    pa, sa = a.predict_proba_and_score(X)
    monkeypatch.setattr(forked, "FORK_MIN_ROWS", 1)
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    b = GaussianMixture(3, chunk_size=chunk, seed=1, max_iter=5, n_jobs=n_jobs).fit(X)
    pb, sb = b.predict_proba_and_score(X)
    assert np.array_equal(a.log_likelihood_trace_, b.log_likelihood_trace_) and np.array_equal(a.means_, b.means_)
    assert np.array_equal(pa, pb) and sa == sb
    assert len(forks) >= 1


def test_small_passes_stay_in_this_process(monkeypatch):
    monkeypatch.setattr(forked, "can_fork", lambda: True)

    def refuse(*args):
        raise AssertionError("forked")

    monkeypatch.setattr(forked, "map_forked", refuse)
    X = _blobs(3000)
    gm = GaussianMixture(3, chunk_size=500, n_jobs=2, seed=0).fit(X)  # under FORK_MIN_ROWS
    gm.predict_proba(X)
    monkeypatch.setattr(forked, "FORK_MIN_ROWS", 1000)
    with pytest.raises(AssertionError, match="forked"):
        gm.score(X)


def test_a_failed_child_of_a_memberships_pass_leaves_right_memberships(monkeypatch):
    X = _blobs()
    gm = GaussianMixture(3, chunk_size=500, seed=1).fit(X)
    expect = gm.predict_proba(X)
    real = forked._fork

    def dying(job, mask):
        return real(lambda: os._exit(9), mask)  # every child dies before it sends anything

    monkeypatch.setattr(forked, "_fork", dying)
    monkeypatch.setattr(forked, "FORK_MIN_ROWS", 1000)
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    gm.n_jobs = 3
    np.testing.assert_array_equal(gm.predict_proba(X), expect)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_no_child_to_be_had_means_the_work_is_done_here(monkeypatch, fail_at):
    real, made = os.fork, []

    def fork():
        if len(made) + 1 >= fail_at:
            raise OSError(12, "Cannot allocate memory")
        pid = real()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    assert forked.map_forked(lambda i: i + 1, range(9), 4) == list(range(1, 10))  # in order, whoever did it
    assert len(made) == fail_at - 1
    for pid in made:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_out_of_descriptors_means_the_work_is_done_here(monkeypatch):
    def no_pipe():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pipe", no_pipe)
    fds = _open_fds()
    assert forked.map_forked(lambda i: i * 3, range(7), 3) == [i * 3 for i in range(7)]
    assert forked.map_forked(lambda i: i * 3, range(7), 3, received=lambda part: None) == [i * 3 for i in range(7)]
    assert _open_fds() == fds


def test_signals_are_not_left_blocked():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    forked.map_forked(lambda i: i, range(5), 3)
    forked.map_forked(lambda i: i, range(5), 3, received=lambda part: None)
    with pytest.raises(ValueError, match="bad"):
        forked.map_forked(lambda i: (_ for _ in ()).throw(ValueError("bad")), range(5), 2)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
