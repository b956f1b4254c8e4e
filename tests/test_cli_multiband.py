"""Issue 11 through the real command: the README's multiband example, frames, bands and file formats."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ROOT / "images" / "fields.tif"
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def fields_truth() -> np.ndarray:
    spec = importlib.util.spec_from_file_location("make_fields", ROOT / "images" / "make_fields.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data, cover = module.scene()
    np.testing.assert_array_equal(tifffile.imread(FIELDS), data)  # the shipped file is the documented scene
    return cover


def agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    k = int(max(labels.max(), truth.max())) + 1
    table = np.zeros((k, k), int)
    np.add.at(table, (truth.ravel(), labels.ravel()), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / truth.size


def test_the_readme_multiband_example(tmp_path):
    out = tmp_path / "out"
    result = cli("run", FIELDS, "-k", "5", "--display-bands", "4,2,1", "--probabilities", "tiff", "-o", out)
    assert result.returncode == 0, result.stderr
    folder = out / "fields"
    record = json.loads((folder / "model.json").read_text())
    assert record["features"]["color"] == "bands" and len(record["features"]["names"]) == 6
    labels = tifffile.imread(folder / "labels.tif")
    truth = fields_truth()
    assert agreement(labels, truth) >= 0.99
    probs = tifffile.imread(folder / "probabilities.tif")
    assert probs.shape == (5, 150, 200)
    # on the map where the tile is
    with tifffile.TiffFile(FIELDS) as src, tifffile.TiffFile(folder / "probabilities.tif") as dst:
        for code in (33550, 33922, 34735):
            assert dst.pages[0].tags[code].value == src.pages[0].tags[code].value
    # the colour bands alone cannot tell the turf from the wheat
    rgb_only = cli("run", FIELDS, "-k", "5", "--bands", "0,1,2", "-o", tmp_path / "rgb", "--probabilities", "tiff")
    assert rgb_only.returncode == 0, rgb_only.stderr
    assert agreement(tifffile.imread(tmp_path / "rgb" / "fields" / "labels.tif"), truth) < 0.9


def test_memberships_do_not_depend_on_the_display_bands(tmp_path):
    for name, display in (("a", "4,2,1"), ("b", "2,1,0"), ("c", "5")):
        assert cli("run", FIELDS, "-k", "3", "--display-bands", display, "-o", tmp_path / name, "-q").returncode == 0
    a, b, c = (np.load(tmp_path / n / "fields" / "probabilities.npy") for n in "abc")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert (tmp_path / "a" / "fields" / "overlay.png").read_bytes() != (tmp_path / "b" / "fields" / "overlay.png").read_bytes()


@pytest.mark.parametrize(
    "args,needles",
    [
        (("--color", "lab"), ("fields.tif", "6 bands", "--color bands")),
        (("--bands", "0,9"), ("--bands",)),
        (("--display-bands", "1,2"), ("--display-bands",)),
        (("--display-bands", "0,1,9"), ("--display-bands",)),
        (("--bands", "x"), ("--bands",)),
        (("--color", "rgb", "--bands", "0,1,2"), ("--bands",)),
    ],
)
def test_bad_band_options_are_one_line_errors(tmp_path, args, needles):
    one_line_error(cli("run", FIELDS, "-k", "2", *args, "-o", tmp_path), *needles)


def _gif(path: Path, n: int = 3) -> Path:
    frames = []
    for i in range(n):
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[:, : 8 + 8 * i] = (220, 40, 30)
        rgb[:, 8 + 8 * i :] = (20, 60, 200)
        frames.append(PILImage.fromarray(rgb))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_frames_need_a_page_and_batch_frames_gives_one_folder_each(tmp_path):
    gif = _gif(tmp_path / "anim.gif")
    one_line_error(cli("run", gif, "-k", "2", "-o", tmp_path / "o"), "anim.gif", "3 frames", "--page")
    ok = cli("run", gif, "-k", "2", "--page", "2", "-o", tmp_path / "o", "-q")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "anim" / "frame_0002" / "model.json").is_file()
    one_line_error(cli("run", gif, "-k", "2", "--page", "3", "-o", tmp_path / "o"), "--page")
    batch = cli("batch", gif, "-k", "2", "--frames", "--shared-model", "-o", tmp_path / "b", "-j", "1")
    assert batch.returncode == 0, batch.stderr
    assert "3 images: 3 ok" in batch.stdout
    records = [json.loads((tmp_path / "b" / "anim" / f"frame_{i:04d}" / "model.json").read_text()) for i in range(3)]
    # one shared model: every frame's clusters mean the same colours
    assert len({json.dumps(r["model"], sort_keys=True) for r in records}) == 1
    without = cli("batch", gif, "-k", "2", "-o", tmp_path / "c", "-j", "1")
    assert without.returncode == 1 and "3 frames" in without.stderr


def test_an_npy_stack_of_seven_bands_runs_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.normal(0.5, 0.05, (30, 40, 7)).astype(np.float32)
    stack[:, 20:, 4:] += 0.3  # the right half differs in the last three bands only
    np.save(tmp_path / "stack.npy", stack)
    result = cli("run", tmp_path / "stack.npy", "-k", "2", "-o", tmp_path / "o", "--probabilities-dtype", "uint8")
    assert result.returncode == 0, result.stderr
    probs = np.load(tmp_path / "o" / "stack" / "probabilities.npy")
    assert probs.dtype == np.uint8 and probs.shape == (30, 40, 2)
    labels = probs.argmax(-1)
    assert len(np.unique(labels[:, :20])) == 1 and len(np.unique(labels[:, 20:])) == 1
    assert labels[0, 0] != labels[0, -1]


def test_apply_needs_the_bands_the_model_was_made_of(tmp_path):
    assert cli("run", FIELDS, "-k", "3", "-o", tmp_path / "o", "-q").returncode == 0
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, tifffile.imread(FIELDS)[..., :5], photometric="minisblack", planarconfig="contig")
    result = cli("apply", tmp_path / "o" / "fields" / "model.json", five, "-o", tmp_path / "a")
    assert result.returncode == 1
    assert "five.tif" in result.stderr and "6 bands" in result.stderr and "5 bands" in result.stderr


def test_batch_finds_array_stacks_in_folders_but_not_segsofts_own_arrays(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        stack = rng.normal(0.5, 0.05, (20, 24, 5)).astype(np.float32)
        stack[:, 12:, 3:] += 0.3
        np.save(inputs / f"{name}.npy", stack)
    np.save(inputs / "probabilities.npy", np.full((20, 24, 2), 0.5, np.float32))  # an output, not an input
    result = cli("batch", inputs, "-k", "2", "-o", tmp_path / "out", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert "2 images: 2 ok" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["a", "b"]


def test_four_band_files_keep_their_fourth_band(tmp_path):
    rng = np.random.default_rng(2)
    four = rng.normal(0.5, 0.04, (30, 40, 4)).astype(np.float32)
    four[:, 20:, 3] = 0.0  # the fourth band alone splits the image, and it is no alpha
    four[:, :20, 3] = 0.9
    np.save(tmp_path / "four.npy", four)
    u16 = np.clip(four * 65535, 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgbn.tif", u16, photometric="rgb", extrasamples=[0])  # RGB + unspecified (NIR)
    for name in ("four.npy", "rgbn.tif"):
        result = cli("run", tmp_path / name, "-k", "2", "-o", tmp_path / "o", "-q")
        assert result.returncode == 0, result.stderr
        folder = tmp_path / "o" / Path(name).stem
        record = json.loads((folder / "model.json").read_text())
        assert record["features"]["color"] == "bands" and len(record["features"]["names"]) == 4, name
        assert record["image"]["pixels_used"] == 30 * 40, name  # nothing taken for transparent
        labels = np.load(folder / "probabilities.npy").argmax(-1)
        assert len(np.unique(labels[:, :20])) == 1 and labels[0, 0] != labels[0, -1], name


def test_regions_smoothing_position_and_a_shared_model_on_bands(tmp_path):
    result = cli(
        "run", FIELDS, "-k", "5", "--regions", "--smooth", "1", "--spatial-weight", "0.5", "-o", tmp_path / "o", "-q"
    )
    assert result.returncode == 0, result.stderr
    regions = np.load(tmp_path / "o" / "fields" / "regions.npy")
    assert regions.shape == (150, 200) and 5 <= regions.max() + 1 <= 40
    # two tiles of one scene, one shared model: the same cover gets the same cluster in both
    inputs = tmp_path / "tiles"
    inputs.mkdir()
    data = tifffile.imread(FIELDS)
    for name, part in (("west", data[:, :100]), ("east", data[:, 100:])):
        tifffile.imwrite(inputs / f"{name}.tif", part, photometric="minisblack", planarconfig="contig")
    batch = cli("batch", inputs, "-k", "5", "--shared-model", "-o", tmp_path / "b", "-j", "1")
    assert batch.returncode == 0, batch.stderr
    truth = fields_truth()
    west = np.load(tmp_path / "b" / "west" / "probabilities.npy").argmax(-1)
    east = np.load(tmp_path / "b" / "east" / "probabilities.npy").argmax(-1)
    assert agreement(np.hstack([west, east]), truth) >= 0.99


def test_regions_do_not_depend_on_the_display_bands(tmp_path):
    maps = []
    for name, display in (("a", "4,2,1"), ("b", "0,1,2"), ("c", "5")):
        result = cli("run", FIELDS, "-k", "5", "--regions", "--display-bands", display, "-o", tmp_path / name, "-q")
        assert result.returncode == 0, result.stderr
        maps.append(np.load(tmp_path / name / "fields" / "regions.npy"))
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_evaluate_scores_folders_written_in_any_probabilities_dtype(tmp_path, dtype):
    inputs, gt = tmp_path / "in", tmp_path / "gt"
    inputs.mkdir(), gt.mkdir()
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, 20:] = (200, 50, 40)
    rgb[0, 0] = (5, 5, 5)
    PILImage.fromarray(rgb).save(inputs / "7.png")
    segs = np.zeros((1, 30, 40), np.uint16)
    segs[0, :, 20:] = 1
    np.savez(gt / "7.npz", segs=segs)
    out = tmp_path / "out"
    assert cli("batch", inputs, "-k", "2", "--probabilities-dtype", dtype, "-o", out, "-q").returncode == 0
    scored = cli("evaluate", out, "--gt", gt, "--min-region", "0")
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert "1 scored" in scored.stdout


def test_frame_folders_never_meet_another_inputs_folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _gif(inputs / "anim.gif")
    clash = np.zeros((24, 32, 3), np.uint8)
    clash[:, 16:] = (250, 250, 0)
    (inputs / "anim").mkdir()
    PILImage.fromarray(clash).save(inputs / "anim" / "frame_0001.png")
    result = cli("batch", inputs, "-r", "--frames", "-k", "2", "-o", tmp_path / "o", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert "4 images: 4 ok" in result.stdout
    folders = sorted(p.parent.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("model.json"))
    assert folders == ["anim/frame_0000", "anim/frame_0001", "anim/frame_0001_2", "anim/frame_0002"]
