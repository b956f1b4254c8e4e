"""Input handling a user can trust (issue 10, the io items).

Integer images of every width map onto [0, 1] by their type's full range;
FIFOs and devices are refused instead of blocking; ``**`` patterns end on
trees with symlink cycles; stems are safe folder names; and reading a file
puts nothing on the terminal but the one error line.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import features

import segsoft.io as sio
from segsoft.errors import SegsoftError
from segsoft.io import Image, as_image, atomic_path, find_images, inside, read_image, safe_component

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
ROOT = Path(__file__).resolve().parents[1]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, needle: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


def read_error(path: Path) -> str:
    with pytest.raises(SegsoftError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def noise_png(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # format given: Pillow does not see ".png" in names such as "...png"
    PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def extremes(dtype: type) -> np.ndarray:
    """Sorted distinct values from iinfo.min to iinfo.max, including 0, 1 and the neighbours of the ends."""
    ii = np.iinfo(dtype)
    values = {ii.min, ii.min + 1, ii.min // 2, 0, 1, ii.max // 3, ii.max // 2, ii.max - 1, ii.max}
    return np.array(sorted(values), dtype=dtype)


def expected_unit(values: np.ndarray) -> np.ndarray:
    """(v - iinfo.min) / (iinfo.max - iinfo.min), in exact integer arithmetic before the last rounding."""
    ii = np.iinfo(values.dtype)
    return np.array([(int(v) - ii.min) / (ii.max - ii.min) for v in values.ravel()]).reshape(values.shape)


# --------------------------------------------------------------------------
# item 4: integer images of every width


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_from_array_maps_every_integer_dtype_onto_its_full_range(dtype):
    values = extremes(dtype)
    img = Image.from_array(values[None, :])
    p = img.pixels[0, :, 0].astype(np.float64)
    assert p[0] == 0.0 and p[-1] == 1.0
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p) >= 0)  # monotone
    np.testing.assert_allclose(p, expected_unit(values), rtol=0, atol=1e-7)
    assert img.bit_depth == 8 * np.dtype(dtype).itemsize and img.is_gray
    np.testing.assert_array_equal(img.pixels[..., 0], img.pixels[..., 2])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.uint16], ids=lambda d: np.dtype(d).name)
def test_small_integer_types_keep_every_level_exactly(dtype):
    ii = np.iinfo(dtype)
    values = np.arange(ii.min, ii.max + 1, dtype=np.int64).astype(dtype)
    p = Image.from_array(values.reshape(1, -1)).pixels[0, :, 0]
    top = 255 if ii.bits == 8 else 65535
    np.testing.assert_array_equal(np.round(p.astype(np.float64) * top), values.astype(np.int64) - ii.min)
    assert np.all(np.diff(p) > 0)


def test_dark_uint32_picture_stays_dark_and_negative_values_cannot_escape():
    dark = Image.from_array(np.array([[0, 1000, 70000]], np.uint32))
    assert float(dark.pixels.max()) < 1e-4
    ii = np.iinfo(np.int32)
    full = Image.from_array(np.array([[ii.min, -1, 0, ii.max]], np.int32)).pixels[0, :, 0]
    assert full.tolist()[0] == 0.0 and full.tolist()[-1] == 1.0 and np.all(np.diff(full) >= 0)


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint32, np.uint64], ids=lambda d: np.dtype(d).name)
def test_integer_alpha_masks_where_it_maps_to_zero(dtype):
    ii = np.iinfo(dtype)
    rgba = np.full((1, 3, 4), ii.max, dtype=dtype)
    rgba[0, 0, 3] = ii.min
    rgba[0, 1, 3] = ii.min + 1
    img = Image.from_array(rgba)
    assert img.mask.tolist() == [[False, True, True]]


@pytest.mark.parametrize("arr", [np.zeros((2, 2), np.complex64), np.array([["a", "b"]], object)], ids=["complex", "object"])
def test_from_array_still_refuses_non_numeric_dtypes(arr):
    with pytest.raises(SegsoftError, match="unsupported array dtype"):
        Image.from_array(arr)


def test_big_endian_arrays_map_like_native_ones():
    values = extremes(np.int32)[None, :]
    np.testing.assert_array_equal(
        Image.from_array(values.astype(">i4")).pixels, Image.from_array(values.astype("<i4")).pixels
    )


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("layout", ["gray", "rgb"])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_tiffs_are_read_by_their_full_range(tmp_path, dtype, layout, byteorder):
    values = extremes(dtype)
    gray = np.resize(values, (3, 4)).astype(dtype)
    arr = gray if layout == "gray" else np.stack([gray, gray[::-1], np.roll(gray, 1)], axis=-1)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, arr, byteorder=byteorder, photometric="minisblack" if layout == "gray" else "rgb")
    img = read_image(path)
    assert float(img.pixels.min()) == 0.0 and float(img.pixels.max()) == 1.0
    np.testing.assert_array_equal(img.pixels, Image.from_array(arr).pixels)
    assert img.is_gray == (layout == "gray")


def test_pillow_mode_i_outside_16_bits_uses_the_int32_range():
    ii = np.iinfo(np.int32)
    full = as_image(PILImage.fromarray(np.array([[ii.min, 0, ii.max]], np.int32)))
    assert full.pixels[0, :, 0].tolist() == [0.0, 0.5, 1.0] and full.bit_depth == 32
    # the documented exception: values all in 0..65535 are 16-bit data in Pillow's 32-bit container
    small = as_image(PILImage.fromarray(np.array([[0, 65535]], np.int32)))
    assert small.pixels[0, :, 0].tolist() == [0.0, 1.0] and small.bit_depth == 16


def test_full_range_int32_tiff_through_the_cli(tmp_path):
    rng = np.random.default_rng(3)
    ii = np.iinfo(np.int32)
    arr = rng.integers(ii.min, ii.max, size=(16, 16), dtype=np.int64, endpoint=True).astype(np.int32)
    arr[0, 0], arr[0, 1] = ii.min, ii.max
    tifffile.imwrite(tmp_path / "wide.tif", arr)
    proc = cli("run", str(tmp_path / "wide.tif"), "-k", "2", "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    record = json.loads((tmp_path / "out" / "wide" / "model.json").read_text())
    for cluster in record["clusters"]:
        assert all(0 <= c <= 255 for c in cluster["mean_rgb"]), cluster


# --------------------------------------------------------------------------
# item 7: only regular files


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    yield path
    # should a regression block a reader, a writer coming and going releases it
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        pass
    else:
        os.close(fd)


def read_in_thread(path: Path, timeout: float = 5.0) -> BaseException | object:
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_attempt(path)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"reading {path} blocked"
    return result[0]


def _attempt(path: Path) -> BaseException | object:
    try:
        return read_image(path)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc


def test_read_image_refuses_a_fifo_without_blocking(fifo):
    result = read_in_thread(fifo)
    assert isinstance(result, SegsoftError)
    assert str(result) == f"{fifo}: not a regular file (a FIFO)"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_read_image_refuses_character_devices(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    result = read_in_thread(Path(device))
    assert isinstance(result, SegsoftError) and str(result) == f"{device}: not a regular file (a character device)"


def test_read_image_refuses_a_socket():
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets")
    with tempfile.TemporaryDirectory(dir="/tmp" if os.path.isdir("/tmp") else None) as folder:
        path = Path(folder) / "s.png"  # short: socket paths are limited to about 100 bytes
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            assert str(read_in_thread(path)) == f"{path}: not a regular file (a socket)"


@needs_fifo
def test_a_link_to_a_fifo_is_refused_and_a_link_to_a_file_is_read(tmp_path, fifo):
    (tmp_path / "to_pipe.png").symlink_to(fifo)
    assert str(read_in_thread(tmp_path / "to_pipe.png")) == f"{tmp_path / 'to_pipe.png'}: not a regular file (a FIFO)"
    noise_png(tmp_path / "real.png")
    (tmp_path / "to_real.png").symlink_to(tmp_path / "real.png")
    assert read_image(tmp_path / "to_real.png").width == 12


def test_find_images_lists_no_fifo_from_folders_or_patterns(tmp_path, fifo, monkeypatch):
    noise_png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "noext")  # without an extension it would be opened to look inside
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "deep.png")
    monkeypatch.chdir(tmp_path)
    for inputs, recursive in (([tmp_path], False), ([tmp_path], True), (["*"], False), (["**/*"], False)):
        found = [p.name for p, _ in find_images(inputs, recursive=recursive)]
        assert found == ["a.png"], (inputs, found)
    # named explicitly it is listed, to be reported as a failure when read
    assert [p.name for p, _ in find_images([fifo])] == ["pipe.png"]


def test_run_and_batch_refuse_a_fifo(tmp_path, fifo):
    proc = cli("run", str(fifo), "-k", "2", "-o", str(tmp_path / "out"), timeout=60)
    assert_one_error_line(proc, f"{fifo}: not a regular file (a FIFO)")
    good = noise_png(tmp_path / "good.png")
    proc = cli("batch", str(fifo), str(good), "-k", "2", "-o", str(tmp_path / "bout"), "--jobs", "1", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "not a regular file (a FIFO)" in proc.stderr
    rows = (tmp_path / "bout" / "summary.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[1] for row in rows) == ["failed", "ok"]


# --------------------------------------------------------------------------
# item 8: ** patterns over symlink cycles


@pytest.fixture
def cyclic_tree(tmp_path):
    """tree/{x, a/y, a/b/z, c/w}.png with two cycles: a/b/up -> .. and c/loop -> the tree."""
    tree = tmp_path / "tree"
    for folder in ("a/b", "c", ".hidden"):
        (tree / folder).mkdir(parents=True)
    for i, name in enumerate(("x.png", "a/y.png", "a/b/z.png", "c/w.png", ".hidden/h.png")):
        noise_png(tree / name, seed=i)
    (tree / "a" / "b" / "up").symlink_to("..", target_is_directory=True)
    (tree / "c" / "loop").symlink_to(tree, target_is_directory=True)
    return tree


FIND = """
import json, os, sys, time
from segsoft.io import find_images
start = time.perf_counter()
found = find_images(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - start,
                  "found": [(str(p), stem.as_posix(), os.path.realpath(p)) for p, stem in found]}))
