"""One image in, soft segmentation out: the pipeline behind ``segsoft run``.

``segment()`` reads the image, extracts features, fits the chosen mixture
and computes every pixel's memberships; the :class:`SoftSegmentation` it
returns renders pictures on demand and saves everything with ``save()``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import render
from .errors import SegsoftError
from .features import FeatureSpec, extract
from .io import DEFAULT_MAX_PIXELS, Image, _UnitRows, as_image
from .limits import MAX_K
from .mixture import FuzzyCMeans, GaussianMixture, SoftKMeans, available_cores, using_threads
from .regions import MERGE_THRESHOLD, RegionHierarchy, check_regions_flag, check_threshold, region_hierarchy
from .spatial import PottsPrior

__all__ = [
    "CRITERIA",
    "MAX_K",
    "MODELS",
    "SoftSegmentation",
    "apply_model",
    "make_model",
    "segment",
    "select_k",
]

MODELS = ("gmm", "soft-kmeans", "fcm")
PALETTES = ("categorical", "mean")
# The uncertainty map's colour bar: normalised entropy, 0 (one cluster) to 1 (split evenly over all k).
_ENTROPY_TICKS = ((0.0, "0 certain"), (0.5, "0.5"), (1.0, "1 split evenly"))
_THUMB_TILE = 160  # the notebook thumbnail's tile width: four tiles make a 680-pixel sheet


class _DefaultSample(int):
    """The default ``sample``: 200000, told apart from the same number given on purpose.

    Left at this default, :func:`segment` fits the exact full-data EM on the image's
    distinct colours where that applies (8-bit colour with at most a quarter of the
    pixels distinct, colour-only features, no smoothing; fixed k or ``"auto"``) and
    samples this many pixels elsewhere; ``sample=200000``
    typed out always samples. It is an ``int`` everywhere else (``model.json``,
    option checks), and pickles as itself, so batch workers see the default too.
    """

    __slots__ = ()

    def __reduce__(self) -> Any:
        return (_DefaultSample, (int(self),))


DEFAULT_SAMPLE = _DefaultSample(200_000)


def is_default_sample(sample: Any) -> bool:
    """Whether ``sample`` is :data:`DEFAULT_SAMPLE` left at the default (not a number given)."""
    return isinstance(sample, _DefaultSample)


# MAX_K (segsoft.limits) is the most clusters the pipeline fits: every cluster adds an output picture,
# a montage tile and a probabilities plane, so an unbounded k (-k 500, n_components=10000) means minutes
# of work, hundreds of files and gigabytes; -k auto fits every k up to it. The engines allow any k.


def _png(picture: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB picture."""
    import io as _io

    from PIL import Image as PILImage

    buf = _io.BytesIO()
    PILImage.fromarray(picture).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass(repr=False)
