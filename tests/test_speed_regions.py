"""The region outputs without image-sized temporaries (issue 14): the same numbers, less memory.

Each fast path is checked bit for bit against the earlier whole-array code, kept here as
the reference, and the memory it saves is bounded with tracemalloc (no timings).
"""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest

import segsoft
from segsoft import regions as R
from segsoft.boundaries import boundary_image
from segsoft.io import Image
from segsoft.outputs import write
from segsoft.regions import RegionHierarchy, region_hierarchy
from segsoft.segment import _region_colors

# --------------------------------------------------------------------------
# references: the whole-array code these paths replace


def reference_ucm(h: RegionHierarchy, bsds: bool = True) -> np.ndarray:
    """The earlier :meth:`RegionHierarchy.ucm`: full-size level arrays, then the ucm2 layout."""
    H, W = h.shape
    ucm2 = np.zeros((2 * H + 1, 2 * W + 1), np.float32)
    if h.n_superpixels > 0:
        if h.factor == 1 or h.mask is not None:
            right, down = h._edge_levels(h._full_superpixels())
        else:
            f = h.factor
            small_right, small_down = h._edge_levels(h.superpixels)
            rows, cols = (np.minimum(f, n - f * np.arange(m)) for n, m in zip(h.shape, h.superpixels.shape))
            right = np.zeros((H, W - 1), np.float32)
            right[:, np.cumsum(cols)[:-1] - 1] = np.repeat(small_right, rows, axis=0)
            down = np.zeros((H - 1, W), np.float32)
            down[np.cumsum(rows)[:-1] - 1] = np.repeat(small_down, cols, axis=1)
        ucm2[1:-1:2, 2:-1:2] = right
        ucm2[2:-1:2, 1:-1:2] = down
        corner = np.maximum(np.maximum(right[:-1], right[1:]), np.maximum(down[:, :-1], down[:, 1:]))
        ucm2[2:-1:2, 2:-1:2] = corner
        ucm2[0], ucm2[-1] = ucm2[1], ucm2[-2]
        ucm2[:, 0], ucm2[:, -1] = ucm2[:, 1], ucm2[:, -2]
    return ucm2 if bsds else np.ascontiguousarray(ucm2[2::2, 2::2])


