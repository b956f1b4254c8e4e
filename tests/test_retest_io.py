"""Failures the adversarial re-test of issue 10 found in reading, naming and counting.

* Output folder names derived from long input names fit the 255-byte limit
  of a file name, with room for the collision suffixes; so do the temporary
  names of atomic writes.
* ``read_image`` records what identified the file it actually read.
* An int32 TIFF is scaled by the int32 range, whatever its values.
* A damaged PNG/JPEG/... says so instead of "not an image".
* ``segment`` refuses too many clusters before computing any feature, in
  singular where there is one colour.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

import segsoft
import segsoft.io as sio
from segsoft.errors import SegsoftError
from segsoft.io import atomic_path, atomic_write_bytes, find_images, read_image, safe_component

ROOT = Path(__file__).resolve().parents[1]
segment_module = sys.modules["segsoft.segment"]  # the module: segsoft.segment is also the function
NAME_MAX = 255


def cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def read_error(path: Path) -> str:
    with pytest.raises(SegsoftError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def two_colour_png(path: Path) -> Path:
    a = np.zeros((8, 8, 3), np.uint8)
    a[:, 4:] = (200, 40, 10)
    PILImage.fromarray(a).save(path)
    return path


# ---------------------------------------------------------------- 1. long names


def test_safe_component_keeps_long_names_within_the_limit_and_distinct():
    for name in ("A" * 251, "é" * 200, os.fsdecode(b"\xff" * 300), "a" * 199 + "é" * 10):
        safe = safe_component(name)
        raw = os.fsencode(safe)
        assert len(raw) <= 200, (name[:10], len(raw))
        assert safe == safe_component(safe)  # a fixed point: image_folder may apply it again
        assert len(raw) + len(b"_jpeg_99") <= NAME_MAX
    long = safe_component("A" * 251)
    assert long.startswith("A" * 150) and long[-9] == "~" and int(long[-8:], 16) >= 0
    # two long names sharing their first 200 bytes stay apart
    assert safe_component("B" * 240 + "1") != safe_component("B" * 240 + "2")
    # a multi-byte character is never cut in half
    assert safe_component("é" * 200).encode("utf-8").decode("utf-8")
    assert safe_component("photo") == "photo" and safe_component("A" * 200) == "A" * 200


def test_colliding_long_stems_stay_within_the_limit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["A" * 251 + ".png", "A" * 251 + ".PNG", "A" * 251 + ".jpg", "z.png"]
    for name in names:
        two_colour_png(folder / name)
    stems = [stem for _, stem in find_images([folder])]
    assert len(stems) == 4
    assert len({str(s).casefold() for s in stems}) == 4
    for stem in stems:
        assert len(os.fsencode(stem.name)) <= 200, stem
        assert safe_component(stem.name) == stem.name


def test_batch_processes_every_image_with_a_255_byte_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("A" * 251 + ".png", "A" * 251 + ".PNG", "A" * 251 + ".jpg", "z.png"):
        two_colour_png(folder / name)
    proc = cli("batch", "in", "-k", "2", "-o", "res", "-j", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    made = [d for d in (tmp_path / "res").iterdir() if d.is_dir()]
    assert len(made) == 4, sorted(d.name for d in made)
    for d in made:
        assert (d / "model.json").is_file() and (d / "labels.png").is_file(), d.name


def test_atomic_write_to_a_long_name_keeps_the_temporary_name_short(tmp_path):
    target = tmp_path / ("m" * 249 + ".json")  # 254 bytes
    assert len(os.fsencode(target.name)) == 254
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    with atomic_path(tmp_path / ("p" * 250 + ".npy")) as tmp:
        assert len(os.fsencode(tmp.name)) <= NAME_MAX and tmp.name.endswith(".npy")
        np.save(tmp, np.arange(3))
    assert sorted(len(os.fsencode(p.name)) for p in tmp_path.iterdir()) == [254, 254]


def test_save_model_to_a_254_byte_name_through_the_cli(tmp_path):
    two_colour_png(tmp_path / "p.png")
    model = "m" * 249 + ".json"
    proc = cli("run", "p.png", "-k", "2", "-o", "out", "--save-model", model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / model).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- 2. what was read


def test_read_image_records_the_stat_of_the_file_it_read(tmp_path):
    path = two_colour_png(tmp_path / "p.png")
    img = read_image(path)
    st = os.stat(path)
    assert img.source_stat == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}
    assert img.with_display([0]).source_stat == img.source_stat
    assert segsoft.Image.from_array(np.zeros((2, 2), np.uint8)).source_stat is None


def test_source_stat_is_that_of_the_handle_even_if_the_file_is_swapped(tmp_path, monkeypatch):
    path = two_colour_png(tmp_path / "p.png")
    before = os.stat(path)
    other = tmp_path / "other.png"
    PILImage.new("RGB", (5, 5), (1, 2, 3)).save(other)
    original = sio._read_handle

    def swapped_meanwhile(f, *args, **kwargs):
        image = original(f, *args, **kwargs)
        os.replace(other, path)  # another photo takes the name while this one is processed
        return image

    monkeypatch.setattr(sio, "_read_handle", swapped_meanwhile)
    img = read_image(path)
    assert img.width == 8  # the first photo's pixels
    assert (img.source_stat["ino"], img.source_stat["size"]) == (before.st_ino, before.st_size)
    assert img.source_stat["ino"] != os.stat(path).st_ino


# ---------------------------------------------------------------- 3. int32 scale


def test_int32_tiff_scale_does_not_depend_on_its_content(tmp_path):
    ii = np.iinfo(np.int32)
    small = np.array([[0, 1000], [40_000, 65535]], np.int32)
    big = small.copy()
    big[1, 1] = 65536  # one pixel past 16 bits
    tifffile.imwrite(tmp_path / "s.tif", small)
    PILImage.fromarray(big).save(tmp_path / "b.tif")
    a = read_image(tmp_path / "s.tif")
    PILImage.fromarray(small).save(tmp_path / "p.tif")
    b = read_image(tmp_path / "b.tif")
    p = read_image(tmp_path / "p.tif")
    expected = ((small.astype(np.float64) - ii.min) / (float(ii.max) - ii.min)).astype(np.float32)
    for img in (a, p):
        assert img.bit_depth == 32
        np.testing.assert_array_equal(img.pixels[..., 0], expected)
    assert b.bit_depth == 32
    np.testing.assert_array_equal(b.pixels[0, :, 0], p.pixels[0, :, 0])  # the same values, the same picture


def test_int32_multiband_tiff_maps_by_the_int32_range(tmp_path):
    ii = np.iinfo(np.int32)
    arr = np.zeros((4, 4, 5), np.int32)
    arr[..., 1] = 65535
    tifffile.imwrite(tmp_path / "m.tif", arr, planarconfig="contig", photometric="minisblack")
    img = read_image(tmp_path / "m.tif")
    assert img.n_bands == 5 and img.bit_depth == 32
    expected = (np.array([0, 65535], np.float64) - ii.min) / (float(ii.max) - ii.min)
    np.testing.assert_array_equal(img.bands[0, 0, :2], expected.astype(np.float32))


def test_sources_without_a_32_bit_type_keep_the_16_bit_exception(tmp_path):
    values = np.array([[0, 1000], [40_000, 65535]], np.uint16)
    pgm = tmp_path / "g.pgm"
    pgm.write_bytes(b"P5\n2 2\n65535\n" + values.astype(">u2").tobytes())
    png = tmp_path / "g.png"
    PILImage.fromarray(values).save(png)
    for path in (pgm, png):
        img = read_image(path)
        assert img.bit_depth == 16, (path.name, img.mode)
        np.testing.assert_array_equal(img.pixels[..., 0], values.astype(np.float32) / np.float32(65535))


# ---------------------------------------------------------------- 4. damaged known formats


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (16, 16), (10, 200, 30)).save(buf, fmt)
    return buf.getvalue()


def test_png_with_a_bad_header_checksum_is_corrupt_not_unknown(tmp_path):
    data = bytearray(encoded("PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    path = tmp_path / "x.png"
    path.write_bytes(bytes(data))
    message = read_error(path)
    assert message.startswith(f"{path}: truncated or corrupt PNG data ("), message
    assert "checksum" in message and "Pillow cannot identify" not in message
    proc = cli("run", path, "-k", "2", "-o", tmp_path / "out")
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "x.png: truncated or corrupt PNG data (" in proc.stderr


@pytest.mark.parametrize(
    "fmt,label,cut", [("JPEG", "JPEG", 20), ("GIF", "GIF", 10), ("BMP", "BMP", 16), ("WEBP", "WebP", 14)]
)
def test_known_formats_cut_in_their_header_are_corrupt(tmp_path, fmt, label, cut):
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encoded(fmt)[:cut])
    message = read_error(path)
    assert f"truncated or corrupt {label} data (" in message, message


def test_unknown_bytes_are_still_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x00\x01\x02\x03" * 64)
    assert read_error(path).endswith("not an image (Pillow cannot identify it)")


# ---------------------------------------------------------------- 5. distinct check first


@pytest.fixture
def no_features(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("features computed before the distinct-colour check")

    monkeypatch.setattr(segment_module, "extract", refuse)


def test_constant_image_is_refused_before_any_feature(no_features):
    flat = np.full((300, 400, 3), 90, np.uint8)
    with pytest.raises(SegsoftError, match=r"k=2 is more than the 1 distinct colour in the image$"):
        segsoft.segment(flat, k=2)
    with pytest.raises(SegsoftError, match=r"the 1 distinct colour in"):
        segsoft.segment(flat, k="auto", k_range=(2, 5))
    with pytest.raises(SegsoftError, match=r"k=2 is more than the 1 grey level in the image$"):
        segsoft.segment(flat, k=2, color="gray")
    with pytest.raises(SegsoftError, match=r"k=2 is more than the 1 distinct value in the image$"):
        segsoft.segment(np.full((20, 20, 5), 7, np.uint16), k=2)


def test_distinct_check_counts_only_the_used_pixels_and_chosen_bands(no_features):
    rgba = np.zeros((50, 50, 4), np.uint8)
    rgba[..., :3] = (20, 30, 40)
    rgba[..., 3] = 255
    rgba[:10, :, :3], rgba[:10, :, 3] = (250, 0, 0), 0  # another colour, but transparent
    with pytest.raises(SegsoftError, match="the 1 distinct colour in"):
        segsoft.segment(rgba, k=2)
    bands = np.zeros((20, 20, 5), np.float32)
    bands[:, 10:, 0] = 1.0  # band 0 varies, band 2 does not
    with pytest.raises(SegsoftError, match="k=2 is more than the 1 distinct value"):
        segsoft.segment(bands, k=2, color="bands", bands=[2])


def test_plural_and_the_feature_check_for_many_to_one_spaces():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5], img[:, 5:] = (0, 0, 126), (35, 2, 3)  # two colours of one luminance
    with pytest.raises(SegsoftError, match="k=3 is more than the 2 distinct colours in the image"):
        segsoft.segment(img, k=3)
    with pytest.raises(SegsoftError, match="k=2 is more than the 1 grey level in the image"):
        segsoft.segment(img, k=2, color="gray")
    assert segsoft.segment(img, k="auto", k_range=(2, 6)).k == 2
