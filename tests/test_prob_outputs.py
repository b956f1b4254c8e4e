"""--probabilities npy|tiff|none and --probabilities-dtype float32|float16|uint8 (issue 11, item 4).

What each format and dtype writes (files, shapes, dtypes, values, transparent
pixels), stale files of another format, output_files, model.json and its
schema, GeoTIFF tags copied to probabilities.tif and labels.tif, and scoring
folders written without probabilities.npy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import segsoft
from segsoft import modelfile
from segsoft.errors import SegsoftError
from segsoft.evaluate import evaluate_folder, evaluate_labels, load_prediction
from segsoft.outputs import (
    GEOTIFF_TAGS,
    PROBABILITY_DTYPES,
    PROBABILITY_FORMATS,
    UINT8_NODATA,
    UINT8_SCALE,
    encode_probabilities,
    output_files,
    probability_settings,
    write,
)

tifffile = pytest.importorskip("tifffile")
jsonschema = pytest.importorskip("jsonschema")

H, W = 12, 16
GDAL_NODATA, GDAL_METADATA = 42113, 42112


def picture() -> np.ndarray:
    """RGBA: three colour areas with some noise, the bottom-right corner transparent."""
    rng = np.random.default_rng(0)
    rgb = np.empty((H, W, 3))
    rgb[:, : W // 3] = (0.8, 0.2, 0.1)
    rgb[:, W // 3 : 2 * W // 3] = (0.1, 0.6, 0.3)
    rgb[:, 2 * W // 3 :] = (0.2, 0.2, 0.9)
    rgb += rng.normal(0, 0.03, rgb.shape)
    rgba = np.empty((H, W, 4), np.uint8)
    rgba[..., :3] = np.clip(rgb, 0, 1) * 255
    rgba[..., 3] = 255
    rgba[-3:, -4:, 3] = 0
    return rgba


@pytest.fixture(scope="module")
def seg():
    s = segsoft.segment(picture(), k=3, seed=0)
    assert s.mask is not None and (~s.mask).sum() == 12  # the transparent corner
    return s


@pytest.fixture(scope="module")
def validator():
    schema = modelfile.schema()
    return jsonschema.Draft202012Validator({**schema["$defs"]["model_json"], "$defs": schema["$defs"]})


def schema_errors(validator, record: dict) -> list[str]:
    """The record's schema errors in "probabilities" or at its top level (test_model_file checks the rest)."""
    return [
        f"{list(e.absolute_path)}: {e.message[:200]}"
        for e in validator.iter_errors(record)
        if list(e.absolute_path)[:1] in ([], ["probabilities"])
    ]


def tags_of(path: Path) -> dict[int, object]:
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1
        return {code: tag.value for code, tag in tif.pages[0].tags.items()}


# ----------------------------------------------------------------------------- every format x dtype


