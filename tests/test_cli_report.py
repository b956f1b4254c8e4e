"""`segsoft report OUTPUT`: report.html written again from what an output folder holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from segsoft.outputs import LOCK_NAME, folder_lock


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for i in range(3):
        a = np.zeros((24, 32, 3), np.uint8)
        a[:, 16:] = (200, 40 + 50 * i, 30)
        a += rng.integers(0, 12, a.shape, dtype=np.uint8)
        PILImage.fromarray(a).save(src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path_factory.mktemp("out")
    done = cli("batch", src, "-k", "2", "-q", "-j", "1", "-o", out)
    assert done.returncode == 1, done.stderr  # the broken file fails, the rest go on
    return out


def _without_time(page: str) -> str:
    import re

    page = re.sub(r'<dd id="time">[^<]*</dd>', "", page)
    return re.sub(r'"([ltb])":-?[0-9.e+-]+,', "", page)  # seconds and scores: summary.csv rounds them


def test_report_rewrites_a_batch_page_from_summary_csv(batch_out):
    page = batch_out / "report.html"
    first = page.read_text()
    page.unlink()
    done = cli("report", batch_out)
    assert done.returncode == 0, done.stderr
    assert f"4 images; report {page}" in done.stdout
    again = page.read_text()
    # the same rows, failure and links; the batch's wall-clock time is not in the folder, so the
    # page says the images' summed time instead
    assert _without_time(again) == _without_time(first)
    assert "of image time" in again and "broken.png" in again
    assert not (batch_out / LOCK_NAME).exists()


def test_report_of_one_image_folder(tmp_path):
    img = tmp_path / "a.png"
    PILImage.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))).save(img)
    out = tmp_path / "o"
    assert cli("run", img, "-k", "2", "-q", "-o", out).returncode == 0
    before = sorted(p.name for p in (out / "a").iterdir())
    done = cli("report", out / "a", "-q")
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted([*before, "report.html"])
    assert "a.png" in (out / "a" / "report.html").read_text()
    # a later run without --report removes the page: it would show the old run's numbers
    assert cli("run", img, "-k", "3", "-q", "-o", out).returncode == 0
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted([*before, "prob_2.png"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such output folder"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a folder"),
        (lambda p: p, "no segsoft outputs in it"),
    ],
)
def test_report_bad_folders_one_line_no_file_written(tmp_path, make, message):
    target = make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    done = cli("report", target)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr and str(target) in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_report_refuses_a_folder_another_process_is_writing(batch_out):
    page = batch_out / "report.html"
    mtime = page.stat().st_mtime_ns
    with folder_lock(batch_out):
        done = cli("report", batch_out)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert page.stat().st_mtime_ns == mtime
