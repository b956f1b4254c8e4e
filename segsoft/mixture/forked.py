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
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Passes over fewer rows than this stay in one process (a fork and its reply cost about 4 ms).
FORK_MIN_ROWS = 1 << 20


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


def map_forked(fn: Callable[[T], R], items: Sequence[T], n_jobs: int) -> list[R]:
    """``[fn(i) for i in items]``, the later parts of ``items`` computed in ``n_jobs - 1`` forked children.

    The results come back in the order of ``items`` and are the values ``fn`` gives in this
    process (the children run the same code on the same memory), so the caller's sums are
    the same as without children. ``fn``'s results must pickle. A child that fails (killed,
    out of memory, an exception) has its part computed again here, so an error ``fn`` raises
    is raised here as usual. Call it only where :func:`can_fork` is true.

    Examples
    --------
    >>> map_forked(lambda i: i * i, range(6), 2) == [i * i for i in range(6)]
    True
    """
    parts = split(items, n_jobs)
    children: list[list] = []  # [pid, read end (-1 once a file object owns it), index of its part]
    here = [0]  # the parts done in this process: the first, and any no child could be made for
    try:
        for j in range(1, len(parts)):
            child = _fork(fn, parts[j])
            if child is None:
                here.extend(range(j, len(parts)))
                break
            children.append([*child, j])
        done = {j: [fn(i) for i in parts[j]] for j in here}
        while children:
            pid, read_end, j = children[0]
            pipe = os.fdopen(read_end, "rb")
            children[0][1] = -1
            with pipe:
                payload = pipe.read()
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            done[j] = pickle.loads(payload) if status == 0 else [fn(i) for i in parts[j]]
        return [r for j in range(len(parts)) for r in done[j]]
    finally:
        for pid, read_end, _ in children:  # this process raised (or was interrupted): leave no child behind
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
            if read_end >= 0:
                os.close(read_end)


def _fork(fn: Callable[[T], R], part: Sequence[T]) -> tuple[int, int] | None:
    """A child computing ``[fn(i) for i in part]`` and writing it, pickled, to a pipe: (its pid, the read end).

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
        status = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child, not a handler
            payload = pickle.dumps([fn(i) for i in part], protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end
