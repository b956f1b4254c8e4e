"""The real command with --regions: run, batch, apply and evaluate."""

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


def segsoft(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=180
    )


def blocks_image(path: Path, shift: int = 0, seed: int = 0) -> np.ndarray:
    """Three noisy colour blocks; returns the true block map."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((96, 128), np.int64)
    truth[:, 50 + shift :] = 1
    truth[60:, 90:] = 2
    colors = np.array([[30, 30, 30], [200, 60, 40], [60, 160, 220]], float)
    img = np.clip(colors[truth] + rng.normal(0, 8, (96, 128, 3)), 0, 255).astype(np.uint8)
    PILImage.fromarray(img).save(path)
    return truth


def same_partition(regions: np.ndarray, truth: np.ndarray, tolerance: float = 0.03) -> bool:
    """One region per true block, each pixel's region the one of its block but for a few boundary pixels.

    Superpixels follow boundaries to within a pixel or two; small slivers at
    block corners can join a neighbour, hence the tolerance.
    """
    if len(np.unique(regions)) != len(np.unique(truth)):
        return False
    wrong = 0
    for r in np.unique(regions):
        counts = np.bincount(truth[regions == r])
        wrong += counts.sum() - counts.max()
    return wrong <= tolerance * truth.size


def test_run_regions_writes_the_map_picture_and_record(tmp_path):
    out = tmp_path / "out"
    result = segsoft("run", SAMPLE, "-k", "6", "--regions", "-o", out)
    assert result.returncode == 0, result.stderr
    folder = out / SAMPLE.stem
    regions = np.load(folder / "regions.npy")
    h, w = np.asarray(PILImage.open(SAMPLE)).shape[:2]
    assert regions.shape == (h, w) and regions.dtype == np.int32
    n = int(regions.max()) + 1
    assert sorted(np.unique(regions).tolist()) == list(range(n)) and n > 1
    record = json.loads((folder / "model.json").read_text())
    assert record["regions"] == {"threshold": 0.15, "count": n}
    picture = np.asarray(PILImage.open(folder / "regions.png").convert("RGB"))
    assert picture.shape == (h, w, 3)
    assert f"regions         {n}  (threshold 0.15" in result.stdout

    # the same folder without --regions: no stale region files left to be mistaken for this run's
    result = segsoft("run", SAMPLE, "-k", "6", "-o", out)
    assert result.returncode == 0, result.stderr
    assert not (folder / "regions.npy").exists() and not (folder / "regions.png").exists()
    assert "regions" not in json.loads((folder / "model.json").read_text())


def test_run_regions_finds_the_blocks_and_a_higher_threshold_merges_more(tmp_path):
    image = tmp_path / "blocks.png"
    truth = blocks_image(image)
    out = tmp_path / "out"
    assert segsoft("run", image, "-k", "3", "--regions", "-o", out).returncode == 0
    regions = np.load(out / "blocks" / "regions.npy")
    assert same_partition(regions, truth)
    result = segsoft("run", image, "-k", "3", "--regions", "--region-threshold", "1000", "-o", out)
    assert result.returncode == 0, result.stderr
    assert np.load(out / "blocks" / "regions.npy").max() == 0  # everything merged


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_region_threshold_is_a_one_line_error(tmp_path, value):
    result = segsoft("run", SAMPLE, "--regions", "--region-threshold", value, "-o", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"segsoft: error: --region-threshold must be a number >= 0 and <= 1e+06, got {float(value)!r}"
    ]
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_batch_regions_and_skip_existing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        blocks_image(inputs / f"img{i}.png", shift=i, seed=i)
    out = tmp_path / "out"
    result = segsoft("batch", inputs, "-k", "3", "--regions", "--jobs", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    for i in range(2):
        assert (out / f"img{i}" / "regions.npy").is_file() and (out / f"img{i}" / "regions.png").is_file()
    # same options: complete folders are skipped
    result = segsoft("batch", inputs, "-k", "3", "--regions", "--jobs", "1", "--skip-existing", "-o", out)
    assert "2 skipped" in result.stdout, result.stdout
    # another threshold is another result: redone, not skipped
    result = segsoft(
        "batch",
        inputs,
        "-k",
        "3",
        "--regions",
        "--region-threshold",
        "0.3",
        "--jobs",
        "1",
        "--skip-existing",
        "-o",
        out,
    )
    assert "2 ok" in result.stdout, result.stdout
    assert json.loads((out / "img0" / "model.json").read_text())["regions"]["threshold"] == 0.3


def test_apply_regions(tmp_path):
    image = tmp_path / "blocks.png"
    truth = blocks_image(image)
    model = tmp_path / "m.json"
    assert segsoft("run", image, "-k", "3", "--save-model", model, "-o", tmp_path / "fit").returncode == 0
    result = segsoft("apply", model, image, "--regions", "-o", tmp_path / "applied")
    assert result.returncode == 0, result.stderr
    assert same_partition(np.load(tmp_path / "applied" / "blocks" / "regions.npy"), truth)


def test_evaluate_scores_region_maps_as_they_are(tmp_path):
    """regions.npy in an output folder wins over labels and is not post-processed by --min-region."""
    truth = np.zeros((40, 60), np.uint16)
    truth[:, 30:] = 1
    truth[:4, :4] = 2  # a small region a human outlined
    gt = tmp_path / "gt"
    gt.mkdir()
    np.savez_compressed(gt / "7.npz", segs=truth[None] + 1)
    pred = tmp_path / "pred" / "7"
    pred.mkdir(parents=True)
    np.save(pred / "labels.npy", np.zeros((40, 60), np.int64))  # would score badly
    np.save(pred / "regions.npy", truth.astype(np.int32))
    result = segsoft("evaluate", tmp_path / "pred", "--gt", gt, "--min-region", "0.05")
    assert result.returncode == 0, result.stderr
    pri = float(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("PRI")))
    assert pri == 1.0  # the 16-pixel region (under 5 %) was kept


def test_evaluate_a_folder_of_images_with_regions(tmp_path):
    images, gt = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    gt.mkdir()
    for i in range(2):
        truth = blocks_image(images / f"{10 + i}.png", shift=i, seed=i)
        np.savez_compressed(gt / f"{10 + i}.npz", segs=(truth[None] + 1).astype(np.uint16))
    result = segsoft("evaluate", images, "--gt", gt, "-k", "3", "--regions")
    assert result.returncode == 0, result.stderr
    assert "2 scored" in result.stdout
    pri = float(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("PRI")))
    assert pri > 0.95


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--criterion", "bic"], "--criterion only applies with -k auto"),
        (["-k", "3", "--k-range", "2..5"], "--k-range only applies with -k auto"),
        (["--region-threshold", "0.2"], "--region-threshold only applies with --regions"),
    ],
)
def test_options_that_would_be_ignored_are_errors(tmp_path, args, message):
    result = segsoft("run", SAMPLE, *args, "-o", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"segsoft: error: {message}"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "flag"), [(["--regions"], "--regions"), (["-k", "12"], "-k"), (["--smooth", "1"], "--smooth")]
)
def test_evaluate_refuses_segmenting_options_for_predictions(tmp_path, args, flag):
    """Predictions are scored as they are: an option that would change a segmentation is an error, not ignored."""
    gt = tmp_path / "gt"
    gt.mkdir()
    np.savez_compressed(gt / "7.npz", segs=np.ones((1, 4, 4), np.uint16))
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "7.npy", np.zeros((4, 4), np.int64))
    result = segsoft("evaluate", tmp_path / "pred", "--gt", gt, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{flag} applies to a folder of images" in lines[0]
    assert segsoft("evaluate", tmp_path / "pred", "--gt", gt, "-k", "4").returncode == 0  # the default changes nothing


def test_api_save_with_a_bad_threshold_leaves_the_folder_as_it_was(tmp_path):
    import segsoft
    from segsoft.errors import SegsoftError

    seg = segsoft.segment(SAMPLE, k=3)
    seg.save(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(SegsoftError, match="region threshold"):
            seg.save(tmp_path, regions=True, region_threshold=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # model.json still there: the folder is complete
    seg.save(tmp_path, regions=True)
    assert json.loads((tmp_path / "model.json").read_text())["regions"]["threshold"] == 0.15


def test_api_regions_is_a_flag_not_a_threshold(tmp_path):
    import segsoft
    from segsoft.errors import SegsoftError

    seg = segsoft.segment(SAMPLE, k=3)
    for old_style in (0.5, 0.0, None):
        with pytest.raises(SegsoftError, match="pass the threshold as region_threshold="):
            seg.save(tmp_path / "a", regions=old_style)
    with pytest.raises(SegsoftError, match="region threshold"):
        seg.save(tmp_path / "b", region_threshold=-1)  # checked even with regions off, as apply_batch does
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
