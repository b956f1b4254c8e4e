"""Every bad input we could think of: a clear one-line error or a correct result,
never a traceback, a hang or a corrupted output."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

import segsoft
from segsoft.errors import SegsoftError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "images" / "coffee.jpg"


def segsoft_cli(*args, timeout=120, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the real command; ``prelude`` is Python run first in the same process (fault injection)."""
    code = prelude + "\nimport sys\nfrom segsoft.cli import entry\nsys.argv = ['segsoft'] + sys.argv[1:]\nentry()\n"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result, *needles):
    assert result.returncode not in (0, None)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_complete_outputs(folder: Path, k: int, shape: tuple[int, int]):
    probs = np.load(folder / "probabilities.npy")
    assert probs.shape == (*shape, k)
    used = ~np.isnan(probs[..., 0])
    np.testing.assert_allclose(probs[used].sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(probs[used]).all() and (probs[used] >= 0).all()
    for png in folder.glob("*.png"):
        PILImage.open(png).load()
    json.loads((folder / "model.json").read_text())
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files


# ----------------------------------------------------------------------------- inputs that must fail cleanly


def _write_bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "folder.png").mkdir()
    (tmp / "empty.jpg").write_bytes(b"")
    (tmp / "text.jpg").write_text("not a picture at all\n")
    good_jpg, good_png = SAMPLE.read_bytes(), tmp / "good.png"
    PILImage.open(SAMPLE).save(good_png)
    (tmp / "cut.jpg").write_bytes(good_jpg[: len(good_jpg) // 3])
    (tmp / "cut.png").write_bytes(good_png.read_bytes()[: good_png.stat().st_size // 2])
    PILImage.fromarray(np.zeros((6, 6, 4), np.uint8)).save(tmp / "clear.png")
    nan = np.full((6, 6), 0.5, np.float32)
    nan[2, 3] = np.nan
    PILImage.fromarray(nan, mode="F").save(tmp / "nan.tif")
    inf = np.full((6, 6), 0.5, np.float32)
    inf[0, 0] = np.inf
    PILImage.fromarray(inf, mode="F").save(tmp / "inf.tif")
    return {
        "missing": (tmp / "nope.jpg", "no such file"),
        "directory": (tmp / "folder.png", "is a directory"),
        "zero bytes": (tmp / "empty.jpg", "empty file"),
        "text named .jpg": (tmp / "text.jpg", "not an image"),
        "truncated JPEG": (tmp / "cut.jpg", "truncated"),
        "truncated PNG": (tmp / "cut.png", "truncated"),
        "fully transparent PNG": (tmp / "clear.png", "every pixel is transparent"),
        "NaN in float TIFF": (tmp / "nan.tif", "NaN"),
        "inf in float TIFF": (tmp / "inf.tif", "infinite"),
    }


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    for case, (path, needle) in _write_bad_inputs(tmp_path).items():
        result = segsoft_cli("run", path, "-o", tmp_path / "out")
        assert_one_line_error(result, path.name, needle)
        assert not (tmp_path / "out" / path.stem / "model.json").exists(), case


def test_decompression_bomb_is_refused_unless_allowed(tmp_path):
    big = tmp_path / "big.png"
    PILImage.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(big)
    assert_one_line_error(segsoft_cli("run", big, "-o", tmp_path, "--max-pixels", "1000"), "big.png", "--max-pixels")
    ok = segsoft_cli("run", big, "-k", "2", "-o", tmp_path, "--max-pixels", "5000", "-q")
    assert ok.returncode == 0, ok.stderr


def test_more_clusters_than_colours_or_pixels(tmp_path):
    flat = tmp_path / "flat.png"
    PILImage.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(flat)
    assert_one_line_error(segsoft_cli("run", flat, "-k", "2", "-o", tmp_path), "flat.png", "1 distinct colour")
    tiny = tmp_path / "tiny.png"
    PILImage.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)).save(tiny)
    assert_one_line_error(
        segsoft_cli("run", tiny, "-k", "3", "--spatial-weight", "1", "-o", tmp_path), "tiny.png", "2 usable pixels"
    )


def test_disk_full_while_writing_leaves_no_partial_file(tmp_path):
    # the 4th file write fails half-way with ENOSPC, as on a full disk
    prelude = textwrap.dedent("""
        import errno, pathlib
        calls = []
        real = pathlib.Path.write_bytes
        def full_disk(self, data):
            calls.append(self)
            if len(calls) == 4:
                real(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, data)
        pathlib.Path.write_bytes = full_disk
    """)
    out = tmp_path / "out"
    result = segsoft_cli("run", SAMPLE, "-k", "3", "-o", out, prelude=prelude)
    assert_one_line_error(result, "No space left on device")
    folder = out / SAMPLE.stem
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # the temporary file is gone
    assert not (folder / "model.json").exists()  # the folder is visibly incomplete
    for png in folder.glob("*.png"):
        PILImage.open(png).load()  # whatever was written is whole
    # and a second run on a disk with room completes it
    assert segsoft_cli("run", SAMPLE, "-k", "3", "-o", out, "-q").returncode == 0
    assert_complete_outputs(folder, 3, (200, 300))


def test_existing_input_is_never_touched(tmp_path):
    photo = tmp_path / "photo.png"
    PILImage.open(SAMPLE).save(photo)
    before = photo.read_bytes()
    # output folder == the input's folder, and an output name equal to the input's
    result = segsoft_cli("run", photo, "-k", "2", "-o", tmp_path.parent / tmp_path.name, "-q")
    assert result.returncode == 0, result.stderr
    assert photo.read_bytes() == before


# ----------------------------------------------------------------------------- awkward images that must work


def _run_ok(path: Path, tmp: Path, *args: str):
    result = segsoft_cli("run", path, "-o", tmp / "out", "-q", *args)
    assert result.returncode == 0, result.stderr
    return tmp / "out" / path.stem


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1)])
def test_one_pixel_and_one_row_images(tmp_path, shape):
    rng = np.random.default_rng(0)
    path = tmp_path / "thin.png"
    PILImage.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    k = 1 if shape == (1, 1) else 2
    assert_complete_outputs(_run_ok(path, tmp_path, "-k", str(k)), k, shape)


