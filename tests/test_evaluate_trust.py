"""`segsoft evaluate` against files that lie: headers checked before data, ids that never match, subsets."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft.evaluate as ev
from segsoft.errors import SegsoftError
from segsoft.evaluate import evaluate_directory, evaluate_folder, evaluate_many, load_prediction

H, W = 12, 16


def segsoft(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def npy_header(descr: str, shape: tuple, data: bytes = b"\x00") -> bytes:
    """A version 1.0 .npy file whose header says whatever it is told, followed by ``data``."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"  # numpy pads to 64 bytes
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def png_header(path: Path, width: int, height: int) -> None:
    """A greyscale PNG that declares width x height but holds almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    )


def dataset(tmp_path: Path, ids=("2092", "3096")) -> tuple[Path, Path]:
    """Ground truth for ``ids`` (two humans each) and a good prediction for every one."""
    rng = np.random.default_rng(0)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i in ids:
        np.savez_compressed(gt / f"{i}.npz", segs=rng.integers(1, 4, (2, H, W)).astype(np.uint16))
        np.save(pred / f"{i}.npy", rng.integers(0, 3, (H, W)))
    return gt, pred


def _probabilities(nan_at=None, inf=False) -> np.ndarray:
    p = np.random.default_rng(1).random((H, W, 3)).astype(np.float32)
    if nan_at is not None:
        p[nan_at] = np.nan
    if inf:
        p[1, 2, 0] = np.inf
    return p


def _object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([[None, 1]], object), allow_pickle=True)
    return buf.getvalue()


def _good_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((H, W), np.int64))
    return buf.getvalue()


# file name, what to write (bytes, an array, or a callable(path)), what the error says
BAD_PREDICTIONS = [
    ("2092.npy", npy_header("<f8", (100000, 100000)), "header claims 80.0 GB of data ((100000, 100000) float64)"),
    ("2092.npy", _good_npy()[:-100], "header claims 1.5 kB of data ((12, 16) int64) but the file holds 1.4 kB"),
    ("2092.npy", _good_npy()[:-1], "header claims 1536 bytes of data ((12, 16) int64) but the file holds 1535 bytes"),
    ("2092.npy", _good_npy() + b"junk", "but the file holds"),  # trailing bytes: the header lies too
    ("2092.npy", npy_header("<i8", (-1, W)), "impossible shape (-1, 16)"),
    ("2092.npy", npy_header("<i8", (H, W * 10**30)), "header claims"),  # no overflow, no allocation
    ("2092.npy", np.zeros((H, W), complex), "holds complex128 values"),
    ("2092.npy", np.full((H, W), "a"), "holds <U1 values"),
    ("2092.npy", np.zeros((H, W), [("a", "<i4"), ("b", "<f4")]), "not integer labels or float memberships"),
    ("2092.npy", _object_npy(), "Python objects (dtype object), which are never unpickled"),
    ("2092.npy", np.zeros((W, H), np.int32), f"shape ({W}, {H}) does not match the ground truth's ({H}, {W})"),
    ("2092.npy", np.zeros((H + 1, W, 3), np.float32), f"shape ({H + 1}, {W}, 3) does not match"),
    ("2092.npy", np.zeros((H, W, 3), np.int32), "label map of shape (12, 16, 3)"),
    ("2092.npy", np.zeros((H, W, 0), np.float32), "label map of shape (12, 16, 0)"),
    ("2092.npy", _probabilities(nan_at=(3, 4, 1)), "NaN in some but not all memberships of 1 pixel (first at row 3"),
    ("2092.npy", np.full((H, W, 3), np.nan, np.float32), "every membership is NaN"),
    ("2092.npy", _probabilities(inf=True), "infinite memberships at 1 pixel (first at row 1, column 2)"),
    ("2092.npy", b"", "cannot read"),
    ("2092.npy", b"PK\x03\x04 an archive", "an .npz archive, not a .npy array"),
    ("2092.png", lambda p: png_header(p, 100000, 100000), "shape (100000, 100000) does not match"),
    ("2092.png", lambda p: png_header(p, W, H + 1), f"shape ({H + 1}, {W}) does not match"),
]


def write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        content(path)


@pytest.mark.parametrize("name, content, needle", BAD_PREDICTIONS, ids=[b[2][:40] for b in BAD_PREDICTIONS])
def test_bad_prediction_is_one_line_for_its_image(tmp_path, name, content, needle):
    gt, pred = dataset(tmp_path)
    (pred / "2092.npy").unlink()
    write(pred / name, content)
    report = evaluate_directory(pred, gt)
    assert [r.id for r in report.rows] == ["3096"]  # one bad file does not stop the others
    message = report.errors["2092"]
    assert message.startswith(f"{pred / name}: ") and needle in message, message
    assert "\n" not in message
    assert not report.ok


def test_lying_header_is_never_allocated(tmp_path, monkeypatch):
    # the 129-byte file of the issue: 80 GB declared, refused from its header alone
    gt, pred = dataset(tmp_path)
    (pred / "2092.npy").write_bytes(npy_header("<f8", (100000, 100000)))
    assert (pred / "2092.npy").stat().st_size == 129
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda fp, **kw: reads.append(fp) or real(fp, **kw))
    report = evaluate_directory(pred, gt)
    assert report.errors["2092"] == (
        f"{pred / '2092.npy'}: header claims 80.0 GB of data ((100000, 100000) float64) "
        "but the file holds 1 byte after its header (truncated or corrupt)"
    )
    # read_array ran for the two ground truths and the good prediction, never for the liar
    assert len(reads) == 3


def test_prediction_of_another_size_is_not_read(tmp_path, monkeypatch):
    gt, pred = dataset(tmp_path, ids=("7",))
    np.save(pred / "7.npy", np.zeros((H * 2, W), np.int16))  # an honest header, the wrong image
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda fp, **kw: reads.append(fp) or real(fp, **kw))
    report = evaluate_folder(pred, gt)
    assert report.errors["7"] == (
        f"{pred / '7.npy'}: shape ({2 * H}, {W}) does not match the ground truth's ({H}, {W}) ({gt / '7.npz'})"
    )
    assert len(reads) == 1  # the ground truth only
    with pytest.raises(SegsoftError, match=r"7.npy: shape \(24, 16\) does not match the ground truth's \(12, 16\)$"):
        load_prediction(pred / "7.npy", shape=(H, W))
    assert load_prediction(pred / "7.npy").shape == (2 * H, W)


def _npz_member(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("segs.npy", data)


def _inflated_npz(path: Path) -> None:
    """An .npz whose directory claims its deflated member expands to 1 GB (a lie numpy would allocate)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, H, W), np.uint16))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("segs.npy", buf.getvalue())
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10**9).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))


