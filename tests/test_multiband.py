"""Issue 11, items 1 and 2: images of any number of bands, read by their own metadata, segmented on their bands."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from test_io import write_png16

import segsoft
from segsoft.errors import SegsoftError
from segsoft.features import FeatureSpec, extract
from segsoft.io import Image, count_frames, display_composite, read_frames, read_image


def six_band_scene(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two clusters (left, right half) with the same distribution in bands 0-2, apart only in bands 3-5."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    arr = rng.normal(0.5, 0.08, (h, w, 6))
    arr[..., 3:] += np.where(truth[..., None] == 1, 0.15, -0.15)
    return np.clip(arr, 0, 1).astype(np.float32), truth


def agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels that agree with the truth under the better of the two label permutations."""
    same = float(np.mean(labels == truth))
    return max(same, 1.0 - same)


def one_line_error(call) -> str:
    with pytest.raises(SegsoftError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- features


def test_six_bands_split_only_by_bands_3_to_5():
    arr, truth = six_band_scene()
    seg = segsoft.segment(arr, k=2, seed=0)
    assert seg.spec.color == "bands" and seg.spec.feature_names == [f"b{i}" for i in range(6)]
    assert agreement(seg.labels, truth) >= 0.99
    dropped = segsoft.segment(arr, k=2, bands=(0, 1, 2), seed=0)
    assert dropped.spec.bands == (0, 1, 2)
    assert agreement(dropped.labels, truth) < 0.7  # ~50 %: the first three bands carry nothing


def test_memberships_do_not_depend_on_the_display_choice():
    arr, _ = six_band_scene(24, 24)
    a = segsoft.segment(arr, k=2, seed=0)
    b = segsoft.segment(arr, k=2, seed=0, display_bands=(5, 4, 3))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert not np.array_equal(a.image.pixels, b.image.pixels)
    assert b.settings["display_bands"] == [5, 4, 3] and b.settings["color"] == "bands"


def test_spec_round_trips_bands_and_names():
    arr, _ = six_band_scene(16, 16)
    seg = segsoft.segment(arr, k=2, bands=(1, 3, 5), spatial_weight=0.5, seed=0)
    data = seg.spec.to_dict()
    assert data["bands"] == [1, 3, 5] and data["names"] == ["b1", "b3", "b5", "x", "y"]
    again = FeatureSpec.from_dict(data)
    assert again == seg.spec
    np.testing.assert_array_equal(extract(Image.from_array(arr), again), extract(Image.from_array(arr), seg.spec))


def test_apply_model_needs_the_bands_it_was_made_of():
    arr, _ = six_band_scene(16, 16)
    seg = segsoft.segment(arr, k=2, seed=0)
    same = segsoft.segment.__globals__["apply_model"](arr, seg.model, seg.spec)
    np.testing.assert_allclose(same.probabilities, seg.probabilities, atol=1e-6)
    message = one_line_error(lambda: segsoft.segment.__globals__["apply_model"](arr[..., :5], seg.model, seg.spec))
    assert "6 bands" in message and "5 bands" in message


def test_position_features_and_smoothing_work_on_bands():
    arr, truth = six_band_scene(24, 24)
    seg = segsoft.segment(arr, k=2, spatial_weight=0.3, smoothing=1.0, seed=0)
    assert seg.spec.n_features == 8 and agreement(seg.labels, truth) >= 0.99


def test_grey_and_colour_images_keep_their_old_features():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    seg = segsoft.segment(grey, k=2, seed=0)
    assert seg.spec.color == "lab" and seg.image.bands.shape == (8, 8, 1)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.from_array(rgb)
    assert img.bands is img.pixels and img.is_color and img.band_names == ("R", "G", "B")
    assert segsoft.segment(rgb, k=2, seed=0).spec.color == "lab"


def test_k_above_distinct_values_says_values():
    arr = np.zeros((6, 6, 5), np.float32)
    arr[:, 3:] = 0.5
    arr[..., 0] = np.linspace(0, 1, 6)[None, :] > 0.4  # two values per band
    message = one_line_error(lambda: segsoft.segment(arr, k=3))
    assert "distinct values" in message


# ---------------------------------------------------------------- reading


def test_planar_and_contiguous_tiffs_give_identical_bands_and_memberships(tmp_path):
    arr, _ = six_band_scene(20, 24)
    u16 = np.round(arr * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", u16, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(u16, -1, 0), photometric="minisblack", planarconfig="separate")
    c, p = read_image(tmp_path / "c.tif"), read_image(tmp_path / "p.tif")
    assert c.bands.shape == (20, 24, 6) and c.bit_depth == 16
    np.testing.assert_array_equal(c.bands, p.bands)
    np.testing.assert_array_equal(c.bands, u16 / np.float32(65535))
    a = segsoft.segment(tmp_path / "c.tif", k=2, seed=0)
    b = segsoft.segment(tmp_path / "p.tif", k=2, seed=0)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_channel_stacks_become_bands_with_their_names(tmp_path):
    stack = np.random.default_rng(1).integers(0, 4096, (4, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ome.tif", stack, ome=True, metadata={"axes": "CYX", "Channel": {"Name": list("ABCD")}})
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "q.tif", stack, photometric="minisblack", metadata={"axes": "CYX"})
    # a plain tifffile.imwrite (shaped, series axes QYX) is read as numpy holds it: (H, W, C) = (4, 10, 12)
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    assert (read_image(tmp_path / "plain.tif").height, read_image(tmp_path / "plain.tif").n_bands) == (4, 12)
    for name in ("ome.tif", "ij.tif", "q.tif"):
        img = read_image(tmp_path / name)
        assert img.n_bands == 4 and (img.height, img.width) == (10, 12), name
        np.testing.assert_array_equal(img.bands, np.moveaxis(stack, 0, -1) / np.float32(65535))
    assert read_image(tmp_path / "ome.tif").band_names == ("A", "B", "C", "D")


def test_npy_stack_of_seven_bands_runs_end_to_end(tmp_path):
    arr, truth = six_band_scene(16, 20)
    seven = np.concatenate([arr, arr[..., :1]], axis=-1)
    np.save(tmp_path / "s.npy", seven)
    seg = segsoft.segment(tmp_path / "s.npy", k=2, seed=0)
    assert seg.image.n_bands == 7 and seg.probabilities.shape == (16, 20, 2)
    assert agreement(seg.labels, truth) >= 0.99
    np.savez(tmp_path / "s.npz", image=seven, other=np.zeros(3))
    np.testing.assert_array_equal(read_image(tmp_path / "s.npz").bands, seven)


def test_npy_with_a_lying_header_or_objects_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    assert "objects" in one_line_error(lambda: read_image(tmp_path / "o.npy"))
    np.save(tmp_path / "t.npy", np.zeros((8, 8, 3), np.uint8))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-10])
    assert str(tmp_path / "t.npy") in one_line_error(lambda: read_image(tmp_path / "t.npy"))


def gif_frames(tmp_path, n: int = 5):
    frames = [PILImage.new("L", (6, 4), 40 * i) for i in range(n)]
    path = tmp_path / "x.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def test_multi_frame_gif_needs_a_page(tmp_path):
    path = gif_frames(tmp_path)
    message = one_line_error(lambda: read_image(path))
    assert message == (
        f"{path}: has 5 frames; choose one with --page N (0-4), or segment every frame with segsoft batch --frames"
    )
    third = read_image(path, page=2)
    assert third.frame == 2 and abs(float(third.pixels[0, 0, 0]) - 80 / 255) < 1e-6
    assert count_frames(path) == 5
    assert "--page 5 is past the last page" in one_line_error(lambda: read_image(path, page=5))


def test_read_frames_yields_every_frame(tmp_path):
    path = gif_frames(tmp_path, 4)
    frames = list(read_frames(path))
    assert [f.frame for f in frames] == [0, 1, 2, 3]
    assert [round(float(f.pixels[0, 0, 0]) * 255) for f in frames] == [0, 40, 80, 120]


def test_tiff_pages_that_are_not_channels_are_frames(tmp_path):
    pages = [PILImage.new("L", (5, 4), v) for v in (0, 90, 180)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    assert "has 3 frames" in one_line_error(lambda: read_image(tmp_path / "p.tif"))
    assert round(float(read_image(tmp_path / "p.tif", page=1).bands[0, 0, 0]) * 255) == 90
    assert count_frames(tmp_path / "p.tif") == 3


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, bool]
)
def test_every_integer_dtype_maps_into_unit_range(dtype, channels):
    if dtype is bool:
        arr = np.zeros((3, 4, channels), bool)
        arr[0] = True
    else:
        info = np.iinfo(dtype)
        arr = np.resize(np.array([info.min, info.max, 0, 1], dtype=dtype), (3, 4, channels))
    img = Image.from_array(arr)
    assert img.bands.dtype == np.float32 and img.n_bands == channels
    assert float(img.bands.min()) == 0.0 and float(img.bands.max()) == 1.0
    assert img.pixels.shape == (3, 4, 3) and 0.0 <= img.pixels.min() <= img.pixels.max() <= 1.0