"""


def find_in_subprocess(cwd: Path, *inputs: str) -> dict:
    """find_images in a child with a timeout: glob.glob would never return on a cycle."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", FIND, *inputs], capture_output=True, text=True, timeout=30, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_star_star_pattern_ends_on_symlink_cycles(cyclic_tree):
    result = find_in_subprocess(cyclic_tree.parent, "tree/**/*.png")
    assert result["seconds"] < 5
    assert [(p, stem) for p, stem, _ in result["found"]] == [
        ("tree/a/b/z.png", "a/b/z"),
        ("tree/a/y.png", "a/y"),
        ("tree/c/w.png", "c/w"),
        ("tree/x.png", "x"),
    ]
    real = [r for _, _, r in find_in_subprocess(cyclic_tree.parent, "tree/**", "tree/*/**/*.png")["found"]]
    assert len(real) == len(set(real)) == 4


def test_recursive_folder_walk_ends_on_symlink_cycles(cyclic_tree):
    found = find_images([cyclic_tree], recursive=True)
    assert sorted(stem.as_posix() for _, stem in found) == ["a/b/z", "a/y", "c/w", "x"]


@pytest.mark.parametrize(
    "pattern",
    ["t/**/*.png", "t/**", "t/*/*.png", "t/**/b*/*", "t/[ab]*/?.png", "**/*.png", "t/.*/*", "t/**/.*", "t/a1/*.png"],
)
def test_patterns_match_as_glob_does_on_ordinary_trees(tmp_path, monkeypatch, pattern):
    for name in ("x.png", "a1/y.png", "a1/b2/z.png", "b3/w.png", "b3/.h.png", ".hid/q.png", "a1/b2/c/d/e.png"):
        (tmp_path / "t" / name).parent.mkdir(parents=True, exist_ok=True)
        noise_png(tmp_path / "t" / name, size=(2, 2))
    monkeypatch.chdir(tmp_path)
    expected = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
    found = find_images([pattern])
    assert sorted(str(p) for p, _ in found) == expected
    root = sio._glob_root(pattern)
    assert [stem for _, stem in found] == [Path(p).relative_to(root).with_suffix("") for p, _ in found]


