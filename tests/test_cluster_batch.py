"""segsoft batch and apply on Dask (--scheduler local|threads|ADDRESS): the process pool's outputs, byte for byte.

One LocalCluster (2 worker processes on 127.0.0.1) serves the module; the
library calls reach it by its address, the CLI test starts its own with
``--scheduler local``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

try:
    import distributed
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("distributed is not installed (pip install 'segsoft[dask]')", allow_module_level=True)

from segsoft import batch as batch_module
from segsoft.batch import SegmentOptions, apply_batch, run_batch
from segsoft.report import report_rows

OPTS = SegmentOptions(k=2)
DIE_DIR = "SEGSOFT_TEST_DIE_DIR"  # read by _dying_segment on the workers (inherited when they start)


def photo(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.empty((size, size + 8, 3), dtype=np.int32)
    a[:, : size // 2] = (190 + seed % 40, 40, 30)
    a[:, size // 2 :] = (30, 60, 170 + seed % 50)
    a += rng.integers(-25, 25, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def make_images(root: Path, names=("a.png", "sub/b.png", "sub/c.jpg", "d.png", "e.png")) -> Path:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(photo(i + 1)).save(path)
    (root / "bad.png").write_text("not a picture\n")
    return root


def files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_outputs(pool: Path, other: Path) -> None:
    """Every file byte-identical, but model.json's created/timings and summary.csv's seconds."""
    a, b = files(pool), files(other)
    assert a.keys() == b.keys()
    for name, path in a.items():
        if path.name in ("model.json", "shared_model.json"):
            ja, jb = json.loads(path.read_text()), json.loads(b[name].read_text())
            for record in (ja, jb):
                record.pop("created", None)
                record.pop("timings", None)
            assert ja == jb, name
        elif path.name == "summary.csv":
            rows = []
            for p in (path, b[name]):
                table = list(csv.DictReader(p.open()))
                for row in table:
                    row.pop("seconds")
                rows.append(table)
            assert rows[0] == rows[1]
        elif path.name == "report.html":  # its times differ; the rows it shows must not
            shown = [report_rows(p.parent)[0] for p in (path, b[name])]
            for table in shown:
                for row in table:
                    row.pop("seconds")
            assert shown[0] == shown[1]
        else:
            assert path.read_bytes() == b[name].read_bytes(), name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-worker LocalCluster on 127.0.0.1; the workers see DIE_DIR (for the killed-worker tests)."""
    import logging

    die = tmp_path_factory.mktemp("die")
    os.environ[DIE_DIR] = str(die)  # kept while the cluster lives: a restarted worker inherits it too
    c = None
    try:
        c = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
        )
        c.die_dir = die
        yield c
    finally:
        if c is not None:
            c.close(timeout=20)
        del os.environ[DIE_DIR]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def pool_outputs(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "out"
    report = run_batch([images], out, OPTS, recursive=True, jobs=2)
    assert report.count("ok") == 5 and report.count("failed") == 1
    return out


# ----------------------------------------------------------------------------- the same bytes


def test_cluster_batch_byte_identical_to_pool(images, pool_outputs, cluster, tmp_path):
    out = tmp_path / "cluster"
    report = run_batch([images], out, OPTS, recursive=True, jobs=2, scheduler=cluster.scheduler_address)
    assert [r.status for r in report.rows].count("ok") == 5
    assert [r.error.startswith("not an image") for r in report.failed] == [True]
    assert_same_outputs(pool_outputs, out)


def test_threads_batch_byte_identical_to_pool(images, pool_outputs, tmp_path):
    out = tmp_path / "threads"
    report = run_batch([images], out, OPTS, recursive=True, jobs=2, scheduler="threads")
    assert report.count("ok") == 5
    assert_same_outputs(pool_outputs, out)


def test_apply_on_cluster_byte_identical_to_pool(images, pool_outputs, cluster, tmp_path):
    model = pool_outputs / "a" / "model.json"
    pool = apply_batch(model, [images], tmp_path / "pool", recursive=True, jobs=2)
    dask = apply_batch(model, [images], tmp_path / "dask", recursive=True, scheduler=cluster.scheduler_address)
    assert pool.count("ok") == dask.count("ok") == 5
    assert_same_outputs(tmp_path / "pool", tmp_path / "dask")


def test_skip_existing_after_cluster_batch(images, cluster, tmp_path):
    out = tmp_path / "out"
    first = run_batch([images], out, OPTS, recursive=True, scheduler=cluster.scheduler_address)
    assert first.count("ok") == 5
    seen = []
    again = run_batch(
        [images],
        out,
        OPTS,
        recursive=True,
        skip_existing=True,
        scheduler=cluster.scheduler_address,
        progress=lambda done, total, row: seen.append((done, total, row.status)),
    )
    assert again.count("skipped") == 5 and again.count("ok") == 0 and again.count("failed") == 1
    assert [s[0] for s in seen] == list(range(1, 7)) and {s[1] for s in seen} == {6}


def test_shared_model_on_cluster_same_as_pool(images, cluster, tmp_path):
    opts = SegmentOptions(k=2, sample=500)
    pool = run_batch([images], tmp_path / "pool", opts, recursive=True, jobs=2, shared_model=True)
    sampled = []
    dask = run_batch(
        [images],
        tmp_path / "dask",
        opts,
        recursive=True,
        shared_model=True,
        scheduler=cluster.scheduler_address,
        progress=lambda done, total, row: sampled.append(row is None),
    )
    assert pool.count("ok") == dask.count("ok") == 5
    assert sampled.count(True) == 6  # the sampling pass reported each image
    a = json.loads((tmp_path / "pool" / "shared_model.json").read_text())
    b = json.loads((tmp_path / "dask" / "shared_model.json").read_text())
    assert a["model"] == b["model"] and a["shared"]["images"] != [] and b.keys() == a.keys()
    assert_same_outputs(tmp_path / "pool", tmp_path / "dask")


# ----------------------------------------------------------------------------- a worker that dies


def _dying_segment(path, folder, page, opts):
    """``_segment_task``, but the first attempt at an image named ``victim*`` (or every attempt at
    ``doomed*``) kills its worker process while it writes model.json, after the pictures."""
    name = Path(path).name
    marker = Path(os.environ[DIE_DIR]) / f"died-{name}"
    if name.startswith("doomed") or (name.startswith("victim") and not marker.exists()):
        from segsoft import outputs

        def die(record, target):
            marker.touch()
            Path(target).with_name(".model.0123abcd.tmp.json").write_text('{"half": ')
            os._exit(1)

        outputs._write_json = die  # in this worker process only: it dies
    return _SEGMENT_TASK(path, folder, page, opts)


_SEGMENT_TASK = batch_module._segment_task  # the real one (this module pickles by name: workers import it)


def _patch_tasks(monkeypatch):
    monkeypatch.setattr(batch_module, "_segment_task", _dying_segment)


def test_worker_killed_mid_image_costs_a_retry(cluster, pool_outputs, tmp_path, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ("victim.png", "x.png", "y.png"))
    (src / "bad.png").unlink()
    _patch_tasks(monkeypatch)
    out = tmp_path / "out"
    report = run_batch([src], out, OPTS, scheduler=cluster.scheduler_address)
    assert (cluster.die_dir / "died-victim.png").exists()  # the worker did die on it
    assert [(Path(r.path).name, r.status) for r in report.rows] == [
        ("victim.png", "ok"),
        ("x.png", "ok"),
        ("y.png", "ok"),
    ]
    folder = files(out / "victim")
    assert not [n for n in folder if n.startswith(".")], folder  # no temporary file left behind
    # the same picture as a.png of the pool run (photo(1)): byte for byte
    assert (out / "victim" / "overlay.png").read_bytes() == (pool_outputs / "a" / "overlay.png").read_bytes()
    assert sorted(folder) == sorted(n.split("/", 1)[1] for n in files(pool_outputs) if n.startswith("a/"))


def test_worker_dying_every_time_fails_its_image_only(cluster, tmp_path, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ("doomed.png", "x.png"))
    (src / "bad.png").unlink()
    _patch_tasks(monkeypatch)
    before = cluster.scheduler.allowed_failures
    cluster.scheduler.allowed_failures = 0  # the first death is final (default: 3 retries)
    try:
        report = run_batch([src], tmp_path / "out", OPTS, scheduler=cluster.scheduler_address)
    finally:
        cluster.scheduler.allowed_failures = before
    rows = {Path(r.path).name: r for r in report.rows}
    assert rows["x.png"].status == "ok", rows
    assert rows["doomed.png"].status == "failed"
    assert rows["doomed.png"].error.startswith("the worker process died on this image")
    assert not (tmp_path / "out" / "doomed" / "model.json").exists()
    assert not [p for p in (tmp_path / "out" / "doomed").iterdir() if p.name.startswith(".")]


def _in_chunks_of_three(monkeypatch) -> list[list[list[int]]]:
    """Six images on two worker threads in tasks of three (small batches are one image a task)."""
    from segsoft.cluster import client as client_module

    seen: list[list[list[int]]] = []
    real = client_module.chunks

    def spy(sizes, threads):
        groups = real(sizes, threads)
        seen.append(groups)
        return groups

    monkeypatch.setattr(client_module, "CHUNK_TASKS_PER_THREAD", 1)
    monkeypatch.setattr(client_module, "CHUNK_IMAGES", 3)  # also while a killed worker restarts (one thread)
    monkeypatch.setattr(client_module, "chunks", spy)
    return seen


def test_small_images_in_chunks_byte_identical_to_pool(images, pool_outputs, cluster, tmp_path, monkeypatch):
    seen = _in_chunks_of_three(monkeypatch)
    progress = []
    out = tmp_path / "chunks"
    report = run_batch(
        [images],
        out,
        OPTS,
        recursive=True,
        scheduler=cluster.scheduler_address,
        progress=lambda done, total, row: progress.append((done, total)),
    )
    assert seen == [[[0, 1, 2], [3, 4, 5]]]  # the six images (bad.png too) as two tasks
    assert report.count("ok") == 5 and [r.error.startswith("not an image") for r in report.failed] == [True]
    assert progress == [(i, 6) for i in range(1, 7)]  # still one step per image
    assert_same_outputs(pool_outputs, out)


def test_worker_killed_in_a_chunk_loses_no_image(cluster, pool_outputs, tmp_path, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ("victim.png", "u.png", "v.png", "w.png", "x.png", "y.png"))
    (src / "bad.png").unlink()
    _patch_tasks(monkeypatch)
    seen = _in_chunks_of_three(monkeypatch)
    out = tmp_path / "out"
    report = run_batch([src], out, OPTS, scheduler=cluster.scheduler_address)
    assert (cluster.die_dir / "died-victim.png").exists()  # its worker died, and took u and v down with it
    assert [len(g) for g in seen[0]] == [3, 3]
    assert [(Path(r.path).name, r.status) for r in report.rows] == [
        (n, "ok") for n in ("u.png", "v.png", "victim.png", "w.png", "x.png", "y.png")
    ]
    for name in ("u", "v", "victim"):
        assert (out / name / "model.json").is_file()
        assert not [n for n in files(out / name) if n.startswith(".")]  # no temporary file left behind
    assert (out / "victim" / "overlay.png").read_bytes() == (pool_outputs / "a" / "overlay.png").read_bytes()


def test_chunk_dying_every_time_fails_its_culprit_only(cluster, tmp_path, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ("doomed.png", "x.png", "y.png", "z1.png", "z2.png", "z3.png"))
    (src / "bad.png").unlink()
    _patch_tasks(monkeypatch)
    _in_chunks_of_three(monkeypatch)
    before = cluster.scheduler.allowed_failures
    cluster.scheduler.allowed_failures = 0  # the first death is final: the chunk comes back as KilledWorker
    try:
        report = run_batch([src], tmp_path / "out", OPTS, scheduler=cluster.scheduler_address)
    finally:
        cluster.scheduler.allowed_failures = before
    rows = {Path(r.path).name: r for r in report.rows}
    assert len(rows) == 6
    # doomed.png's chunk mates were run again, alone: only doomed.png fails
    assert {n: r.status for n, r in rows.items() if n != "doomed.png"} == dict.fromkeys(
        ("x.png", "y.png", "z1.png", "z2.png", "z3.png"), "ok"
    )
    assert rows["doomed.png"].status == "failed"
    assert rows["doomed.png"].error.startswith("the worker process died on this image")
    assert not (tmp_path / "out" / "doomed" / "model.json").exists()


def test_chunks_group_small_images_in_input_order():
    from segsoft.cluster.client import CHUNK_IMAGES, CHUNK_PIXELS, chunks

    groups = chunks([96 * 96] * 1000, threads=2)
    assert [i for g in groups for i in g] == list(range(1000))  # every image once, in order
    assert {len(g) for g in groups[:-1]} == {CHUNK_PIXELS // (96 * 96)}
    assert chunks([4e6, 10, 10, 4e6], threads=1) == [[0], [1], [2], [3]]  # too few for one task of two
    big = chunks([4e6] + [10] * 100, threads=1)
    assert big[0] == [0] and max(len(g) for g in big) == CHUNK_IMAGES
    assert chunks([10] * 5, threads=2) == [[0], [1], [2], [3], [4]]  # a short batch: one image a task


def _trim_threshold() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.parametrize("reuse", [True, False])
def test_batch_workers_keep_freed_memory_for_the_next_image(reuse, monkeypatch):
    # distributed starts its workers with MALLOC_TRIM_THRESHOLD_=65536: a task thread's freed arrays go
    # back to the kernel and fault in again (1.7 x the CPU time of a 96 x 96 image); a batch's don't
    from segsoft.cluster import client as client_module
    from segsoft.cluster.client import Executor

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setattr(client_module, "_TRIM_USER", None)
    before = dict(os.environ)
    with Executor("local", 1, reuse_memory=reuse) as ex:
        ex._start_local()
        assert dict(os.environ) == before  # the nanny's variables did not leak into this process
        (value,) = ex.client.run(_trim_threshold).values()
    assert value == (None if reuse else "65536")


# ----------------------------------------------------------------------------- the command line


def segsoft_cli(*args, code: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "segsoft", *map(str, args)]
    if code is not None:
        argv = [
            sys.executable,
            "-c",
            f"{code}\nimport sys\nfrom segsoft.cli import entry\nsys.argv = {argv[2:]!r}\nentry()",
        ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


def test_cli_batch_local_cluster_and_apply_threads(images, pool_outputs, tmp_path):
    out = tmp_path / "out"
    done = segsoft_cli("batch", images, "-r", "-k", "2", "-o", out, "--scheduler", "local", "-j", "2")
    assert done.returncode == 1, done.stderr  # bad.png
    assert "6 images: 5 ok, 0 skipped, 1 failed" in done.stdout
    assert [
        line.startswith(f"segsoft: error: {images / 'bad.png'}: not an image")
        for line in done.stderr.strip().splitlines()
    ] == [True], done.stderr
    assert_same_outputs(pool_outputs, out)
    applied = segsoft_cli(
        "apply", out / "a" / "model.json", images / "sub", "-o", tmp_path / "applied", "--scheduler", "threads", "-q"
    )
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "applied" / "b" / "model.json").is_file()


def test_cli_unreachable_scheduler_one_line_fast(images, tmp_path):
    t0 = time.monotonic()
    done = segsoft_cli("batch", images, "-k", "2", "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1")
    assert time.monotonic() - t0 < 20
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "segsoft: error: --scheduler tcp://127.0.0.1:1: cannot reach the Dask scheduler ("
    ), done.stderr
    assert not (tmp_path / "out" / "a").exists()


@pytest.mark.parametrize("scheduler, hidden", [("local", "distributed"), ("threads", "dask")])
def test_cli_scheduler_without_the_extra_says_how_to_install(images, tmp_path, scheduler, hidden):
    done = segsoft_cli(
        "batch",
        images,
        "-k",
        "2",
        "-o",
        tmp_path / "out",
        "--scheduler",
        scheduler,
        code=f"import sys; sys.modules[{hidden!r}] = None",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "segsoft: error: --scheduler needs the dask extra: pip install 'segsoft[dask]'"
    ]


def test_cli_bad_scheduler_value(images, tmp_path):
    done = segsoft_cli("apply", tmp_path / "m.json", images, "--scheduler", "nowhere")
    assert done.returncode == 1
    assert "--scheduler must be local, threads or a Dask scheduler address" in done.stderr


def test_an_image_on_a_scheduler_thread_gets_one_core():
    # a Dask worker or the threaded scheduler runs one image per thread, as the pool runs one
    # per process: each image on every core would oversubscribe them (50 % slower measured)
    import threading

    from segsoft.cluster.client import _run, _threaded

    assert batch_module._task_jobs() is None  # the driver's own thread: every core
    got = dict(_threaded(lambda: batch_module._task_jobs(), [(), ()], 2, set()))
    assert got == {0: 1, 1: 1}
    seen = []
    t = threading.Thread(target=lambda: seen.append(_run(batch_module._task_jobs)))
    t.start()
    t.join()
    assert seen == [1]
    assert batch_module._task_jobs() is None


def _worker_state() -> tuple[list[str], bool]:
    import signal

    from segsoft.cluster.client import WORKER_IMPORTS

    return [m for m in WORKER_IMPORTS if m in sys.modules], signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_workers_import_zarr_before_any_task_and_keep_their_ctrl_c(cluster):
    # zarr's package import races with itself when a task's pickled zarr.Array is unpickled in the
    # worker's event loop while a reader imports zarr in the task thread (seen in CI: "cannot import
    # name ... from partially initialized module 'zarr.core.array'"); connecting imports it first
    from segsoft.cluster.client import WORKER_IMPORTS, Executor

    with Executor(cluster.scheduler_address) as ex:
        ex.client.wait_for_workers(2, timeout=60)  # one may be restarting after a killed-worker test
        states = ex.client.run(_worker_state)
    assert len(states) == 2
    for imported, ignores_ctrl_c in states.values():
        assert imported == list(WORKER_IMPORTS)
        assert not ignores_ctrl_c  # a cluster at an address belongs to whoever started it
