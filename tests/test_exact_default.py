"""The exact fit on distinct colours as the default, per-colour pictures, and segsoft's own RGB PNG encoder."""

from __future__ import annotations

import importlib
import io
import json
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from segsoft import outputs
from segsoft.batch import SegmentOptions
from segsoft.io import Image

seg_mod = importlib.import_module("segsoft.segment")


def _photo(seed: int = 0, h: int = 96, w: int = 128) -> np.ndarray:
    """A crop of a sample photo, quantised: few distinct colours for its size."""
    arr = np.asarray(PILImage.open("images/coffee.jpg").convert("RGB"))
    y = (seed * 37) % (arr.shape[0] - h)
    x = (seed * 53) % (arr.shape[1] - w)
    return (arr[y : y + h, x : x + w] // 16 * 16).astype(np.uint8)


def test_default_sample_is_an_int_that_survives_pickling_and_json():
    d = seg_mod.DEFAULT_SAMPLE
    assert d == 200_000 and isinstance(d, int) and seg_mod.is_default_sample(d)
    assert not seg_mod.is_default_sample(200_000)
    back = pickle.loads(pickle.dumps(d))
    assert seg_mod.is_default_sample(back) and back == 200_000 and repr(back) == "200000"
    assert json.dumps({"s": d}) == '{"s": 200000}'
    opts = SegmentOptions()
    assert seg_mod.is_default_sample(pickle.loads(pickle.dumps(opts)).segment_kwargs()["sample"])


def test_default_is_the_exact_fit_where_it_applies():
    arr = _photo()
    seg = seg_mod.segment(arr, k=3)
    assert seg.settings["exact_fit"]["rows"] == "distinct colours"
    assert seg.settings["sample"] == 200_000  # recorded as given: what --skip-existing compares
    assert seg.model.sample_size is None  # the model fitted on every pixel, through the colours
    every = seg_mod.segment(arr, k=3, sample=0)
    assert np.array_equal(seg.probabilities, every.probabilities)
    assert seg.log_likelihood == every.log_likelihood
    # a sample given on purpose samples, even the default's number
    sampled = seg_mod.segment(arr, k=3, sample=200_000)
    assert "exact_fit" not in sampled.settings and sampled.model.sample_size == 200_000


@pytest.mark.parametrize(
    "kw",
    [{"spatial_weight": 0.5}, {"smoothing": 1.0}, {"k": "auto", "k_range": (2, 3), "smoothing": 1.0}],
    ids=["xy", "smooth", "auto-smooth"],
)
def test_default_samples_where_the_exact_fit_does_not_apply(kw):
    kw = {"k": 3, **kw}
    seg = seg_mod.segment(_photo(), **kw)
    assert "exact_fit" not in seg.settings


def test_non_8bit_float_image_is_not_taken_for_8bit():
    # an Image made from floats has bit_depth 8 by default: its values must be checked
    rng = np.random.default_rng(1)
    pixels = rng.random((20, 30, 3)).astype(np.float32)
    img = Image(pixels)
    assert img.bit_depth == 8
    assert seg_mod._distinct_colors(img) is None
    assert "exact_fit" not in seg_mod.segment(img, k=3).settings


@pytest.mark.parametrize("bins", [False, True])
def test_distinct_colours_are_the_pixels_exactly(monkeypatch, bins):
    arr = _photo(2)
    img = seg_mod.as_image(arr)
    monkeypatch.setattr(seg_mod, "_DISTINCT_BINCOUNT_PIXELS", 0 if bins else 1 << 30)
    colors, counts, inverse = seg_mod._distinct_colors(img)
    assert np.all(np.diff(colors[:, 0]) >= 0)  # by code: red first
    flat = img.bands.reshape(-1, 3)
    assert np.array_equal(colors[inverse], flat)
    assert counts.sum() == flat.shape[0] and inverse.dtype == np.int32
    assert len(np.unique(colors, axis=0)) == len(colors)


def test_per_colour_pictures_and_labels_equal_the_per_pixel_ones():
    arr = _photo(3, 60, 90)
    seg = seg_mod.segment(arr, k=4)
    assert seg._distinct is not None
    fast = {name: make() for name, _, make in seg.pictures()}
    fast_labels = seg.labels.copy()
    plain = seg_mod.SoftSegmentation(
        seg.image, seg.probabilities, seg.model, seg.spec, seg.log_likelihood, seg.settings
    )
    assert plain._distinct is None
    slow = {name: make() for name, _, make in plain.pictures()}
    assert np.array_equal(fast_labels, plain.labels)
    for name, pic in slow.items():
        a, b = fast[name], pic
        if hasattr(b, "indices"):
            assert np.array_equal(a.indices, b.indices), name
            assert np.array_equal(a.palette, b.palette) and a.transparent == b.transparent, name
        else:
            assert np.array_equal(a, b), name


def test_masked_image_keeps_per_pixel_pictures():
    rgba = np.dstack([_photo(4), np.full((96, 128), 255, np.uint8)])
    rgba[:5, :5, 3] = 0
    seg = seg_mod.segment(rgba, k=3)
    assert seg.settings["exact_fit"]["rows"] == "distinct colours"
    assert (seg.labels[:5, :5] == -1).all()
    every = seg_mod.segment(rgba, k=3, sample=0)
    assert np.array_equal(seg.probabilities, every.probabilities, equal_nan=True)
    assert np.array_equal(seg.labels, every.labels)


def _idat(data: bytes) -> bytes:
    pos, out = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(body, zlib.crc32(kind))
        if kind == b"IDAT":
            out += body
        pos += 12 + n
    return out


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 4), (9, 1, 3), (300, 200, 3), (1100, 1000, 4), (1030, 1031, 3)])
def test_rgb_png_encoder_round_trips(shape):
    rng = np.random.default_rng(sum(shape))
    pic = rng.integers(0, 256, shape, dtype=np.uint8)
    if shape[0] > 100:
        pic = np.cumsum(pic // 64, axis=1).astype(np.uint8)  # compressible, like a picture
    data = outputs._png_bytes(pic)
    back = PILImage.open(io.BytesIO(data))
    back.load()
    assert back.mode == ("RGB" if shape[2] == 3 else "RGBA")
    assert np.array_equal(np.asarray(back), pic)
    raw = zlib.decompress(_idat(data))  # checks the combined Adler-32 of the segments
    assert len(raw) == shape[0] * (shape[1] * shape[2] + 1)


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(0)
    for n1, n2 in ((0, 5), (5, 0), (1, 1), (70_000, 3), (100_000, 200_001)):
        a = rng.integers(0, 256, n1, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, n2, dtype=np.uint8).tobytes()
        assert outputs._adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)