def test_batch_with_star_star_over_symlink_cycles(cyclic_tree):
    proc = cli("batch", "tree/**/*.png", "-k", "2", "-o", "out", "--jobs", "1", "-q", cwd=cyclic_tree.parent)
    assert proc.returncode == 0, proc.stderr
    rows = (cyclic_tree.parent / "out" / "summary.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == ["tree/a/b/z.png", "tree/a/y.png", "tree/c/w.png", "tree/x.png"]


# --------------------------------------------------------------------------
# item 1: stems are safe folder names


def assert_safe_stem(stem: Path, output: Path) -> None:
    assert stem.parts, stem
    for part in stem.parts:
        assert part == safe_component(part) and part not in (".", "..") and part.strip(" ") == part, stem
        assert not any(ord(c) < 32 or c in "/\\:\x7f" for c in part), stem
    inside(output, output / stem)  # raises if it resolves outside
    assert (output / stem).resolve().is_relative_to(output.resolve())


def test_find_images_makes_every_part_of_a_stem_safe(tmp_path, monkeypatch):
    names = ["...png", "..png", " .png", "new\nline.png", "back\\slash.png", "tab\t.png", "ok.png"]
    for folder in ("d", "d/sub"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            noise_png(tmp_path / folder / name, size=(2, 2), seed=i)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "results"
    cases = [
        [Path("d") / n for n in names],  # named one by one
        ["d"],
        ["d/*", "d/.*"],  # ".*" matches the dotted names a folder listing skips
        ["d/**/*", "d/**/.*"],
    ]
    for inputs in cases:
        found = find_images(inputs, recursive=True)
        assert found, inputs
        stems = [stem for _, stem in found]
        for stem in stems:
            assert_safe_stem(stem, output)
        assert len({s.as_posix().casefold() for s in stems}) == len(stems)
    stems = {p.name: stem.as_posix() for p, stem in find_images([Path("d") / n for n in names])}
    assert stems["...png"] == "_.." and stems["new\nline.png"] == "new_line" and stems["ok.png"] == "ok"


# --------------------------------------------------------------------------
# item 15: nothing on the terminal but the error, which names the file


def lzw_tiff(path: Path, corrupt: bool) -> Path:
    arr = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path, compression="tiff_lzw")
    if corrupt:
        data = bytearray(path.read_bytes())
        for i in range(200, 2000, 7):
            data[i] = 0xFF
        path.write_bytes(bytes(data))
    return path


@pytest.fixture
def silent(capfd, caplog):
    """A context manager that fails the test if the reading inside printed, logged or warned anything."""

    @contextmanager
    def check() -> Iterator[None]:
        capfd.readouterr()  # what the test printed while making its files
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        out, err = capfd.readouterr()
        assert (out, err) == ("", ""), err
        assert [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("PIL", "tifffile")] == []
        assert [str(w.message) for w in caught] == []

    return check


def test_corrupt_lzw_tiff_prints_no_libtiff_message(tmp_path, silent):
    if "libtiff" not in features.get_supported_codecs():
        pytest.skip("Pillow without libtiff")
    path = lzw_tiff(tmp_path / "bad.tif", corrupt=True)
    with silent():
        message = read_error(path)
    assert "truncated or corrupt image data" in message


def test_corrupt_lzw_tiff_through_the_cli(tmp_path):
    path = lzw_tiff(tmp_path / "bad.tif", corrupt=True)
    proc = cli("run", str(path), "-k", "2", "-o", str(tmp_path / "out"))
    assert_one_error_line(proc, f"{path}: truncated or corrupt image data")


def test_tiff_with_a_bad_first_page_offset_is_quiet(tmp_path, silent):
    path = tmp_path / "badoff.tif"
    path.write_bytes(b"II*\x00" + (99999).to_bytes(4, "little") + bytes(20))
    with silent():
        assert "truncated or corrupt TIFF" in read_error(path)


def test_seven_samples_per_pixel_read_without_a_log_line(tmp_path, silent):
    arr = np.random.default_rng(1).integers(0, 256, (8, 8, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s7.tif", arr, photometric="minisblack", planarconfig="contig")
    with silent():
        img = read_image(tmp_path / "s7.tif")
    np.testing.assert_array_equal(np.round(img.bands * 255), arr)  # all 7 are bands; pixels is only the display


def test_corrupt_exif_is_no_warning(tmp_path, silent):
    arr = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    exif = PILImage.Exif()
    exif[0x0112] = 1
    PILImage.fromarray(arr).save(tmp_path / "e.jpg", exif=exif.tobytes())
    data = bytearray((tmp_path / "e.jpg").read_bytes())
    at = data.find(b"Exif\x00\x00") + 6
    data[at + 4 : at + 8] = (0xFFFF).to_bytes(4, "little")  # the first IFD points past the end
    (tmp_path / "e.jpg").write_bytes(bytes(data))
    with silent():
        assert read_image(tmp_path / "e.jpg").width == 16


def test_complex_tiff_is_refused_without_a_complexwarning(tmp_path, silent):
    tifffile.imwrite(tmp_path / "c.tif", np.full((4, 4), 1 + 2j, np.complex64))
    with silent():
        message = read_error(tmp_path / "c.tif")
    assert message == f"{tmp_path / 'c.tif'}: complex-valued samples are not supported"


def test_all_transparent_float_rgba_tiff_names_the_file(tmp_path, silent):
    rgba = np.zeros((4, 4, 4), np.float32)
    rgba[..., :3] = 0.5
    tifffile.imwrite(tmp_path / "clear.tif", rgba, photometric="rgb", extrasamples=[2])
    with silent():
        message = read_error(tmp_path / "clear.tif")
    assert message == f"{tmp_path / 'clear.tif'}: every pixel is transparent"


def test_tifffile_errors_name_the_file(tmp_path, silent):
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[0.5, np.nan]], np.float64))
    with silent():
        message = read_error(tmp_path / "nan.tif")
    assert message == f"{tmp_path / 'nan.tif'}: image contains NaN or infinite values"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile's own comment on writing it
        tifffile.imwrite(tmp_path / "empty.tif", np.zeros((1, 0), np.uint8))
    with silent():
        assert not read_error(tmp_path / "empty.tif").startswith("array")


