"""Pictures and checks whose cost must stay bounded (issue 10, items 6, 9 and 10).

* Montage tiles fit a box: no image shape (1 x N, N x 1, 2 x 50000, ...) may
  make a picture cost more than a small multiple of the image itself.
* k is capped at :data:`segsoft.segment.MAX_K` everywhere in the pipeline.
* Counting distinct colours is linear in the pixels and needs little memory.

The command-line runs are made under a bounded address space, so a
regression fails quickly with a MemoryError instead of swamping the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft import render
from segsoft.errors import SegsoftError
from segsoft.segment import MAX_K, _count_distinct, make_model

segment_module = sys.modules["segsoft.segment"]  # the module: segsoft.segment is also the function's name

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 4 << 30  # far above what a thin image needs, far below what stretching it to 256 px wide took
SHEET_LIMIT = 4096  # a k=2 montage is two rows of tiles: well under this either way


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _env() -> dict[str, str]:
    # this checkout's segsoft, and few BLAS threads (each reserves address space under the limit)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _strip(shape: tuple[int, int], path: Path) -> Path:
    """A noisy two-tone PNG of numpy ``shape`` (rows, columns)."""
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    rgb[: max(1, shape[0] // 2), : max(1, shape[1] // 2)] //= 4
    PILImage.fromarray(rgb).save(path)
    return path


# ----------------------------------------------------------------------------- item 6: pictures of any shape


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1)])
@pytest.mark.parametrize("regions", [False, True])
def test_thin_and_tall_images_run_with_a_bounded_montage(tmp_path, shape, regions):
    png = _strip(shape, tmp_path / f"strip_{shape[0]}x{shape[1]}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "segsoft", "run", str(png), "-k", "2", "-o", str(out)] + (
        ["--regions"] if regions else []
    )
    result = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=120, preexec_fn=_limited, env=_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (sheet,) = out.rglob("montage.png")
    width, height = PILImage.open(sheet).size
    assert width <= SHEET_LIMIT and height <= SHEET_LIMIT, (width, height)
    names = {p.name for p in sheet.parent.iterdir()}
    assert ("regions.png" in names) == regions
    # the full-size pictures keep the image's own shape
    assert PILImage.open(sheet.parent / "overlay.png").size == (shape[1], shape[0])


def test_peak_memory_of_a_1_by_200000_run_is_small(tmp_path):
    png = _strip((200_000, 1), tmp_path / "tall.png")
    # a wrapper process, so RUSAGE_CHILDREN sees only this run
    code = (
        "import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'segsoft', 'run', {str(png)!r}, '-k', '2', '-o', {str(tmp_path / 'out')!r}],"
        " capture_output=True, text=True)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(r.stderr[-2000:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited,
        env=_env(),
    )
    rc, maxrss = result.stdout.split()
    assert rc == "0", result.stderr
    peak_mb = int(maxrss) / (1024 if sys.platform != "darwin" else 1024 * 1024)  # KiB on Linux, bytes on macOS
    assert peak_mb < 400, f"peak {peak_mb:.0f} MB"
    (sheet,) = (tmp_path / "out").rglob("montage.png")
    assert max(PILImage.open(sheet).size) <= SHEET_LIMIT


@pytest.mark.parametrize(
    "size", [(1, 1), (1, 7), (7, 1), (1, 5000), (5000, 1), (2, 50000), (100000, 3), (300, 200), (2000, 4000)]
)
def test_fit_box_stays_inside_the_box(size):
    w, h = size
    tw, th = render.fit_box(w, h, 256)
    assert 1 <= tw <= 256 and 1 <= th <= 2 * 256
    assert tw == 256 or th == 512  # scaled as far as the box allows, and no further
    if tw > 1 and th > 1:  # both sides scaled by one factor: the aspect ratio is kept to within rounding
        assert abs(tw - w * th / h) <= 0.5 + 0.5 * w / h


def test_montage_keeps_thin_tiles_thin():
    colour = (50, 200, 90)  # not a grey, so no title pixel can look like it
    tall = np.full((600, 1, 3), colour, np.uint8)  # stretched to 64 x 38400 before
    wide = np.full((1, 600, 3), colour, np.uint8)
    sheet = render.montage([("tall", tall), ("wide", wide), ("dot", np.zeros((1, 1, 3), np.uint8))], tile_width=64)
    m = render._MARGIN
    assert sheet.shape[1] == m + 3 * (64 + m)
    assert sheet.shape[0] < 2 * 64 + 60  # one row: the tallest tile is at most the box's height
    # the tall strip is one column of pixels, centred in its cell; the rest of the cell is background
    cell = sheet[:, m : m + 64]
    drawn = np.flatnonzero((cell == colour).all(axis=2).any(axis=0))
    assert drawn.tolist() == [(64 - 1) // 2]
    # a custom box height is honoured
    assert render.montage([("tall", tall)], tile_width=64, tile_height=40).shape[0] < 40 + 40


@pytest.mark.parametrize("shape", [(200_000, 1), (1, 200_000), (2, 50_000), (50_000, 2), (3, 100_000)])
def test_shrink_and_original_are_bounded_for_any_aspect_ratio(shape):
    indexed = render.IndexedImage(np.zeros(shape, np.uint8), np.zeros((1, 3), np.uint8))
    rgb = np.zeros((*shape, 3), np.uint8)
    for picture in (indexed, rgb):
        small = render.shrink(picture, 256)
        tw, th = render.fit_box(shape[1], shape[0], 256)
        # at least the final tile (the montage only shrinks it), at most about twice it
        assert th <= small.shape[0] <= 2 * th + 2 and tw <= small.shape[1] <= 2 * tw + 2, small.shape
    seg = segsoft.segment(
        np.dstack([np.linspace(0, 255, shape[0] * shape[1]).reshape(shape).astype(np.uint8)] * 3), k=2
    )
    original = seg.original(256)
    assert original.dtype == np.uint8 and original.shape[0] <= 2 * 512 + 2 and original.shape[1] <= 2 * 256 + 2
    assert seg.original().shape == (*shape, 3)


def test_original_block_average_matches_a_direct_mean():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (530, 1030, 3), dtype=np.uint8)  # shrunk by 4 x 4, with 2 lines left over
    seg = segsoft.segment(rgb, k=2, max_iter=2)
    fy, fx = render.shrink_factors(rgb.shape, 256)
    assert (fy, fx) == (4, 4)
    h, w = rgb.shape[0] // fy, rgb.shape[1] // fx
    pixels = seg.image.pixels[: h * fy, : w * fx].reshape(h, fy, w, fx, 3).mean(axis=(1, 3), dtype=np.float32)
    np.testing.assert_array_equal(seg.original(256), np.rint(pixels * np.float32(255.0)).astype(np.uint8))
    np.testing.assert_array_equal(seg.original(), rgb)


def test_renderers_cut_very_wide_rows_into_chunks(monkeypatch):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), size=(2, 5000)).astype(np.float32)
    p[0, 7] = np.nan
    img = rng.random((2, 5000, 3)).astype(np.float32)
    mask = np.ones((2, 5000), bool)
    mask[1, 4000:] = False
    whole = [
        render.soft_overlay(img, p, mask=mask),
        render.heatmap(p, 1, mask=mask),
        render.uncertainty_image(p, mask=mask),
        render.normalized_entropy(p),
    ]
    monkeypatch.setattr(render, "_CHUNK_PIXELS", 700)  # rows wider than a chunk: pieces of rows
    assert len(list(render._blocks(2, 5000))) == 2 * 8
    pieces = [
        render.soft_overlay(img, p, mask=mask),
        render.heatmap(p, 1, mask=mask),
        render.uncertainty_image(p, mask=mask),
        render.normalized_entropy(p),
    ]
    for a, b in zip(whole, pieces):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- item 9: the cap on k


def test_k_is_capped_everywhere():
    assert MAX_K == 64 and "MAX_K" in segment_module.__all__
    img = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    with pytest.raises(SegsoftError, match=r"k=65 is more than the most clusters segsoft supports \(64\)"):
        segsoft.segment(img, k=MAX_K + 1)
    with pytest.raises(SegsoftError, match="k=10000"):
        segsoft.segment("no/such/file.png", k=10_000)  # refused before any reading
    for model in ("gmm", "soft-kmeans", "fcm"):
        with pytest.raises(SegsoftError, match=r"k=65 .*\(64\)"):
            make_model(model, MAX_K + 1)
        assert make_model(model, MAX_K).n_components == MAX_K
    with pytest.raises(SegsoftError, match="64"):
        segsoft.segment(img, k="auto", k_range=(2, MAX_K + 1))
    assert segment_module.MAX_AUTO_K == MAX_K


# ----------------------------------------------------------------------------- item 10: counting colours


def test_constant_16_megapixel_image_reports_one_colour_in_little_memory(monkeypatch):
    seen = {}
    count = segment_module._count_distinct

    def measured(colors, at_least):
        tracemalloc.start()
        try:
            return count(colors, at_least)
        finally:
            seen["peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    monkeypatch.setattr(segment_module, "_count_distinct", measured)
    flat = np.full((4000, 4000, 3), 90, np.uint8)
    with pytest.raises(SegsoftError, match="k=2 is more than the 1 distinct colour"):
        segsoft.segment(flat, k=2)
    # a full np.unique took about 250 MB here (the features alone are 192 MB); the time is in benchmarks/
    assert seen["peak"] < 64 << 20, seen


def test_a_colour_the_sample_misses_is_still_counted():
    img = np.zeros((400, 400, 3), np.uint8)
    img[123, 158] = 255  # one pixel, off the grid of the sample (every third pixel)
    assert (123 * 400 + 158) % (img.shape[0] * img.shape[1] // segment_module._DISTINCT_SAMPLE) != 0
    with pytest.raises(SegsoftError, match="k=3 is more than the 2 distinct colours"):
        segsoft.segment(img, k=3)


def test_colours_of_one_grey_are_one_grey_level():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5], img[:, 5:] = (0, 0, 126), (35, 2, 3)  # different colours, the same luminance
    with pytest.raises(SegsoftError, match="1 grey level"):
        segsoft.segment(img, k=2, color="gray")
    assert segsoft.segment(img, k=2).k == 2  # in colour they are two


@pytest.mark.parametrize("n_colours", [1, 8, 9, 70])  # 8 / 9: either side of the direct comparison's limit
@pytest.mark.parametrize("columns", [1, 3])
def test_count_distinct_agrees_with_unique(monkeypatch, n_colours, columns):
    monkeypatch.setattr(segment_module, "_DISTINCT_CHUNK", 1 << 14)  # several chunks, quickly
    rng = np.random.default_rng(n_colours * 10 + columns)
    palette = rng.normal(size=(n_colours, columns)).astype(np.float32)
    rows = palette[rng.integers(0, n_colours, 100_000)]  # the sample takes every second row
    rows[-1] = 42.0  # a colour only in the last chunk, off the sample
    exact = n_colours + 1  # normal draws: distinct, and none is 42
    assert len(np.unique(np.vstack([palette, rows[-1:]]), axis=0)) == exact
    for at_least in (2, exact, exact + 1, MAX_K):
        got = _count_distinct(rows, at_least)
        assert got == exact if exact < at_least else got >= at_least, (at_least, got, exact)


def test_count_distinct_is_exact_despite_hash_collisions(monkeypatch):
    # every row gets the same key: the lookup must fall back on the values
    monkeypatch.setattr(segment_module, "_row_keys", lambda rows: np.zeros(len(rows), np.uint64))
    monkeypatch.setattr(segment_module, "_DISTINCT_CHUNK", 1 << 14)
    palette = np.arange(20, dtype=np.float32).reshape(20, 1)
    rows = np.repeat(palette, 5000, axis=0)  # several chunks
    assert _count_distinct(rows, 64) == 20
    assert _count_distinct(rows, 12) >= 12


def test_count_distinct_edge_values():
    zeros = np.array([[0.0], [-0.0]] * 100_000, np.float32)
    assert _count_distinct(zeros, 5) == 1  # -0.0 equals 0.0
    with_nan = np.zeros((300_000, 2), np.float32)
    with_nan[-3:] = np.nan  # never in features, but must not hang
    assert _count_distinct(with_nan, 64) >= 2
    assert _count_distinct(np.zeros((0, 3), np.float32), 2) == 0
