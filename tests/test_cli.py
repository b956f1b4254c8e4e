"""The real ``segsoft`` command, run as a subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "images" / "coffee.jpg"


def segsoft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, exactly one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("segsoft: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version():
    import segsoft as pkg

    result = segsoft("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"segsoft {pkg.__version__}"


def test_run_writes_the_whole_output_layout(tmp_path):
    out = tmp_path / "out"
    result = segsoft("run", SAMPLE, "-k", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    folder = out / SAMPLE.stem
    h, w = np.asarray(PILImage.open(SAMPLE)).shape[:2]
    expected = [
        "overlay.png",
        "labels.png",
        "uncertainty.png",
        "prob_0.png",
        "prob_1.png",
        "prob_2.png",
        "montage.png",
        "probabilities.npy",
        "model.json",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for name in expected[:6]:
        img = PILImage.open(folder / name)
        assert img.size == (w, h) and img.mode in ("RGB", "P"), name  # P: exact palette PNGs
    probs = np.load(folder / "probabilities.npy")
    assert probs.shape == (h, w, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    record = json.loads((folder / "model.json").read_text())
    assert record["result"]["k"] == 3 and record["settings"]["k"] == 3
    assert len(record["clusters"]) == 3 and all(len(c["mean_rgb"]) == 3 for c in record["clusters"])
    assert record["result"]["converged"] in (True, False) and record["result"]["bic"] is not None
    assert len(record["result"]["log_likelihood_trace"]) == record["result"]["n_iter"]
    # the summary names the output folder and the log-likelihood
    assert str(folder) in result.stdout.replace("\n", "") and "log-likelihood" in result.stdout


def test_run_is_deterministic_under_a_seed(tmp_path):
    for name in ("a", "b"):
        assert segsoft("run", SAMPLE, "-k", "3", "--seed", "4", "-o", tmp_path / name, "--quiet").returncode == 0
    a = np.load(tmp_path / "a" / SAMPLE.stem / "probabilities.npy")
    b = np.load(tmp_path / "b" / SAMPLE.stem / "probabilities.npy")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", ["soft-kmeans", "fcm"])
def test_run_other_models(tmp_path, model):
    result = segsoft(
        "run", SAMPLE, "-k", "2", "--model", model, "--color", "hsv", "--spatial-weight", "0.5", "-o", tmp_path, "-q"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert json.loads((tmp_path / SAMPLE.stem / "model.json").read_text())["model"]["type"] in (
        "SoftKMeans",
        "FuzzyCMeans",
    )


def test_missing_file(tmp_path):
    assert_clean_error(segsoft("run", tmp_path / "nope.jpg", "-o", tmp_path), "nope.jpg", "no such file")


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture\n")
    assert_clean_error(segsoft("run", bad, "-o", tmp_path / "out"), "notes.jpg", "not an image")


def test_truncated_image(tmp_path):
    data = SAMPLE.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    assert_clean_error(segsoft("run", bad, "-o", tmp_path / "out"), "cut.jpg", "truncated")


@pytest.mark.parametrize("k", ["0", "-2", "two"])
def test_bad_k(tmp_path, k):
    assert_clean_error(segsoft("run", SAMPLE, "-k", k, "-o", tmp_path), "-k", k)


def test_k_larger_than_distinct_colours(tmp_path):
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    img[:, 5:] = 200
    path = tmp_path / "two.png"
    PILImage.fromarray(img).save(path)
    assert_clean_error(segsoft("run", path, "-k", "3", "-o", tmp_path / "out"), "two.png", "2 distinct colours")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the output folder should go")
    assert_clean_error(segsoft("run", SAMPLE, "-o", blocker), "file.txt", "cannot create")
    assert blocker.read_text().startswith("a file")


def test_bad_choices_are_one_line_errors(tmp_path):
    assert_clean_error(segsoft("run", SAMPLE, "--model", "kmeans", "-o", tmp_path), "--model must be one of")
    assert_clean_error(segsoft("run", SAMPLE, "--color", "cmyk", "-o", tmp_path), "--color must be one of")
    assert_clean_error(segsoft("run", SAMPLE, "--cmap", "nope", "-o", tmp_path), "colormap")