def reference_working_copy(rgb, p, mask, f):
    """The earlier :func:`segsoft.regions._working_copy`: every tile checked and zeroed pixel by pixel."""
    H, W, K = p.shape
    h, w = -(-H // f), -(-W // f)
    rgb_w = np.zeros((h, w, 3), np.float32)
    p_w = np.zeros((h, w, K), np.float32)
    share = np.zeros((h, w), np.float32)
    used = np.empty((H, W), bool)
    g = min(f, H)
    cols = W if g * W <= R._TILE_PIXELS else max(1, R._TILE_PIXELS // (f * g)) * f
    rows = max(1, R._TILE_PIXELS // (f * cols)) * f
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        for c0 in range(0, W, cols):
            c1 = min(W, c0 + cols)
            pt = np.asarray(p[r0:r1, c0:c1], dtype=np.float32)
            u = np.isfinite(pt).all(axis=-1)
            if mask is not None:
                u &= mask[r0:r1, c0:c1]
            used[r0:r1, c0:c1] = u
            keep = u[..., None]
            pt = np.where(keep, pt, 0.0)
            rt = np.where(keep, np.asarray(rgb[r0:r1, c0:c1], dtype=np.float32), 0.0)
            starts = np.arange(0, c1 - c0, f)
            widths = np.diff(np.append(starts, c1 - c0))
            full = (r1 - r0) // f * f
            for b0, b1 in ((0, full), (full, r1 - r0)):
                if b1 == b0:
                    continue
                n = min(f, b1 - b0)
                i0 = (r0 + b0) // f
                i1 = i0 + (b1 - b0) // n
                j0, j1 = c0 // f, c0 // f + len(starts)
                weight = np.add.reduceat(u[b0:b1].reshape(-1, n, c1 - c0).sum(axis=1), starts, axis=1)
                safe = np.maximum(weight, 1)[..., None]
                band_p = pt[b0:b1].reshape(-1, n, c1 - c0, K).sum(axis=1, dtype=np.float64)
                p_w[i0:i1, j0:j1] = np.add.reduceat(band_p, starts, axis=1) / safe
                band_rgb = rt[b0:b1].reshape(-1, n, c1 - c0, 3).sum(axis=1)
                rgb_w[i0:i1, j0:j1] = np.add.reduceat(band_rgb, starts, axis=1) / safe
                share[i0:i1, j0:j1] = weight / (widths * n)
    return rgb_w, p_w, share, used


def photo(shape=(120, 160), seed=0) -> np.ndarray:
    """An 8-bit photo-like image: four colour blocks with a stepped gradient and noise of a level or
    two, few enough distinct colours for the exact fit (at most 4 x 6 x 27 = 648)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rgb = np.zeros((h, w, 3))
    rgb[:, : w // 2] = (50, 130, 200)
    rgb[:, w // 2 :] = (200, 80, 30)
    rgb[h // 2 :] *= 0.6
    rgb += (np.arange(w) * 6 // max(w, 1) * 5)[None, :, None]
    rgb += rng.integers(-1, 2, rgb.shape) * 2
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# the working copy


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (31, 29), (64, 3), (2, 1001), (100, 101)])
@pytest.mark.parametrize("f", [2, 3, 9])
@pytest.mark.parametrize("how", ["all", "mask", "nan", "inf", "full_mask"])
@pytest.mark.parametrize("tile", [None, 7, 50])
def test_working_copy_is_bit_for_bit_the_earlier_one(monkeypatch, shape, f, how, tile):
    """Tiles that skip the per-pixel check give exactly what checking every pixel gave."""
    if tile is not None:
        monkeypatch.setattr(R, "_TILE_PIXELS", tile)
    rng = np.random.default_rng(sum(shape) + f)
    rgb = rng.random((*shape, 3)).astype(np.float32)
    p = rng.dirichlet(np.ones(4), shape).astype(np.float32)
    mask = None
    if how == "mask":
        mask = rng.random(shape) > 0.3
    elif how == "full_mask":
        mask = np.ones(shape, bool)
    elif how == "nan":
        p[rng.random(shape) > 0.9] = np.nan
    elif how == "inf":
        p[rng.random(shape) > 0.95, 1] = np.inf
    got = R._working_copy(rgb, p, mask, f)
    want = reference_working_copy(rgb, p, mask, f)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_working_copy_of_one_infinite_pixel_marks_only_it_unused():
    p = np.full((18, 18, 2), 0.5, np.float32)
    p[4, 5, 0] = np.inf
    rgb = np.zeros((18, 18, 3), np.float32)
    _, p_w, share, used = R._working_copy(rgb, p, None, 9)
    assert not used[4, 5] and used.sum() == 18 * 18 - 1
    assert share[0, 0] == np.float32(80 / 81) and np.isfinite(p_w).all()


# --------------------------------------------------------------------------
# the contour map, band by band


def hierarchies():
    rng = np.random.default_rng(4)
    rgb = photo((61, 83)).astype(np.float64) / 255
    p = rng.dirichlet(np.ones(3), rgb.shape[:2])
    p[..., 0] = np.where(rgb[..., 0] > 0.4, 0.9, 0.05)
    p /= p.sum(-1, keepdims=True)
    holes = rng.random(rgb.shape[:2]) > 0.15
    holes[:, 40:43] = False  # a transparent line through a region
    yield "full", region_hierarchy(rgb, p, superpixel_size=30)
    yield "mask", region_hierarchy(rgb, p, superpixel_size=30, mask=holes)
    yield "one row", region_hierarchy(rgb[:1], p[:1], superpixel_size=5)
    yield "one column", region_hierarchy(rgb[:, :1], p[:, :1], superpixel_size=5)
    yield "nothing used", region_hierarchy(rgb, p, mask=np.zeros(rgb.shape[:2], bool))
    for f_pixels in (700, 300):  # blocks of 3 and of 5 (whose last row and column are shorter)
        old = R.WORK_PIXELS
        R.WORK_PIXELS = f_pixels
        try:
            yield f"blocks {f_pixels}", region_hierarchy(rgb, p, superpixel_size=12)
            yield f"blocks {f_pixels} mask", region_hierarchy(rgb, p, superpixel_size=12, mask=holes)
            yield f"blocks {f_pixels} thin", region_hierarchy(rgb[:4], p[:4], superpixel_size=3)
        finally:
            R.WORK_PIXELS = old


@pytest.mark.parametrize("rows", [1, 2, 7, 32, 1000])
def test_ucm_bands_give_the_earlier_ucm_bit_for_bit(rows):
    for name, h in hierarchies():
        want = reference_ucm(h)
        assert np.array_equal(h.ucm(), want), name
        assert np.array_equal(h.ucm(bsds=False), reference_ucm(h, bsds=False)), name
        got = np.full_like(want, np.nan)
        for r0, band in h._ucm_bands(rows):
            if r0 == 0:
                got[0] = band[0]
            got[2 * r0 + 1 : 2 * r0 + 1 + band.shape[0]] = band
        assert np.array_equal(got, want), (name, rows)


def test_ucm_file_and_boundaries_written_band_by_band_are_np_save_and_boundary_image(tmp_path):
    from segsoft.outputs import _save_ucm_npy

    for name, h in hierarchies():
        path = tmp_path / f"{name}.npy"
        grey = _save_ucm_npy(path, h)
        np.save(tmp_path / "want.npy", reference_ucm(h))
        assert path.read_bytes() == (tmp_path / "want.npy").read_bytes(), name
        assert np.array_equal(grey, boundary_image(reference_ucm(h))), name


def test_ucm_file_costs_no_image_sized_map(tmp_path, monkeypatch):
    """ucm.npy of a block-averaged 1200 x 900 hierarchy: far less scratch than its 17 MB ucm2."""
    from segsoft.outputs import _save_ucm_npy

    monkeypatch.setattr(R, "WORK_PIXELS", 20_000)
    rng = np.random.default_rng(0)
    rgb = photo((900, 1200)).astype(np.float32) / 255
    p = rng.dirichlet(np.ones(3), (900, 1200)).astype(np.float32)
    h = region_hierarchy(rgb, p)
    assert h.factor > 1 and h.mask is None
    del rgb, p
    ucm_bytes = (2 * 900 + 1) * (2 * 1200 + 1) * 4
    tracemalloc.start()
    try:
        grey = _save_ucm_npy(tmp_path / "ucm.npy", h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < grey.nbytes + ucm_bytes // 8, peak  # the grey picture (1 byte a pixel) and a few bands
    assert np.array_equal(np.load(tmp_path / "ucm.npy"), reference_ucm(h))


# --------------------------------------------------------------------------
# the regions' picture


def reference_region_indexed(pixels, regions, boundaries=True):
    """The earlier :func:`segsoft.render.region_indexed`: whole-image bincounts."""
    from segsoft.render import IndexedImage

    rgb = np.asarray(pixels)
    reg = np.asarray(regions)
    flat = reg.ravel()
    n = int(flat.max()) + 1 if flat.size else 0
    ids = np.where(flat >= 0, flat, n).astype(np.int32)
    counts = np.maximum(np.bincount(ids, minlength=n + 1), 1)
    mean = np.stack(
        [np.bincount(ids, rgb[..., c].ravel().astype(np.float64), minlength=n + 1) for c in range(3)], axis=1
    )
    palette = np.rint(np.clip(mean / counts[:, None], 0.0, 1.0) * 255.0).astype(np.uint8)
    palette[n] = 0
    palette = np.concatenate([palette, np.full((1, 3), 255, np.uint8)])
    index = ids.reshape(reg.shape)
    if boundaries:
        edge = np.zeros(reg.shape, dtype=bool)
        edge[:, :-1] |= reg[:, :-1] != reg[:, 1:]
        edge[:-1, :] |= reg[:-1, :] != reg[1:, :]
        index = np.where(edge & (reg >= 0), n + 1, index)
    if n + 2 <= 256:
        return IndexedImage(index.astype(np.uint8), palette, n if (flat < 0).any() else None)
    return np.take(palette, index, axis=0)


def same_picture(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return (
        np.array_equal(a.indices, b.indices) and np.array_equal(a.palette, b.palette) and a.transparent == b.transparent
    )


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (37, 53), (600, 700)])
@pytest.mark.parametrize("regions", [3, 40, 300])
@pytest.mark.parametrize("unused", [False, True])
@pytest.mark.parametrize("boundaries", [True, False])
def test_region_picture_band_by_band_is_the_earlier_one(monkeypatch, shape, regions, unused, boundaries):
    from segsoft import render
    from segsoft.io import _UnitRows

    monkeypatch.setattr(render, "_CHUNK_PIXELS", 5000)  # many bands, even on small pictures
    rng = np.random.default_rng(sum(shape) + regions)
    rgb8 = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    # blocky regions with long runs, so that the colour sums carry rounding
    small = rng.integers(0, regions, (-(-shape[0] // 7), -(-shape[1] // 7)))
    reg = np.repeat(np.repeat(small, 7, 0), 7, 1)[: shape[0], : shape[1]].astype(np.int32)
    if unused:
        reg[rng.random(shape) > 0.8] = -1
    pixels = rgb8.astype(np.float32) / np.float32(255)
    want = reference_region_indexed(pixels, reg, boundaries)
    assert same_picture(render.region_indexed(pixels, reg, boundaries), want)
    assert same_picture(render.region_indexed(_UnitRows(rgb8), reg, boundaries), want)
    assert same_picture(render.region_indexed(pixels.astype(np.float64), reg, boundaries), want)


def test_region_picture_from_8_bit_samples_needs_no_float_pixels():
    from segsoft import render
    from segsoft.io import _UnitRows

    shape = (1500, 2000)
    rgb8 = photo(shape)
    reg = np.repeat(np.arange(shape[0] // 10, dtype=np.int32) % 50, 10)[:, None] * np.ones(shape[1], np.int32)
    tracemalloc.start()
    try:
        pic = render.region_indexed(_UnitRows(rgb8), reg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the uint8 picture (1 byte a pixel) and a few bands (about 6 MB), where float pixels (12 bytes a
    # pixel), int32 ids (4) and float64 channels (8, and their float32 copy) were made
    assert peak < 5 * reg.size, peak
    want = reference_region_indexed(rgb8.astype(np.float32) / np.float32(255), reg)
    assert same_picture(pic, want)


# --------------------------------------------------------------------------
# the hierarchy of a photo after the exact fit, and the whole output folder


def exact_photo_segmentation(shape=(300, 400), k=6):
    seg = segsoft.segment(Image._from_rgb8(photo(shape), None, None, "RGB"), k=k)
    assert seg._distinct is not None and seg._probabilities is None  # the exact fit, memberships not made
    return seg


def test_block_hierarchy_is_region_hierarchy(monkeypatch):
    """Merged from a working copy made from the per-colour table, the same superpixels and merges."""
    monkeypatch.setattr(R, "WORK_PIXELS", 5000)
    seg = exact_photo_segmentation()
    h = seg.hierarchy
    assert seg._probabilities is None and seg.image.__dict__.get("_pixels") is None
    want = region_hierarchy(_region_colors(seg.image), seg.probabilities, mask=seg.mask)
    assert h.factor == want.factor > 1 and h.shape == want.shape and h.mask is None is want.mask
    np.testing.assert_array_equal(h.superpixels, want.superpixels)
    np.testing.assert_array_equal(h.merges, want.merges)
    for t in (0.0, 0.15, 0.5):
        np.testing.assert_array_equal(h.labels(t), want.labels(t))


def test_block_hierarchy_allocates_no_full_size_memberships(monkeypatch):
    """tracemalloc: the hierarchy of a 0.48 MP photo, k = 12, peaks well below its 23 MB of memberships
    (tiles of 16k pixels here: a tile's gathered memberships and sums are what the working copy holds)."""
    monkeypatch.setattr(R, "WORK_PIXELS", 40_000)
    monkeypatch.setattr(R, "_TILE_PIXELS", 1 << 14)
    seg = exact_photo_segmentation((600, 800), k=12)
    full = 600 * 800 * 12 * 4
    tracemalloc.start()
    try:
        h = seg.hierarchy
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.factor > 1 and seg._probabilities is None
    assert peak < full // 2, (peak, full)


def test_a_small_photo_is_merged_as_before():
    seg = exact_photo_segmentation((60, 80), k=3)
    assert seg._block_hierarchy() is None  # merged at full resolution: nothing to gain
    h = seg.hierarchy
    want = region_hierarchy(_region_colors(seg.image), seg.probabilities)
    np.testing.assert_array_equal(h.merges, want.merges)


def folder_bytes(folder) -> dict[str, bytes]:
    import json

    out = {}
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        if f.name == "model.json":
            record = json.loads(data)
            record.pop("timings"), record.pop("created")
            data = json.dumps(record, sort_keys=True).encode()
        out[f.name] = data
    return out


@pytest.mark.parametrize("palette", ["categorical", "mean"])
def test_folder_with_regions_is_byte_for_byte_the_general_paths(tmp_path, monkeypatch, palette):
    """Fast paths (hierarchy from the table, band-wise ucm and regions' picture, mean colours with the
    memberships file) against the same segmentation with its memberships and pixels made up front."""
    monkeypatch.setattr(R, "WORK_PIXELS", 8000)
    fast, slow = exact_photo_segmentation(), exact_photo_segmentation()
    slow.probabilities, slow.image.pixels  # noqa: B018 - made: every general path
    write(fast, tmp_path / "fast", regions=True, palette=palette)
    write(slow, tmp_path / "slow", regions=True, palette=palette)
    assert fast._probabilities is None and fast.image.__dict__.get("_pixels") is None
    a, b = folder_bytes(tmp_path / "fast"), folder_bytes(tmp_path / "slow")
    assert sorted(a) == sorted(b) and {"ucm.npy", "regions.npy", "boundaries.png", "regions.png"} <= set(a)
    for name in a:
        assert a[name] == b[name], name


def test_mean_colours_summed_with_the_memberships_file_are_the_property(tmp_path):
    from segsoft.outputs import _save_probabilities_npy

    seg, other = exact_photo_segmentation(), exact_photo_segmentation()
    _save_probabilities_npy(tmp_path / "p.npy", seg, "float32", mean_rgb=True)
    assert "mean_rgb" in seg.__dict__
    np.testing.assert_array_equal(seg.mean_rgb, other.mean_rgb)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), other.probabilities)


def test_colour_codes_from_samples_are_r_g_b_packed():
    S = importlib.import_module("segsoft.segment")  # the module (segsoft.segment is also the function)
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (301, 207, 3)).astype(np.uint8)
    want = (rgb8[..., 0].astype(np.int32) << 16 | rgb8[..., 1].astype(np.int32) << 8 | rgb8[..., 2]).ravel()
    np.testing.assert_array_equal(S._color_codes(Image._from_rgb8(rgb8, None, None, "RGB")), want)
    mask = rng.random((301, 207)) > 0.3
    np.testing.assert_array_equal(S._color_codes(Image._from_rgb8(rgb8, mask, None, "RGB")), want[mask.ravel()])


def test_png_written_in_pieces_is_the_joined_file(tmp_path):
    """An RGB picture large enough for two segments: its pieces, written one after another, are the PNG."""
    from PIL import Image as PILImage

    from segsoft.io import atomic_write_bytes
    from segsoft.outputs import _png_bytes, _png_parts, _rgb_in_segments

    pic = np.ascontiguousarray(np.repeat(photo((1100, 1000)), 1, axis=0))
    assert _rgb_in_segments(pic)
    parts = _png_parts(pic)
    assert len(parts) > 3  # not joined
    atomic_write_bytes(tmp_path / "a.png", parts)
    assert (tmp_path / "a.png").read_bytes() == _png_bytes(pic)
    np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "a.png")), pic)
    atomic_write_bytes(tmp_path / "b.bin", iter([b"ab", b"", b"cd"]))
    assert (tmp_path / "b.bin").read_bytes() == b"abcd"