def test_volume_tiff_gives_its_first_slice(tmp_path):
    vol = np.linspace(0, 1, 3 * 4 * 5).reshape(3, 4, 5)  # float64: read with tifffile
    tifffile.imwrite(tmp_path / "vol.tif", vol, volumetric=True, tile=(16, 16), photometric="minisblack")
    img = read_image(tmp_path / "vol.tif")
    assert (img.height, img.width, img.is_gray) == (4, 5, True)
    np.testing.assert_allclose(img.pixels[..., 0], vol[0] / vol.max(), atol=1e-7)


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
UNSUPPORTED = [
    ("x.heic", HEIC, "HEIC images are not supported (convert to PNG or TIFF)"),
    ("x.heif", b"\x00\x00\x00\x10ftypmif1\x00\x00\x00\x00" + bytes(64), "HEIF images are not supported"),
    ("x.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n', "SVG images are not supported"),
    ("x.svg.png", b"<svg width='2' height='2'></svg>", "SVG images are not supported"),
    ("x.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "PDF documents are not supported"),
    ("x.jxl", b"\xff\x0a" + bytes(30), "JPEG XL images are not supported"),
    ("x.exr", b"v/1\x01" + bytes(30), "OpenEXR images are not supported"),
    ("x.png", b"PK\x03\x04" + bytes(30), "ZIP archive"),
    ("notes.jpg", b"just some notes\n" * 10, "not an image (Pillow cannot identify it): it is a text file"),
    ("page.png", b"<!DOCTYPE html><html><body>hi</body></html>", "an HTML page"),
    ("x.bin", bytes(range(256)) * 4, "not an image (Pillow cannot identify it)"),
]


@pytest.mark.parametrize(("name", "data", "needle"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_formats_are_named(tmp_path, name, data, needle, silent):
    (tmp_path / name).write_bytes(data)
    with silent():
        assert needle in read_error(tmp_path / name)


def test_avif_without_pillow_support_is_named(tmp_path, monkeypatch):
    data = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64)
    assert "AVIF images are not supported" in sio._not_an_image(data, ".avif")
    if not features.check("avif"):
        (tmp_path / "x.avif").write_bytes(data)
        assert "AVIF images are not supported" in read_error(tmp_path / "x.avif")


def test_eps_without_ghostscript_says_so(tmp_path, monkeypatch, silent):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gs to be found
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", False, raising=False)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: False, raising=False)
    path = tmp_path / "x.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with silent():
        message = read_error(path)
    assert "PostScript/EPS" in message and "Ghostscript" in message


def test_heic_through_the_cli(tmp_path):
    (tmp_path / "photo.heic").write_bytes(HEIC)
    proc = cli("run", str(tmp_path / "photo.heic"), "-k", "2", "-o", str(tmp_path / "out"))
    assert_one_error_line(proc, f"{tmp_path / 'photo.heic'}: HEIC images are not supported (convert to PNG or TIFF)")


def test_reads_leave_warnings_and_loggers_as_they_were(tmp_path):
    levels = {name: logging.getLogger(name).level for name in ("PIL", "tifffile")}
    bad = tmp_path / "badoff.tif"
    bad.write_bytes(b"II*\x00" + (99999).to_bytes(4, "little") + bytes(20))
    good = noise_png(tmp_path / "g.png")

    def work() -> None:
        for _ in range(20):
            with pytest.raises(SegsoftError):
                read_image(bad)
            read_image(good)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert sio._quiet_users == 0
    with pytest.warns(UserWarning, match="still heard"):
        warnings.warn("still heard", UserWarning, stacklevel=1)


def test_no_space_left_reads_as_such(tmp_path):
    target = tmp_path / "p.npy"
    for exc in (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), OSError("262144 requested and 17376 written")):
        with pytest.raises(SegsoftError) as info, atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise exc
        assert str(info.value) == f"{target}: cannot write (No space left on device)"
    if hasattr(errno, "EDQUOT"):
        with pytest.raises(SegsoftError, match="No space left on device"), atomic_path(target):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert list(tmp_path.iterdir()) == []


def test_numpy_short_write_on_a_full_device(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    target = tmp_path / "p.npy"
    with pytest.raises(SegsoftError) as info, atomic_path(target), open("/dev/full", "wb") as full:
        np.zeros(1 << 16).tofile(full)  # numpy's own short-write error, which carries no errno
    assert str(info.value) == f"{target}: cannot write (No space left on device)"


def test_header_reads_ignore_pillows_own_pixel_limit(tmp_path, monkeypatch):
    # --max-pixels judges the size: the up-front memory check and the batch bar's pixel
    # counts read headers through Pillow, whose own limit warned ("DecompressionBombWarning",
    # with a source line, on a 100 MP photo) or refused (over twice its limit)
    import warnings

    from segsoft import batch, budget

    p = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((40, 50, 3), np.uint8)).save(p)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1500)  # 2000 pixels: over it, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert budget.header_shape(p) == (40, 50, 3)
        assert batch._header_pixels(p)[0] == 2000
        monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)  # over twice it: Pillow would refuse
        assert budget.header_shape(p) == (40, 50, 3)
        assert batch._header_pixels(p)[0] == 2000
    assert PILImage.MAX_IMAGE_PIXELS == 500  # put back after each read