class SoftSegmentation:
    """Per-pixel memberships of one image, with the model that made them.

    Attributes
    ----------
    image : Image
        The input, as read.
    probabilities : ndarray, float32 (H, W, k)
        Memberships; each used pixel's sum to 1. Pixels masked out by
        transparency are NaN. After the exact fit on distinct colours the
        array is made (gathered from each colour's memberships) on first
        access: the pictures and the memberships file are made from the
        colours' memberships without it.
    model : GaussianMixture, SoftKMeans or FuzzyCMeans
        The fitted model, on feature vectors made by ``spec``.
    spec : FeatureSpec
        The fitted feature transform.
    log_likelihood : float
        Mean log-likelihood per used pixel under the final model (for fuzzy
        c-means, minus the mean weighted squared distance).
    settings : dict
        The arguments ``segment()`` was called with.
    timings : dict
        Seconds spent in each stage.
    selection : dict or None
        With ``k="auto"``: the criterion curve over k (see :func:`select_k`).

    Examples
    --------
    >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> rgb[:, 4:] = 255
    >>> seg = segment(rgb, k=2)
    >>> seg.probabilities.shape, seg.labels.shape
    ((8, 8, 2), (8, 8))
    """

    image: Image
    probabilities: np.ndarray
    model: Any
    spec: FeatureSpec
    log_likelihood: float
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    _region_maps: dict[float, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    palette: str = field(default="categorical", init=False, compare=False)
    # A preview (see _preview) describes the full segmentation it was cut from, not its own small arrays.
    _source: Any = field(default=None, init=False, repr=False, compare=False)
    # The exact fit on distinct colours: (inverse, int32 (n_used,), the distinct colour of each used
    # pixel; memberships of each distinct colour, float32 (n_d, k); its pixel count, float64 (n_d,);
    # the colours, float32 (n_d, 3), as in the image's pixels),
    # so per-pixel pictures are one gather from per-colour values; None otherwise.
    _distinct: Any = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        """A line a notebook can show: the image, its size, k, the model and the score; never an array.

        Examples
        --------
        >>> rgb = np.zeros((8, 6, 3), dtype=np.uint8); rgb[:, 3:] = 200
        >>> segment(rgb, k=2)  # doctest: +ELLIPSIS
        SoftSegmentation(image=array, 6x8, k=2, model=gmm, log_likelihood=...)
        """
        name = "array" if self.image.path is None else self.image.path.name
        score = "score" if self.settings.get("model") == "fcm" else "log_likelihood"
        return (
            f"SoftSegmentation(image={name}, {self.image.width}x{self.image.height}, k={self.k}, "
            f"model={self.settings.get('model', type(self.model).__name__)}, {score}={self.log_likelihood:.4f})"
        )

    @property
    def k(self) -> int:
        if self._probabilities is None and self._distinct is not None:  # without making them
            return int(self._distinct[1].shape[1])
        return self.probabilities.shape[-1]

    @property
    def _hw(self) -> tuple[int, int]:
        """(H, W) of the memberships, without making them."""
        return self.image.height, self.image.width

    def _gather_probabilities(self) -> np.ndarray:
        """After the exact fit on distinct colours: the (H, W, k) memberships, gathered by colour."""
        inverse, table = self._distinct[0], self._distinct[1]
        (h, w), k = self._hw, table.shape[1]
        if self.mask is None:
            return _gather_rows(table, inverse, np.empty((h * w, k), np.float32)).reshape(h, w, k)
        probs = np.full((h * w, k), np.nan, dtype=np.float32)
        probs[self.mask.ravel()] = table[inverse]
        return probs.reshape(h, w, k)

    def _probability_blocks(self, step: int = 1 << 18) -> Iterator[np.ndarray]:
        """The memberships as consecutive float32 (rows, k) blocks of the (H * W, k) array, in order.

        After the exact fit on distinct colours (no mask) and before :attr:`probabilities`
        is made, each block is gathered from the colours' memberships into one reused
        buffer (valid until the next block): the same numbers without the image-sized array.
        """
        if self._probabilities is not None or self._distinct is None or self.mask is not None:
            flat = self.probabilities.reshape(-1, self.k)
            for s in range(0, flat.shape[0], step):
                yield flat[s : s + step]
            return
        inverse, table = self._distinct[0], self._distinct[1]
        buf = np.empty((min(step, inverse.size), table.shape[1]), np.float32)
        for s in range(0, inverse.size, step):
            part = inverse[s : s + step]
            yield np.take(table, part, axis=0, out=buf[: part.size], mode="clip")  # see _gather_rows

    @property
    def mask(self) -> np.ndarray | None:
        return self.image.mask

    @property
    def n_used(self) -> int:
        return self.image.n_used

    @cached_property
    def labels(self) -> np.ndarray:
        """Hard labels (H, W): the most probable cluster; -1 where masked."""
        if self._distinct is not None:  # one argmax per distinct colour, gathered: the same labels
            inverse, table = self._distinct[0], self._distinct_labels
            if self.mask is None:
                out = np.empty(inverse.size, np.int32)
                return _gather_rows(table, inverse, out).reshape(self._hw)
            labels = np.full(self._hw, -1, dtype=np.int32)
            labels[self.mask] = table[inverse]
            return labels
        # masked (NaN) pixels come out as 0 here and are set to -1 below; in chunks, so
        # there is no image-sized int64 argmax besides the int32 labels
        flat = self.probabilities.reshape(-1, self.k)
        labels = np.empty(flat.shape[0], dtype=np.int32)
        step = 1 << 18
        for s in range(0, flat.shape[0], step):
            labels[s : s + step] = np.argmax(flat[s : s + step], axis=-1)
        labels = labels.reshape(self.probabilities.shape[:2])
        if self.mask is not None:
            labels[~self.mask] = -1
        return labels

    @cached_property
    def _distinct_labels(self) -> np.ndarray:
        """After the exact fit on distinct colours: each distinct colour's label, int32 (n_d,)."""
        return np.argmax(self._distinct[1], axis=-1).astype(np.int32)

    @cached_property
    def hierarchy(self) -> RegionHierarchy:
        """Superpixels and their merge sequence (see :mod:`segsoft.regions`); made once, cut by :meth:`regions`."""
        lazy = self._block_hierarchy()
        if lazy is not None:
            return lazy
        return region_hierarchy(_region_colors(self.image), self.probabilities, mask=self.mask)

    def _block_hierarchy(self) -> RegionHierarchy | None:
        """:func:`~segsoft.regions.region_hierarchy` of a large photo after the exact fit, from its working copy.

        A large image is merged on a block-averaged working copy. Here that copy is made tile
        by tile from the exact fit's per-colour memberships and the 8-bit samples, merged as an
        image of its own (no larger than the working size, it is merged as it is: the same
        superpixels and merges) and scaled back to the image's size: the same hierarchy without
        the (H, W, k) memberships (576 MB at 12 MP, k = 12) or the float pixels. None where this
        does not apply (no exact fit, transparency, an image merged at full resolution).
        """
        from dataclasses import replace

        from .regions import _working_copy, work_factor

        if self._distinct is None or self._probabilities is not None or self.mask is not None:
            return None
        if not (self.image.is_color or self.image.is_gray):  # another view of the bands (_region_colors)
            return None
        h, w = self._hw
        factor = work_factor((h, w))  # as region_hierarchy chooses it
        if factor == 1 or work_factor((-(-h // factor), -(-w // factor))) != 1:
            return None  # merged at full size, or a copy still over the working size (a 1-px strip)
        inverse, table = self._distinct[0], self._distinct[1]
        if not np.isfinite(table).all():  # the general path marks those pixels unused: no copy made in vain
            return None
        rgb = self.image._unit_pixels()
        probabilities = _TableRows(table, inverse.reshape(h, w))
        # every pixel used (finite memberships, no mask) and a copy at most the working size: merged
        # as it is, with no mask and factor 1, so only the full image's shape and factor are set here
        rgb_w, p_w, _, _ = _working_copy(rgb, probabilities, None, factor)
        return replace(region_hierarchy(rgb_w, p_w), shape=(h, w), factor=factor)

    def regions(self, threshold: float = MERGE_THRESHOLD) -> np.ndarray:
        """Regions: connected segments merged along weak boundaries, int32 (H, W); -1 where masked.

        Superpixels described by their mean memberships are merged, cheapest
        first, by a cost that grows with how different their memberships are,
        how strong the colour contrast along their boundary is and how large
        they are (:func:`segsoft.regions.merge_regions`). A higher
        ``threshold`` gives fewer, larger regions. Finer memberships (k about
        12) give better regions than the few clusters one would look at.

        Examples
        --------
        >>> rgb = np.zeros((40, 40, 3), dtype=np.uint8)
        >>> rgb[:, 20:] = (200, 40, 30)
        >>> regions = segment(rgb, k=2).regions()
        >>> sorted(np.unique(regions).tolist())
        [0, 1]
        """
        return self._region_map(threshold).copy()

    def _region_map(self, threshold: float) -> np.ndarray:
        """:meth:`regions` without the copy: the cached map, for readers that never change it."""
        key = check_threshold(threshold)
        if key not in self._region_maps:  # run, save and the summary all ask for the same cut
            self._region_maps.clear()
            self._region_maps[key] = self.hierarchy.labels(threshold)
        return self._region_maps[key]

    @property
    def bic(self) -> float | None:
        """BIC of the model on this image's pixels (None for fuzzy c-means)."""
        if not hasattr(self.model, "n_parameters"):
            return None
        n = self.n_used
        return float(-2.0 * self.log_likelihood * n + self.model.n_parameters() * np.log(n))

    @property
    def aic(self) -> float | None:
        if not hasattr(self.model, "n_parameters"):
            return None
        return float(-2.0 * self.log_likelihood * self.n_used + 2.0 * self.model.n_parameters())

    @cached_property
    def colors(self) -> np.ndarray:
        """Display colour of each cluster, uint8 (k, 3): the categorical palette, or with
        :meth:`use_palette` ``"mean"`` each cluster's mean colour."""
        if self.palette == "mean":
            return render.mean_palette(self.mean_rgb)
        return render.cluster_colors(self.k)

    def use_palette(self, palette: str) -> SoftSegmentation:
        """Draw the clusters in ``"categorical"`` colours (distinguishable up to k = 64) or in their
        ``"mean"`` colours; returns ``self``.

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = (200, 40, 30)
        >>> segment(rgb, k=2).use_palette("mean").colors.tolist()
        [[0, 0, 0], [200, 40, 30]]
        """
        if palette not in PALETTES:
            raise SegsoftError(f"--palette must be one of {', '.join(PALETTES)}, got {palette!r}")
        self.palette = palette
        self.__dict__.pop("colors", None)
        return self

    @cached_property
    def mean_rgb(self) -> np.ndarray:
        """Membership-weighted mean sRGB of each cluster, float (k, 3) in [0, 1]."""
        mean = _MeanColours(self)
        for block in self._probability_blocks(_MEAN_STEP):
            mean.add(block)
        return mean.result()

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """Soft overlay, uint8 RGB: each pixel blends the cluster colours by its memberships."""
        colours_are_bands = self.image._rgb8_rows() is not None or self.image.bands is self.image.pixels
        if self._distinct is not None and self.mask is None and colours_are_bands:
            # a pixel's blend depends on its colour and memberships only: once per distinct colour
            # (the colours are the bands': not where --display-bands shows another composite)
            inverse, per_colour, _, colours = self._distinct
            table = render.soft_overlay(colours[None], per_colour[None], alpha=alpha, colors=self.colors)[0]
            h, w = self._hw
            return _gather_rows(table, inverse, np.empty((h * w, 3), np.uint8)).reshape(h, w, 3)
        return render.soft_overlay(
            self.image.pixels, self.probabilities, alpha=alpha, colors=self.colors, mask=self.mask
        )

    def heatmap(self, j: int, cmap: str = "viridis") -> np.ndarray:
        """Membership of cluster ``j`` through a colormap, uint8 RGB."""
        return render.heatmap(self.probabilities, j, cmap=cmap, mask=self.mask)

    def label_image(self) -> np.ndarray:
        """Hard label map in the cluster colours, uint8 RGB."""
        return render.label_image(self.labels, colors=self.colors, k=self.k)

    def uncertainty(self, cmap: str = "magma") -> np.ndarray:
        """Normalised entropy of the memberships (0 = certain) through a colormap, uint8 RGB."""
        return render.uncertainty_image(self.probabilities, cmap=cmap, mask=self.mask)

    def entropy(self) -> np.ndarray:
        """Normalised entropy of each pixel's memberships, float32 (H, W) in [0, 1]."""
        return render.normalized_entropy(self.probabilities)

    def pictures(
        self,
        alpha: float = 0.5,
        cmap: str = "viridis",
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
    ) -> list[tuple[str, str, Callable[[], Any]]]:
        """(file name, title, renderer) of every picture in the output layout, in montage order.

        Renderers return uint8 RGB arrays or, for the pictures with at most
        256 colours, :class:`~segsoft.render.IndexedImage` (exact, and much
        faster to write as PNG). With ``regions``, the regions at
        ``region_threshold`` are drawn too (``regions.png``). Where the
        image has transparent (or nodata) pixels (:attr:`mask`), they are
        transparent in every picture: RGBA arrays, or indexed pictures with
        a ``transparent`` index (a PNG ``tRNS`` entry).

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> [name for name, title, make in segment(rgb, k=2).pictures()]
        ['overlay.png', 'labels.png', 'uncertainty.png', 'prob_0.png', 'prob_1.png']
        """
        check_regions_flag(regions)
        pics = [
            ("overlay.png", "soft overlay", lambda: render.with_alpha(self.overlay(alpha), self.mask)),
            ("labels.png", "labels", self._label_picture),
        ]
        if regions:

            def region_picture() -> Any:
                pic = render.region_indexed(self.image._unit_pixels(), self._region_map(region_threshold))
                return pic if isinstance(pic, render.IndexedImage) else render.with_alpha(pic, self.mask)

            pics.append(("regions.png", "regions", region_picture))
        pics += [
            (
                "uncertainty.png",
                "uncertainty",
                lambda: self._per_pixel(lambda p, mask: render.uncertainty_indexed(p, mask=mask)),
            ),
        ]
        pics += [
            (
                f"prob_{j}.png",
                f"cluster {j}",
                lambda j=j: self._per_pixel(lambda p, mask: render.heatmap_indexed(p, j, cmap, mask)),
            )
            for j in range(self.k)
        ]
        return pics

    def _label_picture(self) -> Any:
        """:func:`segsoft.render.label_indexed` of :attr:`labels`; after the exact fit on distinct
        colours (no mask) drawn per colour and gathered, without the image-sized labels."""
        if self._distinct is not None and self.mask is None and "labels" not in self.__dict__:
            pic = render.label_indexed(self._distinct_labels[None], colors=self.colors, k=self.k)
            if isinstance(pic, render.IndexedImage):
                return self._gathered(pic)
        return render.label_indexed(self.labels, colors=self.colors, k=self.k)

    def _per_pixel(self, make: Callable[[np.ndarray, np.ndarray | None], render.IndexedImage]) -> render.IndexedImage:
        """``make(memberships, mask)``, a picture whose every pixel depends on its own memberships only.

        After the exact fit on distinct colours (no mask) it is drawn once per distinct
        colour and gathered back by each pixel's colour: the same picture, a fraction of
        the work.
        """
        if self._distinct is None or self.mask is not None:
            return make(self.probabilities, self.mask)
        return self._gathered(make(self._distinct[1][None], None))

    def _gathered(self, pic: render.IndexedImage) -> render.IndexedImage:
        """A (1, n_distinct) picture of the distinct colours, gathered back to every pixel."""
        inverse = self._distinct[0]
        out = _gather_rows(pic.indices[0], inverse, np.empty(inverse.size, np.uint8))
        return render.IndexedImage(out.reshape(self._hw), pic.palette, pic.transparent)

    def original(self, width: int | None = None, height: int | None = None, alpha: bool = False) -> np.ndarray:
        """The input image as uint8 RGB, optionally shrunk for a montage tile.

        Parameters
        ----------
        width : int, optional
            Shrink by block averaging to at least the size of a montage tile
            at most ``width`` wide and ``height`` tall (see
            :func:`segsoft.render.shrink_factors`). Blocks need not be square
            (a 200000 x 1 strip averages 390 x 1 blocks) and the work goes in
            bands, so any image size or aspect ratio costs little memory.
            None: full size.
        height : int, optional
            Tile height; default ``render.TILE_HEIGHT_RATIO * width``.
        alpha : bool
            Where the image has transparent pixels, return RGBA: alpha is
            the share of used pixels in each block, colours the mean of the
            used ones (so transparent pixels' colour never bleeds in).

        Returns
        -------
        ndarray, uint8 (h, w, 3), or (h, w, 4) with ``alpha`` and a mask

        Examples
        --------
        >>> seg = segment(np.tile(np.array([[0], [255]], np.uint8), (1, 2000)), k=2)
        >>> seg.original().shape, seg.original(256).shape
        ((2, 2000, 3), (1, 285, 3))
        """
        shape = self.image._shape  # the pixels are read window by window (from 8-bit samples, if kept)
        fy, fx = (1, 1) if width is None else render.shrink_factors(shape, width, height)
        h, w = shape[0] // fy, shape[1] // fx  # whole blocks only: at most f - 1 lines lost
        mask = self.mask if alpha and self.mask is not None and not self.mask.all() else None
        out = np.empty((h, w, 3 if mask is None else 4), np.uint8)
        # bands of block rows, and of block columns for very wide images, of about a quarter megapixel
        band_rows = max(1, (1 << 18) // max(fy * w * fx, 1))
        band_cols = w if band_rows > 1 else max(1, (1 << 18) // (fy * fx))
        for r0 in range(0, h, band_rows):
            r1 = min(r0 + band_rows, h)
            for c0 in range(0, w, band_cols):
                c1 = min(c0 + band_cols, w)
                block = self.image._unit_window(slice(r0 * fy, r1 * fy), slice(c0 * fx, c1 * fx))
                if mask is not None:
                    used = mask[r0 * fy : r1 * fy, c0 * fx : c1 * fx].astype(np.float32)
                    block = block * used[..., None]
                    if fy > 1 or fx > 1:
                        used = used.reshape(r1 - r0, fy, c1 - c0, fx).mean(axis=(1, 3))
                if fy > 1 or fx > 1:
                    block = _block_mean(block, fy, fx)
                if mask is not None:
                    block = block / np.maximum(used, np.float32(1e-6))[..., None]  # mean of the used pixels
                    out[r0:r1, c0:c1, 3] = np.rint(used * np.float32(255.0))
                out[r0:r1, c0:c1, :3] = np.rint(np.clip(block, 0.0, 1.0) * np.float32(255.0))
        return out

    def montage(
        self,
        alpha: float = 0.5,
        cmap: str = "viridis",
        tile_width: int = 256,
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
        tile_height: int | None = None,
    ) -> np.ndarray:
        """Original, overlay, labels, (regions,) uncertainty and every heatmap on one sheet.

        The sheet has a header (image name, size, model, k, features,
        log-likelihood or score, iterations), a colour bar under the
        uncertainty map and under each heatmap, and a legend of the cluster
        colours with each cluster's number and share of the pixels
        (:attr:`shares`). Transparent pixels are drawn on a grey
        checkerboard. Tiles fit a ``tile_width`` x ``tile_height`` box (see
        :func:`segsoft.render.montage`).

        Returns
        -------
        ndarray, uint8 (H, W, 3)

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> sheet = segment(rgb, k=2).montage(tile_width=64)
        >>> sheet.dtype, sheet.shape[1]
        (dtype('uint8'), 360)
        """
        rendered = [
            (name, title, render.shrink(make(), tile_width, tile_height))
            for name, title, make in self.pictures(alpha, cmap, regions, region_threshold)
        ]
        return self.montage_sheet(rendered, cmap=cmap, tile_width=tile_width, tile_height=tile_height)

    def montage_sheet(
        self,
        pictures: Sequence[tuple[str, str, Any]],
        cmap: str = "viridis",
        tile_width: int = 256,
        tile_height: int | None = None,
        columns: int | None = None,
        header: bool = True,
        return_layout: bool = False,
        original: np.ndarray | None = None,
    ) -> Any:
        """The montage of pictures already made: :meth:`pictures`' (file name, title, picture) triples.

        What :meth:`montage` and :func:`segsoft.outputs.write` share: the
        original comes first, the uncertainty and the heatmaps (``prob_j.png``,
        drawn through ``cmap``) get colour bars, each heatmap's title a swatch
        of its cluster's colour, and the legend and header are added. The
        pictures may be shrunk already (:func:`segsoft.render.shrink`), which
        keeps a caller rendering full-size files from holding them all.
        With ``header=False`` the header is left out; with ``return_layout``
        the :class:`~segsoft.render.MontageLayout` is returned too. ``original``
        is the original's tile when already made
        (``self.original(tile_width, tile_height, alpha=True)``).

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> seg = segment(rgb, k=2)
        >>> pics = [(name, title, make()) for name, title, make in seg.pictures()]
        >>> seg.montage_sheet(pics, tile_width=64).shape == seg.montage(tile_width=64).shape
        True
        """
        shares = self.shares
        if original is None:
            original = self.original(tile_width, tile_height, alpha=True)
        tiles = [render.Tile("original", original)]
        for name, title, picture in pictures:
            if name == "uncertainty.png":
                tiles.append(render.Tile(title, picture, colorbar="magma", ticks=_ENTROPY_TICKS))
            elif name.startswith("prob_") and name.endswith(".png"):
                j = int(name[5:-4])
                colour = tuple(int(v) for v in self.colors[j])
                tiles.append(render.Tile(f"{title}  {100.0 * shares[j]:.1f} %", picture, colorbar=cmap, swatch=colour))
            else:
                tiles.append(render.Tile(title, picture))
        title, details = self._header() if header else (None, ())
        return render.montage(
            tiles,
            tile_width=tile_width,
            tile_height=tile_height,
            columns=columns,
            header=title,
            details=details,
            legend=render.legend_entries(self.colors, shares),
            return_layout=return_layout,
        )

    @cached_property
    def shares(self) -> np.ndarray:
        """Each cluster's share of the used pixels: the fraction whose most probable cluster it is, float (k,).

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 6:] = 200
        >>> segment(rgb, k=2).shares.tolist()
        [0.75, 0.25]
        """
        counts = self.label_counts
        return counts / max(int(counts.sum()), 1)

    @cached_property
    def label_counts(self) -> np.ndarray:
        """Used pixels whose most probable cluster is each cluster, int64 (k,)."""
        if self._distinct is not None:  # from each distinct colour's label and pixel count
            counts = np.bincount(self._distinct_labels, weights=self._distinct[2], minlength=self.k)
            return np.rint(counts).astype(np.int64)
        flat = self.labels.reshape(-1)
        counts = np.zeros(self.k + 1, dtype=np.int64)
        step = 1 << 20  # in chunks: no image-sized int64 copy of the labels
        for s in range(0, flat.size, step):
            counts += np.bincount(flat[s : s + step] + 1, minlength=self.k + 1)  # label -1 (masked): bin 0
        return counts[1:]

    @property
    def model_name(self) -> str:
        """The model as the command line names it: ``gmm``, ``soft-kmeans`` or ``fcm``."""
        name = self.settings.get("model")
        if name:
            return str(name)
        return {"GaussianMixture": "gmm", "SoftKMeans": "soft-kmeans", "FuzzyCMeans": "fcm"}.get(
            type(self.model).__name__, type(self.model).__name__
        )

    def _describe(self) -> dict[str, str]:
        """What the header, the HTML summary and the figure say about the run, as label: text."""
        if self._source is not None:
            return self._source._describe()
        img = self.image
        name = "array" if img.path is None else img.path.name
        if img.frame is not None:
            name += f" [frame {img.frame}]"
        size = f"{img.width} x {img.height} px"
        if self.mask is not None and not self.mask.all():
            size += f" ({100.0 * (1.0 - self.n_used / (img.width * img.height)):.1f} % masked out)"
        model = self.model_name
        if model == "gmm":
            model += f", {getattr(self.model, 'covariance', self.settings.get('covariance', 'full'))} covariance"
        elif model == "fcm":
            model += f", m = {getattr(self.model, 'm', self.settings.get('m', 2.0)):g}"
        k = f"{self.k}"
        if self.selection is not None:
            ks = self.selection.get("ks") or [self.k]
            k += f" (by {str(self.selection.get('criterion', 'icl')).upper()} over {ks[0]}..{ks[-1]})"
        spec = self.spec
        if spec.color == "bands":
            names = spec.band_names or tuple(f"b{b}" for b in (spec.bands or ()))
            features = "bands " + ",".join(names) if names else "all bands"
        else:
            features = spec.color
        if spec.spatial_weight:
            features += f" + x, y (weight {spec.spatial_weight:g})"
        smoothing = float(self.settings.get("smoothing") or 0.0)
        if smoothing:
            features += f", smoothing {smoothing:g}"
        score_name = "score" if self.model_name == "fcm" else "mean log-likelihood"
        n_iter = getattr(self.model, "n_iter_", None)
        converged = getattr(self.model, "converged_", None)
        fit = "" if n_iter is None else f"{n_iter} iterations"
        if converged is not None:
            fit += (", " if fit else "") + ("converged" if converged else "not converged")
        out = {"image": name, "size": size, "model": model, "k": k, "features": features}
        shown = self.settings.get("display_bands")
        if shown:  # a false-colour composite: say which bands the pictures show as red, green, blue
            out["display"] = "bands " + ",".join(str(b) for b in shown) + " as RGB"
        out[score_name] = f"{self.log_likelihood:.4f}"
        if fit:
            out["fit"] = fit
        return out

    def _header(self) -> tuple[str, list[str]]:
        d = self._describe()
        score = "score" if "score" in d else "mean log-likelihood"
        details = [d["size"], f"model {d['model']}", f"k = {d['k']}", f"features {d['features']}"]
        if "display" in d:
            details.append(f"display {d['display']}")
        details.append(f"{score} {d[score]}")
        if "fit" in d:
            details.append(d["fit"])
        return d["image"], details

    # ------------------------------------------------------------------ notebooks and figures

    def _preview(self, max_side: int) -> SoftSegmentation:
        """This segmentation on every n-th pixel, at most ``max_side`` pixels a side: cheap pictures of any image.

        Colours, shares and the description stay those of the full segmentation.
        """
        h, w = self.image.height, self.image.width
        sy, sx = -(-h // max_side), -(-w // max_side)
        if sy == 1 and sx == 1:
            return self
        img = self.image
        mask = None if img.mask is None else np.ascontiguousarray(img.mask[::sy, ::sx])
        small = Image(np.ascontiguousarray(img.pixels[::sy, ::sx]), mask, path=img.path, frame=img.frame)
        preview = SoftSegmentation(
            small,
            np.ascontiguousarray(self.probabilities[::sy, ::sx]),
            self.model,
            self.spec,
            self.log_likelihood,
            self.settings,
            self.timings,
            self.selection,
        )
        preview.palette = self.palette
        preview.__dict__["colors"] = self.colors  # the mean palette comes from every pixel, not the sample
        preview.__dict__["shares"] = self.shares
        preview._source = self
        return preview

    def _repr_png_(self) -> bytes:
        """The montage (:meth:`montage`) of a preview, as PNG bytes, for notebooks.

        Drawn from every n-th pixel of at most about 640 pixels a side, with
        160-pixel tiles (120 pixels, six to a row, past k = 12), so it stays
        small and quick for any image size and k.

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> segment(rgb, k=2)._repr_png_()[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
        """
        wide = self.k > 12
        tile = 120 if wide else 160
        preview = self._preview(4 * tile)
        sheet = preview.montage_sheet(
            [(name, title, make()) for name, title, make in preview.pictures()],
            tile_width=tile,
            columns=6 if wide else 4,
        )
        return _png(sheet)

    def _repr_html_(self) -> str:
        """A thumbnail (original, overlay, labels, uncertainty and the legend) and a summary table, for notebooks.

        The thumbnail is an inline base64 PNG (no files, no network) of at
        most 680 pixels wide, drawn from a preview of the image; the table
        lists the image, its size, k, the model, the features, iterations,
        convergence, the mean log-likelihood (score for fuzzy c-means), BIC
        and each cluster's colour and share of the pixels.

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> html = segment(rgb, k=2)._repr_html_()
        >>> html.startswith("<div") and "data:image/png;base64," in html and "<table" in html
        True
        """
        import base64
        import html as _html

        preview = self._preview(4 * _THUMB_TILE)
        keep = {"overlay.png", "labels.png", "uncertainty.png"}
        sheet = preview.montage_sheet(
            [(name, title, make()) for name, title, make in preview.pictures() if name in keep],
            tile_width=_THUMB_TILE,
            header=False,
        )
        png = base64.b64encode(_png(sheet)).decode("ascii")
        d = self._describe()
        rows = [(label, text) for label, text in d.items() if label != "fit"]
        n_iter, converged = getattr(self.model, "n_iter_", None), getattr(self.model, "converged_", None)
        if n_iter is not None:
            rows.append(("iterations", str(n_iter)))
        if converged is not None:
            rows.append(("converged", "yes" if converged else "no"))
        if self.bic is not None:
            rows.append(("BIC", f"{self.bic:.1f}"))
        cell = "padding:1px 8px;text-align:left;vertical-align:top"
        table = "".join(
            f'<tr><th style="{cell}">{_html.escape(label)}</th><td style="{cell}">{_html.escape(text)}</td></tr>'
            for label, text in rows
        )
        swatches = " ".join(
            f'<span style="white-space:nowrap;margin-right:6px">'
            f'<span style="display:inline-block;width:0.9em;height:0.9em;vertical-align:middle;'
            f'border:1px solid #666;background:#{r:02x}{g:02x}{b:02x}"></span> {j}: {100.0 * share:.1f}&nbsp;%</span>'
            for j, ((r, g, b), share) in enumerate(zip(self.colors.tolist(), self.shares.tolist()))
        )
        table += f'<tr><th style="{cell}">cluster shares</th><td style="{cell}">{swatches}</td></tr>'
        return (
            '<div class="segsoft-segmentation">'
            f'<img src="data:image/png;base64,{png}" width="{sheet.shape[1]}" height="{sheet.shape[0]}" '
            f'alt="{_html.escape(d["image"])}: segsoft montage" style="max-width:100%;height:auto">'
            f'<table style="border-collapse:collapse;font-size:90%">{table}</table></div>'
        )

    def plot(
        self,
        fig: Any = None,
        *,
        ax: Any = None,
        alpha: float = 0.5,
        cmap: str = "viridis",
        heatmaps: bool | Sequence[int] = True,
        columns: int = 4,
        max_side: int = 768,
    ) -> Any:
        """A matplotlib figure of the segmentation, with the legend and colour bars, to compose with your own.

        Panels: the original, the soft overlay, the labels, the uncertainty
        (with its colour bar, normalised entropy 0..1) and one heatmap per
        cluster (sharing one membership colour bar, 0..1); the legend gives
        each cluster's colour, number and share of the pixels. Transparent
        pixels are left transparent. Pictures are drawn from every n-th pixel
        (at most ``max_side`` a side), so large images plot quickly.
        Uses :class:`matplotlib.figure.Figure` directly: pyplot's global
        state is never touched, and nothing is shown until you display it.

        Parameters
        ----------
        fig : matplotlib Figure or SubFigure, optional
            Draw into this (e.g. ``fig.subfigures(1, 2)[0]``); default a new
            Figure with a constrained layout, sized for the panels.
        ax : matplotlib Axes, optional
            Draw only the label map, with the legend, into this Axes.
        alpha : float
            The overlay's colour weight (see :meth:`overlay`).
        cmap : str
            The heatmaps' colormap.
        heatmaps : bool or sequence of int
            Which clusters get a heatmap: all (True), none (False), or these.
        columns : int
            Panels per row.
        max_side : int
            Longest side, in pixels, of the pictures drawn.

        Returns
        -------
        matplotlib.figure.Figure (or the SubFigure given, or ``ax.figure``)

        Examples
        --------
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8); rgb[:, 4:] = 200
        >>> fig = segment(rgb, k=2).plot()
        >>> type(fig).__name__, len(fig.legends)
        ('Figure', 1)
        >>> fig.savefig(io.BytesIO(), format="png")  # doctest: +SKIP
        """
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        columns = int(columns)
        if columns < 1:
            raise SegsoftError(f"columns must be at least 1, got {columns}")
        if heatmaps is True:
            js = list(range(self.k))
        elif heatmaps is False:
            js = []
        else:
            js = [int(j) for j in heatmaps]
            bad = [j for j in js if not 0 <= j < self.k]
            if bad:
                raise SegsoftError(f"heatmaps: cluster {bad[0]} out of range: there are {self.k} clusters")
        small = self._preview(max_side)
        entries = render.legend_entries(self.colors, self.shares)
        handles = [Patch(facecolor=np.array(c) / 255.0, edgecolor="0.4", label=label) for label, c in entries]
        legend_title = "cluster  share of the pixels"
        labels_rgba = render.label_indexed(small.labels, colors=self.colors, k=self.k)
        labels_rgba = labels_rgba.to_rgba() if isinstance(labels_rgba, render.IndexedImage) else labels_rgba

        if ax is not None:
            ax.imshow(labels_rgba, interpolation="nearest")
            ax.set_title("labels")
            ax.set_axis_off()
            ax.legend(
                handles=handles,
                title=legend_title,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                ncols=max(1, -(-self.k // 16)),
                fontsize="small",
                frameon=False,
            )
            return ax.figure

        n_panels = 4 + len(js)
        ncols = min(columns, n_panels)
        nrows = -(-n_panels // ncols)
        legend_cols = min(self.k, 8)
        if fig is None:
            aspect = min(max(small.image.height / small.image.width, 0.1), 1.5)  # thin strips stay thin lines
            legend_rows = -(-self.k // legend_cols)
            fig = Figure(
                figsize=(2.8 * ncols, nrows * (2.8 * aspect + 0.9) + 0.6 + 0.22 * legend_rows), layout="constrained"
            )
            FigureCanvasAgg(fig)  # renders off-screen whatever backend matplotlib is configured with
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for a in axes:
            a.set_axis_off()

        def bad_clear(name: str) -> Any:
            return matplotlib.colormaps[name].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # masked: transparent

        unused = None if small.mask is None else ~small.mask
        axes[0].imshow(small.original(alpha=True), interpolation="nearest")
        axes[0].set_title("original")
        axes[1].imshow(render.with_alpha(small.overlay(alpha), small.mask), interpolation="nearest")
        axes[1].set_title("soft overlay")
        axes[2].imshow(labels_rgba, interpolation="nearest")
        axes[2].set_title("labels")
        entropy = np.ma.masked_invalid(small.entropy())
        if unused is not None:
            entropy = np.ma.masked_where(unused, entropy)
        im = axes[3].imshow(entropy, cmap=bad_clear("magma"), vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[3].set_title("uncertainty")
        # an inset under the panel, so the uncertainty map keeps the size of its neighbours
        cax = axes[3].inset_axes((0.0, -0.16, 1.0, 0.06))
        fig.colorbar(im, cax=cax, orientation="horizontal", label="normalised entropy (0 = certain)")
        heat_axes = []
        heat_cmap = bad_clear(cmap)
        for a, j in zip(axes[4:], js):
            plane = np.ma.masked_invalid(small.probabilities[..., j])
            if unused is not None:
                plane = np.ma.masked_where(unused, plane)
            im = a.imshow(plane, cmap=heat_cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            a.set_title(f"cluster {j}", color=np.array(self.colors[j]) / 255.0 * 0.75)  # darkened: legible on white
            heat_axes.append(a)
        if heat_axes:
            fig.colorbar(im, ax=heat_axes, label="membership", shrink=0.8)
        root = fig.figure if hasattr(fig, "figure") and fig.figure is not None else fig
        engine = root.get_layout_engine()
        constrained = engine is not None and type(engine).__name__ == "ConstrainedLayoutEngine"
        fig.legend(
            handles=handles,
            title=legend_title,
            loc="outside lower center" if constrained else "lower center",
            ncols=legend_cols,
            fontsize="small",
            frameon=False,
        )
        return fig

    def save(
        self,
        folder: str | os.PathLike,
        *,
        alpha: float = 0.5,
        cmap: str = "viridis",
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
        probabilities: str = "npy",
        probabilities_dtype: str = "float32",
        palette: str = "categorical",
    ) -> dict[str, Path]:
        """Write every output (pictures, probabilities, model.json) into ``folder``.

        With ``regions`` also ``regions.png`` and ``regions.npy``, cut at
        ``region_threshold`` (see :meth:`regions`). ``probabilities`` is the
        memberships file's format (``npy``, ``tiff`` or ``none``) and
        ``probabilities_dtype`` its type (``float32``, ``float16`` or
        ``uint8``); ``palette`` the cluster colours (``categorical`` or
        ``mean``). Returns the written paths by name. See
        :func:`segsoft.outputs.write`.
        """
        from .outputs import write

        return write(
            self,
            folder,
            alpha=alpha,
            cmap=cmap,
            regions=regions,
            region_threshold=region_threshold,
            probabilities=probabilities,
            probabilities_dtype=probabilities_dtype,
            palette=palette,
        )


_MEAN_STEP = 1 << 18  # rows of memberships per block of :class:`_MeanColours` (and of the memberships file)


class _MeanColours:
    """:attr:`SoftSegmentation.mean_rgb`, summed block by block over the memberships' rows in order.

    Fed the blocks of :meth:`SoftSegmentation._probability_blocks` (``_MEAN_STEP`` rows each),
    by the property itself or by a writer that reads them anyway (``probabilities.npy``), so
    the memberships are gathered once for both. float32 products, float64 totals: accurate
    and fast.
    """

    def __init__(self, seg: SoftSegmentation) -> None:
        rgb8 = seg.image._rgb8_rows()
        self._rgb = seg.image.pixels.reshape(-1, 3) if rgb8 is None else _UnitRows(rgb8)
        self._masked = seg.mask is not None
        self._start = 0
        self._sums = np.zeros((seg.k, 3))
        self._mass = np.zeros(seg.k)

    def add(self, block: np.ndarray) -> None:
        """The next block of memberships, float32 (rows, k)."""
        s, self._start = self._start, self._start + block.shape[0]
        if self._masked:
            block = np.nan_to_num(block, nan=0.0)
        self._sums += block.T @ self._rgb[s : self._start]
        self._mass += block.sum(0, dtype=np.float64)

    def result(self) -> np.ndarray:
        return self._sums / np.maximum(self._mass, 1e-12)[:, None]


_GATHER_PROBABILITIES = threading.Lock()  # the writer's threads may ask for them at once: made once


def _block_mean(block: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """The mean of each ``fy`` x ``fx`` block of a float32 (r * fy, c * fx, 3) array, float32 (r, c, 3).

    The same numbers as ``block.reshape(r, fy, c, fx, 3).mean(axis=(1, 3), dtype=np.float32)``:
    numpy's reduction adds each block's values one after the other in row-major order in
    float32 and then divides by the count (an intp, so in float64, cast back); here the
    same sums are made a block position at a time over every block at once, about 3x
    faster than the strided reduction (tests/test_speed_lazy.py checks them against it).
    """
    r, c = block.shape[0] // fy, block.shape[1] // fx
    v = block.reshape(r, fy, c, fx, block.shape[2])
    acc = v[:, 0, :, 0, :].copy()
    for i in range(fy):
        for j in range(fx):
            if i or j:
                acc += v[:, i, :, j, :]
    np.true_divide(acc, np.intp(fy * fx), out=acc, casting="unsafe")
    return acc


def _get_probabilities(self: SoftSegmentation) -> np.ndarray:
    p = self._probabilities
    if p is None and self._distinct is not None:
        # made once, on first access: the pictures and the memberships file never need it
        with _GATHER_PROBABILITIES:
            p = self._probabilities
            if p is None:
                p = self._probabilities = self._gather_probabilities()
    return p


def _set_probabilities(self: SoftSegmentation, value: np.ndarray | None) -> None:
    self._probabilities = value


# A property over the dataclass field, so that the exact fit's (H, W, k) array is made only when asked for.
SoftSegmentation.probabilities = property(  # type: ignore[assignment]
    _get_probabilities, _set_probabilities, doc="Memberships, float32 (H, W, k); see the class docstring."
)


def make_model(
    model: str = "gmm",
    k: int = 4,
    *,
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int | None = 0,
    reg_covar: float = 1e-6,
    beta: float | None = None,
    m: float = 2.0,
):
    """The unfitted engine object for a model name used on the command line.

    Examples
    --------
    >>> make_model("fcm", 3, m=1.5)  # doctest: +ELLIPSIS
    FuzzyCMeans(n_components=3, m=1.5, ...)
    """
    _check_k_cap(k)
    common = dict(max_iter=max_iter, tol=tol, n_init=n_init, seed=seed, sample_size=int(sample) if sample else None)
    if beta is not None and model != "soft-kmeans":
        raise SegsoftError(f"beta (the stiffness) is a soft-kmeans option, not one of {model}")
    if model == "gmm":
        engine = GaussianMixture(k, covariance=covariance, reg_covar=reg_covar, **common)
    elif model == "soft-kmeans":
        engine = SoftKMeans(k, beta=beta, reg_covar=reg_covar, **common)
    elif model == "fcm":
        engine = FuzzyCMeans(k, m=m, **common)
    else:
        raise SegsoftError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    try:
        engine.check_params()
    except ValueError as exc:
        raise SegsoftError(str(exc)) from None
    return engine


#: The settings of :func:`segment` that :func:`make_model` takes.
_MODEL_SETTINGS = ("covariance", "max_iter", "tol", "n_init", "sample", "seed", "reg_covar", "beta", "m")


def model_factory(model: str, settings: dict[str, Any]) -> Callable[[int], Any]:
    """``n_clusters -> make_model(model, n_clusters, ...)`` with the model options among ``settings``
    (the dict :func:`segment` records): one estimator per k, the same settings."""
    return functools.partial(make_model, model, **{key: settings[key] for key in _MODEL_SETTINGS})


def _check_k(k: Any, k_range: Any, criterion: str, model: str) -> tuple[bool, int, int]:
    """``(auto, k_lo, k_hi)`` for a ``k`` (a whole number, or "auto" over ``k_range``); checked before any
    image is read (a fixed k gives ``k_lo = k_hi = k``)."""
    if isinstance(k, str) and k == "auto":
        k_lo, k_hi = _check_k_range(k_range)
        if criterion not in CRITERIA:
            raise SegsoftError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
        if model == "fcm":
            raise SegsoftError("-k auto needs a likelihood model: use --model gmm or soft-kmeans")
        return True, k_lo, k_hi
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SegsoftError(f"k must be a whole number >= 1 or 'auto', got {k!r}")
    _check_k_cap(k)
    return False, int(k), int(k)


def _check_k_cap(k: Any) -> None:
    """Refuse a whole-number ``k`` above :data:`MAX_K` (other bad values are the engines' to report)."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and k > MAX_K:
        raise SegsoftError(f"k={k} is more than the most clusters segsoft supports ({MAX_K})")


def _region_colors(image: Image) -> np.ndarray:
    """What the region superpixels and boundary contrasts see: the photo itself for colour and grey
    images; for any other band count a fixed view of all the bands (their first three principal
    components, standardised, each stretched between its 2nd and 98th percentile), so that regions,
    like memberships, never depend on --display-bands."""
    if image.is_color or image.is_gray:
        return image.pixels
    bands = image.bands.reshape(-1, image.n_bands).astype(np.float64, copy=False)
    used = bands if image.mask is None else bands[image.mask.ravel()]
    step = max(1, used.shape[0] // 200_000)  # the components from a strided sample: cheap at any size
    sample = used[::step]
    mean, std = sample.mean(0), sample.std(0)
    std[std == 0] = 1.0
    _, _, vt = np.linalg.svd((sample - mean) / std, full_matrices=False)
    comps = vt[:3]
    comps *= np.where(comps.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # a sign convention: same view every run
    view = np.zeros((bands.shape[0], 3), np.float32)
    for a in range(0, bands.shape[0], 1 << 18):
        view[a : a + (1 << 18), : comps.shape[0]] = ((bands[a : a + (1 << 18)] - mean) / std) @ comps.T
    picked = slice(None, None, step) if image.mask is None else np.flatnonzero(image.mask.ravel())[::step]
    lo, hi = np.percentile(view[picked], [2, 98], axis=0)  # the same strided sample: no full-size copy
    span = np.where(hi > lo, hi - lo, 1.0)
    view = np.clip((view - lo) / span, 0.0, 1.0).astype(np.float32)
    return view.reshape(image.height, image.width, 3)


MAX_FULL_FEATURES = 128  # a full covariance on D features costs D(D+1)/2 numbers per cluster and per pixel pass


def _check_full_covariance(name: str, model: str, covariance: str, image: Image, spec: FeatureSpec) -> None:
    """Refuse a full (or tied) covariance on so many features that its D x D matrices and quadratic
    features would take gigabytes and minutes, before the features are made."""
    if model != "gmm" or covariance not in ("full", "tied"):
        return
    if spec.color == "bands":
        d = len(spec.bands) if spec.bands is not None else image.n_bands
    else:
        d = spec.n_color
    d += 2 if spec.spatial_weight > 0 else 0
    if d > MAX_FULL_FEATURES:
        raise SegsoftError(
            f"{name}: {d} features is too many for --covariance {covariance} (a {d}x{d} covariance per cluster; "
            f"at most {MAX_FULL_FEATURES}): use --covariance diag, --model soft-kmeans, or fewer bands with --bands"
        )


def _name(image: Image) -> str:
    return str(image.path) if image.path is not None else "image"


_DISTINCT_SAMPLE = 50_000  # rows of the first, exact look at the colours
_DISTINCT_CHUNK = 1 << 20  # rows per step of the full pass: bounds its temporaries to tens of MB
_DIRECT_MATCH = 8  # up to this many known colours, compare with each directly rather than look up by hash
_GOLDEN64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: odd multiples of it mix a row's words into one key


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """A uint64 hash of each row's float bits: equal rows get equal keys.

    Adding 0.0 turns -0.0 into 0.0 first, so rows equal as numbers hash alike.
    Different rows may (very rarely) collide; callers compare the values.
    """
    words = np.ascontiguousarray(rows + rows.dtype.type(0.0)).view(np.uint32)
    key = np.zeros(words.shape[0], np.uint64)
    for j in range(words.shape[1]):
        word = words[:, j].astype(np.uint64)
        word *= np.uint64(((j + 1) * _GOLDEN64 | 1) % (1 << 64))
        key += word  # uint64 arithmetic wraps: that is the hash
    return key


class _Palette:
    """The distinct rows seen so far, with a sorted hash index to find a row's candidate match."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.keys: np.ndarray | None = None
        if len(rows) > _DIRECT_MATCH:
            keys = _row_keys(rows)
            order = np.argsort(keys, kind="stable")
            self.rows, self.keys = rows[order], keys[order]

    def unseen(self, block: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows of ``block`` equal to none of the known rows."""
        if self.keys is None:
            return self.unseen_among(block, self.rows)
        keys = _row_keys(block)
        at = np.searchsorted(self.keys, keys)
        np.minimum(at, len(self.keys) - 1, out=at)
        # The hash only picks a candidate; the values decide, so a collision cannot hide a colour.
        new = (block != self.rows[at]).any(axis=1)
        clash = new & (self.keys[at] == keys)  # same key, other values: the row may match another known row
        if clash.any():
            idx = np.flatnonzero(clash)
            new[idx] = self.unseen_among(block[idx], self.rows)
        return new

    @staticmethod
    def unseen_among(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows of ``block`` equal to none of ``rows``, comparing with each in turn."""
        new = np.ones(len(block), dtype=bool)
        for row in rows:
            new &= (block != row).any(axis=1)
        return new


def _count_distinct(
    colors: np.ndarray, at_least: int, rows: np.ndarray | None = None, cols: Sequence[int] | None = None
) -> int:
    """Number of distinct rows of ``colors``, exact when it is below ``at_least``.

    Used on the source bands first and, for colour spaces that can merge
    colours, on the features too (with ``color="gray"`` two RGB colours can
    be one grey). Callers only need to know whether there are ``at_least`` distinct rows
    (``at_least`` is a k, so at most :data:`MAX_K`), so once that many are
    found the answer is some number >= ``at_least``. A strided sample settles
    most photographs at once; otherwise one pass over the rows in chunks
    keeps the (fewer than ``at_least``) colours seen so far and looks each
    row up among them: time linear in the pixels, memory a few chunk-sized
    temporaries, never a sort or copy of the whole feature array (an
    81-megapixel constant image used to take minutes and gigabytes here).

    ``rows``, if given, are the indices of the rows to count (the used
    pixels of a masked image) and ``cols`` those of the columns, so that
    neither need be copied out of the image first.

    Examples
    --------
    >>> colors = np.repeat(np.eye(3, dtype=np.float32), 1000, axis=0)
    >>> _count_distinct(colors, 5), _count_distinct(colors, 2) >= 2
    (3, True)
    >>> _count_distinct(colors, 5, rows=np.arange(1000, 3000))
    2
    """
    n = colors.shape[0] if rows is None else rows.size

    def take(at: slice) -> np.ndarray:
        block = colors[at] if rows is None else colors[rows[at]]
        return block if cols is None else block[:, list(cols)]

    sample = take(slice(None, None, max(1, n // _DISTINCT_SAMPLE)))
    found = np.unique(sample, axis=0)
    if len(found) >= at_least or len(sample) == n:
        return len(found)
    known = _Palette(found)
    for start in range(0, n, _DISTINCT_CHUNK):
        block = take(slice(start, start + _DISTINCT_CHUNK))
        new = known.unseen(block)
        if not new.any():
            continue
        rest = block[new]
        added = []
        # Peel off one new colour at a time: each step costs a pass over the remaining new rows,
        # and there are fewer than at_least steps in all, however the colours are spread.
        while len(rest):
            added.append(rest[0])
            if len(found) + len(added) >= at_least:
                return len(found) + len(added)
            rest = rest[1:][(rest[1:] != rest[0]).any(axis=1)]  # rest[1:]: progress even on a NaN row
        found = np.concatenate([found, np.asarray(added, dtype=found.dtype)])
        known = _Palette(found)
    return len(found)


#: Colour spaces whose features can have fewer distinct rows than the RGB they
#: come from; lab, rgb and bands are one-to-one on their source bands.
_MANY_TO_ONE = frozenset({"gray", "hsv"})


def _count_distinct_bands(image: Image, spec: FeatureSpec, at_least: int) -> int | None:
    """:func:`_count_distinct` of the bands the features are made of, over the used pixels.

    Colour spaces read RGB (a grey image's single band stands for its three
    equal channels); ``color="bands"`` reads the chosen bands. No feature is
    computed, and no copy of the image is made. None where :func:`extract`
    will refuse the image or the bands (its message names the problem).
    """
    c = image.n_bands
    flat = image._band_rows()
    cols = None
    if spec.color != "bands":
        if not (image.is_color or image.is_gray):
            return None
    elif spec.bands is not None:
        if not all(0 <= b < c for b in spec.bands):
            return None
        cols = None if tuple(spec.bands) == tuple(range(c)) else tuple(spec.bands)
    args: dict[str, Any] = {} if cols is None else {"cols": cols}
    if image.mask is not None:
        args["rows"] = np.flatnonzero(image.mask.ravel())
    return _count_distinct(flat, at_least, **args)


def _refuse_too_few(name: str, color: str, k: int, distinct: int) -> None:
    """The error for ``k`` clusters among fewer distinct colours, grey levels or band values."""
    if distinct >= k:
        return
    one, many = {"gray": ("grey level", "grey levels"), "bands": ("distinct value", "distinct values")}.get(
        color, ("distinct colour", "distinct colours")
    )
    raise SegsoftError(f"{name}: k={k} is more than the {distinct} {one if distinct == 1 else many} in the image")


def _memberships(image: Image, model: Any, X: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, k) float32 memberships (NaN where masked) and the mean score."""
    h, w, k = image.height, image.width, model.n_components
    if image.mask is None:
        probs = np.empty((h * w, k), dtype=np.float32)
        _, mean = model.predict_proba_and_score(X, out=probs)
        return probs.reshape(h, w, k), mean
    used, mean = model.predict_proba_and_score(X)
    probs = np.full((h * w, k), np.nan, dtype=np.float32)
    probs[image.mask.ravel()] = used
    return probs.reshape(h, w, k), mean


#: Use the exact fit on distinct colours when they are at most this share of the used pixels.
EXACT_DISTINCT_SHARE = 0.25


#: From this many used pixels on, distinct colours are counted in 2^24 bins (fixed 192 MB, linear
#: time) rather than by a sort (about 24 bytes a pixel while it runs, n log n time).
_DISTINCT_BINCOUNT_PIXELS = 1 << 23


_CODE_CHUNK = 1 << 16  # pixels per step of the colour codes: the scratch stays in cache


def _color_codes(image: Image) -> np.ndarray | None:
    """The 24-bit code ``r << 16 | g << 8 | b`` of each used pixel's 8-bit colour, int32, or
    None where a band value is not exactly ``v / 255`` for an integer ``v`` in 0..255.

    The check is element-wise: ``rint(x * 255)`` clipped to 0..255 and divided by 255 in
    float32 (correctly rounded, so exactly :data:`segsoft.io._LUT8`'s value) must give
    ``x`` back; NaN and out-of-range values fail it.
    """
    rows = None if image.mask is None else np.flatnonzero(image.mask.ravel())
    rgb8 = image._rgb8_rows()
    if rgb8 is not None:  # the decoded samples themselves: exact 8-bit values, nothing to check
        n = rgb8.shape[0] if rows is None else rows.size
        codes = np.empty(n, dtype=np.int32)
        # little-endian: a code's four bytes are b, g, r, 0, so the samples are copied into place
        # (a third of the time of widening them to int32 and shifting)
        quad = codes.view(np.uint8).reshape(n, 4) if sys.byteorder == "little" else None
        wide = np.empty((_CODE_CHUNK, 3), dtype=np.int32) if quad is None else None
        for s in range(0, n, _CODE_CHUNK):
            block = rgb8[s : s + _CODE_CHUNK] if rows is None else rgb8[rows[s : s + _CODE_CHUNK]]
            m = block.shape[0]
            if quad is not None:
                q = quad[s : s + m]
                q[:, 0], q[:, 1], q[:, 2], q[:, 3] = block[:, 2], block[:, 1], block[:, 0], 0
                continue
            b = wide[:m]
            np.copyto(b, block)
            _pack_codes(b, codes[s : s + m])
        return codes
    flat = image.bands.reshape(-1, 3)
    n = flat.shape[0] if rows is None else rows.size
    codes = np.empty(n, dtype=np.int32)
    step = _CODE_CHUNK
    scaled = np.empty((step, 3), dtype=np.float32)
    back = np.empty((step, 3), dtype=np.float32)
    byte = np.empty((step, 3), dtype=np.int32)
    same = np.empty((step, 3), dtype=bool)
    for s in range(0, n, step):
        block = flat[s : s + step] if rows is None else flat[rows[s : s + step]]
        m = block.shape[0]
        sc = scaled[:m]
        np.multiply(block, np.float32(255.0), out=sc)
        np.rint(sc, out=sc)
        np.clip(sc, 0.0, 255.0, out=sc)  # NaN stays NaN, and fails the check below
        np.divide(sc, np.float32(255.0), out=back[:m])
        if not np.equal(back[:m], block, out=same[:m]).all():
            return None
        b = byte[:m]
        np.copyto(b, sc, casting="unsafe")
        _pack_codes(b, codes[s : s + m])
    return codes


def _pack_codes(rgb: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = r << 16 | g << 8 | b`` of int32 (m, 3) 8-bit values (``rgb``'s green is shifted in place)."""
    np.left_shift(rgb[:, 0], 16, out=out)
    rgb[:, 1] <<= 8
    out |= rgb[:, 1]
    out |= rgb[:, 2]


def _distinct_colors(
    image: Image, limit: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The distinct colours of an 8-bit RGB image's used pixels, cheaply.

    Returns (the distinct colours, float32 (n_d, 3), exactly as in the bands; counts
    (float64); inverse (int32: the distinct colour of each used pixel)), or None where
    the image is not 8-bit 3-band colour, its bands are not all exact 8-bit values
    ``v / 255``, or it has more than ``limit`` distinct colours (counted on a bitmap of
    the 2^24 codes first, before any sort). Colours are keyed by a 24-bit code (from the
    8-bit samples an image read from a file keeps, see :func:`_color_codes`): a sort of the
    codes below :data:`_DISTINCT_BINCOUNT_PIXELS` used pixels; from there on the bitmap
    gives the colours present, a 2^24 lookup turns the codes into indices in place and a
    bincount of the indices the counts (about 4 bytes a pixel and 80 MB, where the int64
    codes and 2^24 int64 bins took 8 bytes a pixel and 192 MB); the colours come back from
    the codes (no scatter of every pixel's index).
    """
    from .io import _LUT8

    if not image.is_color or image.n_bands != 3 or image.bit_depth != 8:
        return None
    codes = _color_codes(image)
    if codes is None:
        return None  # not exact 8-bit values (e.g. an Image made from floats)
    n = codes.size
    if n < _DISTINCT_BINCOUNT_PIXELS:
        if limit is not None:
            # too many colours to pay is the common case on photos: find out from a 16 MB bitmap
            # before the sort (a sort of every pixel for nothing doubled the features' time)
            seen = np.zeros(1 << 24, dtype=bool)
            seen[codes] = True
            if np.count_nonzero(seen) > limit:
                return None
            del seen
        # a sort: memory in proportion to the image, where the 2^24 lookup would cost more
        # than the per-pixel features the exact fit saves (same colours, order and counts)
        present, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        del codes
        inverse = inverse.astype(np.int32).reshape(-1)
        weights = counts.astype(np.float64)
    else:
        # the codes present, in increasing order, from a 16 MB bitmap (also the count of colours);
        # then each pixel's code becomes its colour's index in place, and the counts come from
        # those indices: no image-sized int64 array, no 2^24 int64 bins
        seen = np.zeros(1 << 24, dtype=bool)
        seen[codes] = True
        present = np.flatnonzero(seen)
        del seen
        if limit is not None and present.size > limit:
            return None
        lookup = np.empty(1 << 24, dtype=np.int32)
        lookup[present] = np.arange(present.size, dtype=np.int32)
        inverse = codes
        counts = np.zeros(present.size, dtype=np.int64)
        step = 1 << 20
        for s in range(0, n, step):
            part = inverse[s : s + step]
            np.take(lookup, part, out=part, mode="clip")  # 24-bit codes: in range; spares a scratch copy
            counts += np.bincount(part, minlength=present.size)
        del lookup
        weights = counts.astype(np.float64)
    colors = np.empty((present.size, 3), dtype=np.float32)
    colors[:, 0] = _LUT8[present >> 16]
    colors[:, 1] = _LUT8[(present >> 8) & 255]
    colors[:, 2] = _LUT8[present & 255]
    return colors, weights, inverse


def _exact_distinct_fit(
    img: Image,
    spec: FeatureSpec,
    fit: Callable[[np.ndarray, np.ndarray, Callable[[np.ndarray | None], np.ndarray]], Any],
    k_min: int,
    stage: Callable[[str], None] = lambda name: None,
    check: Callable[[np.ndarray, FeatureSpec], None] | None = None,
) -> tuple[np.ndarray, float, FeatureSpec, Any, tuple[np.ndarray, ...]] | None:
    """The full-data EM fitted on the distinct colours with their counts as weights.

    Features are computed once per distinct colour (with the standardisation fitted on
    the whole image, as :func:`extract` does), the model is fitted on them weighted by
    the counts (``fit(features, counts, pixel_rows)`` returns the fitted model;
    ``pixel_rows(indices or None)`` gives the features of those used pixels, for the
    criteria of ``k="auto"``), and the memberships are computed once per colour and
    gathered back when asked for (:attr:`SoftSegmentation.probabilities`). Returns (mean
    log-likelihood, fitted spec, estimator, (inverse, memberships, counts and colours of the
    distinct colours)), or None where it does not apply (not 8-bit RGB, fewer distinct colours than ``k_min``,
    or too many to pay).
    """
    from dataclasses import replace

    from .features import _fit_standardization, _resolve

    if not img.is_color or img.n_bands != 3 or img.bit_depth != 8:
        return None
    found = _distinct_colors(img, limit=EXACT_DISTINCT_SHARE * img.n_used)
    if found is None:
        return None
    colors, counts, inverse = found
    n_d = colors.shape[0]
    if n_d < k_min:
        return None
    spec, src, cols = _resolve(img, spec)
    if spec.standardize and spec.offset is None:
        rows = None if img.mask is None else np.flatnonzero(img.mask.ravel())
        spec = _fit_standardization(spec, img, src, cols, rows, img.bit_depth == 8)
    palette = replace(img, pixels=colors[None], bands=None, mask=None)
    Xd = extract(palette, spec)
    if check is not None:  # e.g. grey or hsv features that merge colours: as many distinct rows as k?
        check(Xd, spec)

    def pixel_rows(idx: np.ndarray | None) -> np.ndarray:
        return Xd[inverse] if idx is None else Xd[inverse[idx]]

    estimator = fit(Xd, counts, pixel_rows)
    k = estimator.n_components
    stage("memberships")
    probs_d = np.empty((n_d, k), dtype=np.float32)
    _, mean = estimator.predict_proba_and_score(Xd, out=probs_d, sample_weight=counts)
    # the (H, W, k) memberships are gathered from probs_d when first asked for (SoftSegmentation.probabilities)
    return float(mean), spec, estimator, (inverse, probs_d, counts, colors)


class _TableRows:
    """Memberships (H, W, k) gathered from a per-colour table by each pixel's colour, as they are indexed.

    ``self[rows, cols]`` is ``probabilities[rows, cols]`` (float32): what
    :func:`segsoft.regions._working_copy` reads a tile at a time, so the image-sized array
    is never made.
    """

    def __init__(self, table: np.ndarray, index: np.ndarray) -> None:
        self._table, self._index = table, index
        self.shape = (*index.shape, table.shape[1])
        self.dtype = table.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.take(self._table, self._index[key], axis=0, mode="clip")  # see _gather_rows


def _gather_rows(table: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = table[index]`` in cache-sized chunks (no index copy per chunk).

    ``index`` holds the distinct colours' own indices (0 .. n - 1), so ``mode="clip"`` clips
    nothing; it spares numpy's bounds check and the copy of ``out`` it makes under the
    default mode (a whole chunk's scratch).
    """
    step = 1 << 18
    for s in range(0, index.size, step):
        np.take(table, index[s : s + step], axis=0, out=out[s : s + step], mode="clip")
    return out


def _fit_grid(image: Image, sample: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a strided sub-grid of the used pixels to fit a spatial model on.

    A spatial prior needs pixels on a grid, not a random sample: on a large
    image the model is fitted on every s-th row and column (about ``sample``
    pixels). Returns (row indices, sub-grid mask).
    """
    h, w = image.height, image.width
    n = image.n_used
    stride = 1 if not sample or n <= sample else int(np.ceil(np.sqrt(n / sample)))
    rowid = np.full((h, w), -1, dtype=np.int64)
    if image.mask is None:
        rowid[...] = np.arange(n).reshape(h, w)
    else:
        rowid[image.mask] = np.arange(n)
    sub = rowid[::stride, ::stride]
    return sub[sub >= 0], sub >= 0


FINAL_SWEEPS = 10  # checkerboard sweeps for the memberships of the final model


def _smoothed_memberships(image: Image, model: Any, X: np.ndarray | list, smoothing: float) -> tuple[np.ndarray, float]:
    """Memberships under the spatial prior on the full grid, and the mean
    log-likelihood of the pixels under the fitted mixture.

    ``X`` may come as a one-item list, which is emptied: the features are then freed
    as soon as the log-joint is made (it goes straight onto the grid, chunk by chunk),
    so the image-sized arrays alive at once are the log-joint grid and the memberships.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .mixture import current_threads

    if isinstance(X, list):
        X = X.pop()
    h, w, k = image.height, image.width, model.n_components
    n = X.shape[0]
    step = 1 << 18  # a multiple of the models' chunk_size: the same numbers as one call on all rows

    def chunk_total(block: np.ndarray) -> float:
        """Sum of the log-sum-exp of a chunk's pixels, from its (K, m) transposed log-joint.

        Reduced over axis 0, the K terms of each pixel are combined element-wise in the
        same order as a reduction along each of the (m, K) rows (so the same numbers),
        but in numpy's vector loops: length-K reductions along rows cost 3x more than
        the EM pass that made the log-joint."""
        top = block.max(axis=0)
        e = block - top
        np.exp(e, out=e)
        lse = e.sum(axis=0)
        np.log(lse, out=lse)
        lse += top
        return float(np.sum(lse, dtype=np.float64))

    grid = np.empty((k, h, w), np.float32) if image.mask is None else np.zeros((k, h, w), np.float32)
    flat = grid.reshape(k, h * w)
    used = None if image.mask is None else np.flatnonzero(image.mask.ravel())
    jobs = min(current_threads(), max(1, -(-n // step)))
    pool = ThreadPoolExecutor(jobs) if jobs > 1 else None
    try:
        parts: list[Any] = []
        lj: np.ndarray | None = None
        for a in range(0, n, step):
            block = model.weighted_log_prob(X[a : a + step], out=np.empty((min(step, n - a), k), dtype=np.float32))
            if used is None:
                lj = flat[:, a : a + step]
                lj[...] = block.T
            else:
                lj = np.ascontiguousarray(block.T)
                flat[:, used[a : a + step]] = lj
            # on another core while the next chunk is made (it only reads the chunk's log-joint)
            parts.append(pool.submit(chunk_total, lj) if pool is not None else chunk_total(lj))
        del X, flat, lj  # views of the grid: they would keep it alive
        total = 0.0
        for part in parts:  # in chunk order: the same sum on any number of threads
            total += part.result() if pool is not None else part
    finally:
        if pool is not None:
            pool.shutdown()
    mean = total / max(n, 1)
    # smooth_grid(): the objective (a full pass over the grid) is not needed here
    log_joint = [grid]
    del grid  # smooth_grid frees it before the memberships' rows are made
    c = PottsPrior((h, w), smoothing, image.mask).smooth_grid(log_joint, sweeps=FINAL_SWEEPS)
    if image.mask is None:
        return c.astype(np.float32, copy=False).reshape(h, w, k), mean
    probs = np.full((h * w, k), np.nan, dtype=np.float32)
    probs[image.mask.ravel()] = c
    return probs.reshape(h, w, k), mean


def _check_jobs(n_jobs: Any) -> int:
    """``n_jobs`` resolved: None is the cores this process may use; anything else must be a whole number >= 1."""
    if n_jobs is None:
        return available_cores()
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise SegsoftError(f"n_jobs must be a whole number >= 1 or None, got {n_jobs!r}")
    return int(n_jobs)


def _one_image_threads(fn: Callable) -> Callable:
    """Run ``fn`` (keyword ``n_jobs``) under one BLAS thread, with its chunk passes on ``n_jobs`` threads.

    Every BLAS call of the one-image path (the Lab conversion's product, the EM
    passes, the memberships, the smoothing's E-steps) runs single-threaded:
    OpenBLAS's own threads make those skinny products slower, and on a busy machine
    they spin against the other processes (the 12 MP features took 3.9 s instead of
    0.39 s). The cores go to our own chunk threads on the large element-wise steps
    instead, whose results do not depend on their number.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .mixture import one_blas_thread

        jobs = _check_jobs(kwargs.get("n_jobs"))
        with one_blas_thread(), using_threads(jobs):
            return fn(*args, **kwargs)

    return wrapper


@_one_image_threads
def segment(
    image: str | os.PathLike | np.ndarray | Image,
    k: int = 4,
    *,
    color: str | None = None,
    bands: Sequence[int] | None = None,
    display_bands: Sequence[int] | None = None,
    spatial_weight: float = 0.0,
    smoothing: float = 0.0,
    k_range: tuple[int, int] = (2, 10),
    criterion: str = "icl",
    model: str = "gmm",
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int | None = 0,
    reg_covar: float = 1e-6,
    beta: float | None = None,
    m: float = 2.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    page: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[int, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    n_jobs: int | None = None,
) -> SoftSegmentation:
    """Soft-segment one image into ``k`` clusters.

    Parameters
    ----------
    image : path, array or Image
        A file :func:`~segsoft.io.read_image` reads (any number of bands),
        an (H, W) or (H, W, C) array, or an :class:`Image`.
    k : int or "auto"
        Number of clusters; "auto" picks it in ``k_range`` by ``criterion``.
    k_range : (int, int)
        Smallest and largest k tried by ``k="auto"``.
    criterion : {"icl", "bic"}
        How ``k="auto"`` chooses (lower is better): ICL, which also
        penalises uncertain memberships, or BIC. See :func:`select_k`.
        With ``smoothing``, k is chosen with the plain mixture first.
    color : {"lab", "rgb", "hsv", "gray", "bands"} or None
        Colour space of the features (see :class:`FeatureSpec`). None: "lab"
        for colour (RGB/RGBA) and grey images, as before, and "bands" for
        any other number of bands. Colour spaces need a colour or grey image.
    bands : sequence of int, optional
        With ``color="bands"`` (implied when ``color`` is None): the bands
        to use, 0-based (default all).
    display_bands : sequence of int, optional
        One or three bands for the pictures (see
        :meth:`~segsoft.io.Image.with_display`); the memberships do not
        depend on it.
    spatial_weight : float
        Weight of the x, y position features; 0 leaves them out.
    smoothing : float
        Strength of the spatial prior on the memberships (neighbourhood EM,
        a mean-field Potts model; see :mod:`segsoft.spatial`): the reward in
        log-likelihood units for each of a pixel's 4 neighbours that shares
        its cluster. 0 is the plain mixture; 0.5-2 removes speckle. Needs a
        likelihood model (gmm or soft-kmeans); on images larger than
        ``sample`` pixels the model is fitted on a strided sub-grid.
    model : {"gmm", "soft-kmeans", "fcm"}
        Gaussian mixture, soft k-means or fuzzy c-means.
    covariance : {"full", "diag", "spherical", "tied"}
        Gaussian mixture covariance structure.
    max_iter, tol, n_init, seed, reg_covar
        EM settings, as in :class:`~segsoft.mixture.GaussianMixture`.
    sample : int or None
        Fit on this many random pixels, then polish on all of them; None or 0
        fits on every pixel (the exact full-data EM). Left at the default
        (:data:`DEFAULT_SAMPLE`, 200000), the fit is the exact one on the
        image's distinct colours where that applies (8-bit colour with at most
        a quarter of the pixels distinct, colour-only features, no
        ``smoothing``; ``settings["exact_fit"]`` says so): about as fast as the
        sample there, and the same answer as every pixel. With ``k="auto"``
        each candidate is the exact fit and the criteria are computed on the
        same seeded sample of pixels as before. ``sample=200000`` given on
        purpose always samples.
    beta : float or None
        Soft k-means stiffness (None learns it).
    m : float
        Fuzzy c-means fuzzifier.
    max_pixels : int
        Refuse larger images (decompression-bomb guard).
    page : int or None
        The page or frame of a multi-frame file (a file with several is an
        error without it).
    scheduler : str or None
        Run the features, the fit and the memberships chunk by chunk on Dask
        (the ``dask`` extra): ``"local"`` (a LocalCluster on this machine),
        ``"threads"`` or a scheduler address; same numbers as in memory.
    progress : callable(iteration, log_likelihood), optional
        Called after every EM iteration with the iteration number (counted
        on across the sample fit and the polish on all pixels) and the mean
        log-likelihood per pixel (fuzzy c-means: its score, -J).
    on_stage : callable(name), optional
        Called as each stage begins, with a short name: ``"reading"``,
        ``"features"``, ``"fitting"`` (``"fitting k=3 (2 of 9)"`` for each
        candidate of ``k="auto"``) and ``"memberships"``. With ``progress``,
        enough for a status line (``segsoft run`` draws one on a terminal);
        the library itself never prints.
    n_jobs : int or None
        Threads for the image-sized element-wise steps: the features, the
        smoothing sweeps and the smoothed log-likelihood (see
        :func:`segsoft.mixture.using_threads`). None: the cores this process may
        run on (its affinity mask). BLAS runs on one thread throughout, and the
        EM passes on the model's own ``n_jobs`` (1). The results are
        bit-identical for every value; batch workers pass 1 (one process per
        core already).

    Returns
    -------
    SoftSegmentation

    Examples
    --------
    >>> import segsoft
    >>> seg = segsoft.segment("images/coffee.jpg", k=3, seed=0)  # doctest: +SKIP
    >>> stages = []
    >>> seg = segsoft.segment(np.eye(8), k=2, on_stage=stages.append)
    >>> stages
    ['reading', 'features', 'fitting', 'memberships']
    >>> seg.probabilities.sum(-1).round(4).min()  # doctest: +SKIP
    1.0
    >>> seg.save("outputs/coffee")  # doctest: +SKIP
    """
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    bands = None if bands is None else tuple(int(b) for b in bands)
    display_bands = None if display_bands is None else tuple(int(b) for b in display_bands)
    if color is not None and color != "bands" and bands is not None:
        raise SegsoftError(f"--bands needs --color bands (--color {color} makes its own channels)")
    settings = dict(
        k=k,
        model=model,
        covariance=covariance,
        color=color,
        bands=None if bands is None else list(bands),
        display_bands=None if display_bands is None else list(display_bands),
        spatial_weight=spatial_weight,
        smoothing=smoothing,
        max_iter=max_iter,
        tol=tol,
        n_init=n_init,
        sample=sample,
        seed=seed,
        reg_covar=reg_covar,
        beta=beta,
        m=m,
    )
    auto, k_lo, k_hi = _check_k(k, k_range, criterion, model)  # before reading the image
    # left at the default: the exact fit where it applies, not what a typed --sample 200000 gives
    settings["sample_default"] = is_default_sample(sample)
    if auto:
        settings.update(k_range=[k_lo, k_hi], criterion=criterion)
    if not (smoothing >= 0 and np.isfinite(smoothing)):
        raise SegsoftError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    if smoothing > 0 and model == "fcm":
        raise SegsoftError("smoothing needs a likelihood model: use --model gmm or soft-kmeans")
    if color is not None:
        FeatureSpec(color=color, spatial_weight=float(spatial_weight), bands=bands)  # check before reading

    new_model = model_factory(model, settings)
    new_model(1)  # make_model checks the options: fail before the slow work
    if isinstance(image, (str, os.PathLike)) and scheduler is None:
        from .budget import check_fits

        check_fits(image, k, smoothing > 0)  # from the header: refused before memory runs out, not killed
    stage("reading")
    img = as_image(image, max_pixels=max_pixels, page=page)
    if display_bands is not None:
        img = img.with_display(display_bands)
    name = _name(img)
    if color is None:
        # grey stays on lab (three equal channels) so existing grey results do not change
        color = "lab" if (img.is_color or img.is_gray) and bands is None else "bands"
    spec = FeatureSpec(color=color, spatial_weight=float(spatial_weight), bands=bands)
    settings["color"] = color
    t_read = time.perf_counter()
    k_min = k_lo if auto else k
    if img.n_used < k_min:
        raise SegsoftError(f"{name}: k={k_min} is more than the {img.n_used} usable pixels")
    check_distinct = spatial_weight == 0 and (auto or k > 1)
    stage("features")  # the distinct-colour count below is the first look at the pixels' values
    if check_distinct:
        # On the source bands, before the features: a constant 36 MP photo used to spend
        # ~20 s in the Lab conversion only to be refused here. The features of every
        # colour space are a function of the bands, so they have at most as many
        # distinct rows, and fewer bands than k is already the error.
        distinct = _count_distinct_bands(img, spec, k_hi if auto else k)
        if distinct is not None:
            _refuse_too_few(name, color, k_min, distinct)
            if auto:
                k_hi = min(k_hi, distinct)
    if scheduler is not None:
        if auto:
            raise SegsoftError(
                "-k auto with --scheduler works out of core only (a TIFF or zarr store over --max-pixels): "
                "give k, or run without --scheduler"
            )
        from .cluster.em import segment_image

        t_feat = time.perf_counter()
        stage("fitting")  # features, fit and memberships run together, tile by tile
        try:
            probs, mean, spec, estimator = segment_image(
                img, spec, new_model(k), scheduler, progress=progress, smoothing=smoothing
            )
        except ValueError as exc:
            raise SegsoftError(f"{name}: {exc}") from exc
        t_pred = time.perf_counter()
        timings = {"read": t_read - t0, "features": 0.0, "fit": t_pred - t_feat, "memberships": 0.0, "total": t_pred - t0}
        return SoftSegmentation(img, probs, estimator, spec, float(mean), settings, timings, None)
    _check_full_covariance(name, model, covariance, img, spec)
    def check(X: np.ndarray, fitted: FeatureSpec) -> None:
        """Grey and hsv can merge colours (two colours of one luminance, every hue of a grey):
        count the features' distinct colour rows too, on either path."""
        nonlocal k_hi
        if check_distinct and color in _MANY_TO_ONE:
            distinct = _count_distinct(X[:, : fitted.n_color], k_hi if auto else k)
            _refuse_too_few(name, color, k_min, distinct)
            if auto:
                k_hi = min(k_hi, distinct)

    if smoothing == 0 and spatial_weight == 0 and (auto or k > 1) and (not sample or is_default_sample(sample)):
        # colour-only features of a photo with few distinct colours: the full-data EM on
        # each distinct colour weighted by its count is the EM on every pixel, far cheaper
        # (and cheaper than a sample's fit and polish, so the default where it applies)
        t_feat = time.perf_counter()
        exact_model = model_factory(model, {**settings, "sample": None})
        selection = None

        def fit(Xd: np.ndarray, counts: np.ndarray, pixel_rows: Callable[[np.ndarray | None], np.ndarray]) -> Any:
            nonlocal selection
            if not auto:
                stage("fitting")
                return exact_model(k).fit(Xd, progress=progress, sample_weight=counts)
            # every candidate the exact fit; the criteria on the same pixels as the per-pixel
            # path (a seeded sample of ``sample`` of them, or all), so the same choice rule
            chosen, selection = select_k(
                None,
                range(k_lo, k_hi + 1),
                exact_model,
                criterion,
                seed=seed,
                sample=sample,
                progress=progress,
                on_stage=on_stage,
                n_rows=img.n_used,
                fit=lambda est, prog: est.fit(Xd, progress=prog, sample_weight=counts),
                take_rows=pixel_rows,
            )
            return chosen

        try:
            exact = _exact_distinct_fit(img, spec, fit, k_min, stage, check)
        except ValueError as exc:
            raise SegsoftError(f"{name}: {exc}") from exc
        if exact is not None:
            mean, spec, estimator, distinct_rows = exact
            # "sample" stays as given (what --skip-existing compares); this says what was done
            settings["exact_fit"] = {"rows": "distinct colours", "distinct": int(distinct_rows[1].shape[0])}
            t_pred = time.perf_counter()
            timings = {
                "read": t_read - t0,
                "features": 0.0,
                "fit": t_pred - t_feat,
                "memberships": 0.0,
                "total": t_pred - t0,
            }
            # the (H, W, k) memberships are gathered from the colours' on first access
            seg = SoftSegmentation(img, None, estimator, spec, mean, settings, timings, selection)
            seg._distinct = distinct_rows
            return seg
    X, spec = extract(img, spec, return_spec=True)
    t_feat = time.perf_counter()
    check(X, spec)
    selection = None
    try:
        if auto:
            estimator, selection = select_k(
                X,
                range(k_lo, k_hi + 1),
                new_model,
                criterion,
                seed=seed,
                sample=sample,
                progress=progress,
                on_stage=on_stage,
            )
            k = estimator.n_components
        if smoothing > 0:
            # with k chosen by the plain mixture, start the smoothed fit from its means
            start = estimator.means_ if auto else None
            estimator = new_model(k)
            rows, grid_mask = _fit_grid(img, sample)
            prior = PottsPrior(grid_mask.shape, smoothing, grid_mask)
            stage("fitting")
            estimator.fit(X[rows], means_init=start, progress=progress, prior=prior)
        elif not auto:
            stage("fitting")
            estimator = new_model(k).fit(X, progress=progress)
    except ValueError as exc:
        raise SegsoftError(f"{name}: {exc}") from exc
    t_fit = time.perf_counter()
    stage("memberships")
    if smoothing > 0:
        features = [X]
        del X  # freed inside once the log-joint is made
        probs, mean = _smoothed_memberships(img, estimator, features, smoothing)
    else:
        probs, mean = _memberships(img, estimator, X)
    t_pred = time.perf_counter()
    timings = {
        "read": t_read - t0,
        "features": t_feat - t_read,
        "fit": t_fit - t_feat,
        "memberships": t_pred - t_fit,
        "total": t_pred - t0,
    }
    return SoftSegmentation(img, probs, estimator, spec, float(mean), settings, timings, selection)


CRITERIA = ("icl", "bic")
MAX_AUTO_K = MAX_K  # the old name of the cap on --k-range, kept for callers


def _check_k_range(k_range: Any) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in k_range)
    except (TypeError, ValueError):
        raise SegsoftError(f"k range must be two whole numbers like (2, 10), got {k_range!r}") from None
    if not 1 <= lo <= hi:
        raise SegsoftError(f"k range must satisfy 1 <= low <= high, got {lo}..{hi}")
    if hi > MAX_K:
        raise SegsoftError(f"k range goes up to {MAX_K} (the most clusters segsoft supports), got {lo}..{hi}")
    return lo, hi


def select_k(
    X: np.ndarray,
    ks: Any,
    new_model: Callable[[int], Any],
    criterion: str = "icl",
    *,
    seed: int | None = 0,
    sample: int | None = DEFAULT_SAMPLE,
    progress: Callable[[int, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    n_rows: int | None = None,
    fit: Callable[[Any, Any], Any] | None = None,
    take_rows: Callable[[np.ndarray | None], np.ndarray] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit one model per k and keep the one with the lowest BIC or ICL.

    ``BIC = -2 log L + p log n``; ``ICL = BIC + 2 E`` where
    ``E = -sum_i sum_k t_ik log t_ik`` is the entropy of the memberships
    (Biernacki, Celeux & Govaert 2000), so ICL also penalises clusters that
    overlap. Both are computed on the same rows for every k: all of them, or
    a seeded random ``sample`` of them on large inputs.

    ``progress`` is handed to each fit; ``on_stage`` hears
    ``"fitting k=3 (2 of 9)"`` as each candidate's fit begins.

    Data that are not in memory (``segsoft.cluster``) come through callbacks
    instead of ``X`` (None): ``n_rows``, ``fit(model, progress)`` fitting a
    model on all of them, and ``take_rows(indices or None)`` giving the rows
    the criteria are computed on. The choice is then the in-memory one.

    Returns
    -------
    model : the fitted model with the chosen k
    selection : dict
        ``criterion``, ``k`` (the chosen one) and, per candidate, lists
        ``ks``, ``bic``, ``icl``, ``log_likelihood`` (mean per row).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(m, 0.3, (300, 2)) for m in (0, 3, 6)])
    >>> model, sel = select_k(X, range(1, 6), lambda k: GaussianMixture(k))
    >>> sel["k"]
    3
    """
    n = X.shape[0] if n_rows is None else int(n_rows)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False)) if sample and n > sample else None
    if take_rows is not None:
        rows = take_rows(idx)
    else:
        rows = X if idx is None else X[idx]
    curve: dict[str, Any] = {"ks": [], "bic": [], "icl": [], "log_likelihood": []}
    best = None
    ks = list(ks)
    for i, k in enumerate(ks):
        if on_stage is not None:
            on_stage(f"fitting k={k} ({i + 1} of {len(ks)})")
        model = new_model(k).fit(X, progress=progress) if fit is None else fit(new_model(k), progress)
        resp, mean = model.predict_proba_and_score(rows)
        m = rows.shape[0]
        bic = -2.0 * mean * m + model.n_parameters() * np.log(m)
        safe = np.where(resp > 0, resp, 1.0)
        icl = bic - 2.0 * float(np.sum(resp * np.log(safe), dtype=np.float64))
        curve["ks"].append(int(k))
        curve["bic"].append(float(bic))
        curve["icl"].append(float(icl))
        curve["log_likelihood"].append(float(mean))
        score = icl if criterion == "icl" else bic
        if best is None or score < best[0]:
            best = (score, model)
    if best is None:
        raise SegsoftError("the k range is empty")
    curve.update(criterion=criterion, k=int(best[1].n_components))
    return best[1], curve


@_one_image_threads
def apply_model(
    image: str | os.PathLike | np.ndarray | Image,
    model: Any,
    spec: FeatureSpec,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    settings: dict[str, Any] | None = None,
    smoothing: float | None = None,
    n_jobs: int | None = None,
) -> SoftSegmentation:
    """Memberships of a new image under an already fitted model.

    The image goes through the same fitted feature transform ``spec``, so
    cluster numbers and colours mean the same as for the image the model
    was fitted on. ``smoothing`` (default: the ``smoothing`` in
    ``settings``, as stored in ``model.json``, else 0) applies the spatial
    prior to the memberships as :func:`segment` does, so applying a model to
    the image it was fitted on reproduces that image's memberships.
    ``n_jobs`` as in :func:`segment`.

    Examples
    --------
    >>> seg = segment("images/coffee.jpg", k=3)  # doctest: +SKIP
    >>> other = apply_model("images/chelsea.jpg", seg.model, seg.spec)  # doctest: +SKIP
    """
    if not spec.fitted:
        raise SegsoftError("the feature spec must be fitted (as stored in model.json) to apply a model")
    t0 = time.perf_counter()
    img = as_image(image, max_pixels=max_pixels)
    t_read = time.perf_counter()
    X = extract(img, spec)  # the spec names its colour space or bands: a mismatch is an error there
    t_feat = time.perf_counter()
    if smoothing is None:
        smoothing = float((settings or {}).get("smoothing") or 0.0)
    if smoothing > 0 and hasattr(model, "weighted_log_prob"):
        features = [X]
        del X
        probs, mean = _smoothed_memberships(img, model, features, smoothing)
    else:
        smoothing = 0.0
        probs, mean = _memberships(img, model, X)
    t_pred = time.perf_counter()
    timings = {
        "read": t_read - t0,
        "features": t_feat - t_read,
        "fit": 0.0,
        "memberships": t_pred - t_feat,
        "total": t_pred - t0,
    }
    return SoftSegmentation(img, probs, model, spec, float(mean), {**(settings or {}), "smoothing": smoothing}, timings)