def test_cli_run_default_and_explicit_sample(tmp_path):
    from typer.testing import CliRunner

    from segsoft.cli import app

    photo = tmp_path / "photo.png"
    PILImage.fromarray(_photo(5)).save(photo)
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(photo), "-o", str(tmp_path / "a"), "-k", "3", "-q"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "a" / "photo" / "model.json").read_text())
    assert record["settings"]["exact_fit"]["rows"] == "distinct colours"
    assert record["settings"]["sample"] == 200_000 and record["model"]["params"]["sample_size"] is None
    res = runner.invoke(app, ["run", str(photo), "-o", str(tmp_path / "b"), "-k", "3", "-q", "--sample", "200000"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "b" / "photo" / "model.json").read_text())
    assert "exact_fit" not in record["settings"] and record["model"]["params"]["sample_size"] == 200_000


@pytest.mark.parametrize("shape", [(1000, 1500, 3), (2999, 701, 4), (4001, 3, 3), (3, 5000, 4), (1537, 2049, 3)])
def test_shrink_in_bands_equals_one_reduce(shape):
    from segsoft import render

    rng = np.random.default_rng(shape[0])
    pic = rng.integers(0, 256, shape, dtype=np.uint8)
    if shape[2] == 4:
        pic[..., 3] = np.where(rng.random(shape[:2]) < 0.1, 0, 255)
    fy, fx = render.shrink_factors(pic.shape, 256)
    img = PILImage.fromarray(pic)
    whole = img.convert("RGBa").reduce((fx, fy)).convert("RGBA") if shape[2] == 4 else img.reduce((fx, fy))
    assert np.array_equal(render.shrink(pic, 256), np.asarray(whole))


