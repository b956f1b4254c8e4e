"""``--scheduler local|threads|ADDRESS``: where a batch's per-image tasks run.

``local`` starts a :class:`distributed.LocalCluster` of worker processes on
this machine (one thread each, on 127.0.0.1, no dashboard, quiet) for the
length of the batch; ``threads`` runs the tasks in threads of this process on
dask's threaded scheduler (no cluster); an address such as
``tcp://host:8786`` connects to a running cluster (``dask scheduler``,
``dask worker tcp://host:8786``). :class:`Executor` holds that for one batch
and runs tasks with the contract of ``segsoft.batch._execute``: results come
back in completion order, a task that raises comes back as its exception, and
a task whose worker died is run again elsewhere (distributed reschedules the
tasks of a dead worker up to ``distributed.scheduler.allowed-failures``
times). A task that still fails that way, or a task of several images that
fails as a whole, has its images run again one at a time with nothing else
running, as the process pool retries its suspects: only an image that kills
its worker even alone comes back as :class:`WorkerDied`. Small images go
several to a task (:func:`chunks`), so that a task's fixed cost (the round
trip through the scheduler, the result fetched) is paid once for them.

The task functions are module-level functions of :mod:`segsoft.batch`; they
pickle by name, so every worker must have segsoft installed (the same
version). Every task thread runs with BLAS/OpenMP limited to one thread, as
the process pool's workers do: one task per core already, and the same
single-threaded arithmetic keeps the outputs byte-identical to the pool's.

dask and distributed are imported only here and only when a scheduler is used.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from typing import Any

from ..errors import SegsoftError

__all__ = ["CONNECT_TIMEOUT", "MISSING_EXTRA", "Executor", "WorkerDied", "check_scheduler", "execute"]

MISSING_EXTRA = "--scheduler needs the dask extra: pip install 'segsoft[dask]'"
CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler address before giving up
WORKER_TIMEOUT = 60.0  # seconds a scheduler may go without any worker before the batch gives up

# distributed's nannies start their workers with MALLOC_TRIM_THRESHOLD_=65536 (its default
# ``distributed.nanny.pre-spawn-environ``): glibc then hands every freed block of more than 64 KiB
# back to the kernel at once, and a task thread's next array of that size faults its pages in
# again (96 x 96 images: 14 000 page faults and 1.7 x the CPU time per image). A batch's
# workers run one image after another and reuse that memory, as the process pool's do.
_TRIM = "MALLOC_TRIM_THRESHOLD_"
_TRIM_KEY = f"distributed.nanny.pre-spawn-environ.{_TRIM}"
_TRIM_DEFAULT = 65536
_TRIM_USER = os.environ.get(_TRIM)  # the user's own setting, before any nanny wrote into os.environ
_SPAWN_ENV = (_TRIM, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_ADDRESS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_HOST_PORT = re.compile(r"[^\s/:]+:\d+")


class WorkerDied(BrokenProcessPool):
    """A task's worker process died every time it ran it (``distributed.KilledWorker``).

    A :class:`~concurrent.futures.process.BrokenProcessPool`, so the batch
    reports it as it does a dead worker of the process pool.
    """


def check_scheduler(scheduler: str) -> str:
    """The ``--scheduler`` value, checked: ``"local"``, ``"threads"`` or a scheduler address.

    A bare ``host:port`` becomes ``tcp://host:port``. Raises
    :class:`SegsoftError` for anything else, and when the dask extra is not
    installed (the message says how to install it).

    Examples
    --------
    >>> check_scheduler("127.0.0.1:8786")
    'tcp://127.0.0.1:8786'
    >>> check_scheduler("nowhere")
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: --scheduler must be local, threads or a Dask scheduler address like tcp://host:8786, got 'nowhere'
    """
    value = scheduler.strip() if isinstance(scheduler, str) else scheduler
    if value in ("local", "threads") or (isinstance(value, str) and _ADDRESS.fullmatch(value)):
        pass
    elif isinstance(value, str) and _HOST_PORT.fullmatch(value):
        value = f"tcp://{value}"
    else:
        raise SegsoftError(
            f"--scheduler must be local, threads or a Dask scheduler address like tcp://host:8786, got {scheduler!r}"
        )
    _require(value != "threads")
    return value


def _require(distributed: bool = True) -> None:
    try:
        import dask  # noqa: F401

        if distributed:
            import distributed as _  # noqa: F401
    except ImportError:
        raise SegsoftError(MISSING_EXTRA) from None


def execute(
    fn: Callable, calls: Sequence[tuple], scheduler: str, jobs: int | None, in_flight: Any
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*calls[index]))`` in completion order on ``scheduler``.

    The one-shot form of :class:`Executor` (it starts and stops its own
    cluster, whose workers keep freed memory for the next task: each task is
    one whole image); ``in_flight`` (``add``/``discard``) tracks the indices
    submitted and not yet returned.
    """
    with Executor(scheduler, jobs, reuse_memory=True) as ex:
        yield from ex.execute(fn, calls, in_flight)


