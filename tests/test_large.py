"""One image out of core: lazy TIFF / zarr reading, tile-by-tile segmentation, OME-Zarr outputs and previews."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'segsoft[dask]'")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

import segsoft
from segsoft.budget import check_fits, estimate_bytes, header_shape
from segsoft.cluster import large as large_mod
from segsoft.cluster.large import segment_large
from segsoft.cluster.lazy import open_lazy
from segsoft.errors import SegsoftError
from segsoft.io import read_image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "SEGSOFT_CHUNK": "64"}
SCHEMA = json.loads((ROOT / "segsoft" / "model.schema.json").read_text())


def cli(*args, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return np.asarray(PILImage.open(ROOT / "images" / "coffee.jpg").convert("RGB"))[:120, :150]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, coffee) -> Path:
    """A tiled, pyramidal RGB TIFF (tiles of 32: a 4 x 5 grid of 32-px source tiles per 128-px chunk)."""
    path = tmp_path_factory.mktemp("src") / "coffee.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(coffee, tile=(32, 32), photometric="rgb", compression="zlib", subifds=1)
        tw.write(coffee[::2, ::2], tile=(32, 32), photometric="rgb", compression="zlib", subfiletype=1)
    return path


@pytest.fixture(scope="module")
def rgba(tmp_path_factory, coffee) -> Path:
    a = np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)])
    a[10:40, 20:70, 3] = 0  # a transparent patch across tile borders
    path = tmp_path_factory.mktemp("src") / "holes.tif"
    tifffile.imwrite(path, a, photometric="rgb", extrasamples=[2], tile=(32, 32))
    return path


# --------------------------------------------------------------------------
# reading


def test_lazy_tiff_reads_as_read_image(tiled, rgba):
    for path in (tiled, rgba):
        lz = open_lazy(path, chunks=48)
        im = read_image(path)
        assert lz.bands.chunks[0][:2] == (48, 48) and len(lz.bands.chunks[1]) > 2
        assert np.array_equal(lz.bands.compute(), im.bands)
        assert (lz.mask is None) == (im.mask is None)
        if im.mask is not None:
            assert np.array_equal(lz.mask.compute(), im.mask)
        assert (lz.bit_depth, lz.is_color, lz.band_names) == (im.bit_depth, im.is_color, im.band_names)


def test_lazy_zarr_array_reads_as_npy(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((50, 70, 5), dtype=np.float32)
    a[3, 4, 1] = np.nan  # nodata, as in a .npy
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=a.shape, chunks=(20, 20, 5), dtype="f4")
    z[:] = a
    np.save(tmp_path / "a.npy", a)
    lz, im = open_lazy(tmp_path / "a.zarr"), read_image(tmp_path / "a.npy")
    assert np.array_equal(lz.bands.compute(), im.bands)
    assert np.array_equal(lz.mask.compute(), im.mask)
    assert lz.band_names == im.band_names and not lz.is_color


def test_lazy_ome_zarr_group_by_its_axes(tmp_path, coffee):
    g = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    arr = g.create_array("0", shape=(3, *coffee.shape[:2]), chunks=(3, 64, 64), dtype="uint8")
    arr[:] = np.moveaxis(coffee, -1, 0)
    g.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
    ]
    lz = open_lazy(tmp_path / "img.ome.zarr")
    assert lz.bands.shape == (*coffee.shape[:2], 3) and lz.bit_depth == 8
    assert np.array_equal(lz.bands.compute(), coffee / np.float32(255))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: zarr.open(str(p), mode="w", shape=(2, 3, 4, 5), dtype="u1"), "is not an image"),
        (lambda p: zarr.open(str(p), mode="w", shape=(8, 8), dtype="c8"), "complex-valued"),
        (lambda p: zarr.open_group(str(p), mode="w"), "not an OME-Zarr image"),
    ],
)
def test_bad_zarr_stores_are_one_line_errors(tmp_path, make, message):
    make(tmp_path / "bad.zarr")
    with pytest.raises(SegsoftError, match=message) as info:
        open_lazy(tmp_path / "bad.zarr")
    assert str(tmp_path / "bad.zarr") in str(info.value)


# --------------------------------------------------------------------------
# the same numbers as in memory


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "gmm"},
        {"model": "soft-kmeans", "spatial_weight": 0.5},
        {"model": "fcm"},
        {"model": "gmm", "smoothing": 1.0},
    ],
)
def test_out_of_core_equals_in_memory(tiled, tmp_path, kw):
    ref = segsoft.segment(tiled, k=3, **kw)
    big = segment_large(tiled, k=3, scheduler="threads", chunks=64, **kw)
    big.save(tmp_path / "o")
    assert abs(big.log_likelihood - ref.log_likelihood) <= 1e-10 * abs(ref.log_likelihood)
    # the criteria of the full image, in the summary and model.json (not the preview's)
    assert (big.bic is None) == (ref.bic is None) == (kw["model"] == "fcm")
    if ref.bic is not None:
        assert abs(big.bic - ref.bic) <= 1e-9 * abs(ref.bic) and abs(big.aic - ref.aic) <= 1e-9 * abs(ref.aic)
    result = json.loads((tmp_path / "o" / "model.json").read_text())["result"]
    assert result["bic"] == big.bic and result["aic"] == big.aic
    z = zarr.open_group(str(tmp_path / "o" / "probabilities.zarr"), mode="r")
    p = np.moveaxis(z["0"][:], 0, -1)
    assert np.abs(p - ref.probabilities).max() <= 1e-6
    labels = z["labels/clusters/0"][0]
    assert (labels == ref.labels).mean() > 0.999


def test_out_of_core_with_a_mask_equals_in_memory(rgba, tmp_path):
    ref = segsoft.segment(rgba, k=3)
    big = segment_large(rgba, k=3, scheduler="threads", chunks=64)
    big.save(tmp_path / "o", probabilities_dtype="uint8")
    assert abs(big.log_likelihood - ref.log_likelihood) <= 1e-10 * abs(ref.log_likelihood)
    z = zarr.open_group(str(tmp_path / "o" / "probabilities.zarr"), mode="r")
    stored = np.moveaxis(z["0"][:], 0, -1)
    assert stored.dtype == np.uint8
    hole = ~read_image(rgba).mask
    assert (stored[hole] == 255).all() and (z["labels/clusters/0"][0][hole] == 255).all()
    ok = ~hole
    assert np.abs(stored[ok] / 254.0 - ref.probabilities[ok]).max() <= 1 / 508 + 1e-6
    assert int(big.counts.sum()) == int(ok.sum())


# --------------------------------------------------------------------------
# outputs


def test_ome_zarr_pyramids_previews_and_model_json(tiled, tmp_path, monkeypatch):
    monkeypatch.setattr(large_mod, "PREVIEW_SIDE", 64)  # previews of 2x2... means on this small image
    monkeypatch.setattr(large_mod, "PYRAMID_SMALLEST", 40)
    big = segment_large(tiled, k=4, scheduler="threads", chunks=64)
    out = big.save(tmp_path / "o", regions=True)
    folder = tmp_path / "o"
    assert {"probabilities.zarr", "uncertainty.zarr", "overlay.png", "montage.png", "regions.png"} <= set(out)
    z = zarr.open_group(str(folder / "probabilities.zarr"), mode="r")
    ms = z.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    levels = [d["path"] for d in ms["datasets"]]
    assert len(levels) >= 2
    assert z[levels[1]].shape == (4, 60, 75)
    assert z["labels"].attrs["labels"] == ["clusters"]
    assert len(z["labels/clusters"].attrs["image-label"]["colors"]) == 5
    u = zarr.open_group(str(folder / "uncertainty.zarr"), mode="r")
    assert u["0"].shape == (120, 150) and 0 <= np.nanmin(u["0"][:]) and np.nanmax(u["0"][:]) <= 1
    with PILImage.open(folder / "overlay.png") as pic:
        assert max(pic.size) <= 64
    record = json.loads((folder / "model.json").read_text())
    assert record["image"]["width"] == 150 and record["image"]["height"] == 120
    assert record["out_of_core"]["preview"]["factor"] == 4
    assert record["probabilities"]["format"] == "zarr" and record["probabilities"]["shape"] == [4, 120, 150]
    assert abs(sum(c["pixel_fraction"] for c in record["clusters"]) - 1) < 1e-9
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(record, SCHEMA)
    # written again: the stores are replaced whole, no temporary store is left
    big.save(folder)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp.zarr")]
    assert not (folder / "regions.png").exists()


def test_cli_run_out_of_core_on_a_local_cluster(tiled, tmp_path):
    r = cli("run", tiled, "-k", "3", "--scheduler", "local", "--max-pixels", "1000", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "out of core" in r.stdout
    assert any(line.startswith("BIC") for line in r.stdout.splitlines())
    folder = tmp_path / "o" / "coffee"
    assert (folder / "probabilities.zarr" / "0" / ".zarray").is_file() and (folder / "montage.png").is_file()
    ref = segsoft.segment(tiled, k=3)
    p = np.moveaxis(zarr.open_group(str(folder / "probabilities.zarr"), mode="r")["0"][:], 0, -1)
    assert np.abs(p - ref.probabilities).max() <= 1e-6


def test_cli_out_of_core_bad_inputs(tmp_path, tiled):
    store = tmp_path / "s.zarr"
    z = zarr.open(str(store), mode="w", shape=(64, 64), chunks=(32, 32), dtype="u1")
    z[:] = np.arange(64 * 64).reshape(64, 64) % 251
    r = cli("run", store, "-k", "2", "-o", tmp_path / "o", "--max-pixels", "1000")
    assert r.returncode != 0 and "--scheduler local" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", store, "-k", "2", "-o", tmp_path / "o", "-q")  # small enough: read whole, in memory
    assert r.returncode == 0 and (tmp_path / "o" / "s" / "probabilities.npy").is_file(), r.stderr
    # a chunk that fails to decode: the image fails with its name, one line
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))
    chunk.write_bytes(b"\x00garbage" * 3)
    for extra in ((), ("--max-pixels", "1000")):  # in memory and out of core
        r = cli("run", store, "-k", "2", "--scheduler", "threads", "-o", tmp_path / "o", *extra)
        assert r.returncode == 1 and str(store) in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = cli(
        "run",
        tiled,
        "-k",
        "2",
        "--scheduler",
        "threads",
        "--max-pixels",
        "100",
        "--probabilities",
        "tiff",
        "-o",
        tmp_path / "o",
    )
    assert r.returncode == 1 and "zarr" in r.stderr


# --------------------------------------------------------------------------
# refused up front


def test_too_large_for_memory_is_refused_before_reading(tiled):
    assert header_shape(tiled) == (120, 150, 3)
    need = estimate_bytes(120, 150, 3, 4)
    check_fits(tiled, 4, available=need + 1)
    with pytest.raises(SegsoftError, match="--scheduler local") as info:
        check_fits(tiled, 4, available=need - 1)
    assert str(tiled) in str(info.value)


def test_over_max_pixels_names_the_scheduler(tiled):
    with pytest.raises(SegsoftError, match="--scheduler local"):
        segsoft.segment(tiled, k=2, max_pixels=100)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_preview_block_means_leave_nan_out(factor):
    from segsoft.cluster.large import _mean_block

    rng = np.random.default_rng(factor)
    x = rng.random((37, 53, 3)).astype(np.float32)
    x[rng.random((37, 53)) < 0.3] = np.nan
    x[:factor, :factor] = np.nan  # a block with nothing in it
    got = _mean_block(x, factor=factor)
    H, W = -(-37 // factor), -(-53 // factor)
    assert got.shape == (H, W, 3)
    for i, j in [(0, 0), (1, 2), (H - 1, W - 1), (H // 2, W - 1)]:
        block = x[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].reshape(-1, 3)
        if np.isnan(block).all():
            assert np.isnan(got[i, j]).all()
        else:
            assert np.allclose(got[i, j], np.nanmean(block, axis=0), atol=1e-6)


def test_k_auto_out_of_core_chooses_as_in_memory(tiled, tmp_path):
    ref = segsoft.segment(tiled, k="auto", k_range=(2, 4), sample=5000)
    big = segment_large(tiled, k="auto", k_range=(2, 4), sample=5000, scheduler="threads", chunks=64)
    assert big.k == ref.k and big.selection["ks"] == ref.selection["ks"]
    assert np.allclose(big.selection["icl"], ref.selection["icl"], rtol=1e-9)
    out = big.save(tmp_path / "o")
    assert "k_selection.png" in out
    assert abs(big.log_likelihood - ref.log_likelihood) <= 1e-10 * abs(ref.log_likelihood)


def test_smoothing_on_tiles_that_do_not_divide_the_image(coffee, tmp_path):
    """133 x 199 on 64-px tiles: short edge tiles are merged, every tile starts on an even pixel."""
    odd = np.dstack([coffee[:113, :139], np.full((113, 139), 255, np.uint8)])
    odd[5:30, 100:130, 3] = 0  # and a mask across a tile border
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, odd, photometric="rgb", extrasamples=[2], tile=(16, 16))
    ref = segsoft.segment(path, k=3, smoothing=1.0)
    big = segment_large(path, k=3, scheduler="threads", chunks=64, smoothing=1.0)
    big.save(tmp_path / "o")
    p = np.moveaxis(zarr.open_group(str(tmp_path / "o" / "probabilities.zarr"), mode="r")["0"][:], 0, -1)
    assert np.array_equal(np.isnan(p), np.isnan(ref.probabilities))
    assert np.nanmax(np.abs(p - ref.probabilities)) <= 1e-6
    assert abs(big.log_likelihood - ref.log_likelihood) <= 1e-10 * abs(ref.log_likelihood)


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_pyramid_levels_are_means_of_the_level_below(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(large_mod, "PYRAMID_SMALLEST", 20)
    rng = np.random.default_rng(1)
    a = (rng.random((45, 1, 3)) * 255).astype(np.uint8)  # one pixel wide: only rows are halved
    zarr.open(str(tmp_path / "thin.zarr"), mode="w", shape=a.shape, dtype="u1")[:] = a
    big = segment_large(tmp_path / "thin.zarr", k=2, scheduler="threads", chunks=16)
    big.save(tmp_path / "o", probabilities_dtype=dtype)
    z = zarr.open_group(str(tmp_path / "o" / "probabilities.zarr"), mode="r")
    ms = z.attrs["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms] == [[1, 1, 1], [1, 2, 1], [1, 4, 1]]
    lab = z["labels/clusters"]
    assert [lab[str(i)].shape for i in range(3)] == [(1, 45, 1), (1, 22, 1), (1, 11, 1)]
    assert [z[str(i)].shape for i in range(3)] == [(2, 45, 1), (2, 22, 1), (2, 11, 1)]

    def unit(x):
        x = x.astype(np.float64)
        return x / 254 if dtype == "uint8" else x

    l0, l1 = unit(z["0"][:]), unit(z["1"][:])
    expect = (l0[:, 0:44:2] + l0[:, 1:44:2]) / 2
    tol = 1 / 254 if dtype == "uint8" else 1e-3 if dtype == "float16" else 1e-6
    assert np.abs(l1 - expect).max() <= tol
    assert (
        json.loads((tmp_path / "o" / "probabilities.zarr" / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    )


def test_batch_takes_zarr_stores_and_a_bad_one_fails_alone(tmp_path, coffee):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.zarr", "b.zarr"):
        z = zarr.open(str(folder / name), mode="w", shape=coffee.shape, chunks=(64, 64, 3), dtype="u1")
        z[:] = coffee
    PILImage.fromarray(coffee).save(folder / "c.png")
    chunk = next(p for p in (folder / "b.zarr").rglob("*") if p.is_file() and p.name[0] not in ".z")
    chunk.write_bytes(b"\x00garbage")
    r = cli("batch", folder, "-k", "2", "-o", tmp_path / "o", "--jobs", "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (tmp_path / "o" / "a" / "model.json").is_file() and (tmp_path / "o" / "c" / "model.json").is_file()
    summary = (tmp_path / "o" / "summary.csv").read_text()
    assert "b.zarr" in summary and "cannot be read" in summary
    a = np.load(tmp_path / "o" / "a" / "probabilities.npy")
    c = np.load(tmp_path / "o" / "c" / "probabilities.npy")
    assert np.array_equal(a, c)  # the same pixels from a store and from a PNG


def test_features_cache_is_removed_and_a_dead_runs_cache_swept(tiled, tmp_path):
    from segsoft.cluster.large import _host

    folder = tmp_path / "o"
    folder.mkdir()
    dead = folder / f".{_host()}-999999999-deadbeef.features.tmp.zarr"  # no such process
    other = folder / ".elsewhere-1-cafecafe.features.tmp.zarr"  # another machine's: left alone
    dead.mkdir()
    other.mkdir()
    big = segment_large(tiled, k=2, scheduler="threads", chunks=64, workdir=folder)
    assert not dead.exists() and other.exists()
    assert big.cache_path is not None and big.cache_path.is_dir()
    big.save(folder)
    assert big.cache_path is None and not [p for p in folder.iterdir() if p.name.endswith(".features.tmp.zarr")][1:]
