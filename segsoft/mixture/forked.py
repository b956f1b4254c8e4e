"""Parts of a chunked pass in forked child processes: more cores for numpy code that threads cannot share.

An EM pass is about a dozen numpy calls a chunk, each some tens of microseconds long.
Threads running them hand the GIL back and forth at every call: on the 2-core machine two
threads ran a pass at 0.8-1.1x the speed of one (each BLAS call and ufunc alone scaled to
1.9x), while two processes ran the same pass at 1.8-1.9x. A child made by ``fork`` shares
the rows copy-on-write (they are only read, so nothing is copied) and sends back only its
per-chunk sums, a few hundred bytes a chunk.

Forking is used only where it is safe and pays: on Linux, in a process with no other
Python thread (a thread holding a lock at the moment of the fork could leave it locked in
the child: a Dask worker, a picture writer), for passes of at least :data:`FORK_MIN_ROWS`
rows (a fork costs a few milliseconds). Elsewhere the callers use threads.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
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

    Without ``received``, the items are handed out one at a time from a queue (the indices
    in a pipe, whose small reads are atomic), so a process the machine runs faster takes
    more of them. A child's writes to this process's arrays are lost: a task that fills an
    output writes, where :func:`in_child` is true, to a :func:`shared_array` instead, and
    then each process takes one run of consecutive items (:func:`split`) and
    ``received(part)`` (called here for each part a child did, once its results are in)
    copies them over.

    Examples
    --------
    >>> map_forked(lambda i: i * i, range(6), 2) == [i * i for i in range(6)]
    True
    """
    n_jobs = max(1, min(n_jobs, len(items)))
    if received is None and len(items) <= _MAX_QUEUED:
        return _map_queued(fn, items, n_jobs)
    parts = split(items, n_jobs)
    done: dict[int, list[R]] = {}

    def child_part(j: int) -> Callable[[], list[R]]:
        return lambda: [fn(i) for i in parts[j]]

    def accept(j: int, result: list[R] | None) -> None:
        if result is None:  # the child failed: its part is done here
            done[j] = [fn(i) for i in parts[j]]
            return
        done[j] = result
        if received is not None:
            received(parts[j])

    def mine(here: list[int]) -> None:
        for j in here:
            done[j] = [fn(i) for i in parts[j]]

    _run_children([child_part(j) for j in range(1, len(parts))], mine, lambda c, r: accept(c + 1, r), offset=1)
    return [r for j in range(len(parts)) for r in done[j]]


_MAX_QUEUED = 16_000  # 4-byte indices in a pipe's default 64 KiB, written before anyone reads


def _map_queued(fn: Callable[[T], R], items: Sequence[T], n_jobs: int) -> list[R]:
    """:func:`map_forked` without ``received``: every process takes the next index from a shared pipe."""
    queue_r, queue_w = os.pipe()
    try:
        try:
            os.write(queue_w, np.arange(len(items), dtype="<i4").tobytes())
        finally:
            os.close(queue_w)  # every reader sees the end once the indices are taken
        done: dict[int, R] = {}

        def take() -> dict[int, R]:
            out = {}
            while len(index := os.read(queue_r, 4)) == 4:
                i = int.from_bytes(index, "little")
                out[i] = fn(items[i])
            return out

        def mine(here: list[int]) -> None:
            done.update(take())

        def accept(c: int, result: dict[int, R] | None) -> None:
            if result is not None:
                done.update(result)

        _run_children([take] * (n_jobs - 1), mine, accept, offset=0)
        for i in range(len(items)):  # the items of a child that failed
            if i not in done:
                done[i] = fn(items[i])
        return [done[i] for i in range(len(items))]
    finally:
        os.close(queue_r)


def _run_children(
    work: list[Callable[[], object]],
    mine: Callable[[list[int]], None],
    accept: Callable[[int, object], None],
    offset: int,
) -> None:
    """Fork a child for each of ``work``, run ``mine`` (given the indices, plus ``offset``, of the work no child
    could be made for: this process does it), then ``accept(index, result or None)`` for each child in turn.
    Leaves no child behind, whatever is raised."""
    children: list[list] = []  # [pid, read end (-1 once a file object owns it), index]
    try:
        here = [0] if offset else []
        for c, job in enumerate(work):
            child = _fork(job)
            if child is None:  # no more children to be had: this process does the rest
                here.extend(range(c + offset, len(work) + offset))
                break
            children.append([*child, c])
        mine(here)
        while children:
            pid, read_end, c = children[0]
            pipe = os.fdopen(read_end, "rb")
            children[0][1] = -1
            with pipe:
                payload = pipe.read()
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            accept(c, pickle.loads(payload) if status == 0 else None)
    finally:
        for pid, read_end, _ in children:  # this process raised (or was interrupted): leave no child behind
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
            if read_end >= 0:
                os.close(read_end)


def _fork(job: Callable[[], object]) -> tuple[int, int] | None:
    """A child running ``job()`` and writing its result, pickled, to a pipe: (its pid, the read end).

    None where no child can be made (out of file descriptors, memory or processes).
    """
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: compute, send, and never return into the caller's code
        global _IN_CHILD
        _IN_CHILD = True
        status = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child, not a handler
            payload = pickle.dumps(job(), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end
