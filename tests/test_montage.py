"""The montage people read (issue 13, item 1): header, legend, colour bars, readable text, transparency.

Every case below is checked on the sheet itself: its exact size (from the layout), where the
legend is and that it holds one readable entry per cluster in the cluster's colour, that the
colour bars show their colormap, and that transparent pixels are drawn as the checkerboard in
the montage and written as alpha in the PNG files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft import render

TILE = 256  # what `segsoft run` writes (outputs.MONTAGE_TILE_WIDTH)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _inside(inner, outer) -> bool:
    return outer[0] <= inner[0] <= inner[2] <= outer[2] and outer[1] <= inner[1] <= inner[3] <= outer[3]


def _disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


# (image shape, k): k = 1, 4, 12, 64 on small noisy images, and a 1 x 3000 and a 3000 x 1 strip.
CASES = [((24, 36), 1), ((24, 36), 4), ((24, 36), 12), ((24, 36), 64), ((1, 3000), 2), ((3000, 1), 2)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-k{c[1]}")
def case(request):
    shape, k = request.param
    seg = segsoft.segment(_noise(*shape, seed=k), k=k, max_iter=3, seed=0)
    sheet, layout = seg.montage_sheet(
        [(name, title, make()) for name, title, make in seg.pictures()], tile_width=TILE, return_layout=True
    )
    return seg, sheet, layout


def test_sheet_size_matches_its_layout_and_stays_bounded(case):
    seg, sheet, layout = case
    n_tiles = 1 + 3 + seg.k  # original, overlay, labels, uncertainty, one heatmap per cluster
    columns = min(4, n_tiles)
    assert sheet.dtype == np.uint8 and sheet.shape == (layout.height, layout.width, 3)
    assert layout.width == max(8 + columns * (TILE + 8), 360)
    assert len(layout.tiles) == len(layout.titles) == len(layout.colorbars) == n_tiles
    # each tile is the image fitted to the 256 x 512 box, centred in its cell
    tw, th = render.fit_box(seg.image.width, seg.image.height, TILE)
    assert {(b[2] - b[0], b[3] - b[1]) for b in layout.tiles} == {(tw, th)}
    # height: header, then rows of title band + tile + colour bar (every row has one: the first the
    # uncertainty's, the others the heatmaps'), then the legend, each followed by an 8-pixel margin
    rows = math.ceil(n_tiles / columns)
    header = render._line_height(render.font(render._HEADER_SIZE, bold=True)) + len(layout.header_lines) * (
        render._line_height(render.font(render._DETAIL_SIZE)) + render._LINE_GAP
    )
    band = render._line_height(render.font(render._TITLE_SIZE)) + 2 * render._TITLE_PAD
    expected = 8 + header + 8 + rows * (band + th + render._colorbar_height() + 8) + legend_height(layout) + 8
    assert layout.height == expected
    assert 1 <= len(layout.header_lines) <= 2  # the details wrap onto a second line at most
    assert max(sheet.shape) <= 4096 or seg.k == 64  # k = 64: 67 tiles in 17 rows, each bounded by the box


def legend_height(layout) -> int:
    return 0 if layout.legend is None else layout.legend[3] - layout.legend[1]


def test_pictures_keep_the_image_size(case):
    seg, _, _ = case
    h, w = seg.image.height, seg.image.width
    for name, _, make in seg.pictures():
        assert make().shape[:2] == (h, w), name


def test_nothing_overlaps_and_everything_is_on_the_sheet(case):
    seg, _, layout = case
    sheet_box = (0, 0, layout.width, layout.height)
    boxes = [layout.header, layout.legend, *layout.titles, *layout.tiles, *filter(None, layout.colorbars)]
    for box in boxes:
        assert box is not None and _inside(box, sheet_box), box
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert _disjoint(a, b), (a, b)
    # the header holds the image's size, the model, k, the features and the score
    text = " ".join(layout.header_lines)
    for needle in (f"{seg.image.width} x {seg.image.height} px", "model gmm", f"k = {seg.k}", "features lab"):
        assert needle in text
    assert "mean log-likelihood" in text


def test_legend_has_a_readable_entry_per_cluster_in_its_colour(case):
    seg, sheet, layout = case
    k = seg.k
    entries = layout.legend_entries
    assert len(entries) == k
    assert all(_inside(e, layout.legend) for e in entries)
    assert all(_disjoint(a, b) for i, a in enumerate(entries) for b in entries[i + 1 :])
    # as many columns as fit the sheet, balanced, numbered down the columns
    rows = math.ceil(k / layout.legend_columns)
    assert (layout.legend_columns - 1) * rows < k <= layout.legend_columns * rows
    if k > 1:
        assert entries[1][0] == entries[0][0] if rows > 1 else entries[1][1] == entries[0][1]
    legend_font = render.font(render._LEGEND_SIZE)
    labels = render.legend_entries(seg.colors, seg.shares)
    for (label, colour), (x0, y0, x1, y1) in zip(labels, entries):
        assert label.startswith(f"{labels.index((label, colour))}  ") and label.endswith(" %")
        assert legend_font.getlength(label) <= x1 - x0 - render._SWATCH - render._SWATCH_GAP
        # the swatch's inside is the cluster's colour
        sy = y0 + (y1 - y0 - render._SWATCH) // 2 + render._SWATCH // 2
        assert sheet[sy, x0 + render._SWATCH // 2].tolist() == list(colour)
    # the legend area: the heading plus one line per row, no more
    line = max(render._line_height(legend_font), render._SWATCH) + render._LINE_GAP
    assert legend_height(layout) == render._line_height(legend_font) + render._LINE_GAP + rows * line
    # shares are each cluster's fraction of the labelled pixels
    np.testing.assert_allclose(seg.shares.sum(), 1.0)
    np.testing.assert_array_equal(seg.shares, np.bincount(seg.labels.ravel(), minlength=k) / seg.labels.size)


def test_uncertainty_and_heatmaps_have_colour_bars_of_their_colormap(case):
    seg, sheet, layout = case
    titles = ["original", "soft overlay", "labels", "uncertainty"] + [f"cluster {j}" for j in range(seg.k)]
    for title, bar in zip(titles, layout.colorbars):
        if not (title == "uncertainty" or title.startswith("cluster")):
            assert bar is None, title
            continue
        assert bar is not None and bar[2] - bar[0] == TILE, title
        lut = render.colormap_lut("magma" if title == "uncertainty" else "viridis")
        y = bar[1] + render._BAR_GAP + render._BAR_HEIGHT // 2
        row = sheet[y, bar[0] : bar[2]].astype(int)
        # away from the outline, each column is the LUT at its position (0 on the left, 1 on the right)
        for x in (3, TILE // 2, TILE - 4):
            assert np.abs(row[x] - lut[round(x * 255 / (TILE - 1))].astype(int)).max() <= 8, (title, x)


def test_heatmap_titles_carry_the_cluster_swatch_and_share():
    seg = segsoft.segment(_noise(24, 36), k=3, max_iter=3)
    sheet, layout = (
        seg.montage(tile_width=TILE),
        seg.montage_sheet([(n, t, m()) for n, t, m in seg.pictures()], return_layout=True)[1],
    )
    for j in range(3):
        x0, y0, _, y1 = layout.titles[4 + j]
        sy = y0 + (y1 - y0) // 2
        assert sheet[sy, x0 + render._SWATCH // 2].tolist() == seg.colors[j].tolist()


def test_titles_use_a_scalable_font_and_keep_their_spaces():
    f = render.font(render._TITLE_SIZE)
    assert hasattr(f, "getmetrics")  # a FreeType font, not the old fixed bitmap
    assert f.getname()[0] in ("DejaVu Sans", "Aileron")  # matplotlib's DejaVu Sans, else Pillow's own
    assert render._line_height(f) >= 14  # the old bitmap font was 11 px including its padding
    assert f.getlength("soft overlay") > f.getlength("softoverlay") + 2
    # on the sheet: the space between "soft" and "overlay" is blank columns, not touching letters
    white = np.full((40, 200, 3), 255, np.uint8)
    sheet, layout = render.montage([("soft overlay", white)], tile_width=200, return_layout=True)
    x0, y0, x1, y1 = layout.titles[0]
    ink = (sheet[y0:y1, x0:x1] < 160).any(axis=(0, 2))
    cols = np.flatnonzero(ink)
    blank_runs = np.diff(cols) - 1
    soft = f.getlength("soft")
    gap_at = np.flatnonzero((cols[:-1] >= soft - 3) & (cols[:-1] <= soft + 2))
    assert gap_at.size and blank_runs[gap_at].max() >= 3, blank_runs


def test_narrow_cells_cut_titles_and_drop_colliding_tick_labels():
    p = np.random.default_rng(0).dirichlet(np.ones(2), size=(8, 8)).astype(np.float32)
    tiles = [render.Tile("a very long title indeed for this cell", render.uncertainty_indexed(p), "magma")]
    tiles.append(render.Tile("x", render.heatmap_indexed(p, 0), "viridis", ((0.0, "0 certain"), (1.0, "1 split"))))
    sheet = render.montage(tiles, tile_width=48)  # no overlap of text, and no error, however narrow
    assert sheet.shape[1] == 8 + 2 * (48 + 8)


# ----------------------------------------------------------------------------- transparency


def _rgba_with_hole(h: int = 40, w: int = 48) -> np.ndarray:
    rgba = np.dstack([_noise(h, w, seed=3), np.full((h, w), 255, np.uint8)])
    rgba[: h // 2, : w // 2, 3] = 0  # the top-left quarter is transparent
    return rgba


def test_transparent_pixels_are_a_checkerboard_in_every_montage_tile():
    seg = segsoft.segment(_rgba_with_hole(), k=3, max_iter=5)
    sheet, layout = seg.montage_sheet([(n, t, m()) for n, t, m in seg.pictures()], return_layout=True)
    checker = {tuple(c) for c in render._CHECKER}
    for (x0, y0, x1, y1), title in zip(
        layout.tiles, ["original", "overlay", "labels", "uncertainty", "c0", "c1", "c2"]
    ):
        hole = sheet[y0 : y0 + (y1 - y0) // 2 - 2, x0 : x0 + (x1 - x0) // 2 - 2].reshape(-1, 3)
        colours = {tuple(c) for c in hole.tolist()}
        assert colours == checker, (title, list(colours)[:5])  # both greys, nothing else
        rest = sheet[y0 + (y1 - y0) // 2 + 2 : y1, x0:x1].reshape(-1, 3)
        assert not {tuple(c) for c in rest.tolist()} <= checker, title  # the used pixels are drawn
    # a one-pixel mask makes no difference where it is not
    np.testing.assert_array_equal(render.checkerboard(16, 16)[:8, :8], 204)


def test_nodata_pixels_of_float_bands_are_transparent_too():
    bands = np.random.default_rng(4).random((20, 30, 5)).astype(np.float32)
    bands[:6, :9, 2] = np.nan  # nodata in one band masks the pixel
    seg = segsoft.segment(bands, k=3, color="bands", max_iter=5)
    assert seg.mask is not None and not seg.mask[:6, :9].any()
    for name, _, make in seg.pictures():
        picture = make()
        rgba = picture.to_rgba() if isinstance(picture, render.IndexedImage) else picture
        assert rgba.shape[2] == 4, name
        np.testing.assert_array_equal(rgba[..., 3] == 255, seg.mask, err_msg=name)


def test_transparent_pixels_are_written_as_alpha(tmp_path):
    rgba = _rgba_with_hole()
    used = rgba[..., 3] > 0
    seg = segsoft.segment(rgba, k=3, max_iter=5)
    written = seg.save(tmp_path / "out")
    for name in ["overlay.png", "labels.png", "uncertainty.png", "prob_0.png", "prob_1.png", "prob_2.png"]:
        img = PILImage.open(written[name])
        img.load()
        # overlay: RGBA; the others stay exact palette PNGs, with the unused index in tRNS
        assert img.mode == ("RGBA" if name == "overlay.png" else "P"), name
        assert img.size == (rgba.shape[1], rgba.shape[0])
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        np.testing.assert_array_equal(alpha, np.where(used, 255, 0), err_msg=name)
    # the montage is an opaque RGB sheet, the checkerboard drawn in
    assert PILImage.open(written["montage.png"]).mode == "RGB"
    # an image with no transparent pixel gets no alpha at all
    plain = segsoft.segment(rgba[..., :3], k=3, max_iter=5).save(tmp_path / "plain")
    assert PILImage.open(plain["overlay.png"]).mode == "RGB"
    assert "transparency" not in PILImage.open(plain["labels.png"]).info


def test_regions_picture_is_transparent_where_the_image_is():
    seg = segsoft.segment(_rgba_with_hole(), k=3, max_iter=5)
    (pic,) = [make() for name, _, make in seg.pictures(regions=True) if name == "regions.png"]
    np.testing.assert_array_equal(pic.to_rgba()[..., 3] == 255, seg.mask)


def test_shrinking_keeps_transparency_without_bleeding_colour():
    rgba = np.full((640, 640, 4), 255, np.uint8)  # shrunk by 10 x 10: five of each kind of column
    rgba[..., :3] = (200, 30, 30)
    rgba[:, ::2, :3] = (0, 255, 0)
    rgba[:, ::2, 3] = 0  # every other column transparent, and green underneath
    small = render.shrink(rgba, 64)
    assert small.shape[2] == 4
    inside = small[2:-2, 2:-2]
    assert np.abs(inside[..., 3].astype(int) - 128).max() <= 2  # half covered
    assert np.abs(inside[..., :3].astype(int) - (200, 30, 30)).max() <= 2  # the green never shows
    indexed = render.IndexedImage(np.zeros((600, 600), np.uint8), np.array([[1, 2, 3], [0, 0, 0]], np.uint8), 1)
    assert render.shrink(indexed, 64).shape[2] == 4


def test_original_tile_alpha_is_the_used_share_of_each_block():
    rgba = _rgba_with_hole(256, 256)
    seg = segsoft.segment(rgba, k=2, max_iter=2)
    tile = seg.original(128, alpha=True)
    assert tile.shape == (128, 128, 4)  # 2 x 2 blocks
    assert (tile[:64, :64, 3] == 0).all() and (tile[64:, 64:, 3] == 255).all()
    np.testing.assert_array_equal(seg.original(128)[64:, 64:], tile[64:, 64:, :3])
    # a block on the hole's edge: alpha is the used share, colour the mean of the used pixels only
    odd = rgba.copy()
    odd[:, :, 3] = 255
    odd[0, 0, 3] = 0
    odd[0, 0, :3] = (255, 0, 255)
    tile = segsoft.segment(odd, k=2, max_iter=2).original(128, alpha=True)
    assert tile[0, 0, 3] == round(255 * 3 / 4)
    expect = odd[:2, :2, :3].reshape(-1, 3)[1:].mean(axis=0)
    assert np.abs(tile[0, 0, :3].astype(float) - expect).max() <= 1.0
    assert seg.original(128).shape[2] == 3  # without alpha= as before
