"""The real command for -k auto, --smooth and `segsoft evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def segsoft(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=180
    )


def make_dataset(folder: Path, n: int = 2, noise: float = 10) -> tuple[Path, Path]:
    """Images of three colour blocks plus noise, and two 'human' outlines each (also used by
    test_ucm.py and test_cli_contours.py)."""
    rng = np.random.default_rng(0)
    images, gt = folder / "images", folder / "gt"
    images.mkdir(parents=True)
    gt.mkdir()
    colors = np.array([[30, 30, 30], [200, 60, 40], [60, 160, 220]], float)
    for i in range(n):
        truth = np.zeros((40, 60), np.uint16)
        truth[:, 20 + i :] = 1
        truth[25:, 40:] = 2
        img = np.clip(colors[truth] + rng.normal(0, noise, (40, 60, 3)), 0, 255).astype(np.uint8)
        PILImage.fromarray(img).save(images / f"{100 + i}.png")
        coarse = np.where(truth == 2, 1, truth)  # a second human who merged two regions
        np.savez_compressed(gt / f"{100 + i}.npz", segs=np.stack([truth + 1, coarse + 1]).astype(np.uint16))
    return images, gt


def test_evaluate_a_folder_of_images(tmp_path):
    images, gt = make_dataset(tmp_path)
    csv = tmp_path / "scores.csv"
    result = segsoft("evaluate", images, "--gt", gt, "-k", "3", "--csv", csv)
    assert result.returncode == 0, result.stderr
    assert "2 scored, 0 missing, 0 failed" in result.stdout
    pri = float(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("PRI")))
    assert pri > 0.85  # the blocks are found; the second human merged two of them
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("id,pri,voi,covering") and len(rows) == 3


def test_evaluate_segsoft_outputs_and_report_missing(tmp_path):
    images, gt = make_dataset(tmp_path, n=3)
    out = tmp_path / "out"
    assert segsoft("batch", images, "-o", out, "-k", "3", "-q", "--jobs", "1").returncode == 0
    assert segsoft("evaluate", out, "--gt", gt, "--min-region", "0").returncode == 0
    (out / "101" / "probabilities.npy").unlink()
    import shutil

    shutil.rmtree(out / "102")
    result = segsoft("evaluate", out, "--gt", gt)
    assert result.returncode == 1
    assert "missing   101 102" in result.stdout  # a folder without memberships is no prediction


def test_evaluate_bad_ground_truth_folder(tmp_path):
    images, _ = make_dataset(tmp_path, n=1)
    result = segsoft("evaluate", images, "--gt", tmp_path / "nowhere")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "nowhere" in result.stderr


def test_run_auto_k_and_smoothing(tmp_path):
    images, _ = make_dataset(tmp_path, n=1)
    image = images / "100.png"
    result = segsoft("run", image, "-k", "auto", "--k-range", "2..5", "--smooth", "1", "-o", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "k chosen" in result.stdout and "smoothing=1.0" in result.stdout
    folder = tmp_path / "o" / "100"
    record = json.loads((folder / "model.json").read_text())
    assert record["k_selection"]["ks"] == [2, 3, 4, 5]
    assert record["settings"]["smoothing"] == 1.0
    assert (folder / "k_selection.png").exists()
    bad = segsoft("run", image, "-k", "auto", "--criterion", "aic", "-o", tmp_path / "o")
    assert bad.returncode == 1 and "criterion" in bad.stderr


def test_batch_auto_k_and_its_limits(tmp_path):
    images, _ = make_dataset(tmp_path, n=2)
    ok = segsoft("batch", images, "-o", tmp_path / "b", "-k", "auto", "--k-range", "2..4", "-q", "--jobs", "1")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == ["100", "101"]
    again = segsoft(
        "batch", images, "-o", tmp_path / "b", "-k", "auto", "--k-range", "2..4", "-q", "--jobs", "1", "--skip-existing"
    )
    assert again.returncode == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "b" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["skipped", "skipped"] and rows[0]["k"] in ("2", "3", "4")
    shared = segsoft("batch", images, "-o", tmp_path / "s", "-k", "auto", "--shared-model")
    assert shared.returncode == 1 and "--shared-model needs a fixed -k" in shared.stderr