def test_sixteen_bit_rgb_png_keeps_every_value(tmp_path):
    values = np.random.default_rng(2).integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    img = read_image(write_png16(tmp_path / "c16.png", values))
    assert img.bit_depth == 16 and img.is_color
    np.testing.assert_array_equal(np.round(img.bands.astype(np.float64) * 65535).astype(np.uint16), values)


def test_display_composite_stretches_for_display_only():
    bands = np.linspace(0.4, 0.6, 10 * 10 * 5, dtype=np.float32).reshape(10, 10, 5)
    shown = display_composite(bands)
    assert shown.shape == (10, 10, 3) and float(shown.min()) == 0.0 and float(shown.max()) == 1.0
    grey = display_composite(bands, [2])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    img = Image.from_array(bands)
    assert img.with_display([4, 3, 2]).bands is img.bands


# ---------------------------------------------------------------- bad input, one line each


def test_band_index_out_of_range():
    arr, _ = six_band_scene(8, 8)
    message = one_line_error(lambda: segsoft.segment(arr, k=2, bands=(1, 2, 6)))
    assert "--bands 6 is out of range" in message and "6 bands" in message


def test_display_bands_of_wrong_length_or_range():
    img = Image.from_array(six_band_scene(8, 8)[0])
    assert one_line_error(lambda: img.with_display([1, 2])).startswith("--display-bands needs 1 band")
    assert "--display-bands 9 is out of range" in one_line_error(lambda: img.with_display([9, 1, 2]))


def test_page_past_the_last_page(tmp_path):
    PILImage.new("RGB", (4, 4)).save(tmp_path / "one.png")
    message = one_line_error(lambda: read_image(tmp_path / "one.png", page=3))
    assert message.startswith(f"{tmp_path / 'one.png'}: --page 3 is past the last page")


def test_colour_space_on_a_multiband_image(tmp_path):
    np.save(tmp_path / "six.npy", six_band_scene(8, 8)[0])
    message = one_line_error(lambda: segsoft.segment(tmp_path / "six.npy", k=2, color="lab"))
    assert (
        message == f"{tmp_path / 'six.npy'}: --color lab needs an RGB image; this one has 6 bands (use --color bands)"
    )
    assert "--bands needs --color bands" in one_line_error(
        lambda: segsoft.segment(np.zeros((4, 4, 3)), color="lab", bands=(0,))
    )


def test_constant_band_is_refused_by_name():
    arr, _ = six_band_scene(8, 8)
    arr[..., 3] = 0.25
    message = one_line_error(lambda: segsoft.segment(arr, k=2))
    assert "band 3 (b3) is constant" in message and "--bands 0,1,2,4,5" in message
    assert segsoft.segment(arr, k=2, bands=(0, 1, 2, 4, 5)).k == 2