def test_grey_saved_as_float32_rgb(tmp_path):
    """Equal channels make a and b constant: scikit-learn reports an ill-defined covariance here."""
    tifffile = pytest.importorskip("tifffile")
    grey = np.repeat(np.linspace(0, 1, 40, dtype=np.float32)[None, :], 30, axis=0)
    grey[:, :13], grey[:, 13:26], grey[:, 26:] = 0.1, 0.5, 0.9
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, np.dstack([grey] * 3), photometric="rgb")  # Pillow cannot read this one
    folder = _run_ok(path, tmp_path, "-k", "3")
    assert_complete_outputs(folder, 3, (30, 40))
    labels = np.load(folder / "probabilities.npy").argmax(-1)
    assert len(np.unique(labels[:, :13])) == len(np.unique(labels[:, 26:])) == 1
    assert len(np.unique(labels)) == 3


@pytest.mark.parametrize("kind", ["16-bit PNG", "16-bit TIFF", "CMYK JPEG", "palette PNG", "grey+alpha PNG"])
def test_unusual_modes_segment(tmp_path, kind):
    rng = np.random.default_rng(1)
    base = np.zeros((20, 24), np.uint16)
    base[:, 12:] = 40000
    noisy = (base + rng.integers(0, 2000, base.shape)).astype(np.uint16)
    if kind == "16-bit PNG":
        path = tmp_path / "deep.png"
        PILImage.fromarray(noisy).save(path)
    elif kind == "16-bit TIFF":
        path = tmp_path / "deep.tif"
        PILImage.fromarray(noisy).save(path)
    elif kind == "CMYK JPEG":
        path = tmp_path / "print.jpg"
        PILImage.open(SAMPLE).convert("CMYK").save(path)
    elif kind == "palette PNG":
        path = tmp_path / "pal.png"
        PILImage.open(SAMPLE).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16).save(path)
    else:
        path = tmp_path / "la.png"
        la = np.dstack([(noisy >> 8).astype(np.uint8), np.full(noisy.shape, 255, np.uint8)])
        la[:3, :3, 1] = 0
        PILImage.fromarray(la, mode="LA").save(path)
    folder = _run_ok(path, tmp_path, "-k", "2")
    h, w = np.asarray(PILImage.open(path)).shape[:2]
    assert_complete_outputs(folder, 2, (h, w))