BAD_GROUND_TRUTH = [
    ("2092.npz", _inflated_npz, "its 'segs' member claims 1.0 GB from"),
    ("2092.npy", npy_header("<u2", (3, 100000, 100000)), "header claims 60.0 GB of data"),
    ("2092.npz", lambda p: _npz_member(p, npy_header("<u2", (7, 10000, 10000), b"\0" * 10)), "'segs' member holds"),
    ("2092.npz", lambda p: _npz_member(p, _object_npy()), "Python objects"),
    ("2092.npz", lambda p: np.savez(p, segs=np.zeros((2, H, W), complex)), "holds complex128 values"),
    ("2092.npy", np.zeros((0, H, W), np.uint8), "ground truth of shape (0, 12, 16)"),
    ("2092.npy", np.zeros((2, 2, H, W), np.uint8), "ground truth of shape (2, 2, 12, 16)"),
    ("2092.png", lambda p: png_header(p, 100000, 100000), "declares 100000x100000 pixels, more than the 134,217,728"),
]


@pytest.mark.parametrize("name, content, needle", BAD_GROUND_TRUTH, ids=[b[2][:40] for b in BAD_GROUND_TRUTH])
def test_bad_ground_truth_is_read_first_and_named(tmp_path, name, content, needle):
    gt, pred = dataset(tmp_path)
    (gt / "2092.npz").unlink()
    write(gt / name, content)
    # a lying prediction too: the ground truth is checked first, so its error is the one given
    (pred / "2092.npy").write_bytes(npy_header("<f8", (100000, 100000)))
    report = evaluate_directory(pred, gt)
    assert [r.id for r in report.rows] == ["3096"]
    message = report.errors["2092"]
    assert message.startswith(f"{gt / name}: ") and needle in message and "\n" not in message, message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    gt, pred = dataset(tmp_path, ids=("1", "2", "3"))
    for i in ("1", "2"):
        (pred / f"{i}.npy").unlink()
    os.mkfifo(pred / "1.npy")  # opening it would wait for a writer forever
    os.mkfifo(pred / "2.png")
    report = evaluate_directory(pred, gt)
    assert report.errors == {
        "1": f"{pred / '1.npy'}: not a regular file",
        "2": f"{pred / '2.png'}: not a regular file",
    }
    assert [r.id for r in report.rows] == ["3"]


