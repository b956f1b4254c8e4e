"""The categorical label palette (cluster_colors) and the mean-colour palette (mean_palette)."""

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, rgb2lab

from segsoft import render
from segsoft.errors import SegsoftError

# What cluster_colors gave for k <= 10 before the 64-colour table (matplotlib's tab10).
TAB10 = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
]
# Smallest CIEDE2000 between any two of the 64 colours (it is 12.45).
MIN_DELTA_64 = 12.4


def _lab(rgb):
    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0).reshape(-1, 3)


def _pairwise(rgb):
    lab = _lab(rgb)
    d = deltaE_ciede2000(lab[:, None, :], lab[None, :, :])
    np.fill_diagonal(d, np.inf)
    return d


def test_first_ten_unchanged():
    for k in range(1, 11):
        assert render.cluster_colors(k).tolist() == TAB10[:k]


def test_every_k_is_a_prefix_of_the_table():
    table = render.cluster_colors(64)
    assert table.dtype == np.uint8 and table.shape == (64, 3)
    for k in range(1, 65):
        c = render.cluster_colors(k)
        assert c.dtype == np.uint8 and c.shape == (k, 3) and c.flags.c_contiguous
        np.testing.assert_array_equal(c, table[:k])


def test_sixty_four_colours_stay_distinguishable():
    d = _pairwise(render.cluster_colors(64))
    assert d.min() >= MIN_DELTA_64, d.min()
    # the old generator's near-duplicate pair (#f2733d next to #ff7f0e) is gone
    assert d[1].min() >= MIN_DELTA_64


def test_colours_show_on_white_black_and_checkerboard():
    lab = _lab(render.cluster_colors(64))
    assert lab[:, 0].min() > 20 and lab[:, 0].max() < 90
    for ref in [(255, 255, 255), (0, 0, 0), (204, 204, 204)]:
        d = deltaE_ciede2000(lab, np.broadcast_to(_lab(ref)[0], lab.shape))
        assert d.min() >= 10, (ref, d.min())


def test_table_equals_its_generator():
    np.testing.assert_array_equal(render._generate_palette(64), render.cluster_colors(64))
    assert [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in render.cluster_colors(64).tolist()] == list(render._PALETTE_HEX)


def test_result_is_a_copy_and_beyond_64_extends():
    c = render.cluster_colors(3)
    c[:] = 0
    assert render.cluster_colors(3).tolist() == TAB10[:3]
    more = render.cluster_colors(70)
    assert more.shape == (70, 3)
    np.testing.assert_array_equal(more[:64], render.cluster_colors(64))
    assert len({tuple(row) for row in more.tolist()}) == 70


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k(k):
    with pytest.raises(SegsoftError):
        render.cluster_colors(k)


# ----------------------------------------------------------------------------- mean_palette


def test_mean_palette_keeps_distinct_means():
    means = np.array([[0.9, 0.1, 0.1], [0.1, 0.6, 0.2], [0.2, 0.3, 0.9], [0.5, 0.5, 0.5]])
    out = render.mean_palette(means)
    assert out.dtype == np.uint8 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, np.rint(means * 255).astype(np.uint8))


def test_mean_palette_nudges_near_duplicates():
    base = np.array([0.40, 0.45, 0.30])
    means = np.array([base, base + 0.004, base - 0.003, base, [0.9, 0.9, 0.9]])
    out = render.mean_palette(means)
    assert out.dtype == np.uint8 and out.shape == (5, 3)
    assert out[0].tolist() == np.rint(base * 255).astype(int).tolist()  # the first keeps its colour
    assert out[4].tolist() == [230, 230, 230]  # far from the rest: untouched
    assert _pairwise(out).min() >= 3.0
    # only the lightness moved (roughly): hue angle and chroma stay close to the mean's
    lab = _lab(out)
    ref = _lab(np.rint(base * 255))[0]
    assert np.abs(lab[:4, 1:] - ref[1:]).max() < 4
    np.testing.assert_array_equal(out, render.mean_palette(means))  # deterministic


def test_mean_palette_many_identical_and_extremes():
    for colour in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]):
        out = render.mean_palette(np.tile(colour, (8, 1)))
        assert _pairwise(out).min() >= 3.0, (colour, out)


def test_mean_palette_clips_and_handles_empty_clusters():
    out = render.mean_palette([[1.5, -0.2, 0.5], [np.nan, np.nan, np.nan]])
    assert out[0].tolist() == [255, 0, 128]
    assert out[1].tolist() == [128, 128, 128]
    out = render.mean_palette([[0.5, 0.5, 0.5], [np.nan, 0.5, 0.5]])
    assert _pairwise(out).min() >= 3.0


def test_mean_palette_min_delta_and_bad_shapes():
    means = np.array([[0.5, 0.5, 0.5], [0.52, 0.5, 0.5]])
    assert _pairwise(render.mean_palette(means, min_delta=10)).min() >= 10
    np.testing.assert_array_equal(render.mean_palette(means, min_delta=0), np.rint(means * 255).astype(np.uint8))
    for bad in ([0.5, 0.5, 0.5], np.zeros((2, 4)), np.zeros((0, 3))):
        with pytest.raises(SegsoftError):
            render.mean_palette(bad)


def test_palette_mean_through_the_cli(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image as PILImage

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, 15:] = (200, 40, 30)
    rgb[:, :15] = (20, 90, 200)
    PILImage.fromarray(rgb).save(tmp_path / "two.png")
    run = [sys.executable, "-m", "segsoft", "run", str(tmp_path / "two.png"), "-k", "2", "-q", "--palette"]
    result = subprocess.run([*run, "MEAN", "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "o" / "two" / "model.json").read_text())
    assert sorted(c["display_color"] for c in record["clusters"]) == ["#145ac8", "#c8281e"]
    labels = np.asarray(PILImage.open(tmp_path / "o" / "two" / "labels.png").convert("RGB"))
    assert tuple(labels[0, 0]) == (20, 90, 200) and tuple(labels[0, -1]) == (200, 40, 30)
    bad = subprocess.run([*run, "rainbow", "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "segsoft: error: --palette must be one of categorical, mean, got 'rainbow'"
    ]
