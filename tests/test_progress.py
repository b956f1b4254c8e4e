"""Live progress: ``run``'s status line and the batch bar, under a real pseudo-terminal.

The real ``segsoft`` command runs as a subprocess with a pty as its stderr (a
terminal, as a user has one), then with ``--quiet`` and with a pipe, where
nothing may be drawn. The library side is checked directly: ``segment()``'s
stage and iteration callbacks, the header-read pixel counts a batch announces,
and the bar's pixel-weighted ETA.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft.batch import SegmentOptions, _header_pixels, _pixel_weights, run_batch

pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _picture(path: Path, h: int, w: int, seed: int = 0) -> Path:
    """A tiny photo: three flat colours plus noise, so EM has a few iterations to do."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((h, w, 3), np.float64)
    rgb[:, : w // 3] = (200, 40, 30)
    rgb[:, w // 3 : 2 * w // 3] = (20, 90, 200)
    rgb[:, 2 * w // 3 :] = (240, 230, 60)
    rgb += rng.normal(0, 12, rgb.shape)
    PILImage.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(TERM="xterm", COLUMNS="120", LINES="40")
    return env


def _on_pty(*args: str) -> tuple[int, str, str]:
    """Run segsoft with a pty as stderr; (exit code, what the terminal got without escapes, stdout)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "segsoft", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=_env(),
    )
    os.close(slave)  # the child holds the only copy: its exit ends our reads
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    screen = b"".join(chunks).decode("utf-8", "replace")
    return proc.returncode, ANSI.sub("", screen), out.decode()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return _picture(tmp_path_factory.mktemp("progress") / "photo.png", 24, 30)


# ----------------------------------------------------------------------------- run's status line


def test_run_shows_each_stage_and_the_iterations_on_a_terminal(photo, tmp_path):
    code, screen, out = _on_pty("run", photo, "-k", "3", "-o", tmp_path)
    assert code == 0, screen
    for text in ("photo.png: reading", "features", "memberships", "writing pictures"):
        assert text in screen, screen
    fitting = re.search(r"fitting: iteration (\d+), log-likelihood (-?\d+\.\d{4})", screen)
    assert fitting is not None, screen
    assert screen.index("reading") < screen.index("fitting") < screen.index("memberships") < screen.index("writing")
    # the summary on stdout is untouched by the status line
    assert out.splitlines()[0].startswith("image") and "\x1b" not in out
    assert (tmp_path / "photo" / "model.json").is_file()


def test_with_smoothing_the_status_line_names_the_objective_it_climbs(photo, tmp_path):
    code, screen, out = _on_pty("run", photo, "-k", "3", "--smooth", "1", "-o", tmp_path)
    assert code == 0, screen
    assert re.search(r"fitting: iteration \d+, smoothed objective -?\d+\.\d{4}", screen), screen
    assert "iteration 1, log-likelihood" not in screen
    assert any(line.startswith("log-likelihood") for line in out.splitlines())  # the summary's is the plain one


def test_status_line_names_the_fuzzy_c_means_score():
    import io

    from rich.console import Console

    from segsoft.cli import _StatusLine

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    with _StatusLine(False, "photo.png", "score (-J)", console=console) as status:
        status.stage("fitting")
        status.iteration(1, -0.25)  # the first iteration of a stage is drawn at once
        status.iteration(2, -0.125)  # later ones at most every 0.1 s: this one may not be
    text = ANSI.sub("", screen.getvalue())
    assert "photo.png: fitting..." in text and "photo.png: fitting: iteration 1, score (-J) -0.2500" in text
    # quiet: nothing at all
    quiet = io.StringIO()
    with _StatusLine(True, "photo.png", console=Console(file=quiet, force_terminal=True)) as status:
        status.stage("reading")
        status.iteration(1, -1.0)
    assert quiet.getvalue() == ""


def test_status_line_stays_one_line_on_a_narrow_terminal():
    import io

    from rich.console import Console

    from segsoft.cli import _StatusLine

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=30, color_system=None)
    with _StatusLine(False, "photo.png", console=console) as status:
        status.stage("writing pictures to /a/long/output/folder/that/would/wrap/photo")
    # one line, cut: the only newline is the one the live display ends with (a wrapped line has more)
    assert "photo.png: writing picture…" in screen.getvalue() and screen.getvalue().count("\n") == 1


def test_run_is_silent_with_quiet_and_through_a_pipe(photo, tmp_path):
    piped = subprocess.Popen(  # meanwhile: the two runs are independent
        [sys.executable, "-m", "segsoft", "run", str(photo), "-k", "3", "-o", str(tmp_path / "p")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    code, screen, out = _on_pty("run", photo, "-k", "3", "-q", "-o", tmp_path / "q")
    assert code == 0 and out == ""
    assert screen.strip() == "", screen  # not even an escape sequence worth of text
    stdout, stderr = piped.communicate(timeout=120)
    assert piped.returncode == 0 and stderr == b""  # no status, no escape codes in a log file
    assert stdout.decode().startswith("image")


def test_run_status_is_gone_before_an_error_line(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code, screen, _ = _on_pty("run", bad, "-o", tmp_path / "o")
    assert code == 1
    lines = [line.strip() for line in screen.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("segsoft: error: ") and "notes.png" in lines[-1], screen


# ----------------------------------------------------------------------------- the library's callbacks


def test_segment_reports_its_stages_in_order(photo):
    stages: list[str] = []
    iterations: list[tuple[int, float]] = []
    segsoft.segment(photo, k=3, on_stage=stages.append, progress=lambda i, ll: iterations.append((i, ll)))
    assert stages == ["reading", "features", "fitting", "memberships"]
    assert [i for i, _ in iterations] == list(range(1, len(iterations) + 1))
    # the exact fit on distinct colours (--sample 0) goes through the same stages
    exact: list[str] = []
    segsoft.segment(photo, k=3, sample=0, on_stage=exact.append)
    assert exact == ["reading", "features", "fitting", "memberships"]


def test_segment_auto_reports_each_candidate_k(photo):
    stages: list[str] = []
    seg = segsoft.segment(photo, k="auto", k_range=(2, 4), on_stage=stages.append)
    assert stages[:2] == ["reading", "features"] and stages[-1] == "memberships"
    assert stages[2:-1] == ["fitting k=2 (1 of 3)", "fitting k=3 (2 of 3)", "fitting k=4 (3 of 3)"]
    assert 2 <= seg.k <= 4


# ----------------------------------------------------------------------------- the batch bar


def test_batch_bar_shows_before_the_first_image_finishes(tmp_path):
    first = _picture(tmp_path / "a.png", 24, 30, seed=1)
    second = _picture(tmp_path / "b.png", 12, 15, seed=2)
    code, screen, out = _on_pty("batch", first, second, "-k", "3", "-j", "1", "-o", tmp_path / "o")
    assert code == 0, screen
    # the bar is drawn at the start, at 0 of 2, before any image is done (it used to appear at 1/2)
    start = re.search(r"segmenting .*? 0/2 0 failed", screen)
    assert start is not None, screen
    # (later frames come at the bar's own refresh rate; the last one is drawn when it stops)
    assert start.start() < screen.rindex("segmenting") and "2/2 0 failed" in screen[start.end() :]
    assert out.startswith("2 images: 2 ok")


def test_batch_bar_absent_through_a_pipe(tmp_path):
    # --quiet turns the bar off the same way (rich's disable=), checked by run's test above
    image = _picture(tmp_path / "a.png", 12, 15)
    piped = subprocess.run(
        [sys.executable, "-m", "segsoft", "batch", str(image), "-k", "2", "-j", "1", "-o", str(tmp_path / "p")],
        capture_output=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == b""
    assert piped.stdout.decode().startswith("1 image: 1 ok")


def test_batch_announces_each_image_pixels_from_its_header(tmp_path):
    small = _picture(tmp_path / "small.png", 8, 10)
    big = _picture(tmp_path / "big.png", 20, 30)
    seen: list[tuple[str, dict[str, float]]] = []
    rows: list[str] = []
    report = run_batch(
        [small, big],
        tmp_path / "out",
        SegmentOptions(k=2),
        jobs=1,
        on_start=lambda stage, weights: seen.append((stage, weights)),
        progress=lambda done, total, row: rows.append(row.path),
    )
    assert report.count("ok") == 2
    assert seen == [("segmenting", {str(small): 80.0, str(big): 600.0})]
    assert sorted(rows) == sorted(seen[0][1])  # every row's path is a key of the weights


def test_header_pixels_without_decoding(tmp_path):
    import tifffile

    png = _picture(tmp_path / "a.png", 6, 7)
    assert _header_pixels(png) == (42, png.stat().st_size)
    tif = tmp_path / "bands.tif"
    tifffile.imwrite(tif, np.zeros((5, 9, 11), np.float32), metadata={"axes": "CYX"})  # Pillow refuses this
    assert _header_pixels(tif)[0] == 99
    array = tmp_path / "cube.npy"
    np.save(array, np.zeros((4, 13, 17), np.float32))  # bands first: still 13 x 17 pixels
    assert _header_pixels(array)[0] == 221
    text = tmp_path / "notes.png"
    text.write_text("no image here")
    assert _header_pixels(text) == (None, text.stat().st_size)
    assert _header_pixels(tmp_path / "missing.png") == (None, 0)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.png"
        os.mkfifo(fifo)
        assert _header_pixels(fifo) == (None, 0)  # not opened: reading a FIFO would wait forever
    # a file without a header is weighed by its size at the others' pixels per byte
    weights = _pixel_weights({"a": (1000, 500), "b": (None, 250)})
    assert weights == {"a": 1000.0, "b": 500.0}


def test_bar_eta_is_weighted_by_pixels():
    from segsoft.cli import _ProgressBar

    clock = [0.0]
    bar = _ProgressBar(quiet=True)  # disabled display; the tasks and their ETA work the same
    bar.progress.get_time = lambda: clock[0]
    with bar:
        bar.start("segmenting", {"a.png": 100.0, "b.png": 100.0, "huge.png": 800.0})
        task = bar.progress.tasks[-1]
        assert task.total == 1000.0 and task.fields["count"] == 3
        for t, name in ((1.0, "a.png"), (2.0, "b.png")):
            clock[0] = t
            bar.update(int(t), 3, SimpleNamespace(path=name, status="ok"))
        task = bar.progress.tasks[-1]
        # 100 pixels a second, 800 left: 8 s (counting images would say 1 s)
        assert task.completed == 200.0 and task.fields["done"] == 2
        assert task.time_remaining == pytest.approx(8.0)
        clock[0] = 10.0
        bar.update(3, 3, SimpleNamespace(path="huge.png", status="failed"))
        task = bar.progress.tasks[-1]
        assert task.finished and task.fields["failed"] == 1


def test_bar_counts_skipped_images_without_faking_speed():
    from segsoft.cli import _ProgressBar

    clock = [0.0]
    bar = _ProgressBar(quiet=True)
    bar.progress.get_time = lambda: clock[0]
    weights = {"old1.png": 500.0, "old2.png": 500.0, "new.png": 100.0, "next.png": 100.0, "rest.png": 300.0}
    with bar:
        bar.start("segmenting", weights)
        for done, (t, name, status) in enumerate(
            (
                (0.01, "old1.png", "skipped"),
                (0.02, "old2.png", "skipped"),
                (1.0, "new.png", "ok"),
                (2.0, "next.png", "ok"),
            ),
            start=1,
        ):
            clock[0] = t
            bar.update(done, 5, SimpleNamespace(path=name, status=status))
        task = bar.progress.tasks[-1]
        assert task.completed == 1200.0 and task.fields["done"] == 4
        # the skipped 1000 pixels took no time: 100 pixels a second, 300 left (with them: under a second)
        assert task.time_remaining == pytest.approx(3.0)
