"""`segsoft evaluate --boundaries`: the BSDS boundary benchmark of output folders' ucm.npy, through the real command."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_cli_evaluate import make_dataset as _make_dataset

from segsoft.contours import boundary_pr, ods_ois
from segsoft.evaluate import load_ground_truth


def make_dataset(folder: Path, n: int = 3) -> tuple[Path, Path]:
    return _make_dataset(folder, n, noise=8)


def segsoft(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=180, check=False
    )


def summary_value(stdout: str, label: str) -> float:
    line = next(line for line in stdout.splitlines() if line.startswith("boundary"))
    return float(line.split(label, 1)[1].split()[0].rstrip(",)"))


def test_evaluate_boundaries_scores_ucm_npy_as_the_benchmark(tmp_path):
    images, gt = make_dataset(tmp_path)
    out = tmp_path / "out"
    ok = segsoft("batch", images, "-o", out, "-k", "3", "--regions", "-q", "--jobs", "1")
    assert ok.returncode == 0, ok.stderr

    table = tmp_path / "scores.csv"
    result = segsoft("evaluate", out, "--gt", gt, "--boundaries", "--csv", table)
    assert result.returncode == 0, result.stderr
    assert "3 scored, 0 missing, 0 failed" in result.stdout
    assert "99 thresholds from 0.01 to 0.99, 3 images" in result.stdout  # the benchmark's own thresholds
    ods = summary_value(result.stdout, "ODS F")
    # the same numbers as the library on the same files
    counts = [
        boundary_pr(np.load(out / i / "ucm.npy"), load_ground_truth(gt / f"{i}.npz")) for i in ("100", "101", "102")
    ]
    scores = ods_ois(counts)
    assert ods == round(scores.ods["f"], 4) and summary_value(result.stdout, "AP") == round(scores.ap, 4)
    assert summary_value(result.stdout, "OIS F") == round(scores.ois["f"], 4)
    assert ods > 0.7  # the blocks' boundaries are found, most of them exactly
    rows = list(csv.DictReader(table.open()))
    assert [r["id"] for r in rows] == ["100", "101", "102"]
    assert all(0 < float(r["bdry_f"]) <= 1 and r["error"] == "" for r in rows)

    cuts = segsoft("evaluate", out, "--gt", gt, "--boundaries", "--thresholds", "0.05:0.3:0.05", "-q")
    assert cuts.returncode == 0 and cuts.stdout == "", cuts.stderr
    cuts = segsoft("evaluate", out, "--gt", gt, "--boundaries", "--thresholds", "0.05,0.1,0.2")
    assert cuts.returncode == 0, cuts.stderr
    assert "3 thresholds from 0.05 to 0.2" in cuts.stdout and "ODS       PRI" in cuts.stdout


def test_evaluate_boundaries_names_a_bad_or_missing_ucm(tmp_path):
    images, gt = make_dataset(tmp_path)
    out = tmp_path / "out"
    assert segsoft("batch", images, "-o", out, "-k", "3", "--regions", "-q", "--jobs", "1").returncode == 0
    np.save(out / "100" / "ucm.npy", np.zeros((3, 3), np.float32))  # the wrong shape
    (out / "101" / "ucm.npy").unlink()
    result = segsoft("evaluate", out, "--gt", gt, "--boundaries", "--thresholds", "0.1,0.2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 scored, 0 missing, 2 failed" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 2
    assert str(out / "100" / "ucm.npy") in failed[0] and "expected float (81, 121)" in failed[0]
    assert str(out / "101" / "ucm.npy") in failed[1] and "no ucm.npy to score with --boundaries" in failed[1]
    assert "boundary  ODS F" in result.stdout and ", 1 image" in result.stdout  # the image that could be scored

    # a folder of images has no ucm.npy to score: one line that says what to do
    images_only = segsoft("evaluate", images, "--gt", gt, "--boundaries")
    assert images_only.returncode != 0 and "Traceback" not in images_only.stderr
    assert len(images_only.stderr.strip().splitlines()) == 1 and "--boundaries" in images_only.stderr
    assert "--regions" in images_only.stderr