def test_no_prediction_matches_any_ground_truth(tmp_path):
    gt, _ = dataset(tmp_path, ids=[str(i) for i in range(100, 108)])
    pred = tmp_path / "other"
    pred.mkdir()
    for i in ("2092", "3096"):
        np.save(pred / f"{i}.npy", np.zeros((H, W), int))
    with pytest.raises(SegsoftError) as err:
        evaluate_directory(pred, gt)
    assert str(err.value) == (
        f"{pred}: no prediction matches a ground truth id in {gt} "
        "(predictions: 2092, 3096; ground truth: 100, 101, 102, 103, 104, ... (8 in all))"
    )
    # a folder of images with other names: refused before segmenting anything
    photos = tmp_path / "photos"
    photos.mkdir()
    PILImage.new("RGB", (W, H)).save(photos / "cat.png")
    with pytest.raises(SegsoftError, match=r"photos: no image matches a ground truth id in .*\(images: cat; "):
        evaluate_directory(photos, gt)


def test_empty_folders(tmp_path):
    gt, pred = dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegsoftError, match=r"empty: holds no predictions .* and no images$"):
        evaluate_directory(tmp_path / "empty", gt)
    with pytest.raises(SegsoftError, match=r"empty: no ground truth files"):
        evaluate_directory(pred, tmp_path / "empty")


def test_allow_missing_scores_a_subset(tmp_path):
    ids = [str(i) for i in range(1, 16)]
    gt, pred = dataset(tmp_path, ids=ids)
    for i in ids[3:]:
        (pred / f"{i}.npy").unlink()

    strict = evaluate_directory(pred, gt)
    assert not strict.ok and strict.missing == ids[3:] and not strict.allow_missing
    line = next(line for line in strict.summary().splitlines() if line.startswith("missing"))
    # short: ten ids, then a count and the way out
    assert line == (
        "missing   4 5 6 7 8 9 10 11 12 13 ... (12 without a prediction; "
        "--allow-missing scores only the images that have one)"
    )

    subset = evaluate_directory(pred, gt, allow_missing=True)
    assert subset.ok and subset.allow_missing and [r.id for r in subset.rows] == ids[:3]
    assert subset.means == strict.means
    text = subset.summary()
    assert "scored 3 of 15 ground-truth images (12 without a prediction, --allow-missing)" in text
    assert not any(line.startswith("missing") for line in text.splitlines())

    # allowed missing, but a present file that fails still fails the report
    (pred / "1.npy").write_bytes(b"\x93NUMPY broken")
    broken = evaluate_directory(pred, gt, allow_missing=True)
    assert not broken.ok and set(broken.errors) == {"1"}
    # and the lower functions take the keyword too
    assert evaluate_folder(pred, gt, allow_missing=True).allow_missing
    one = np.array([[1, 1, 2]])
    assert evaluate_many({"a": one}, {"a": [one], "b": [one]}, allow_missing=True).ok
    assert not evaluate_many({"a": one}, {"a": [one], "b": [one]}).ok


def test_summary_without_scores_says_so(tmp_path):
    gt, pred = dataset(tmp_path)
    for i in ("2092", "3096"):
        (pred / f"{i}.npy").write_bytes(b"\x93NUMPY broken")
    report = evaluate_directory(pred, gt)
    text = report.summary()
    assert "nan" not in text.lower() and "PRI       n/a (no image scored)" in text
    assert not report.ok


# --------------------------------------------------------------------------
# the real command


def test_cli_lying_header_fails_that_image_only(tmp_path):
    gt, pred = dataset(tmp_path)
    (pred / "2092.npy").write_bytes(npy_header("<f8", (100000, 100000)))
    result = segsoft("evaluate", pred, "--gt", gt)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "out of memory" not in result.stderr + result.stdout
    assert "1 scored, 0 missing, 1 failed" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed")]
    assert failed == [f"failed    {pred / '2092.npy'}: " + failed[0].split(": ", 1)[1]]
    assert "header claims 80.0 GB" in failed[0]


@pytest.mark.parametrize(
    "setup, needle",
    [
        ("nomatch", "no prediction matches a ground truth id in"),
        ("empty", "holds no predictions"),
        ("emptygt", "no ground truth files"),
    ],
)
def test_cli_one_line_errors(tmp_path, setup, needle):
    gt, pred = dataset(tmp_path)
    if setup == "nomatch":
        for f in pred.iterdir():
            f.rename(pred / ("x" + f.name))
    elif setup == "empty":
        for f in pred.iterdir():
            f.unlink()
    else:
        for f in gt.iterdir():
            f.unlink()
    result = segsoft("evaluate", pred, "--gt", gt)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "nan" not in result.stdout.lower()