def test_per_colour_overlay_equals_the_per_pixel_one_and_follows_display_bands():
    arr = _photo(6, 90, 120)
    seg = seg_mod.segment(arr, k=4)
    plain = seg_mod.SoftSegmentation(seg.image, seg.probabilities, seg.model, seg.spec, seg.log_likelihood, seg.settings)
    for alpha in (0.0, 0.5, 1.0):
        assert np.array_equal(seg.overlay(alpha), plain.overlay(alpha))
    swapped = seg_mod.segment(arr, k=4, display_bands=(2, 1, 0))
    assert swapped._distinct is not None
    assert np.array_equal(swapped.probabilities, seg.probabilities)
    assert not np.array_equal(swapped.image.pixels, seg.image.pixels)
    expect = seg_mod.render.soft_overlay(swapped.image.pixels, swapped.probabilities, colors=swapped.colors)
    assert np.array_equal(swapped.overlay(), expect)


def test_exact_default_still_refuses_colours_that_merge_in_grey():
    from segsoft.errors import SegsoftError

    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5], img[:, 5:] = (0, 0, 126), (35, 2, 3)  # different colours, the same luminance
    for sample in (seg_mod.DEFAULT_SAMPLE, 0):
        with pytest.raises(SegsoftError, match="1 grey level"):
            seg_mod.segment(img, k=2, color="gray", sample=sample)


@pytest.mark.parametrize("criterion", ["icl", "bic"])
def test_auto_k_is_exact_by_default_with_the_same_criteria_rows(criterion):
    arr = _photo(7)
    seg = seg_mod.segment(arr, k="auto", k_range=(2, 5), criterion=criterion)
    assert seg.settings["exact_fit"]["rows"] == "distinct colours"
    sel = seg.selection
    assert sel["k"] == seg.k and sel["ks"] == [2, 3, 4, 5] and sel["criterion"] == criterion
    # each candidate is the exact fit: the chosen one equals the fixed-k exact fit
    fixed = seg_mod.segment(arr, k=seg.k)
    assert np.array_equal(seg.probabilities, fixed.probabilities)
    # the criteria are computed on all pixels here (fewer than the sample): as select_k on X
    from segsoft.features import extract

    X = extract(seg.image, seg.spec)
    model = seg_mod.make_model("gmm", seg.k, sample=0).fit(X, means_init=seg.model._start_means)
    _, mean = model.predict_proba_and_score(X)
    assert abs(sel["log_likelihood"][sel["ks"].index(seg.k)] - mean) <= 1e-9 * abs(mean)
    sampled = seg_mod.segment(arr, k="auto", k_range=(2, 5), criterion=criterion, sample=200_000)
    assert "exact_fit" not in sampled.settings


def test_auto_k_exact_uses_the_seeded_pixel_sample_for_its_criteria(monkeypatch):
    arr = _photo(8)
    seen = {}
    real = seg_mod.select_k

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_mod, "select_k", spy)
    seg = seg_mod.segment(arr, k="auto", k_range=(2, 3), sample=seg_mod._DefaultSample(1000))
    assert seg.settings["exact_fit"]["rows"] == "distinct colours"
    assert seen["sample"] == 1000 and seen["n_rows"] == arr.shape[0] * arr.shape[1]
    rows = seen["take_rows"](np.arange(10))
    assert rows.shape == (10, 3)


def test_sort_and_bins_give_the_same_distinct_colours(monkeypatch):
    rgba = np.dstack([_photo(9), np.full((96, 128), 255, np.uint8)])
    rgba[10:20, 30:50, 3] = 0
    img = seg_mod.as_image(rgba)
    monkeypatch.setattr(seg_mod, "_DISTINCT_BINCOUNT_PIXELS", 1 << 30)
    a = seg_mod._distinct_colors(img)
    monkeypatch.setattr(seg_mod, "_DISTINCT_BINCOUNT_PIXELS", 0)
    b = seg_mod._distinct_colors(img)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("masked", [False, True])
