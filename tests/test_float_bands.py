"""Float multiband data kept as stored, NaN as nodata, and shaped TIFFs read as numpy holds them (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import segsoft
from segsoft.errors import SegsoftError
from segsoft.io import Image, read_image


def two_fields(values_a, values_b, h: int = 24, w: int = 30, seed: int = 0):
    """An (h, w, C) float scene of two halves differing only in their (float) band values, plus its truth."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    arr = np.where(truth[..., None] == 1, b, a) + rng.normal(0, 0.02 * np.abs(b - a).max(), (h, w, a.size))
    return arr.astype(np.float32), truth


def agreement(labels, truth) -> float:
    same = float(np.mean(labels == truth))
    return max(same, 1.0 - same)


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=120, env=env
    )


def error(call) -> str:
    with pytest.raises(SegsoftError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "a, b",
    [
        ([-0.6, -0.2, 0.1, -0.9, 0.3], [0.4, 0.7, -0.1, 0.5, 0.8]),  # NDVI-like, with negatives
        ([1200.0, 3400.0, -150.0, 8000.0, 2500.0], [1800.0, 2600.0, 400.0, 6000.0, 4100.0]),  # reflectance x 10000
    ],
)
def test_float_bands_keep_their_values_and_segment(tmp_path, a, b):
    arr, truth = two_fields(a, b)
    np.save(tmp_path / "f.npy", arr)
    tifffile.imwrite(tmp_path / "f.tif", arr, photometric="minisblack", planarconfig="contig")
    for name in ("f.npy", "f.tif"):
        img = read_image(tmp_path / name)
        assert img.bands.dtype == np.float32 and img.mask is None
        np.testing.assert_array_equal(img.bands, arr)
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0  # the display composite is stretched
        seg = segsoft.segment(tmp_path / name, k=2, seed=0)
        assert agreement(seg.labels, truth) >= 0.99, name
    np.testing.assert_array_equal(Image.from_array(arr.astype(np.float64)).bands, arr)


def test_float_bands_of_thousands_are_not_a_constant_band(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.random((16, 16, 5)) * 10000 - 2000)
    seg = segsoft.segment(tmp_path / "f.npy", k=2, seed=0)  # was: "band 0 is constant (0 in every used pixel)"
    assert seg.probabilities.shape == (16, 16, 2)


def test_colour_and_grey_floats_clip_an_overshoot_and_refuse_other_ranges(tmp_path):
    rgb = np.full((4, 4, 3), 0.5, np.float32)
    rgb[0, 0] = (-0.05, 1.08, 0.25)  # a resampling filter's overshoot: clipped
    img = Image.from_array(rgb)
    assert img.pixels[0, 0].tolist() == [0.0, 1.0, 0.25] and img.is_color
    assert "NaN or infinite" in error(lambda: Image.from_array(np.array([[0.5, np.nan]], np.float32)))
    # 0-255 floats clipped to [0, 1] would be a white picture: refused, saying what to do
    msg = error(lambda: Image.from_array(rgb * 255))
    assert msg.startswith("array: float colour values must lie in [0, 1], these span -12.75 to 275.4")
    assert "divide 0-255 data by 255" in msg
    assert "float grey values" in error(lambda: Image.from_array(np.array([[0.5, -0.2]], np.float32)))
    np.save(tmp_path / "f255.npy", rgb * 255)
    r = cli("run", tmp_path / "f255.npy", "-k", "2", "-o", tmp_path / "o")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"segsoft: error: {tmp_path / 'f255.npy'}: " + msg.removeprefix("array: ")


def test_nan_pixels_are_masked_and_not_clustered(tmp_path):
    arr, truth = two_fields([-0.5, 0.2, 0.1, 0.3], [0.5, 0.6, -0.2, 0.0])
    arr[:3, :4, 1] = np.nan
    arr[-1, -1, :] = np.inf
    nodata = np.zeros(truth.shape, bool)
    nodata[:3, :4] = nodata[-1, -1] = True
    np.save(tmp_path / "n.npy", arr)
    tifffile.imwrite(tmp_path / "n.tif", arr, photometric="minisblack", planarconfig="contig")
    for name in ("n.npy", "n.tif"):
        img = read_image(tmp_path / name)
        np.testing.assert_array_equal(img.mask, ~nodata)
        assert np.isfinite(img.bands).all() and np.isfinite(img.pixels).all()
        np.testing.assert_array_equal(img.bands[~nodata], arr[~nodata])
        seg = segsoft.segment(tmp_path / name, k=2, seed=0)
        assert np.isnan(seg.probabilities[nodata]).all()
        assert np.isfinite(seg.probabilities[~nodata]).all()
        assert np.mean(seg.labels[~nodata] == truth[~nodata]) in (
            pytest.approx(1.0, abs=0.01),
            pytest.approx(0.0, abs=0.01),
        )


def test_nan_combines_with_a_given_mask():
    arr = np.random.default_rng(2).random((4, 5, 6))
    arr[0, 0, 2] = np.nan
    mask = np.ones((4, 5), bool)
    mask[3, 4] = False
    img = Image.from_array(arr, mask=mask)
    assert img.n_used == 18 and not img.mask[0, 0] and not img.mask[3, 4]


def test_all_nan_is_every_pixel_transparent(tmp_path):
    np.save(tmp_path / "all.npy", np.full((3, 4, 5), np.nan, np.float32))
    message = error(lambda: read_image(tmp_path / "all.npy"))
    assert message == f"{tmp_path / 'all.npy'}: every pixel is transparent"


def test_float64_beyond_float32_is_refused(tmp_path):
    arr = np.ones((3, 4, 5))
    arr[0, 0, 0] = 1e300
    np.save(tmp_path / "big.npy", arr)
    message = error(lambda: read_image(tmp_path / "big.npy"))
    assert message.startswith(str(tmp_path / "big.npy")) and "float32" in message


@pytest.mark.parametrize("shape", [(60, 70, 224), (5, 50, 16), (6, 10, 12), (40, 30, 6)])
def test_plain_tifffile_stack_reads_as_the_npy_would(tmp_path, shape):
    cube = (np.random.default_rng(3).random(shape) * 6e4).astype(np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", cube)
    np.save(tmp_path / "h.npy", cube)
    with tifffile.TiffFile(tmp_path / "h.tif") as tif:
        assert tif.is_shaped and tif.series[0].axes == "QYX"
    img = read_image(tmp_path / "h.tif")
    assert (img.height, img.width, img.n_bands) == shape
    np.testing.assert_array_equal(img.bands, read_image(tmp_path / "h.npy").bands)


def test_channels_first_with_axes_metadata_is_read_by_its_axes(tmp_path):
    stack = (np.random.default_rng(4).random((5, 50, 16)) * 6e4).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cyx.tif", stack, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "sep.tif", stack, photometric="minisblack", planarconfig="separate")
    for name in ("cyx.tif", "sep.tif"):
        img = read_image(tmp_path / name)
        assert (img.height, img.width, img.n_bands) == (50, 16, 5), name
        np.testing.assert_array_equal(img.bands, np.moveaxis(stack, 0, -1) / np.float32(65535))
