"""Pictures from soft memberships: overlays, heatmaps, label maps, uncertainty, montages.

Every function takes memberships as an (H, W, K) array whose rows sum to 1 on
used pixels (unused pixels are NaN, or marked False in an optional ``mask``)
and returns a C-contiguous uint8 RGB array of shape (H, W, 3).

Work is done in chunks of about a quarter of a megapixel (bands of rows, or
pieces of a row when one row is wider than that), so a 12-megapixel image, or a
100-megapixel single row, never needs a full-size float64 (or even float32
(H, W, K)) temporary; colormaps are applied through 256-entry lookup tables.
Montage tiles fit a box (256 x 512 by default, see :func:`fit_box`), so a
picture of any shape, however thin, costs at most the box in the montage.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont

from .errors import SegsoftError

__all__ = [
    "IndexedImage",
    "cluster_colors",
    "mean_palette",
    "colormap_lut",
    "soft_overlay",
    "heatmap",
    "heatmap_indexed",
    "label_indexed",
    "uncertainty_indexed",
    "label_image",
    "region_image",
    "region_indexed",
    "normalized_entropy",
    "uncertainty_image",
    "montage",
    "montage_layout",
    "MontageLayout",
    "Tile",
    "legend_entries",
    "checkerboard",
    "with_alpha",
    "font",
    "fit_box",
    "shrink",
    "shrink_factors",
    "TILE_HEIGHT_RATIO",
    "selection_plot",
]

# matplotlib's 'tab10' palette, hard-coded so choosing colours needs no matplotlib import.
_TAB10 = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
# The 64-colour categorical palette: tab10, then 54 colours each chosen greedily to be as far
# (CIEDE2000) as possible from every earlier one; regenerated and checked by
# :func:`_generate_palette` (tests/test_palette.py checks it still equals this table).
# fmt: off
_PALETTE_HEX = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#4b4b00", "#0000d2", "#004b4b", "#00f0b4", "#87005a", "#87b4ff",
    "#3c3c5a", "#a57800", "#ffb4b4", "#2d8778", "#69f00f", "#f0c387", "#e1c3ff", "#00691e",
    "#96b496", "#e10078", "#693c00", "#b48778", "#870000", "#78784b", "#ff6969", "#b45a0f",
    "#960fb4", "#4b5aff", "#a596b4", "#875a78", "#004b96", "#e100ff", "#4b4b4b", "#a59678",
    "#00b487", "#a50f3c", "#7887c3", "#b4e196", "#696987", "#6996a5", "#c387ff", "#87962d",
    "#1e7887", "#96e1d2", "#a5d2e1", "#5a3c3c", "#ff4b0f", "#2d4b2d", "#ffc300", "#1eb4f0",
    "#c36978", "#d2b4a5", "#5a695a", "#87694b", "#e1960f", "#5a2d78", "#5a875a", "#ffa578",
)
# fmt: on
_PALETTE = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in _PALETTE_HEX], dtype=np.uint8)
_PALETTE.setflags(write=False)
# Greedy palette search: the sRGB grid step, the CIELAB lightness range kept (no near-white or
# near-black colours), and colours the palette keeps away from without using them: white
# paper, black text and the light checkerboard grey.
_PALETTE_GRID_STEP = 15
_PALETTE_LIGHTNESS = (25.0, 85.0)
_PALETTE_AVOID = ((255, 255, 255), (0, 0, 0), (204, 204, 204))
# mean_palette: clusters whose mean colours are closer than this (CIEDE2000) get their lightness nudged.
_MEAN_MIN_DELTA = 3.0

# Pixels per processing chunk: big enough to amortise numpy call overhead,
# small enough that the chunk's temporaries stay in a few MB.
_CHUNK_PIXELS = 1 << 18

# Montage layout, in pixels.
_MARGIN = 8
_TITLE_PAD = 3
_LINE_GAP = 3
_BAR_GAP = 4  # between a tile and its colour bar
_BAR_HEIGHT = 10
_TICK_LENGTH = 3
_SWATCH = 12
_SWATCH_GAP = 5
_ENTRY_GAP = 18  # between legend columns
_MIN_ANNOTATED_WIDTH = 360  # a sheet with a header or a legend is at least this wide
# Font sizes in pixels (DejaVu Sans): legible at 100 %, as in a matplotlib figure at 100 dpi.
_HEADER_SIZE = 16
_DETAIL_SIZE = 13
_TITLE_SIZE = 14
_LEGEND_SIZE = 13
_TICK_SIZE = 11
_FIELD_SEP = "   \u00b7   "  # a middle dot between header fields
_LEGEND_TITLE = "clusters: number and share of the pixels labelled"
_INK = (0, 0, 0)
_INK_SOFT = (60, 60, 60)
_INK_LIGHT = (110, 110, 110)
_RULE = (210, 210, 210)
# Transparent pixels are drawn on this checkerboard of light greys (the palette keeps away from 204).
_CHECKER = ((204, 204, 204), (240, 240, 240))
_CHECKER_SQUARE = 8
# Montage tiles fit a box this many times as tall as it is wide: portraits keep a useful size,
# while tall strips are bounded instead of being scaled to the full tile width.
TILE_HEIGHT_RATIO = 2


# ----------------------------------------------------------------------------- colours


def cluster_colors(k: int) -> np.ndarray:
    """Distinct, stable display colours for ``k`` clusters.

    The first ten are matplotlib's 'tab10' palette; the next 54 were chosen
    greedily from a grid of sRGB colours (CIELAB lightness 25-85), each the
    one furthest, in CIEDE2000, from all earlier colours (and from white,
    black and the checkerboard grey). Any two of the 64 differ by at least
    12.4 CIEDE2000 units. See :func:`_generate_palette`, which also extends
    the palette past 64 (less distinct) colours.

    Parameters
    ----------
    k : int
        Number of clusters, at least 1 (up to 64 come from a fixed table).

    Returns
    -------
    ndarray, uint8 (k, 3)
        One RGB colour per cluster; the same ``k`` always gives the same
        colours, and the first ``k`` colours never depend on ``k``.

    Examples
    --------
    >>> cluster_colors(2)
    array([[ 31, 119, 180],
           [255, 127,  14]], dtype=uint8)
    >>> len({tuple(c) for c in cluster_colors(64)})
    64
    """
    k = operator.index(k)
    if k < 1:
        raise SegsoftError(f"need at least one cluster colour, got k={k}")
    if k > len(_PALETTE):  # beyond segsoft's MAX_K: the same greedy search, continued
        return _generate_palette(k).copy()
    return _PALETTE[:k].copy()


def _srgb_to_lab(rgb: ArrayLike) -> np.ndarray:
    """CIELAB (D65) of uint8-scale sRGB colours, shape (n, 3)."""
    from skimage.color import rgb2lab

    c = np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0
    return rgb2lab(c).reshape(-1, 3)


def _delta_e(lab: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """CIEDE2000 between each row of ``lab`` (n, 3) and one colour ``ref`` (3,)."""
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(lab, np.broadcast_to(ref, lab.shape))


@lru_cache(maxsize=4)
def _generate_palette(n: int = 64) -> np.ndarray:
    """Recompute the ``_PALETTE_HEX`` table (uint8 (n, 3)); deterministic, about 0.1 s.

    Start from tab10; candidates are the sRGB grid with step ``_PALETTE_GRID_STEP``
    whose CIELAB lightness lies in ``_PALETTE_LIGHTNESS``; repeatedly add the
    candidate whose smallest CIEDE2000 to the colours so far (and to
    ``_PALETTE_AVOID``) is largest, the first such in grid order on ties.
    """
    levels = np.arange(0, 256, _PALETTE_GRID_STEP)
    cand = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(cand)
    keep = (lab[:, 0] >= _PALETTE_LIGHTNESS[0]) & (lab[:, 0] <= _PALETTE_LIGHTNESS[1])
    cand, lab = cand[keep], lab[keep]
    nearest = np.full(len(cand), np.inf)
    for ref in _srgb_to_lab(_TAB10 + _PALETTE_AVOID):
        nearest = np.minimum(nearest, _delta_e(lab, ref))
    colors = [tuple(c) for c in _TAB10[:n]]
    while len(colors) < n:
        i = int(np.argmax(nearest))
        colors.append(tuple(int(v) for v in cand[i]))
        nearest = np.minimum(nearest, _delta_e(lab, lab[i]))
    out = np.array(colors, dtype=np.uint8).reshape(n, 3)
    out.setflags(write=False)
    return out


def mean_palette(mean_rgb: ArrayLike, min_delta: float = _MEAN_MIN_DELTA) -> np.ndarray:
    """Each cluster drawn in its own mean colour, kept apart where two are nearly equal.

    Colours are taken in cluster order; where one lies within ``min_delta``
    CIEDE2000 of an earlier (already chosen) colour, its CIELAB lightness is
    nudged, in steps of 2, first towards mid-grey then away, until it is at
    least ``min_delta`` from all earlier colours (hue and chroma kept as far as
    sRGB allows). Deterministic. Non-finite means (empty clusters) are drawn
    mid-grey.

    Parameters
    ----------
    mean_rgb : array_like, float (k, 3)
        Mean sRGB colour of each cluster, in [0, 1] (clipped).
    min_delta : float
        Smallest CIEDE2000 difference to keep between any two clusters.

    Returns
    -------
    ndarray, uint8 (k, 3)

    Examples
    --------
    >>> mean_palette([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    array([[255,   0,   0],
           [  0,   0, 255]], dtype=uint8)
    """
    from skimage.color import lab2rgb

    m = np.asarray(mean_rgb, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != 3 or m.shape[0] < 1:
        raise SegsoftError(f"mean colours must have shape (k, 3) with k >= 1, got {m.shape}")
    m = np.clip(np.where(np.isfinite(m), m, 0.5), 0.0, 1.0)
    out = np.rint(m * 255.0).astype(np.uint8)
    labs = _srgb_to_lab(out)
    for j in range(1, len(out)):
        earlier = labs[:j]
        if _delta_e(earlier, labs[j]).min() >= min_delta:
            continue
        base = labs[j]
        first = 1.0 if base[0] < 50.0 else -1.0
        best, best_d = (out[j], labs[j]), -1.0
        for step in range(1, 51):
            for sign in (first, -first):
                lightness = base[0] + sign * 2.0 * step
                if not 0.0 <= lightness <= 100.0:
                    continue
                rgb = lab2rgb(np.array([[[lightness, base[1], base[2]]]]))
                rgb = np.rint(np.clip(rgb.reshape(3), 0.0, 1.0) * 255.0).astype(np.uint8)
                lab = _srgb_to_lab(rgb)[0]
                d = float(_delta_e(earlier, lab).min())
                if d > best_d:
                    best, best_d = (rgb, lab), d
                if d >= min_delta:
                    break
            if best_d >= min_delta:
                break
        out[j], labs[j] = best
    return out


#: :func:`colormap_lut` of the colormaps the pictures use by default, as matplotlib makes them
#: (uint8 RGB, 256 entries, hex): ``segsoft run`` then never imports matplotlib for them.
#: tests/test_speed_imports.py checks them against matplotlib.
_BUILTIN_LUTS: dict[str, tuple[str, ...]] = {
    "viridis": (
        "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
        "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
        "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
        "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
        "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
        "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
        "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
        "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
        "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
        "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
        "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
        "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
        "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
        "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
        "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
        "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
    ),
    "magma": (
        "00000401000501010601010802010902020b02020d03030f03031204041405041606051806051a07061c08071e090720"
        "0a08220b09240c09260d0a290e0b2b100b2d110c2f120d31130d34140e36150e38160f3b180f3d19103f1a10421c1044"
        "1d11471e114920114b21114e22115024125325125527125829115a2a115c2c115f2d11612f1163311165331067341069"
        "36106b38106c390f6e3b0f703d0f713f0f72400f74420f75440f764510774710784910784a10794c117a4e117b4f127b"
        "51127c52137c54137d56147d57157e59157e5a167e5c167f5d177f5f187f601880621980641a80651a80671b80681c81"
        "6a1c816b1d816d1d816e1e81701f81721f817320817521817621817822817922827b23827c23827e2482802582812581"
        "8326818426818627818827818928818b29818c29818e2a81902a81912b81932b80942c80962c80982d80992d809b2e7f"
        "9c2e7f9e2f7fa02f7fa1307ea3307ea5317ea6317da8327daa337dab337cad347cae347bb0357bb2357bb3367ab5367a"
        "b73779b83779ba3878bc3978bd3977bf3a77c03a76c23b75c43c75c53c74c73d73c83e73ca3e72cc3f71cd4071cf4070"
        "d0416fd2426fd3436ed5446dd6456cd8456cd9466bdb476adc4869de4968df4a68e04c67e24d66e34e65e44f64e55064"
        "e75263e85362e95462ea5661eb5760ec5860ed5a5fee5b5eef5d5ef05f5ef1605df2625df2645cf3655cf4675cf4695c"
        "f56b5cf66c5cf66e5cf7705cf7725cf8745cf8765cf9785df9795df97b5dfa7d5efa7f5efa815ffb835ffb8560fb8761"
        "fc8961fc8a62fc8c63fc8e64fc9065fd9266fd9467fd9668fd9869fd9a6afd9b6bfe9d6cfe9f6dfea16efea36ffea571"
        "fea772fea973feaa74feac76feae77feb078feb27afeb47bfeb67cfeb77efeb97ffebb81febd82febf84fec185fec287"
        "fec488fec68afec88cfeca8dfecc8ffecd90fecf92fed194fed395fed597fed799fed89afdda9cfddc9efddea0fde0a1"
        "fde2a3fde3a5fde5a7fde7a9fde9aafdebacfcecaefceeb0fcf0b2fcf2b4fcf4b6fcf6b8fcf7b9fcf9bbfcfbbdfcfdbf"
    ),
}


@lru_cache(maxsize=32)
def colormap_lut(cmap: str = "viridis") -> np.ndarray:
    """A matplotlib colormap sampled into a 256-entry RGB lookup table.

    Parameters
    ----------
    cmap : str
        Name of a matplotlib colormap, such as ``"viridis"``, ``"magma"`` or
        ``"gray"``.

    Returns
    -------
    ndarray, uint8 (256, 3), read-only
        Entry ``i`` is the colour of value ``i / 255``. Cached per name.

    Raises
    ------
    SegsoftError
        If matplotlib has no colormap of that name.

    Examples
    --------
    >>> lut = colormap_lut("gray")
    >>> lut.shape, lut[0].tolist(), lut[255].tolist()
    ((256, 3), [0, 0, 0], [255, 255, 255])
    """
    if cmap in _BUILTIN_LUTS:  # the default maps without importing matplotlib (a few tenths of a second)
        lut = np.frombuffer(bytes.fromhex("".join(_BUILTIN_LUTS[cmap])), np.uint8).reshape(256, 3).copy()
        lut.flags.writeable = False
        return lut
    # Lazy: matplotlib costs a noticeable fraction of a second to import.
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except (KeyError, TypeError, ValueError):
        raise SegsoftError(f"unknown colormap {cmap!r} (try viridis, magma, gray)") from None
    rgba = colormap(np.linspace(0.0, 1.0, 256))
    lut = np.rint(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    lut.flags.writeable = False  # shared by every caller through the cache
    return lut


# ----------------------------------------------------------------------------- helpers


def _check_probabilities(probabilities: ArrayLike) -> np.ndarray:
    """(H, W, K) float array, without copying when it already is one."""
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[2] < 1:
        raise SegsoftError(f"probabilities must have shape (H, W, K), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float32)
    return p


def _check_mask(mask: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise SegsoftError(f"mask has shape {m.shape}, expected {shape}")
    return m


def _check_colors(colors: ArrayLike | None, k: int) -> np.ndarray:
    """uint8 (k, 3) colours: the defaults, or the first ``k`` of those given."""
    if colors is None:
        return cluster_colors(k)
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] < k:
        raise SegsoftError(f"colors must have shape (n, 3) with n >= {k}, got {c.shape}")
    if c.dtype != np.uint8:
        c = np.clip(np.rint(c), 0, 255).astype(np.uint8)
    return c[:k]


def _blocks(height: int, width: int) -> Iterator[tuple[slice, slice]]:
    """(rows, columns) slices covering an image in pieces of about ``_CHUNK_PIXELS``.

    Bands of whole rows normally; rows wider than a chunk are cut into
    pieces too, so a 100-megapixel single-row image still works in small
    steps instead of one image-sized temporary.
    """
    if width <= _CHUNK_PIXELS:
        step = max(1, _CHUNK_PIXELS // max(width, 1))
        for r0 in range(0, height, step):
            yield slice(r0, min(r0 + step, height)), slice(0, width)
        return
    for r in range(height):
        for c0 in range(0, width, _CHUNK_PIXELS):
            yield slice(r, r + 1), slice(c0, min(c0 + _CHUNK_PIXELS, width))


def _entropy_rows(p: np.ndarray, inv_log_k: float) -> np.ndarray:
    """Normalised entropy, float32 (rows, W), of one chunk of memberships."""
    p = p.astype(np.float32, copy=False)
    plogp = np.zeros(p.shape, np.float32)
    # 0 log 0 = 0: take logs only of positive entries; NaN > 0 is False, but
    # NaN * 0 below is still NaN, so masked pixels stay NaN.
    np.log(p, out=plogp, where=p > 0)
    plogp *= p
    h = plogp[..., 0].copy()
    for j in range(1, p.shape[2]):  # explicit loop: faster than sum over a tiny last axis
        h += plogp[..., j]
    h *= inv_log_k
    np.subtract(0.0, h, out=h)  # rather than *= -1, which would turn 0 into -0.0
    np.clip(h, 0.0, 1.0, out=h)  # rounding can stray just outside [0, 1]
    return h


# ----------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class IndexedImage:
    """A picture stored as palette indices.

    Heatmaps, label maps and uncertainty maps have at most 256 colours, so
    this is exact: a third of the memory of RGB, and written as a palette
    PNG it encodes several times faster into a file half the size.

    Examples
    --------
    >>> IndexedImage(np.array([[0, 1]], np.uint8), np.array([[0, 0, 0], [255, 0, 0]], np.uint8)).to_rgb().tolist()
    [[[0, 0, 0], [255, 0, 0]]]
    """

    indices: np.ndarray  # uint8 (H, W)
    palette: np.ndarray  # uint8 (n <= 256, 3)
    # The index of unused (transparent / masked) pixels, or None when every pixel is used:
    # written as the PNG's tRNS entry, and drawn as a checkerboard in montages.
    transparent: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.indices.shape, 3)

    def to_rgb(self) -> np.ndarray:
        """uint8 RGB (H, W, 3)."""
        return np.take(self.palette, self.indices, axis=0)

    def to_rgba(self) -> np.ndarray:
        """uint8 RGBA (H, W, 4): alpha 0 on the ``transparent`` index, 255 elsewhere.

        Examples
        --------
        >>> pic = IndexedImage(np.array([[0, 1]], np.uint8), np.array([[9, 9, 9], [0, 0, 0]], np.uint8), 1)
        >>> pic.to_rgba().tolist()
        [[[9, 9, 9, 255], [0, 0, 0, 0]]]
        """
        alpha = np.full((len(self.palette), 1), 255, np.uint8)
        if self.transparent is not None:
            alpha[self.transparent] = 0
        return np.take(np.hstack([self.palette, alpha]), self.indices, axis=0)


def _indexed_levels(lut: np.ndarray, any_bad: bool) -> tuple[np.ndarray, int]:
    """(palette, top index) for values in [0, 1] drawn through ``lut``.

    With no unused pixels the palette is the 256-entry LUT itself; otherwise
    255 evenly spaced LUT entries plus black at index 255 for unused pixels.
    """
    if not any_bad:
        return lut, 255
    picked = lut[np.rint(np.arange(255) * (255.0 / 254.0)).astype(np.intp)]
    return np.concatenate([picked, np.zeros((1, 3), np.uint8)]), 254


def _index_rows(values: np.ndarray, top: int, keep: np.ndarray | None, out: np.ndarray) -> None:
    """Write ``round(top * values)`` into uint8 ``out``; NaN or ``keep`` False → 255.

    ``values`` (rows, W) float32 is overwritten.
    """
    np.multiply(values, np.float32(top), out=values)
    values += np.float32(0.5)
    np.clip(values, 0.0, float(top), out=values)  # NaN passes through clip
    bad = np.isnan(values)
    if keep is not None:
        bad |= ~keep
    values[bad] = 255.0
    np.copyto(out, values, casting="unsafe")  # truncation of x + 0.5 rounds


def _any_unused(p: np.ndarray, keep: np.ndarray | None) -> bool:
    return (keep is not None and not keep.all()) or bool(np.isnan(p[..., 0]).any())


def soft_overlay(
    image: ArrayLike,
    probabilities: ArrayLike,
    alpha: float = 0.5,
    colors: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> np.ndarray:
    """Blend the cluster colours, weighted by membership, over the image.

    Each pixel becomes ``(1 - alpha) * image + alpha * (p @ colors)``, so
    uncertain pixels show a mix of their clusters' colours.

    Parameters
    ----------
    image : ndarray, float (H, W, 3) in [0, 1]
        The photograph (uint8 0..255 is accepted too).
    probabilities : ndarray, float32 (H, W, K)
        Memberships; NaN on unused pixels.
    alpha : float
        Weight of the cluster colours, between 0 (image only) and 1 (colours only).
    colors : array_like (K, 3) of 0..255, optional
        Cluster colours; default :func:`cluster_colors`.
    mask : ndarray, bool (H, W), optional
        False on unused pixels. Unused (or NaN) pixels keep the image's colour.

    Returns
    -------
    ndarray, uint8 (H, W, 3)

    Examples
    --------
    >>> img = np.zeros((1, 2, 3), np.float32)
    >>> p = np.array([[[1.0, 0.0], [0.5, 0.5]]], np.float32)
    >>> soft_overlay(img, p, alpha=1.0, colors=[[255, 0, 0], [0, 0, 255]]).tolist()
    [[[255, 0, 0], [128, 0, 128]]]
    """
    p = _check_probabilities(probabilities)
    h, w, k = p.shape
    img = np.asarray(image)
    if img.shape != (h, w, 3):
        raise SegsoftError(f"image has shape {img.shape}, expected {(h, w, 3)}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise SegsoftError(f"alpha must be between 0 and 1, got {alpha}")
    keep = _check_mask(mask, (h, w))
    # Work on the 0..255 scale; fold alpha into the colours so the blend is one matmul.
    img_scale = 1.0 if img.dtype == np.uint8 else 255.0
    cols = _check_colors(colors, k).astype(np.float32) * np.float32(alpha)
    img_weight = np.float32((1.0 - alpha) * img_scale)

    out = np.empty((h, w, 3), np.uint8)
    for rows, cs in _blocks(h, w):
        pc = p[rows, cs].astype(np.float32, copy=False)
        n, m = pc.shape[:2]
        blend = (pc.reshape(-1, k) @ cols).reshape(n, m, 3)
        ic = img[rows, cs].astype(np.float32, copy=False)
        blend += ic * img_weight
        # NaN memberships make the whole blended pixel NaN, so channel 0 flags them.
        bad = np.isnan(blend[..., 0])
        if keep is not None:
            bad |= ~keep[rows, cs]
        if bad.any():
            blend[bad] = ic[bad] * np.float32(img_scale)
        blend += 0.5
        np.clip(blend, 0.0, 255.0, out=blend)
        np.copyto(out[rows, cs], blend, casting="unsafe")  # truncation of x + 0.5 rounds
    return out


def heatmap(
    probabilities: ArrayLike,
    j: int,
    cmap: str = "viridis",
    mask: ArrayLike | None = None,
) -> np.ndarray:
    """Membership of cluster ``j`` drawn through a colormap.

    Parameters
    ----------
    probabilities : ndarray, float32 (H, W, K)
        Memberships; NaN on unused pixels.
    j : int
        Cluster index, ``0 <= j < K``.
    cmap : str
        matplotlib colormap name; membership 0 maps to its bottom colour and 1
        to its top.
    mask : ndarray, bool (H, W), optional
        False on unused pixels. Unused (or NaN) pixels are black here, and
        transparent in the indexed form (``IndexedImage.transparent``).

    Returns
    -------
    ndarray, uint8 (H, W, 3)

    Examples
    --------
    >>> p = np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32)
    >>> heatmap(p, 0, cmap="gray").tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    return heatmap_indexed(probabilities, j, cmap, mask).to_rgb()


def heatmap_indexed(
    probabilities: ArrayLike,
    j: int,
    cmap: str = "viridis",
    mask: ArrayLike | None = None,
) -> IndexedImage:
    """:func:`heatmap` as an :class:`IndexedImage` (what the output files use).

    Examples
    --------
    >>> heatmap_indexed(np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32), 0).indices.tolist()
    [[0, 255]]
    """
    p = _check_probabilities(probabilities)
    h, w, k = p.shape
    j = operator.index(j)
    if not 0 <= j < k:
        raise SegsoftError(f"cluster {j} out of range: there are {k} clusters (0..{k - 1})")
    keep = _check_mask(mask, (h, w))
    palette, top = _indexed_levels(colormap_lut(cmap), _any_unused(p, keep))
    out = np.empty((h, w), np.uint8)
    for rows, cs in _blocks(h, w):
        values = p[rows, cs, j].astype(np.float32)  # a copy: _index_rows overwrites it
        _index_rows(values, top, None if keep is None else keep[rows, cs], out[rows, cs])
    return IndexedImage(out, palette, 255 if top < 255 else None)


def label_image(
    labels: ArrayLike,
    colors: ArrayLike | None = None,
    k: int | None = None,
) -> np.ndarray:
    """Hard labels drawn in the cluster colours, uint8 RGB (H, W, 3).

    See :func:`label_indexed` for the parameters.

    Examples
    --------
    >>> label_image(np.array([[0, 1, -1]])).tolist()
    [[[31, 119, 180], [255, 127, 14], [0, 0, 0]]]
    """
    pic = label_indexed(labels, colors, k)
    return pic.to_rgb() if isinstance(pic, IndexedImage) else pic


def region_image(pixels: ArrayLike, regions: ArrayLike, boundaries: bool = True) -> np.ndarray:
    """Each region painted in its mean colour, outlined in white; uint8 RGB (H, W, 3).

    Parameters
    ----------
    pixels : ndarray, float (H, W, 3)
        The image, RGB in [0, 1].
    regions : ndarray, int (H, W)
        Region ids, -1 on unused pixels (drawn black; transparent in the indexed form).
    boundaries : bool
        Draw the pixels where the region changes (to the right or below) white.

    Examples
    --------
    >>> rgb = np.array([[[1.0, 0, 0], [0.5, 0, 0], [0, 0, 1.0]]])
    >>> region_image(rgb, np.array([[0, 0, 1]]), boundaries=False)[0, :, 0].tolist()
    [191, 191, 0]
    """
    pic = region_indexed(pixels, regions, boundaries)
    return pic.to_rgb() if isinstance(pic, IndexedImage) else pic


def region_indexed(pixels: ArrayLike, regions: ArrayLike, boundaries: bool = True) -> IndexedImage | np.ndarray:
    """:func:`region_image` as palette indices (exact) when there are at most 254 regions, else uint8 RGB.

    ``pixels`` may also be anything with a ``shape`` whose ``[rows, :, c]`` gives those
    values (the 8-bit samples' stand-in :class:`segsoft.io._UnitRows`): the picture is made
    a band of rows at a time, so no image-sized float copy is needed.

    Examples
    --------
    >>> pic = region_indexed(np.ones((1, 3, 3)), np.array([[0, 1, -1]]), boundaries=False)
    >>> pic.indices.tolist(), pic.palette.tolist()
    ([[0, 1, 2]], [[255, 255, 255], [255, 255, 255], [0, 0, 0], [255, 255, 255]])
    """
    rgb = pixels if hasattr(pixels, "shape") and hasattr(pixels, "__getitem__") else np.asarray(pixels)
    reg = np.asarray(regions)
    if reg.ndim != 2 or tuple(rgb.shape) != (*reg.shape, 3):
        raise SegsoftError(f"regions must be (H, W) and pixels (H, W, 3), got {reg.shape} and {tuple(rgb.shape)}")
    H, W = reg.shape
    n = int(reg.max()) + 1 if reg.size else 0
    # palette indices: unused pixels one extra region n, boundaries n + 1 (white)
    index = np.empty(reg.shape, np.uint8 if n + 2 <= 256 else np.int32)
    counts = np.zeros(n + 1, np.int64)
    sums = np.zeros((3, n + 1))
    unused = False
    rows = max(1, _CHUNK_PIXELS // max(W, 1))
    weights = np.empty((min(rows, H), W))
    for a in range(0, H, rows):
        b = min(H, a + rows)
        band = reg[a:b]
        used = band >= 0
        unused = unused or not used.all()
        ids = np.where(used, band, n).astype(np.int32)
        flat = ids.ravel()
        counts += np.bincount(flat, minlength=n + 1)  # whole numbers: any order gives the same counts
        w = weights[: b - a]
        for c in range(3):
            # each region's colour sum in float64, pixel after pixel in the image's order as one bincount over
            # the whole image adds them (ufunc.at adds in index order): the same sums without full-size weights
            np.copyto(w, rgb[a:b, :, c])
            np.add.at(sums[c], flat, w.ravel())
        out = index[a:b]
        out[...] = ids
        if boundaries:
            edge = np.zeros(band.shape, dtype=bool)
            edge[:, :-1] = band[:, :-1] != band[:, 1:]
            below = reg[a + 1 : b + 1]  # the next band's first row too, except at the image's bottom
            edge[: below.shape[0]] |= band[: below.shape[0]] != below
            edge &= used
            out[edge] = n + 1
    counts = np.maximum(counts, 1)
    palette = np.rint(np.clip(sums.T / counts[:, None], 0.0, 1.0) * 255.0).astype(np.uint8)
    palette[n] = 0  # unused: black
    palette = np.concatenate([palette, np.full((1, 3), 255, np.uint8)])  # n + 1: boundary white
    if n + 2 <= 256:
        return IndexedImage(index, palette, n if unused else None)
    return np.take(palette, index, axis=0)


def label_indexed(
    labels: ArrayLike,
    colors: ArrayLike | None = None,
    k: int | None = None,
) -> IndexedImage | np.ndarray:
    """Hard labels drawn in the cluster colours.

    Parameters
    ----------
    labels : ndarray, int (H, W)
        Cluster index of each pixel, or -1 for unused pixels (drawn black, and
        marked ``IndexedImage.transparent``).
    colors : array_like (n, 3) of 0..255, optional
        Cluster colours; default ``cluster_colors(k)``.
    k : int, optional
        Number of clusters, used to pick default colours; default
        ``labels.max() + 1``.

    Returns
    -------
    IndexedImage, or uint8 RGB (H, W, 3) when there are more than 255 clusters

    Examples
    --------
    >>> label_indexed(np.array([[0, 1, -1]])).indices.tolist()
    [[0, 1, 2]]
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise SegsoftError(f"labels must be an (H, W) integer array, got {lab.dtype} {lab.shape}")
    if lab.dtype == bool:
        lab = lab.astype(np.intp)  # a bool array would index as a mask, not as labels
    lo = int(lab.min()) if lab.size else -1
    hi = int(lab.max()) if lab.size else -1
    if colors is not None:
        n = len(np.asarray(colors))
    else:
        n = max(hi + 1, 1) if k is None else operator.index(k)
    cols = _check_colors(colors, n) if n > 0 else np.zeros((0, 3), np.uint8)
    if lo < -1 or hi >= n:
        raise SegsoftError(f"labels must be -1 or in 0..{n - 1}, found {lo}..{hi}")
    # Label -1 indexes the appended black row.
    lut = np.concatenate([cols, np.zeros((1, 3), np.uint8)])
    if len(lut) <= 256:
        if lo >= 0:
            return IndexedImage(lab.astype(np.uint8), lut)
        return IndexedImage(np.where(lab < 0, n, lab).astype(np.uint8), lut, n)
    return np.ascontiguousarray(lut[lab])


def normalized_entropy(probabilities: ArrayLike) -> np.ndarray:
    """Entropy of each pixel's memberships, scaled to [0, 1].

    ``-sum(p * log p) / log K``, with ``0 log 0 = 0``: 0 means the pixel
    belongs wholly to one cluster, 1 that it is split evenly among all K.

    Parameters
    ----------
    probabilities : ndarray, float32 (H, W, K)
        Memberships; NaN on unused pixels.

    Returns
    -------
    ndarray, float32 (H, W)
        In [0, 1]; NaN where the memberships are NaN. All zeros when K = 1.

    Examples
    --------
    >>> p = np.array([[[1.0, 0.0], [0.5, 0.5], [np.nan, np.nan]]], np.float32)
    >>> normalized_entropy(p).tolist()
    [[0.0, 1.0, nan]]
    """
    p = _check_probabilities(probabilities)
    h, w, k = p.shape
    out = np.empty((h, w), np.float32)
    if k == 1:
        # One cluster: nothing to be uncertain about, but unused pixels stay NaN.
        out[:] = 0.0
        out[np.isnan(p[..., 0])] = np.nan
        return out
    inv_log_k = 1.0 / math.log(k)
    for rows, cs in _blocks(h, w):
        out[rows, cs] = _entropy_rows(p[rows, cs], inv_log_k)
    return out


def uncertainty_image(
    probabilities: ArrayLike,
    cmap: str = "magma",
    mask: ArrayLike | None = None,
) -> np.ndarray:
    """Normalised entropy of the memberships drawn through a colormap.

    Parameters
    ----------
    probabilities : ndarray, float32 (H, W, K)
        Memberships; NaN on unused pixels.
    cmap : str
        matplotlib colormap name; certain pixels (entropy 0) get its bottom
        colour, evenly split ones (entropy 1) its top.
    mask : ndarray, bool (H, W), optional
        False on unused pixels. Unused (or NaN) pixels are black here, and
        transparent in the indexed form (``IndexedImage.transparent``).

    Returns
    -------
    ndarray, uint8 (H, W, 3)

    Examples
    --------
    >>> p = np.array([[[1.0, 0.0], [0.5, 0.5]]], np.float32)
    >>> uncertainty_image(p, cmap="gray").tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    return uncertainty_indexed(probabilities, cmap, mask).to_rgb()


def uncertainty_indexed(
    probabilities: ArrayLike,
    cmap: str = "magma",
    mask: ArrayLike | None = None,
) -> IndexedImage:
    """:func:`uncertainty_image` as an :class:`IndexedImage`.

    Examples
    --------
    >>> uncertainty_indexed(np.array([[[1.0, 0.0], [0.5, 0.5]]], np.float32)).indices.tolist()
    [[0, 255]]
    """
    p = _check_probabilities(probabilities)
    h, w, k = p.shape
    keep = _check_mask(mask, (h, w))
    palette, top = _indexed_levels(colormap_lut(cmap), _any_unused(p, keep))
    out = np.empty((h, w), np.uint8)
    inv_log_k = 1.0 / math.log(k) if k > 1 else 0.0
    for rows, cs in _blocks(h, w):
        if k > 1:
            values = _entropy_rows(p[rows, cs], inv_log_k)
        else:
            values = np.where(np.isnan(p[rows, cs, 0]), np.float32(np.nan), np.float32(0.0))
        _index_rows(values, top, None if keep is None else keep[rows, cs], out[rows, cs])
    return IndexedImage(out, palette, 255 if top < 255 else None)


# ----------------------------------------------------------------------------- montage


def fit_box(width: int, height: int, box_width: int, box_height: int | None = None) -> tuple[int, int]:
    """Size of a ``width`` x ``height`` picture scaled to fit a box, keeping its aspect ratio.

    The picture is scaled by the largest factor that keeps it inside
    ``box_width`` x ``box_height`` (shrunk or enlarged), but never below one
    pixel a side: a 1 x 5000 strip stays a 1-pixel line rather than being
    stretched, so no tile can cost more than the box however thin the image.

    Parameters
    ----------
    width, height : int
        Size of the picture, at least 1 each.
    box_width : int
        Largest tile width, at least 1.
    box_height : int, optional
        Largest tile height; default ``TILE_HEIGHT_RATIO * box_width``.

    Returns
    -------
    (int, int)
        Tile width and height, each between 1 and the box's.

    Examples
    --------
    >>> fit_box(300, 200, 256), fit_box(1, 5000, 256), fit_box(5000, 1, 256), fit_box(2, 2, 256)
    ((256, 171), (1, 512), (256, 1), (256, 256))
    """
    box_height = TILE_HEIGHT_RATIO * box_width if box_height is None else box_height
    scale = min(box_width / width, box_height / height)
    return (
        min(box_width, max(1, round(width * scale))),
        min(box_height, max(1, round(height * scale))),
    )


def shrink_factors(shape: Sequence[int], width: int, height: int | None = None) -> tuple[int, int]:
    """Integer (row, column) factors by which a picture can be cheaply shrunk for a ``width`` x ``height`` tile.

    Each factor is the largest that still leaves at least the tile's size
    (see :func:`fit_box`) on its axis, so the exact final resize only ever
    shrinks. Along a side that ends up 1 pixel long the factor is the whole
    side: a 1 x 200000 strip shrinks by (390, 1), not by a square factor its
    width cannot take.

    Examples
    --------
    >>> shrink_factors((1000, 2000, 3), 256), shrink_factors((200000, 1), 256), shrink_factors((8, 8), 256)
    ((7, 7), (390, 1), (1, 1))
    """
    h, w = int(shape[0]), int(shape[1])
    tile_w, tile_h = fit_box(w, h, width, height)
    return max(1, h // tile_h), max(1, w // tile_w)


def shrink(picture: np.ndarray | IndexedImage, width: int, height: int | None = None) -> np.ndarray:
    """Cheaply shrink a picture by integer factors towards a ``width`` x ``height`` tile.

    Keeps memory low when many full-size pictures feed a montage: the result
    is at most about twice the tile (see :func:`shrink_factors`) whatever the
    picture's size or aspect ratio, and never smaller than the tile, so the
    montage's exact final resize only shrinks. Returns uint8 RGB, or RGBA
    when the picture has transparent pixels (an RGBA array, or an
    :class:`IndexedImage` with a ``transparent`` index).

    Parameters
    ----------
    picture : ndarray uint8 (H, W, 3) or IndexedImage
    width : int
        Tile width.
    height : int, optional
        Tile height; default ``TILE_HEIGHT_RATIO * width``.

    Examples
    --------
    >>> shrink(np.zeros((1000, 2000, 3), np.uint8), 256).shape
    (143, 286, 3)
    >>> shrink(np.zeros((100000, 1, 3), np.uint8), 256).shape
    (513, 1, 3)
    """
    fy, fx = shrink_factors(picture.shape, width, height)
    if isinstance(picture, IndexedImage):
        # subsample the indices to about twice the size, then average the last factor (2 or 3) in RGB
        sy, sx = max(fy // 2, 1), max(fx // 2, 1)
        picture = _as_array(IndexedImage(picture.indices[::sy, ::sx], picture.palette, picture.transparent))
        fy, fx = fy // sy, fx // sx
    if fy < 2 and fx < 2:
        return np.asarray(picture)
    picture = np.asarray(picture)

    def reduce(part: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.ascontiguousarray(part))
        if img.mode == "RGBA":  # averaged premultiplied, so masked pixels' colour does not bleed in
            return np.asarray(img.convert("RGBa").reduce((fx, fy)).convert("RGBA"))
        return np.asarray(img.reduce((fx, fy)))

    # in bands of whole blocks (a multiple of fy rows, about a quarter megapixel): the same
    # block averages without Pillow's full-size copy of the picture (4 bytes a pixel)
    band = fy * max(1, (1 << 18) // max(picture.shape[1] * fy, 1))
    if picture.shape[0] <= band:
        return reduce(picture)
    return np.concatenate([reduce(picture[a : a + band]) for a in range(0, picture.shape[0], band)])


def checkerboard(width: int, height: int, square: int = _CHECKER_SQUARE) -> np.ndarray:
    """The grey checkerboard transparent pixels are drawn on, uint8 RGB (height, width, 3).

    Examples
    --------
    >>> board = checkerboard(16, 8)
    >>> board.shape, board[0, 0].tolist(), board[0, 8].tolist()
    ((8, 16, 3), [204, 204, 204], [240, 240, 240])
    """
    rows = (np.arange(height) // square)[:, None]
    cols = (np.arange(width) // square)[None, :]
    return np.array(_CHECKER, np.uint8)[(rows + cols) & 1]


def with_alpha(picture: np.ndarray, mask: ArrayLike | None) -> np.ndarray:
    """``picture`` (uint8 RGB (H, W, 3)) with an alpha channel from ``mask``, when any pixel is masked.

    Parameters
    ----------
    picture : ndarray, uint8 (H, W, 3)
    mask : ndarray, bool (H, W), or None
        False on unused (transparent) pixels.

    Returns
    -------
    ndarray, uint8 (H, W, 4) with alpha 0 where ``mask`` is False; ``picture``
    itself when there is no mask or every pixel is used.

    Examples
    --------
    >>> with_alpha(np.zeros((1, 2, 3), np.uint8), np.array([[True, False]]))[..., 3].tolist()
    [[255, 0]]
    """
    keep = _check_mask(mask, picture.shape[:2])
    if keep is None or keep.all():
        return picture
    out = np.empty((*picture.shape[:2], 4), np.uint8)
    out[..., :3] = picture
    np.multiply(keep, np.uint8(255), out=out[..., 3], casting="unsafe")
    return out


def _as_array(pixels: np.ndarray | IndexedImage) -> np.ndarray:
    """uint8 RGB, or RGBA when the picture has transparent pixels."""
    if isinstance(pixels, IndexedImage):
        return pixels.to_rgba() if pixels.transparent is not None else pixels.to_rgb()
    return np.asarray(pixels)


def _tile_image(pixels: np.ndarray | IndexedImage, box: tuple[int, int], title: str) -> Image.Image:
    """One tile as a Pillow RGB image scaled to fit ``box`` (width, height); transparent pixels on a checkerboard."""
    a = _as_array(pixels)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise SegsoftError(f"montage tile {title!r}: expected uint8 (H, W, 3), got {a.dtype} {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise SegsoftError(f"montage tile {title!r} is empty")
    if a.ndim == 3 and a.shape[2] == 4 and (a[..., 3] == 255).all():
        a = a[..., :3]  # opaque after all: no checkerboard to draw
    img = Image.fromarray(np.ascontiguousarray(a))
    img = img.convert("RGBA" if img.mode == "RGBA" else "RGB")
    w, h = img.size
    size = fit_box(w, h, *box)
    # fit_box scales both sides by one factor (a side clamped at 1 pixel was already 1 or less
    # after scaling), so a tile is either shrunk on both axes or enlarged on both.
    if size[0] * size[1] < w * h:
        # BOX averages whole source pixels: fast on 12-MP inputs and alias-free enough for a preview;
        # reducing_gap lets Pillow first shrink by an integer factor, which is faster still. Pillow
        # premultiplies RGBA for the resize, so masked pixels' colour does not bleed into their neighbours.
        img = img.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    elif size != (w, h):
        # Enlarge small tiles with crisp pixels so tiny test images stay legible.
        img = img.resize(size, Image.Resampling.NEAREST)
    if img.mode == "RGBA":
        board = Image.fromarray(checkerboard(*img.size)).convert("RGBA")
        board.alpha_composite(img)
        img = board.convert("RGB")
    return img


@lru_cache(maxsize=16)
def font(size: int = 13, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (the font matplotlib ships) at ``size`` pixels, for the pictures' text.

    Falls back on Pillow's built-in scalable font when matplotlib's copy
    cannot be found. Cached.

    Examples
    --------
    >>> font(13).getbbox("soft overlay")[2] > font(13).getbbox("softoverlay")[2]
    True
    """
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        # The file itself, not font_manager.findfont: that may first build matplotlib's font cache.
        return ImageFont.truetype(str(_matplotlib_data() / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _matplotlib_data() -> Path:
    """``matplotlib.get_data_path()`` (``mpl-data`` beside its package), found without importing matplotlib."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("matplotlib is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data"


def _line_height(f: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Height of one line of text: ascent plus descent, so "Ag" and "g_" both fit."""
    if hasattr(f, "getmetrics"):
        ascent, descent = f.getmetrics()
        return int(ascent + descent)
    return int(f.getbbox("Ag")[3])


def _text_width(text: str, f: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    return float(f.getlength(text))


def _fit_text(text: str, f: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """``text``, cut short with "..." where it is wider than ``width`` pixels in font ``f``."""
    if _text_width(text, f) <= width:
        return text
    while text and _text_width(text + "...", f) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _wrap_fields(fields: Sequence[str], f: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """Fields joined by a wide separator, broken into lines between fields to fit ``width``."""
    lines: list[str] = []
    line = ""
    for field in fields:
        candidate = f"{line}{_FIELD_SEP}{field}" if line else field
        if _text_width(candidate, f) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = _fit_text(field, f, width)
    if line:
        lines.append(line)
    return lines


@dataclass(frozen=True)
class Tile:
    """One montage picture with its title, and optionally a colour bar and a colour swatch.

    Parameters
    ----------
    title : str
        Drawn above the picture (cut short with "..." if wider than the cell).
    pixels : ndarray or IndexedImage
        uint8 RGB (H, W, 3), RGBA (alpha 0 drawn as a checkerboard), grey
        (H, W), or an :class:`IndexedImage` (its ``transparent`` index drawn
        as a checkerboard).
    colorbar : str, optional
        A matplotlib colormap name: draw a colour bar for values 0 to 1
        under the picture, labelled with ``ticks``.
    ticks : tuple of (float, str)
        Positions in [0, 1] along the colour bar and their labels; labels
        that would overlap are left out (the middle ones first).
    swatch : (int, int, int), optional
        A colour square drawn before the title (a heatmap's cluster colour).

    Examples
    --------
    >>> Tile("cluster 0", np.zeros((4, 4), np.uint8), colorbar="viridis", swatch=(31, 119, 180)).colorbar
    'viridis'
    """

    title: str
    pixels: Any
    colorbar: str | None = None
    ticks: tuple[tuple[float, str], ...] = ((0.0, "0"), (0.5, "0.5"), (1.0, "1"))
    swatch: tuple[int, int, int] | None = None


def legend_entries(colors: ArrayLike, shares: ArrayLike | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend labels (cluster number and share of the pixels) with each cluster's colour.

    Parameters
    ----------
    colors : array_like, uint8 (k, 3)
        Cluster colours.
    shares : array_like, float (k,), optional
        Each cluster's share of the pixels, in [0, 1]; left out when None.

    Returns
    -------
    list of (str, (r, g, b))

    Examples
    --------
    >>> legend_entries([[255, 0, 0], [0, 0, 255]], [0.75, 0.25])
    [('0  75.0 %', (255, 0, 0)), ('1  25.0 %', (0, 0, 255))]
    """
    cols = np.asarray(colors)
    out = []
    for j, c in enumerate(cols):
        label = f"{j}" if shares is None else f"{j}  {100.0 * float(np.asarray(shares)[j]):.1f} %"
        out.append((label, (int(c[0]), int(c[1]), int(c[2]))))
    return out


Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in sheet pixels


@dataclass(frozen=True)
class MontageLayout:
    """Where everything goes on a montage sheet; boxes are (left, top, right, bottom), right and bottom exclusive.

    Attributes
    ----------
    width, height : int
        Size of the sheet.
    header : Box or None
        The header block (image name and details).
    header_lines : list of str
        The header's detail lines, wrapped to the sheet's width.
    titles, tiles : list of Box
        Each tile's title band and picture.
    colorbars : list of Box or None
        Each tile's colour bar (the bar itself, labels below it), or None.
    legend : Box or None
        The legend block (heading and every entry).
    legend_entries : list of Box
        Each legend entry: swatch and label.
    """

    width: int
    height: int
    header: Box | None
    header_lines: list[str]
    titles: list[Box]
    tiles: list[Box]
    colorbars: list[Box | None]
    legend: Box | None
    legend_entries: list[Box]
    legend_columns: int


def _as_tile(tile: Tile | tuple) -> Tile:
    if isinstance(tile, Tile):
        return tile
    title, pixels, *rest = tile
    return Tile(str(title), pixels, *rest)


def _tile_shape(pixels: Any) -> tuple[int, int]:
    shape = pixels.shape if isinstance(pixels, IndexedImage) else np.shape(pixels)
    if len(shape) < 2:
        raise SegsoftError(f"montage tile: expected an (H, W, 3) picture, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _colorbar_height() -> int:
    return _BAR_GAP + _BAR_HEIGHT + _TICK_LENGTH + _line_height(font(_TICK_SIZE))


def montage_layout(
    tiles: Sequence[Tile | tuple],
    tile_width: int = 256,
    columns: int | None = None,
    tile_height: int | None = None,
    *,
    header: str | None = None,
    details: Sequence[str] = (),
    legend: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
    legend_title: str = _LEGEND_TITLE,
) -> MontageLayout:
    """The layout :func:`montage` draws, from the tiles' shapes alone (no pixel is touched).

    Takes the arguments of :func:`montage`. Useful to check that nothing
    overlaps, or to find a tile on the sheet.

    Examples
    --------
    >>> lay = montage_layout([("a", np.zeros((10, 20, 3), np.uint8))], tile_width=64,
    ...                      legend=legend_entries([[255, 0, 0]], [1.0]))
    >>> lay.tiles[0][2] - lay.tiles[0][0], lay.legend is not None, len(lay.legend_entries)
    (64, True, 1)
    """
    tile_width = operator.index(tile_width)
    if tile_width < 1:
        raise SegsoftError(f"tile_width must be at least 1, got {tile_width}")
    tile_height = TILE_HEIGHT_RATIO * tile_width if tile_height is None else operator.index(tile_height)
    if tile_height < 1:
        raise SegsoftError(f"tile_height must be at least 1, got {tile_height}")
    if len(tiles) == 0:
        raise SegsoftError("montage needs at least one tile")
    if columns is None:
        columns = min(4, len(tiles))
    columns = operator.index(columns)
    if columns < 1:
        raise SegsoftError(f"columns must be at least 1, got {columns}")
    items = [_as_tile(t) for t in tiles]

    title_font, legend_font = font(_TITLE_SIZE), font(_LEGEND_SIZE)
    band = _line_height(title_font) + 2 * _TITLE_PAD
    bar_h = _colorbar_height()
    width = _MARGIN + columns * (tile_width + _MARGIN)
    annotated = header is not None or bool(details) or bool(legend)
    if annotated:
        # room for the header and for a legend column, however narrow the tiles
        width = max(width, _MIN_ANNOTATED_WIDTH)
    inner = width - 2 * _MARGIN

    y = _MARGIN
    header_box: Box | None = None
    header_lines: list[str] = []
    if header is not None or details:
        top = y
        if header is not None:
            y += _line_height(font(_HEADER_SIZE, bold=True))
        header_lines = _wrap_fields(list(details), font(_DETAIL_SIZE), inner)
        y += len(header_lines) * (_line_height(font(_DETAIL_SIZE)) + _LINE_GAP)
        header_box = (_MARGIN, top, width - _MARGIN, y)
        y += _MARGIN  # and a rule halfway through this margin

    titles: list[Box] = []
    boxes: list[Box] = []
    bars: list[Box | None] = []
    for r0 in range(0, len(items), columns):
        row = items[r0 : r0 + columns]
        sizes = []
        for t in row:
            h, w = _tile_shape(t.pixels)
            if h == 0 or w == 0:
                raise SegsoftError(f"montage tile {t.title!r} is empty")
            sizes.append(fit_box(w, h, tile_width, tile_height))
        row_h = max(s[1] for s in sizes)
        has_bar = any(t.colorbar is not None for t in row)
        for col, (t, (tw, th)) in enumerate(zip(row, sizes)):
            x = _MARGIN + col * (tile_width + _MARGIN)
            titles.append((x, y, x + tile_width, y + band))
            left = x + (tile_width - tw) // 2  # narrow tiles: centred in the cell
            boxes.append((left, y + band, left + tw, y + band + th))
            bar_top = y + band + row_h
            bars.append((x, bar_top, x + tile_width, bar_top + bar_h) if t.colorbar is not None else None)
        y += band + row_h + (bar_h if has_bar else 0) + _MARGIN

    legend_box: Box | None = None
    entry_boxes: list[Box] = []
    n_cols = 0
    if legend:
        top = y
        y += _line_height(legend_font) + _LINE_GAP  # the heading
        text_w = max(math.ceil(_text_width(label, legend_font)) for label, _ in legend)
        entry_w = _SWATCH + _SWATCH_GAP + text_w
        n_cols = max(1, min(len(legend), (inner + _ENTRY_GAP) // (entry_w + _ENTRY_GAP)))
        n_rows = math.ceil(len(legend) / n_cols)
        n_cols = math.ceil(len(legend) / n_rows)  # balanced: 64 entries in 8 x 8, not 9 + 1 short column
        entry_h = max(_line_height(legend_font), _SWATCH)
        # entries run down the columns: cluster numbers read in order
        for i in range(len(legend)):
            c, r = divmod(i, n_rows)
            ex = _MARGIN + c * (entry_w + _ENTRY_GAP)
            ey = y + r * (entry_h + _LINE_GAP)
            entry_boxes.append((ex, ey, ex + entry_w, ey + entry_h))
        y += n_rows * (entry_h + _LINE_GAP)
        legend_box = (_MARGIN, top, width - _MARGIN, y)
        y += _MARGIN
    return MontageLayout(width, y, header_box, header_lines, titles, boxes, bars, legend_box, entry_boxes, n_cols)


def _draw_colorbar(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, box: Box, cmap: str, ticks: Sequence[tuple[float, str]]
) -> None:
    """A horizontal colour bar for values 0..1 in ``box``, outlined, with tick marks and labels under it."""
    x0, y0, x1, _ = box
    width = x1 - x0
    lut = colormap_lut(cmap)
    row = lut[np.rint(np.linspace(0.0, 255.0, width)).astype(np.intp)]
    bar_top = y0 + _BAR_GAP
    sheet.paste(Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (_BAR_HEIGHT, width, 3)))), (x0, bar_top))
    draw.rectangle((x0, bar_top, x1 - 1, bar_top + _BAR_HEIGHT - 1), outline=_INK_LIGHT)
    tick_font = font(_TICK_SIZE)
    # Place labels at their ticks (the end ones flush with the bar's ends), then drop those that would
    # collide: middle ones first, so a narrow bar keeps "0" and "1".
    placed: list[tuple[float, float, float, str]] = []
    for pos, text in ticks:
        tx = x0 + float(pos) * (width - 1)
        w = _text_width(text, tick_font)
        left = x0 if pos <= 0.0 else (x1 - w if pos >= 1.0 else tx - w / 2)
        placed.append((tx, left, left + w, text))
    order = sorted(range(len(placed)), key=lambda i: (0 < ticks[i][0] < 1, i))  # ends first
    kept: list[int] = []
    for i in order:
        _, a, b, _ = placed[i]
        if a >= x0 - 0.5 and b <= x1 + 0.5 and all(b + 4 <= placed[j][1] or placed[j][2] + 4 <= a for j in kept):
            kept.append(i)
    text_top = bar_top + _BAR_HEIGHT + _TICK_LENGTH
    for i in sorted(kept):
        tx, left, _, text = placed[i]
        draw.line((round(tx), bar_top + _BAR_HEIGHT, round(tx), text_top - 1), fill=_INK_LIGHT)
        draw.text((left, text_top), text, fill=_INK, font=tick_font)


def montage(
    tiles: Sequence[Tile | tuple],
    tile_width: int = 256,
    columns: int | None = None,
    tile_height: int | None = None,
    *,
    header: str | None = None,
    details: Sequence[str] = (),
    legend: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
    legend_title: str = _LEGEND_TITLE,
    return_layout: bool = False,
) -> np.ndarray | tuple[np.ndarray, MontageLayout]:
    """Lay titled pictures out on a white contact sheet, with a header, colour bars and a legend.

    Each picture is scaled to fit a ``tile_width`` x ``tile_height`` box,
    keeping its aspect ratio (shrunk with a box filter, enlarged with nearest
    neighbour, see :func:`fit_box`), and placed, centred, under its title in
    a grid, left to right then top to bottom. The box bounds the sheet
    whatever the pictures' shapes: a 1 x 5000 strip is drawn as a thin line
    512 pixels tall, not stretched to 256 x 1280000. Transparent pixels
    (alpha 0, or an :class:`IndexedImage`'s ``transparent`` index) are drawn
    on a grey checkerboard (:func:`checkerboard`). Text is DejaVu Sans
    (:func:`font`), measured so that nothing overlaps: titles too wide for
    their cell are cut short with "...", header details wrap between
    fields, colour-bar labels that would collide are left out.

    Parameters
    ----------
    tiles : sequence of Tile or (str, ndarray)
        Pictures with their titles (and optionally a colour bar and a
        swatch, see :class:`Tile`): uint8 RGB (H, W, 3) of any size, grey
        (H, W), RGBA, or :class:`IndexedImage`.
    tile_width : int
        Width of every grid cell, and the most a tile may be, in pixels.
    columns : int, optional
        Tiles per row; default ``min(4, len(tiles))``.
    tile_height : int, optional
        The most a tile may be tall; default ``TILE_HEIGHT_RATIO * tile_width``.
    header : str, optional
        A bold first line (the image's name).
    details : sequence of str
        Header fields (size, model, k, ...), joined on lines as wide as the sheet.
    legend : sequence of (str, (r, g, b)), optional
        Legend entries drawn as a colour swatch and its label, in columns
        under the tiles (see :func:`legend_entries`); as many columns as fit
        the sheet, numbered down each column.
    legend_title : str
        The legend's heading.
    return_layout : bool
        Also return the :class:`MontageLayout` (where each tile, colour bar
        and legend entry is on the sheet).

    Returns
    -------
    ndarray, uint8 (H, W, 3), or (ndarray, MontageLayout) with ``return_layout``
        The sheet, laid out as :func:`montage_layout` says: at least
        ``8 + columns * (tile_width + 8)`` pixels wide (360 with a header or
        a legend), each row as tall as its title band plus its tallest tile
        (plus a colour bar) plus an 8-pixel margin.

    Examples
    --------
    >>> red = np.full((16, 16, 3), (255, 0, 0), np.uint8)
    >>> sheet = montage([("a", red), ("b", red), ("c", red)], tile_width=32, columns=2)
    >>> sheet.shape[1], sheet.dtype
    (88, dtype('uint8'))
    >>> sheet = montage([Tile("cluster 0", red[..., 0], colorbar="viridis")], header="red.png",
    ...                 details=["16 x 16 px", "k = 1"], legend=legend_entries([[255, 0, 0]], [1.0]))
    >>> sheet.shape[1]
    360
    """
    layout = montage_layout(
        tiles,
        tile_width,
        columns,
        tile_height,
        header=header,
        details=details,
        legend=legend,
        legend_title=legend_title,
    )
    tile_height = TILE_HEIGHT_RATIO * tile_width if tile_height is None else tile_height
    items = [_as_tile(t) for t in tiles]
    sheet = Image.new("RGB", (layout.width, layout.height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)

    if layout.header is not None:
        x, y, right, bottom = layout.header
        if header is not None:
            bold = font(_HEADER_SIZE, bold=True)
            draw.text((x, y), _fit_text(header, bold, right - x), fill=_INK, font=bold)
            y += _line_height(bold)
        detail_font = font(_DETAIL_SIZE)
        for line in layout.header_lines:
            draw.text((x, y), line, fill=_INK_SOFT, font=detail_font)
            y += _line_height(detail_font) + _LINE_GAP
        rule = bottom + _MARGIN // 2
        draw.line((x, rule, right - 1, rule), fill=_RULE)

    title_font = font(_TITLE_SIZE)
    for t, title_box, tile_box, bar_box in zip(items, layout.titles, layout.tiles, layout.colorbars):
        x, y, right, _ = title_box
        tx = x
        if t.swatch is not None:
            s = _SWATCH
            sy = y + _TITLE_PAD + (_line_height(title_font) - s) // 2
            draw.rectangle((x, sy, x + s - 1, sy + s - 1), fill=tuple(int(v) for v in t.swatch), outline=_INK_LIGHT)
            tx = x + s + _SWATCH_GAP
        draw.text((tx, y + _TITLE_PAD), _fit_text(t.title, title_font, right - tx), fill=_INK, font=title_font)
        img = _tile_image(t.pixels, (tile_width, tile_height), t.title)
        sheet.paste(img, tile_box[:2])
        if bar_box is not None:
            _draw_colorbar(sheet, draw, bar_box, str(t.colorbar), t.ticks)

    if layout.legend is not None and legend:
        legend_font = font(_LEGEND_SIZE)
        x, y, right, _ = layout.legend
        draw.text((x, y), _fit_text(legend_title, legend_font, right - x), fill=_INK_SOFT, font=legend_font)
        entry_h = max(_line_height(legend_font), _SWATCH)
        for (label, colour), (ex, ey, _, _) in zip(legend, layout.legend_entries):
            sy = ey + (entry_h - _SWATCH) // 2
            draw.rectangle((ex, sy, ex + _SWATCH - 1, sy + _SWATCH - 1), fill=tuple(colour), outline=_INK_LIGHT)
            draw.text((ex + _SWATCH + _SWATCH_GAP, ey), label, fill=_INK, font=legend_font)
    out = np.array(sheet, dtype=np.uint8)  # np.array (not asarray): writable and C-contiguous
    return (out, layout) if return_layout else out


def selection_plot(selection: dict, width: float = 6.0, height: float = 3.5) -> np.ndarray:
    """BIC and ICL against k, with the chosen k marked, as uint8 RGB.

    ``selection`` is the curve ``segsoft.segment(..., k="auto")`` returns
    (keys ``ks``, ``bic``, ``icl``, ``criterion``, ``k``).

    Examples
    --------
    >>> sel = {"ks": [2, 3, 4], "bic": [10.0, 5.0, 6.0], "icl": [11.0, 7.0, 9.0], "criterion": "icl", "k": 3}
    >>> selection_plot(sel).shape[2]
    3
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # draws off-screen whatever matplotlib's configured backend is
    ax = fig.add_subplot()
    for key in ("bic", "icl"):
        ax.plot(selection["ks"], selection[key], marker="o", label=key.upper())
    ax.set_xticks(selection["ks"])
    ax.axvline(selection["k"], color="grey", linestyle="--", label=f"chosen k = {selection['k']}")
    ax.set_xlabel("k (clusters)")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_title(f"choosing k by {selection['criterion'].upper()}")
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