def test_smooth_grid_equals_smooth_on_rows(masked):
    from segsoft.spatial import PottsPrior

    rng = np.random.default_rng(3)
    h, w, k = 37, 53, 4
    mask = None
    if masked:
        mask = rng.random((h, w)) > 0.2
    n = h * w if mask is None else int(mask.sum())
    rows = np.log(rng.dirichlet(np.ones(k), n)).astype(np.float32)
    expect = PottsPrior((h, w), 1.0, mask).smooth(rows, sweeps=4)
    grid = np.zeros((k, h, w), np.float32)
    if mask is None:
        grid[:] = rows.T.reshape(k, h, w)
    else:
        grid[:, mask] = rows.T
    held = [grid]
    del grid
    got = PottsPrior((h, w), 1.0, mask).smooth_grid(held, sweeps=4)
    assert held == [] and np.array_equal(got, expect)


def test_smoothed_memberships_are_those_of_the_rows_path():
    from segsoft.features import extract

    arr = _photo(10)
    seg = seg_mod.segment(arr, k=3, smoothing=1.0)
    X = extract(seg.image, seg.spec)
    held = [X.copy()]
    probs, mean = seg_mod._smoothed_memberships(seg.image, seg.model, held, 1.0)
    assert held == []
    assert np.array_equal(probs, seg.probabilities) and mean == seg.log_likelihood
    # the reference: the log-joint as rows, smoothed on rows
    lj = seg.model.weighted_log_prob(X, out=np.empty((X.shape[0], 3), np.float32))
    rows = seg_mod.PottsPrior(arr.shape[:2], 1.0, None).smooth(lj, sweeps=seg_mod.FINAL_SWEEPS)
    assert np.array_equal(probs.reshape(-1, 3), rows)


def test_model_json_of_an_exact_fit_follows_the_schema_and_skip_existing_tells_the_fits_apart(tmp_path):
    from segsoft.batch import apply_batch, run_batch

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((outputs.Path(seg_mod.__file__).parent / "model.schema.json").read_text())
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(_photo(3)).save(src / "p.png")
    out = tmp_path / "out"
    report = run_batch([src], out, SegmentOptions(k=3), jobs=1)
    assert report.count("ok") == 1
    record = json.loads((out / "p" / "model.json").read_text())
    assert record["settings"]["exact_fit"]["rows"] == "distinct colours" and record["settings"]["sample_default"]
    jsonschema.validate(record, schema)
    # a typed --sample 200000 is another fit: redone, then kept by the same request
    again = run_batch([src], out, SegmentOptions(k=3, sample=200_000), jobs=1, skip_existing=True)
    assert again.count("ok") == 1 and again.count("skipped") == 0
    record = json.loads((out / "p" / "model.json").read_text())
    assert "exact_fit" not in record["settings"] and record["settings"]["sample_default"] is False
    jsonschema.validate(record, schema)
    assert run_batch([src], out, SegmentOptions(k=3, sample=200_000), jobs=1, skip_existing=True).count("skipped") == 1
    assert run_batch([src], out, SegmentOptions(k=3), jobs=1, skip_existing=True).count("ok") == 1
    # applied elsewhere, the model does not claim an exact fit on images it never fitted
    applied = apply_batch(out / "p" / "model.json", [src / "p.png"], tmp_path / "applied", jobs=1)
    assert applied.count("ok") == 1
    assert "exact_fit" not in json.loads((tmp_path / "applied" / "p" / "model.json").read_text())["settings"]


def test_too_many_colours_are_refused_before_any_sort():
    rng = np.random.default_rng(0)
    img = Image(pixels=rng.integers(0, 256, (64, 64, 3)).astype(np.float32) / 255)
    assert seg_mod._distinct_colors(img, limit=0.25 * img.n_used) is None
    colors, counts, inverse = seg_mod._distinct_colors(img)
    assert counts.sum() == img.n_used and colors.shape[0] > 0.25 * img.n_used