class Executor:
    """One batch's scheduler: opened once, used for every pass, closed at the end.

    An address is connected to on entering (an unreachable one is a
    :class:`SegsoftError` within :data:`CONNECT_TIMEOUT`); ``local`` starts
    its cluster on the first task, so a batch with nothing to do starts none.
    ``jobs`` is the number of local worker processes (``local``) or threads
    (``threads``), default: every core; a cluster at an address uses all of
    its workers. ``reuse_memory``: a local cluster's workers keep the memory
    a task frees for the next one (glibc's own default) instead of
    distributed's ``MALLOC_TRIM_THRESHOLD_=65536``, which gives it back to
    the kernel at once; right for a batch of whole images, each task the
    size of the last. A user's own ``MALLOC_TRIM_THRESHOLD_`` (environment)
    or ``distributed.nanny.pre-spawn-environ`` setting is kept.
    """

    def __init__(self, scheduler: str, jobs: int | None = None, *, reuse_memory: bool = False):
        self.scheduler = check_scheduler(scheduler)
        if jobs is None:
            from ..batch import default_jobs

            jobs = default_jobs()
        self.jobs = max(1, int(jobs))
        self.reuse_memory = reuse_memory
        self.cluster: Any = None
        self.client: Any = None
        self._threads_cache: tuple[float, int] = (0.0, 0)

    def __enter__(self) -> Executor:  # noqa: PYI034 - Python 3.10 has no typing.Self
        if self.scheduler not in ("local", "threads"):
            self._connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(kill=exc_type is not None)

    # -- opening and closing

    def _connect(self) -> None:
        from distributed import Client

        address = self.scheduler
        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SegsoftError(f"--scheduler {address}: cannot reach the Dask scheduler ({_one_line(exc)})") from None
        except ValueError as exc:  # e.g. an unknown protocol
            raise SegsoftError(f"--scheduler {address}: {_one_line(exc)}") from None
        try:
            self.client.register_plugin(_worker_plugin(local=False), name="segsoft-imports")
        except BaseException:
            self.close(kill=True)
            raise

    def _start_local(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        # no dashboard to show them, logs silenced: the workers' statistical profiler, and every
        # server's event-loop watchdog 50 times a second (scheduler, nannies, workers: 4 % of a core
        # idle), would only take CPU from the images
        config: dict[str, Any] = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s"}
        if self.reuse_memory and _TRIM_USER is None and str(dask.config.get(_TRIM_KEY, None)) == str(_TRIM_DEFAULT):
            config[_TRIM_KEY] = None  # unset: glibc's own default
        # a nanny writes its workers' variables into this process's environment (and the workers
        # inherit it): the user's own value of the trim threshold, not an earlier cluster's
        _set_environ({_TRIM: _TRIM_USER})
        saved = {name: os.environ.get(name) for name in _SPAWN_ENV}
        try:
            with dask.config.set(config):
                self.cluster = LocalCluster(
                    n_workers=self.jobs,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # no dashboard, but the scheduler still serves its health routes: on a free port, not 8787
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.CRITICAL,  # a restarted worker is reported by its image's row, not a log
                )
        finally:
            _set_environ(saved)
        try:
            self.client = Client(self.cluster, set_as_default=False)
            self.client.register_plugin(_worker_plugin(local=True), name="segsoft-worker")
        except BaseException:
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        """Disconnect; stop a local cluster (``kill``: without waiting for the tasks running on it)."""
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            with suppress(Exception):
                client.close(timeout=2 if kill else 10)
        if cluster is not None:
            if kill:
                _kill_workers(cluster)
            with suppress(Exception):
                cluster.close(timeout=5 if kill else 30)

    # -- running tasks

    def execute(
        self, fn: Callable, calls: Sequence[tuple], in_flight: Any, sizes: Sequence[float] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*calls[index]))`` in completion order (see the module docstring).

        ``sizes``: each call's pixels (estimated), to run several small images as one task
        (see :func:`chunks`); None: one task per call.
        """
        if not calls:
            return
        if self.scheduler == "threads":
            yield from _threaded(fn, calls, min(self.jobs, len(calls)), in_flight)
            return
        if self.client is None:
            self._start_local()
        yield from self._distributed(fn, calls, in_flight, sizes)

    def _capacity(self) -> int:
        """Tasks to keep submitted: one per worker thread, so a worker that dies takes only its own task down."""
        if self.cluster is not None:
            return self.jobs
        now = time.monotonic()
        at, threads = self._threads_cache
        if now - at > 1.0:
            threads = sum(self.client.nthreads().values())
            if threads == 0:
                try:
                    self.client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
                except (TimeoutError, OSError):
                    raise SegsoftError(
                        f"--scheduler {self.scheduler}: the Dask scheduler has had no workers for "
                        f"{WORKER_TIMEOUT:.0f} s (start some with `dask worker {self.scheduler}`)"
                    ) from None
                threads = sum(self.client.nthreads().values())
            self._threads_cache = (now, threads)
        return max(1, threads)

    def _distributed(
        self, fn: Callable, calls: Sequence[tuple], in_flight: Any, sizes: Sequence[float] | None
    ) -> Iterator[tuple[int, Any]]:
        from distributed import KilledWorker, as_completed

        client = self.client
        groups = [[i] for i in range(len(calls))] if sizes is None else chunks(sizes, self._capacity())
        pending = deque(groups)
        # images of a task that failed as a whole, or whose worker died: run again one at a time with
        # nothing else running (as the process pool retries its suspects), so that only a culprit fails,
        # never an image that merely shared its task or its worker
        suspects: deque[int] = deque()
        running: dict[Any, tuple[list[int], bool]] = {}  # future: (its images, run alone)
        done = as_completed(loop=client.loop)
        tag = f"segsoft-{getattr(fn, '__name__', 'task')}-{time.time_ns():x}"
        count = 0

        def submit(group: list[int], alone: bool) -> None:
            nonlocal count
            if len(group) == 1:
                # the arguments top level, each its own piece: dask passes them through untouched
                future = client.submit(_run, fn, *calls[group[0]], key=f"{tag}-{count}", pure=False)
            else:
                future = client.submit(
                    _run_all, fn, _Calls([calls[i] for i in group]), key=f"{tag}-{count}", pure=False
                )
            count += 1
            running[future] = (group, alone)
            done.add(future)
            for i in group:
                in_flight.add(i)

        def fill() -> None:
            if suspects:
                if not running:
                    submit([suspects.popleft()], True)
                return
            capacity = self._capacity()
            while pending and len(running) < capacity:
                submit(pending.popleft(), False)

        try:
            fill()
            for future in done:
                group, alone = running.pop(future)
                died = False
                try:
                    value = future.result()
                    results = [value] if len(group) == 1 else list(value)
                except KilledWorker:
                    results, died = [WorkerDied("the worker process died on this image")], True
                except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                    results = [exc]
                future.release()
                if len(results) != len(group) or (died and not alone):
                    suspects.extend(group)
                    fill()
                    continue
                for i in group:
                    in_flight.discard(i)
                fill()  # before handing the results over, so the workers stay busy
                yield from zip(group, results)
        finally:
            if running:
                with suppress(Exception):
                    client.cancel(list(running), force=True)


#: A task of several images: at most this many pixels together (96 x 96 images: 7 a task) ...
CHUNK_PIXELS = 65536
#: ... and at most this many images,
CHUNK_IMAGES = 8
#: and at least this many tasks per worker thread, so the last tasks still spread over the workers.
CHUNK_TASKS_PER_THREAD = 4


def chunks(sizes: Sequence[float], threads: int) -> list[list[int]]:
    """The calls grouped into tasks: consecutive small images together, per-task overhead paid once.

    A Dask task costs a few milliseconds of the scheduler's, the client's and
    the worker's time (a round trip, a result fetched); a 96 x 96 image takes
    about 60 ms. Images in input order fill a task up to
    :data:`CHUNK_PIXELS` pixels and :data:`CHUNK_IMAGES` images, fewer when
    the batch is short (:data:`CHUNK_TASKS_PER_THREAD`); a larger image is a
    task of its own.

    Examples
    --------
    >>> chunks([9216] * 10, threads=1)
    [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    >>> chunks([9216] * 64 + [1e6, 10], threads=2)[-4:]
    [[56, 57, 58, 59, 60, 61, 62], [63], [64], [65]]
    """
    n = len(sizes)
    most = max(1, min(CHUNK_IMAGES, n // max(1, CHUNK_TASKS_PER_THREAD * threads)))
    groups: list[list[int]] = []
    group: list[int] = []
    pixels = 0.0
    for i, size in enumerate(sizes):
        if group and (len(group) >= most or pixels + size > CHUNK_PIXELS):
            groups.append(group)
            group, pixels = [], 0.0
        group.append(i)
        pixels += size
    if group:
        groups.append(group)
    return groups


def _set_environ(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------
# on the workers

_limited = threading.local()


def _run(fn: Callable, *args: Any) -> Any:
    """Run one task in a thread whose BLAS/OpenMP pools, and segsoft's own threads, are limited to one."""
    if not getattr(_limited, "done", False):
        with suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        from ..batch import mark_task_thread

        mark_task_thread()  # and segsoft's own threads to one: the worker's other threads run other images
        _limited.done = True
    return fn(*args)


class _Calls:
    """A task's list of calls, one opaque argument: dask does not look into it for keys or tasks."""

    def __init__(self, calls: list[tuple]):
        self.calls = calls


def _run_all(fn: Callable, calls: _Calls) -> list[Any]:
    """:func:`_run` for each call in turn; a call that raises gives its exception, as one task would."""
    results: list[Any] = []
    for args in calls.calls:
        try:
            results.append(_run(fn, *args))
        except Exception as exc:  # noqa: BLE001 - returned, as the process pool returns it
            results.append(exc)
    return results


WORKER_IMPORTS = ("zarr", "numcodecs", "tifffile", "segsoft.batch", "segsoft.cluster.large")


def warm_imports() -> None:
    """Import, once per worker process, the modules its tasks unpickle and read with.

    A worker unpickles a task in its event-loop thread while another task
    runs in a task thread. When both import zarr for the first time at once
    (a task's pickled ``zarr.Array`` and a reader's ``import zarr``), the two
    imports race and one of them sees the package half-initialised
    ("cannot import name ... from partially initialized module"). Importing
    everything before the first task removes the race.
    """
    import importlib

    for name in WORKER_IMPORTS:
        with suppress(ImportError):  # tifffile/zarr absent on a worker: its tasks say so themselves
            importlib.import_module(name)


def _worker_plugin(local: bool) -> Any:
    """A worker plugin: the imports of :func:`warm_imports` before any task (every cluster), and
    for a local cluster's workers, Ctrl-C left to the driver.

    The terminal sends Ctrl-C to every process of its group, the local
    workers included; they ignore it (as the process pool's workers do), and
    the driver stops them. Workers of a cluster at an address keep their own
    Ctrl-C: they belong to whoever started them. Distributed runs a plugin's
    ``setup`` on every worker, and on a restarted or late worker before it
    takes tasks.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class SegsoftWorker(WorkerPlugin):  # pickled by value (cloudpickle): no module of its own needed
        def __init__(self, local: bool) -> None:
            self.local = local

        def setup(self, worker: Any) -> None:
            warm_imports()
            if self.local:
                with suppress(ValueError):  # only possible in the main thread (the worker's event loop)
                    signal.signal(signal.SIGINT, signal.SIG_IGN)

    return SegsoftWorker(local)


def _kill_workers(cluster: Any) -> None:
    """Kill a local cluster's worker processes at once (Ctrl-C: their images are redone on resume)."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        with suppress(Exception):
            process = nanny.process.process  # nanny -> WorkerProcess -> AsyncProcess
            process._process.kill()


# --------------------------------------------------------------------------
# threads of this process (dask's threaded scheduler)


def _threaded(fn: Callable, calls: Sequence[tuple], jobs: int, in_flight: Any) -> Iterator[tuple[int, Any]]:
    """Run the tasks on dask's threaded scheduler with ``jobs`` threads, yielding as each finishes.

    Useful where worker processes cannot be started; the tasks share this
    process's memory and its GIL (numpy, zlib and the PNG encoder release it
    for much of an image, so ``jobs`` threads do overlap), and BLAS is
    limited to one thread while the batch runs, so ``jobs`` tasks use about
    ``jobs`` cores and the numbers are the process pool's.
    """
    import dask.threaded

    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def task(i: int) -> None:
        if stop.is_set():  # interrupted: the tasks not yet started do nothing
            return
        results.put(("start", i, None))
        from ..batch import mark_task_thread

        mark_task_thread()
        try:
            value = fn(*calls[i])
        except Exception as exc:  # noqa: BLE001 - returned, as the process pool returns it
            value = exc
        results.put(("done", i, value))

    # independent tasks run in reverse key order on dask's local scheduler: named so they start in input order
    # (only the order depends on it)
    n = len(calls)
    graph = {f"segsoft-task-{n - 1 - i:09d}": (task, i) for i in range(n)}

    def scheduler() -> None:
        try:
            dask.threaded.get(graph, list(graph), num_workers=jobs)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            results.put(("error", -1, exc))
        finally:
            results.put(("end", -1, None))

    limits: Any = None
    with suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    runner = threading.Thread(target=scheduler, name="segsoft-threads", daemon=True)
    runner.start()
    try:
        while True:
            kind, i, value = results.get()
            if kind == "start":
                in_flight.add(i)
            elif kind == "done":
                in_flight.discard(i)
                yield i, value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        # the images being written finish (threads cannot be killed); a second Ctrl-C stops waiting
        while runner.is_alive():
            runner.join(0.1)
        if limits is not None:
            limits.restore_original_limits()


@contextmanager
def dask_client(scheduler: str, jobs: int | None = None) -> Iterator[Any]:
    """The Dask client for one image's chunked passes: a LocalCluster (``local``), a running
    cluster (an address) or None with dask's threaded scheduler (``threads``); closed at the end.

    Examples
    --------
    >>> with dask_client("threads") as client:  # doctest: +SKIP
    ...     dask.compute(x)
    """
    executor = Executor(scheduler, jobs)
    with executor:
        if executor.scheduler == "threads":
            import dask

            with dask.config.set(scheduler="threads", num_workers=executor.jobs):
                yield None
            return
        if executor.client is None:
            executor._start_local()
        with executor.client.as_current():
            yield executor.client