def test_long_thin_strip_gets_a_montage(tmp_path):
    path = tmp_path / "strip.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (8, 4000, 3), dtype=np.uint8)).save(path)
    folder = _run_ok(path, tmp_path, "-k", "3")
    assert_complete_outputs(folder, 3, (8, 4000))
    assert (folder / "montage.png").exists()


def test_colours_that_are_one_grey_level(tmp_path):
    path = tmp_path / "twins.png"
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5], img[:, 5:] = (0, 0, 126), (35, 2, 3)  # different colours, the same luminance
    PILImage.fromarray(img).save(path)
    assert_one_line_error(segsoft_cli("run", path, "-k", "2", "--color", "gray", "-o", tmp_path), "1 grey level")
    assert _run_ok(path, tmp_path, "-k", "2").exists()  # in colour they are two


@pytest.mark.parametrize(
    "option,needle",
    [
        (("--max-iter", "0"), "--max-iter must be"),
        (("--covariance", "xyz"), "covariance"),
        (("--seed", "-1"), "seed"),
        (("--tol", "nan"), "tol"),
        (("--model", "fcm", "-m", "1"), "-m/--fuzzifier must be"),
        (("-m", "1.5"), "-m/--fuzzifier only applies with --model fcm"),
        (("--beta", "2"), "--beta only applies with --model soft-kmeans"),
        (("--covariance", "diag", "--model", "fcm"), "--covariance only applies with --model gmm"),
        (("--spatial-weight", "1e300"), "--spatial-weight must be"),
        (("--max-pixels", "0"), "max-pixels"),
        (("--sample", "-5"), "--sample must be"),
        (("-k", "500"), "64 clusters"),
    ],
)
def test_bad_model_options_fail_before_reading(tmp_path, option, needle):
    # the image does not even exist: the option is reported first
    assert_one_line_error(segsoft_cli("run", tmp_path / "later.jpg", *option, "-o", tmp_path), needle)


def test_constant_image_with_position_features_reports_no_crash(tmp_path):
    path = tmp_path / "flat.png"
    PILImage.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(path)
    folder = _run_ok(path, tmp_path, "-k", "3", "--spatial-weight", "1")
    assert_complete_outputs(folder, 3, (10, 12))


def test_engine_reports_collapsed_clusters_on_degenerate_data():
    X = np.zeros((50, 3), np.float32)
    gm = segsoft.GaussianMixture(3).fit(X)
    assert gm.collapsed_.sum() == 2 and np.isfinite(gm.predict_proba(X)).all()


def test_api_errors_are_segsoft_errors(tmp_path):
    for case, (path, needle) in _write_bad_inputs(tmp_path).items():
        with pytest.raises(SegsoftError, match=needle):
            segsoft.segment(path, k=2)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.integers(1, 4),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    model=st.sampled_from(["gmm", "soft-kmeans", "fcm"]),
    covariance=st.sampled_from(["full", "diag", "spherical", "tied"]),
    spatial=st.sampled_from([0.0, 1.0]),
)
def test_memberships_are_probabilities_and_the_trace_never_decreases(h, w, k, levels, seed, model, covariance, spatial):
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (levels, 3))
    img = palette[rng.integers(0, levels, (h, w))].astype(np.uint8)
    try:
        seg = segsoft.segment(img, k=k, model=model, covariance=covariance, spatial_weight=spatial, seed=seed)
    except SegsoftError as exc:
        # the only acceptable refusals: more clusters than pixels or colours
        assert "distinct colour" in str(exc) or "usable pixels" in str(exc)
        return
    p = seg.probabilities
    assert p.shape == (h, w, k)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    trace = seg.model.log_likelihood_trace_
    assert np.isfinite(trace).all()
    assert np.all(np.diff(trace) >= -1e-9 * np.maximum(1.0, np.abs(trace[:-1])))
