"""Re-test of issue 10 on evaluate and model files: ranges checked up front, casts that cannot warn,
and a model.json reader that answers any file with one SegsoftError line naming it."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import segsoft
from segsoft import modelfile
from segsoft.errors import SegsoftError
from segsoft.evaluate import evaluate_directory, evaluate_labels, load_prediction

H, W = 6, 8
MIN_REGION = r"--min-region must be a number >= 0 and < 1 \(a share of the image\), got "


def segsoft_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """gt/1.npy (two halves) and an empty pred/ folder."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    truth = np.zeros((H, W), np.int32)
    truth[:, W // 2 :] = 1
    np.save(gt / "1.npy", truth)
    return pred, gt


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """Any warning becomes an exception: none may reach the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------
# 1. min_region


@pytest.mark.parametrize(
    "value, shown",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (-float("inf"), "-inf"),
        (-1, "-1.0"),
        (1, "1.0"),
        (1.5, "1.5"),
        (1e300, "1e+300"),
        (np.float64("nan"), "nan"),
        (True, "True"),
        ("0.1", "'0.1'"),
    ],
)
def test_min_region_out_of_range_is_refused_before_any_file(tmp_path: Path, value, shown) -> None:
    # folders that do not exist: the option is checked first, as on the command line
    with pytest.raises(SegsoftError, match=MIN_REGION + shown.replace("+", r"\+") + "$"):
        evaluate_directory(tmp_path / "nothing", tmp_path / "none", min_region=value)


@pytest.mark.parametrize("value, n_regions", [(None, 2), (0, 2), (0.0, 2), (0.01, 2), (np.float32(0.5), 2), (0.999, 1)])
def test_min_region_in_range_scores(folders, value, n_regions) -> None:
    pred, gt = folders
    np.save(pred / "1.npy", np.load(gt / "1.npy"))
    report = evaluate_directory(pred, gt, min_region=value)
    assert report.ok and report.rows[0].n_regions == n_regions  # two halves, merged only above half the image


# --------------------------------------------------------------------------
# 2. float label maps


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_label_maps_score_without_warnings(folders, dtype) -> None:
    pred, gt = folders
    labels = np.load(gt / "1.npy").astype(np.float64) * 60000 + 3  # 60003 overflowed float16's 2**53 check
    labels[0, 0] = np.nan  # unlabelled
    np.save(pred / "1.npy", labels.astype(dtype))
    with no_warnings():
        report = evaluate_directory(pred, gt, min_region=None)
    assert report.ok, report.errors
    assert report.rows[0].covering == 1.0


@pytest.mark.parametrize(
    "values, problem",
    [
        ((np.float16, [1.5]), r"float labels must be whole numbers \(non-integer 1.5 at row 0, column 0\)"),
        ((np.float32, [np.inf]), r"float labels must be whole numbers, not infinite \(at row 0, column 0\)"),
        ((np.float16, [-np.inf]), r"float labels must be whole numbers, not infinite"),
        (
            (np.float64, [3e9]),
            r"float labels must be within the int32 range -2147483648 to 2147483647, got 3000000000$",
        ),
        ((np.float64, [-1e300]), r"float labels must be within the int32 range .*, got -1e\+300$"),
        ((np.float32, [2.0**31]), r"float labels must be within the int32 range .*, got 2147483648$"),
    ],
)
def test_bad_float_labels_are_one_line_naming_the_file(folders, values, problem) -> None:
    pred, gt = folders
    dtype, first = values
    labels = np.zeros((H, W), dtype)
    labels.flat[: len(first)] = first
    np.save(pred / "1.npy", labels)
    with no_warnings():
        report = evaluate_directory(pred, gt, min_region=None)
        with pytest.raises(SegsoftError, match=f"^{pred / '1.npy'}: {problem}"):
            load_prediction(pred / "1.npy")
    assert list(report.errors) == ["1"]
    assert report.errors["1"].startswith(f"{pred / '1.npy'}: float labels must ")
    assert "\n" not in report.errors["1"]


def test_float_labels_in_memory_name_the_map() -> None:
    with no_warnings(), pytest.raises(SegsoftError, match="^segmentation: float labels must be whole numbers"):
        evaluate_labels(np.array([[0.5, 1]], np.float16), [np.array([[0, 1]])])
    with no_warnings():  # the largest float16, a whole number, is a label like any other
        assert evaluate_labels(np.array([[65504, 0]], np.float16), [np.array([[1, 0]])])["pri"] == 1.0


def test_float16_prediction_through_the_command_prints_no_numpy_warning(folders) -> None:
    pred, gt = folders
    np.save(pred / "1.npy", (np.load(gt / "1.npy") * 60000).astype(np.float16))
    np.save(pred / "2.npy", np.full((H, W), 0.5, np.float16))
    np.save(gt / "2.npy", np.zeros((H, W), np.int32))
    done = segsoft_cli("evaluate", pred, "--gt", gt, "--min-region", "0")
    assert "Warning" not in done.stderr + done.stdout
    assert f"{pred / '2.npy'}: float labels must be whole numbers" in done.stderr + done.stdout


def test_tiff_nodata_and_float64_memberships_outside_float32_cast_without_warnings(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    nodata = [(42113, "s", 0, "1e300", True)]  # GDAL_NODATA no float32 holds
    labels = tmp_path / "labels" / "labels.tif"
    labels.parent.mkdir()
    tifffile.imwrite(labels, np.arange(H * W, dtype=np.float32).reshape(H, W), extratags=nodata)
    probs = tmp_path / "probs" / "probabilities.tif"
    probs.parent.mkdir()
    p = np.zeros((2, H, W))
    p[1, :, W // 2 :] = 1e300  # finite in float64, inf in float32
    tifffile.imwrite(probs, p, photometric="minisblack", planarconfig="separate", extratags=nodata)
    with no_warnings():
        got = load_prediction(labels.parent)
        assert np.array_equal(got, np.arange(H * W).reshape(H, W))  # 1e300 matches no pixel
        got = load_prediction(probs.parent)
    assert np.array_equal(got, (np.arange(W) >= W // 2)[None].repeat(H, 0))


def test_tiff_nodata_float32_only_rounds_still_marks_unlabelled(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    labels = np.ones((H, W), np.float32)
    labels[0, :3] = 0.1  # GDAL's "0.1" for a float32 raster: float32(0.1), not a label
    (tmp_path / "out").mkdir()
    tifffile.imwrite(tmp_path / "out" / "labels.tif", labels, extratags=[(42113, "s", 0, "0.1", True)])
    with no_warnings():
        got = load_prediction(tmp_path / "out")
    assert (got[0, :3] == -1).all() and (got[0, 3:] == 1).all() and (got[1:] == 1).all()


# --------------------------------------------------------------------------
# 3 and 4. model.json


def test_overlong_integer_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text('{"model": {"params": {\n  "seed": ' + "9" * 5000 + "}}}")
    with pytest.raises(SegsoftError) as info:
        modelfile.read_json(path)
    assert str(info.value) == (
        f'{path}: not a segsoft model.json (a number with too many digits in field "seed" at line 2 column 11)'
    )
    path.write_text("[" + "1" * 5000 + "]")
    with pytest.raises(SegsoftError, match=r"a number with too many digits at line 1 column 2\)$"):
        modelfile.read_model(path)


@pytest.fixture(scope="module")
def real_model(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    image = (rng.random((10, 10, 3)) * 255).astype(np.uint8)
    segsoft.segment(image, k=2).save(folder / "out")
    return (folder / "out" / "model.json").read_bytes()


def _mutants(data: bytes, n: int, seed: int = 0):
    """Truncations and random edits of ``data``, and some hostile fragments spliced in."""
    rng = random.Random(seed)
    for cut in range(0, len(data), max(1, len(data) // 60)):
        yield data[:cut]
    pieces = [
        b"9" * 5000,
        b"-" + b"1" * 4301,
        b"[" * 5000,
        b"{" * 2000,
        b"NaN",
        b"-Infinity",
        b"1e999",
        b"\xff\xfe",
        b"\x00",
        b'"\\ud800"',
        b"\xef\xbb\xbf",
        b'"',
        b"\\",
        b"0x1F",
        b"1_000",
        b"\r\n",
    ]
    for _ in range(n):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(b) + 1)
            kind = rng.random()
            if kind < 0.4 and b:
                b[min(at, len(b) - 1)] = rng.randrange(256)
            elif kind < 0.7:
                b[at:at] = rng.choice(pieces)
            else:
                del b[at : at + rng.randint(1, 40)]
        yield bytes(b)
    for _ in range(20):
        yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def test_read_json_raises_only_one_line_segsoft_errors(tmp_path: Path, real_model: bytes) -> None:
    path = tmp_path / "model.json"
    kinds = set()
    for data in _mutants(real_model, 300):
        path.write_bytes(data)
        try:
            with no_warnings():
                modelfile.read_model(path)
        except SegsoftError as e:
            text = str(e)
            assert text.startswith(f"{path}: ") and "\n" not in text, text
            assert "set_int_max_str_digits" not in text
            kinds.add(text.split(": ", 1)[1][:20])
        # anything else (ValueError, RecursionError, OverflowError, a warning) fails the test here
    assert len(kinds) > 5  # the mutants did reach many different checks


def test_read_json_parses_what_it_must(tmp_path: Path, real_model: bytes) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(real_model)
    assert modelfile.read_json(path) == json.loads(real_model)
    path.write_bytes(b"\xef\xbb\xbf" + real_model)  # a BOM from a Windows editor
    assert modelfile.read_json(path) == json.loads(real_model)