@pytest.mark.parametrize("dtype", PROBABILITY_DTYPES)
@pytest.mark.parametrize("fmt", PROBABILITY_FORMATS)
def test_each_format_and_dtype_writes_its_files(seg, tmp_path, fmt, dtype, validator):
    folder = tmp_path / "out"
    written = write(seg, folder, montage=True, probabilities=fmt, probabilities_dtype=dtype)
    expected = output_files(seg.k, probabilities=fmt)
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected) == sorted(written)
    transparent = ~seg.mask
    p = seg.probabilities

    record = json.loads((folder / "model.json").read_text())
    assert not schema_errors(validator, record)
    for bad in ({"format": "png"}, {"dtype": "int8"}, {"extra": 1}, {"file": "p.npy"}):
        assert schema_errors(validator, {**record, "probabilities": {**record["probabilities"], **bad}}), bad
    stored = record["probabilities"]
    assert stored["format"] == fmt and stored["dtype"] == (None if fmt == "none" else dtype)

    if fmt == "npy":
        arr = np.load(folder / "probabilities.npy")
        assert stored["file"] == "probabilities.npy" and stored["shape"] == [H, W, seg.k]
    elif fmt == "tiff":
        with tifffile.TiffFile(folder / "probabilities.tif") as tif:
            page = tif.pages[0]
            assert len(tif.pages) == 1 and page.axes == "SYX" and page.planarconfig == 2
            assert page.samplesperpixel == seg.k and page.photometric == 1  # k grey bands (minisblack)
            assert page.compression == 8  # Adobe deflate
            arr = np.moveaxis(page.asarray(), 0, -1)
            tags = {code: tag.value for code, tag in page.tags.items()}
        assert stored["file"] == "probabilities.tif" and stored["shape"] == [seg.k, H, W]
        assert tags[GDAL_NODATA] == ("255" if dtype == "uint8" else "nan")
        assert tags[GDAL_METADATA].count('role="description"') == seg.k
        assert ('role="scale"' in tags[GDAL_METADATA]) == (dtype == "uint8")
    else:
        assert stored["file"] is None and "shape" not in stored
        arr = None

    if arr is not None:
        assert arr.dtype == np.dtype(dtype) and arr.shape == (H, W, seg.k)
        if dtype == "uint8":
            assert stored["transparent"] == UINT8_NODATA and stored["scale"] == UINT8_SCALE
            assert (arr[transparent] == UINT8_NODATA).all()
            assert arr[~transparent].max() <= UINT8_SCALE
            np.testing.assert_allclose(arr[~transparent] / UINT8_SCALE, p[~transparent], atol=0.5 / UINT8_SCALE + 1e-6)
        else:
            assert stored["transparent"] == "NaN"
            assert np.isnan(arr[transparent]).all() and not np.isnan(arr[~transparent]).any()
            tol = 1e-3 if dtype == "float16" else 0  # float16 has an 11-bit mantissa
            np.testing.assert_allclose(arr[~transparent], p[~transparent], atol=tol, rtol=0)

    if fmt in ("tiff", "none"):
        assert stored["labels_file"] == "labels.tif" and stored["georeferenced"] is False
        with tifffile.TiffFile(folder / "labels.tif") as tif:
            page = tif.pages[0]
            labels = page.asarray()  # the palette indices, not colours
            assert page.photometric == 3 and labels.dtype == np.uint8 and labels.shape == (H, W)
            colormap = page.colormap
            assert page.tags[GDAL_NODATA].value == "255"
        np.testing.assert_array_equal(np.where(seg.labels < 0, 255, seg.labels), labels)
        np.testing.assert_array_equal(colormap[:, : seg.k].T // 257, np.asarray(seg.colors)[: seg.k])
    else:
        assert stored["labels_file"] is None


def test_encode_probabilities_uint8_is_exact_at_the_ends():
    p = np.array([0.0, 1.0, 0.5, 1.0 + 1e-7, np.nan], np.float32)
    assert encode_probabilities(p, "uint8").tolist() == [0, 254, 127, 254, 255]
    assert encode_probabilities(p, "float32") is not None and encode_probabilities(p, "float16").dtype == np.float16


# ----------------------------------------------------------------------------- reruns, options


def test_a_rerun_in_another_format_removes_the_old_file(seg, tmp_path):
    folder = tmp_path / "out"
    names = lambda: {p.name for p in folder.iterdir()}
    write(seg, folder, montage=False, probabilities="tiff")
    assert {"probabilities.tif", "labels.tif"} <= names()
    write(seg, folder, montage=False, probabilities="npy", probabilities_dtype="float16")
    assert "probabilities.npy" in names() and not names() & {"probabilities.tif", "labels.tif"}
    write(seg, folder, montage=False, probabilities="none")
    assert "labels.tif" in names() and not names() & {"probabilities.npy", "probabilities.tif"}
    write(seg, folder, montage=False, probabilities="tiff", probabilities_dtype="uint8")
    assert {"probabilities.tif", "labels.tif"} <= names() and "probabilities.npy" not in names()
    assert sorted(names()) == sorted(set(output_files(seg.k, probabilities="tiff")) - {"montage.png"})


def test_output_files_default_is_unchanged():
    assert output_files(2) == output_files(2, probabilities="npy")
    assert "probabilities.npy" in output_files(2) and not any(f.endswith(".tif") for f in output_files(2))
    assert [f for f in output_files(2, probabilities="none") if "probab" in f or f.endswith(".tif")] == ["labels.tif"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probabilities": "png"}, "--probabilities must be npy, tiff or none, got 'png'"),
        ({"probabilities_dtype": "int16"}, "--probabilities-dtype must be float32, float16 or uint8, got 'int16'"),
    ],
)
def test_bad_options_are_one_line_errors_and_write_nothing(seg, tmp_path, kwargs, message):
    with pytest.raises(SegsoftError) as err:
        write(seg, tmp_path / "out", **kwargs)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_probability_settings_normalises():
    assert probability_settings("TIF", np.float16) == {"format": "tiff", "dtype": "float16"}
    assert probability_settings("none", "uint8") == {"format": "none", "dtype": None}


def test_an_input_named_like_a_tiff_output_is_protected(tmp_path):
    image = tmp_path / "labels.tif"
    tifffile.imwrite(image, picture()[..., :3], photometric="rgb")
    s = segsoft.segment(image, k=2, seed=0)
    with pytest.raises(SegsoftError, match="is an input"):
        write(s, tmp_path, probabilities="tiff")
    assert image.is_file() and not (tmp_path / "model.json").exists()


# ----------------------------------------------------------------------------- GeoTIFF


GEO = {
    33550: (12, (30.0, 30.0, 0.0)),  # ModelPixelScale: 30 m pixels
    33922: (12, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0)),  # ModelTiepoint
    34735: (3, (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611, 2049, 34737, 7, 0)),  # GeoKeyDirectory
    34736: (12, (6378137.0, 298.257223563)),  # GeoDoubleParams
    34737: (2, "WGS 84|"),  # GeoAsciiParams
}


