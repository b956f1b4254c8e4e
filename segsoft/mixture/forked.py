"""Parts of a chunked pass in forked child processes: more cores for numpy code that threads cannot share.

An EM pass is about a dozen numpy calls a chunk, each some tens of microseconds long.
Threads running them hand the GIL back and forth at every call: on the 2-core machine two
threads ran a pass at 0.8-1.1x the speed of one (each BLAS call and ufunc alone scaled to
1.9x), while two processes ran the same pass at 1.8-1.9x. A child made by ``fork`` shares
the rows copy-on-write (they are only read, so nothing is copied) and sends back only its
per-chunk sums (P x K numbers a chunk: 672 bytes for K = 4 on D = 5 features). A pass that
writes memberships or scores has the children write their rows to shared memory, copied
into the output afterwards: up to (n_jobs - 1) / n_jobs of the output's size again, for the
length of the pass.

Forking is used only where it is safe and pays: on Linux, in a process with no other
Python thread (a thread holding a lock at the moment of the fork could leave it locked in
the child: a Dask worker, a picture writer), for passes of at least :data:`FORK_MIN_ROWS`
rows (a fork costs a few milliseconds). Elsewhere the callers use threads. Threads that
Python does not know of are not counted: the passes run BLAS on one thread
(:func:`segsoft.mixture.one_blas_thread`), and OpenBLAS makes its pool safe across a fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import mmap
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing

T = TypeVar("T")
R = TypeVar("R")

#: Passes over fewer rows than this stay in one process (a fork and its reply cost about 4 ms).
FORK_MIN_ROWS = 1 << 20

_IN_CHILD = False


def in_child() -> bool:
    """True inside a child of :func:`map_forked`: where a task must write its outputs to :func:`shared_array`.

    Examples
    --------
    >>> in_child()
    False
    """
    return _IN_CHILD


def shared_array(shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
    """An array in memory shared with the children forked after it is made: what a child writes there, this
    process sees (anything else a child writes stays in the child).

    Examples
    --------
    >>> a = shared_array((2, 3), np.float32)
    >>> a.shape, a.dtype.name, float(a.sum())
    ((2, 3), 'float32', 0.0)
    """
    dtype = np.dtype(dtype)
    size = max(1, int(np.prod(shape)) * dtype.itemsize)
    return np.ndarray(shape, dtype=dtype, buffer=mmap.mmap(-1, size, flags=mmap.MAP_SHARED))


def can_fork() -> bool:
    """Whether :func:`map_forked` may fork here: Linux, and no Python thread but this one.

    Examples
    --------
    >>> isinstance(can_fork(), bool)
    True
    """
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


def split(items: Sequence[T], n_parts: int) -> list[Sequence[T]]:
    """``items`` in ``n_parts`` consecutive parts of nearly equal length (none empty unless ``items`` is).

    Examples
    --------
    >>> [list(p) for p in split(range(7), 3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    n_parts = max(1, min(n_parts, len(items)))
    q, r = divmod(len(items), n_parts)
    bounds = [i * q + min(i, r) for i in range(n_parts + 1)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def map_forked(
    fn: Callable[[T], R],
    items: Sequence[T],
    n_jobs: int,
    received: Callable[[Sequence[T]], None] | None = None,
) -> list[R]:
    """``[fn(i) for i in items]``, shared between this process and ``n_jobs - 1`` forked children.

    The results come back in the order of ``items`` and are the values ``fn`` gives in this
    process (the children run the same code on the same memory), so the caller's sums are
    the same as without children. ``fn``'s results must pickle. A child that fails (killed,
    out of memory, an exception) has its items computed again here, so an error ``fn``
    raises is raised here as usual. Call it only where :func:`can_fork` is true.

    Without ``received``, the items are handed out one at a time from a queue (their
    indices in a pipe, whose small reads are atomic), so a process the machine runs faster
    takes more of them. A child's writes to this process's arrays are lost: a task that
    fills an output writes, where :func:`in_child` is true, to a :func:`shared_array`
    instead. With ``received``, each process takes one run of consecutive items, exactly
    the parts of ``split(items, n_jobs)`` (this process the first), and ``received(part)``
    is called here for each part a child did, once its results are in, to copy them over.

    Examples
    --------
    >>> map_forked(lambda i: i * i, range(6), 2) == [i * i for i in range(6)]
    True
    """
    n_jobs = max(1, min(n_jobs, len(items)))
    if received is None:
        queued = _map_queued(fn, items, n_jobs)
        if queued is not None:
            return queued
    parts = split(items, n_jobs)
    done: dict[int, list[R]] = {}

    def mine() -> None:
        done[0] = _run_part(fn, parts[0])

    def accept(c: int, result: object) -> None:
        if result is not None:
            done[c + 1] = result  # type: ignore[assignment]
            if received is not None:
                received(parts[c + 1])

    _run_children([functools.partial(_run_part, fn, part) for part in parts[1:]], mine, accept)
    for j in range(1, len(parts)):  # the parts of children that failed, or that no child could be made for
        if j not in done:
            done[j] = _run_part(fn, parts[j])
    return [r for j in range(len(parts)) for r in done[j]]


def _run_part(fn: Callable[[T], R], part: Sequence[T]) -> list[R]:
    return [fn(i) for i in part]


_MAX_QUEUED = 1 << 18  # indices a queue may hold (1 MiB: Linux's usual pipe-max-size)


def _map_queued(fn: Callable[[T], R], items: Sequence[T], n_jobs: int) -> list[R] | None:
    """:func:`map_forked` without ``received``: every process takes the next index from a shared pipe.

    None where the indices do not fit in a pipe (too many, or the system keeps pipes small:
    they are written before anyone reads, so they must fit whole) or no pipe can be had.
    """
    if len(items) > _MAX_QUEUED:
        return None
    indices = np.arange(len(items), dtype="<i4").tobytes()
    fds: list[int] = []  # the queue's read and write ends, -1 once closed
    try:
        with _signals_held():  # made and recorded at once: an interrupt cannot leak them
            try:
                fds.extend(os.pipe())
            except OSError:  # out of descriptors
                return None
        queue_r, queue_w = fds
        try:
            if len(indices) > fcntl.fcntl(queue_w, fcntl.F_GETPIPE_SZ):
                fcntl.fcntl(queue_w, fcntl.F_SETPIPE_SZ, len(indices))
            os.set_blocking(queue_w, False)  # a short write means it did not fit after all
            fits = os.write(queue_w, indices) == len(indices)
        except OSError:  # F_SETPIPE_SZ refused (over pipe-max-size, or this user's pipe quota), or a full pipe
            fits = False
        _close(fds, 1)  # every reader sees the end once the indices are taken
        if not fits:
            return None
        done: dict[int, R] = {}

        def take() -> dict[int, R]:
            out = {}
            while len(index := os.read(queue_r, 4)) == 4:
                i = int.from_bytes(index, "little")
                out[i] = fn(items[i])
            return out

        def accept(c: int, result: object) -> None:
            if result is not None:
                done.update(result)  # type: ignore[call-overload]

        _run_children([take] * (n_jobs - 1), lambda: done.update(take()), accept)
        for i in range(len(items)):  # the items a failed child had taken
            if i not in done:
                done[i] = fn(items[i])
        return [done[i] for i in range(len(items))]
    finally:
        for j in range(len(fds)):
            _close(fds, j)


def _run_children(
    work: list[Callable[[], object]],
    mine: Callable[[], None],
    accept: Callable[[int, object], None],
) -> None:
    """Fork a child for each of ``work`` (as many as can be made), run ``mine`` here, then call
    ``accept(index, its result, or None if it failed)`` for each child in turn; the work no child could be made
    for is left to the caller. No child is left behind and no descriptor left open, whatever is raised here:
    each step that makes, records or forgets a child or a descriptor runs with signals held.
    """
    children: list[list[int]] = []  # [pid, read end, index]
    try:
        for c, job in enumerate(work):
            # a Ctrl-C while a child is made could otherwise raise in the child before it is inside
            # its own guard, or leave a child no one knows of
            with _signals_held() as mask:
                child = _fork(job, mask)
                if child is not None:
                    children.append([*child, c])
            if child is None:  # no more children to be had
                break
        mine()
        while children:
            pid, read_end, c = children[0]
            payload = _read_all(read_end)
            with _signals_held():
                children.pop(0)
                os.close(read_end)
                _reap(pid)
            accept(c, _unframe(payload))
    finally:
        with _signals_held():  # a second Ctrl-C waits until every child is gone
            for pid, read_end, _ in children:  # this process raised (or was interrupted)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(pid)
                try:
                    os.close(read_end)
                except OSError:
                    pass
            children.clear()


@contextlib.contextmanager
def _signals_held() -> Iterator[set]:
    """Signals wait (are blocked in this thread) inside and are delivered on leaving; yields the mask to restore
    in a child.

    The first call changes nothing, so a Python handler that raises in it (handlers of signals
    already pending run on return from ``pthread_sigmask``) leaves nothing blocked. The mask is
    this thread's: a signal the kernel hands to a native thread that does not block it (one of
    OpenBLAS's) still has its Python handler run here at the next bytecode. A Ctrl-C landing
    so can leak a pipe's two descriptors or, rarer still, a child no one reads, which ends when
    this process does (in a storm of raising SIGALRMs: 9 pipes in 39,000 interrupted passes).
    The child itself is safe: it starts with signals blocked and Python's pending ones cleared.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        yield old
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _close(fds: list[int], j: int) -> None:
    """Close ``fds[j]`` once (marked -1), with signals held so an interrupt cannot split the two."""
    with _signals_held():
        if fds[j] >= 0:
            fd, fds[j] = fds[j], -1
            os.close(fd)


def _fork(job: Callable[[], object], mask: set) -> tuple[int, int] | None:
    """A child running ``job()`` and writing its result, pickled and framed, to a pipe: (its pid, the read end).

    Called with signals blocked; the child restores ``mask`` once it is inside its guard. None where no
    child can be made (out of file descriptors, memory or processes).
    """
    global _IN_CHILD
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except BaseException as exc:
        os.close(read_end)
        os.close(write_end)
        if isinstance(exc, OSError):  # no memory or processes left for a child
            return None
        raise
    if pid == 0:  # the child: compute, send, and never return into the caller's code
        status = 1
        try:
            _IN_CHILD = True
            os.close(read_end)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child, not a Python handler
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            payload = pickle.dumps(job(), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(len(payload).to_bytes(8, "little") + payload)
            while view:
                view = view[os.write(write_end, view) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end


def _read_all(fd: int) -> bytes:
    pieces = []
    while piece := os.read(fd, 1 << 20):
        pieces.append(piece)
    return b"".join(pieces)


def _unframe(payload: bytes) -> object:
    """A child's result from its framed payload; None where it did not send all of it (it failed)."""
    if len(payload) < 8 or int.from_bytes(payload[:8], "little") != len(payload) - 8:
        return None
    return pickle.loads(payload[8:])


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped already (SIGCHLD ignored, or a handler that reaps)
        pass
