"""`segsoft evaluate --scheduler`: a folder of images segmented and scored on Dask, the same scores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'segsoft[dask]'")

from segsoft.evaluate import evaluate_directory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    (base / "images").mkdir()
    (base / "gt").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        truth = np.ones((40, 60), np.uint16)
        truth[:, 20 + 5 * i :] = 2
        rgb = np.where(truth[..., None] == 1, [200, 40, 40], [30, 60, 200]) + rng.normal(0, 12, (40, 60, 3))
        PILImage.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(base / "images" / f"im{i}.jpg", quality=95)
        np.savez_compressed(base / "gt" / f"im{i}.npz", segs=truth[None])
    (base / "images" / "im9.jpg").write_bytes(b"not a png")  # one bad image
    np.savez_compressed(base / "gt" / "im9.npz", segs=np.ones((1, 40, 60), np.uint16))
    return base


def test_scores_on_threads_equal_the_plain_run(data):
    kw = dict(segment_kwargs={"k": 2}, allow_missing=True)
    plain = evaluate_directory(data / "images", data / "gt", **kw)
    threads = evaluate_directory(data / "images", data / "gt", scheduler="threads", jobs=2, **kw)
    assert [r.id for r in plain.rows] == [r.id for r in threads.rows] == ["im0", "im1", "im2", "im3"]
    for a, b in zip(plain.rows, threads.rows):
        assert (a.pri, a.voi, a.covering) == (b.pri, b.voi, b.covering)
    assert set(threads.errors) == {"im9"} and "im9.jpg" in threads.errors["im9"]
    assert plain.summary() == threads.summary()


def test_cli_evaluate_scheduler(data, tmp_path):
    def run(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "segsoft",
                "evaluate",
                data / "images",
                "--gt",
                data / "gt",
                "-k",
                "2",
                "-q",
                *extra,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )

    a, b = run("--csv", tmp_path / "a.csv"), run("--csv", tmp_path / "b.csv", "--scheduler", "threads")
    assert a.returncode == b.returncode == 1  # the bad image fails the report, in both
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