def geotiff(path: Path, extra: list | None = None, geo: dict = GEO) -> Path:
    tags = [(code, dtype, 0 if dtype == 2 else len(value), value, True) for code, (dtype, value) in geo.items()]
    tifffile.imwrite(path, picture()[..., :3], photometric="rgb", extratags=tags + (extra or []))
    return path


def test_geotiff_tags_round_trip_to_both_tiffs(tmp_path):
    image = geotiff(tmp_path / "scene.tif")
    s = segsoft.segment(image, k=2, seed=0)
    written = write(s, tmp_path / "out", probabilities="tiff", probabilities_dtype="float32")
    for name in ("probabilities.tif", "labels.tif"):
        tags = tags_of(written[name])
        for code, (_, value) in GEO.items():
            assert tags[code] == value, (name, code)
    with tifffile.TiffFile(written["probabilities.tif"]) as tif:
        arr = tif.pages[0].asarray()
    assert arr.shape == (2, H, W) and arr.dtype == np.float32
    np.testing.assert_array_equal(np.moveaxis(arr, 0, -1), s.probabilities)
    np.testing.assert_array_equal(tifffile.imread(written["labels.tif"]), s.labels)
    record = json.loads((tmp_path / "out" / "model.json").read_text())
    assert record["probabilities"]["georeferenced"] is True


def test_model_transformation_is_copied_too(tmp_path):
    geo = {34264: (12, tuple(float(v) for v in (30, 0, 0, 440720, 0, -30, 0, 3751320, 0, 0, 0, 0, 0, 0, 0, 1)))}
    geo |= {34735: GEO[34735]}
    s = segsoft.segment(geotiff(tmp_path / "scene.tif", geo=geo), k=2, seed=0)
    written = write(s, tmp_path / "out", probabilities="none")
    assert tags_of(written["labels.tif"])[34264] == geo[34264][1]
    assert set(GEOTIFF_TAGS) & set(tags_of(written["labels.tif"])) == {34264, 34735}


def test_a_turned_geotiff_is_not_georeferenced(tmp_path):
    image = geotiff(tmp_path / "turned.tif", extra=[(274, 3, 1, 6, True)])  # Orientation 6: turned on reading
    s = segsoft.segment(image, k=2, seed=0)
    assert (s.image.height, s.image.width) == (W, H)
    written = write(s, tmp_path / "out", probabilities="tiff")
    assert not set(GEOTIFF_TAGS) & set(tags_of(written["probabilities.tif"]))
    stored = json.loads((tmp_path / "out" / "model.json").read_text())["probabilities"]
    assert stored["georeferenced"] is False and "Orientation" in stored["georeference_note"]


def test_a_plain_tiff_or_png_input_has_no_georeference(tmp_path):
    image = tmp_path / "plain.tif"
    tifffile.imwrite(image, picture()[..., :3], photometric="rgb")
    written = write(segsoft.segment(image, k=2, seed=0), tmp_path / "out", probabilities="tiff")
    assert not set(GEOTIFF_TAGS) & set(tags_of(written["labels.tif"]))


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("fmt", "dtype", "drop", "regions"),
    [
        ("tiff", "float32", None, False),  # labels.tif
        ("tiff", "uint8", "labels.tif", False),  # probabilities.tif alone
        ("tiff", "float16", "labels.tif", False),
        ("none", "float32", None, False),  # labels.tif
        ("none", "float32", "labels.tif", True),  # regions.npy
    ],
)
def test_evaluate_scores_folders_without_probabilities_npy(seg, tmp_path, fmt, dtype, drop, regions):
    pred = tmp_path / "pred"
    write(seg, pred / "img", montage=False, regions=regions, probabilities=fmt, probabilities_dtype=dtype)
    if drop:
        (pred / "img" / drop).unlink()
    truth = np.repeat(np.arange(3), [W // 3, W // 3, W - 2 * (W // 3)])[None].repeat(H, 0)
    gt = tmp_path / "gt"
    gt.mkdir()
    np.save(gt / "img.npy", truth)

    labels = load_prediction(pred / "img")
    expected = seg.regions() if regions else seg.labels
    if dtype == "uint8" and drop:  # rounding can tie two memberships: the argmax must agree where it can
        assert (labels == expected).mean() > 0.95 and (labels[~seg.mask] == -1).all()
    else:
        np.testing.assert_array_equal(labels, expected)
    report = evaluate_folder(pred, gt)
    assert not report.errors and len(report.rows) == 1
    assert report.rows[0].pri == pytest.approx(evaluate_labels(labels, [truth])["pri"])


def test_evaluate_refuses_a_tiff_that_is_not_a_prediction(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    tifffile.imwrite(folder / "labels.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    with pytest.raises(SegsoftError, match=r"labels\.tif: has 3 pages"):
        load_prediction(folder)
    tifffile.imwrite(folder / "labels.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(SegsoftError, match=r"labels\.tif: a RGB picture, not labels"):
        load_prediction(folder)
    (folder / "labels.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(SegsoftError, match=r"labels\.tif: "):
        load_prediction(folder)
