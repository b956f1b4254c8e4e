"""Regions: hard, connected segments built from soft memberships.

A cluster label covers every pixel of a colour, wherever it is; people
outline *regions*: connected parts of the image separated by visible
boundaries. This module turns memberships into regions in two ways.

:func:`merge_regions` (what :meth:`SoftSegmentation.regions` uses) is a
boundary-aware agglomeration:

1. The image is cut into superpixels of about ``superpixel_size`` pixels
   (SLIC, :func:`skimage.segmentation.slic`), small enough to follow every
   boundary; stray SLIC fragments join the neighbour closest in colour.
2. Each superpixel is described by its *mean membership vector*: a soft
   histogram of the mixture components inside it. Textured surfaces (grass,
   fur, brickwork) mix several components in stable proportions, so their
   superpixels look alike even though their pixels do not.
3. Neighbouring regions are merged greedily, cheapest first. The cost of
   merging ``a`` and ``b`` (``cost="learned"``, the default) is a logistic
   model of "the humans draw ``a`` and ``b`` in different segments", fitted
   on BSDS500 train ("learning to agglomerate";
   ``benchmarks/fit_merge_cost.py``), on seven cheap cues that are kept up to
   date as regions grow (:data:`LEARNED_WEIGHTS`): the membership distance
   ``1 - BC(p_a, p_b)`` (``BC``: the Bhattacharyya coefficient of the two mean
   membership vectors; 0 for the same mixture, 1 for disjoint ones); the mean
   colour contrast ``g_ab`` along the shared boundary (the Sobel gradient
   magnitude of the slightly blurred Lab image, in units of
   :data:`CONTRAST_UNIT`); a texture distance ``D_ab``, the total variation
   distance (0 to 1) of the two regions' histograms of gradient orientation
   (8 bins over 0-180 degrees of the blurred lightness, weighted by gradient
   magnitude: a striped coat against brush of the same colour has a
   different grain); the distance of the mean Lab colours; the two sizes as
   shares of the ``N`` used pixels; and the shared boundary's length against
   the smaller side's size. The cost is the model's probability of
   "different" with its log-odds moved by :data:`LEARNED_SHIFT`, so that the
   cut chosen on train falls at :data:`MERGE_THRESHOLD` (0.15); it lies in
   (0, 1). The fitted weights make every cue of difference raise the cost
   (membership distance most, then contrast and grain) and larger regions
   harder to merge, so specks and slivers go first.

   ``cost="contrast"`` is the earlier rule, a product of hand-set factors::

       sqrt(n_a n_b / (n_a + n_b) / N)  *  (1 - BC(p_a, p_b) exp(-w D_ab))  *  (floor + g_ab)

   where ``w`` is ``texture`` (default 0: colour only), ``floor``
   (:data:`CONTRAST_FLOOR`) keeps two different regions apart even across a
   soft boundary and the size factor (half the harmonic mean of the two
   sizes, as a share of ``N``) lets specks merge early.
4. Merging stops when the cheapest merge costs more than ``threshold``.

The merge order does not depend on the threshold, so :class:`RegionHierarchy`
keeps the whole sequence and gives the regions at any threshold without
redoing the work. Images over :data:`WORK_PIXELS` are merged on a
block-averaged copy of about that size (the settings are in pixels, so this
keeps the result the same at any resolution) and the region map is scaled
back up, so boundaries are placed to within a block (``factor`` pixels).
Cut by transparency there, a region's pieces of a block or more become
regions of their own; smaller crumbs keep its id (so only they can leave a
region disconnected).

:meth:`RegionHierarchy.ucm` gives the whole hierarchy as an ultrametric
contour map: each boundary between two pixels holds the level (running
maximum of the merge costs) at which their regions merge, in BSDS500's
``ucm2`` layout, so any cut is one comparison (:mod:`segsoft.boundaries`
draws it as ``boundaries.png``).

:func:`connected_regions` is the simpler alternative: the 4-connected patches
of a hard label map, specks merged into a neighbour.

Quality (``benchmarks/bench_quality.py``, ``k=12`` memberships, one cut for
every image): with ``threshold=0.15`` the learned cost scores PRI 0.841,
VoI 1.410 bits, Covering 0.648 (pooled), 10.0 regions a picture on BSDS500
train (where it was fitted and cut) and PRI 0.814, VoI 1.544, Covering
0.614, 9.5 regions on val; the earlier ``cost="contrast"`` at 0.15, from the
same memberships, PRI 0.819, VoI 1.550, Covering 0.620 on train and PRI
0.794, VoI 1.689, Covering 0.588 on val. gPb-owt-ucm's val ODS (its best cut
for each measure on its own): PRI 0.807, VoI 1.655, Covering 0.587. The
earlier cost's texture cue (``texture=1``, ``threshold=0.175``, chosen on
train) scored PRI 0.840, VoI 1.498, Covering 0.639 on train but PRI 0.804,
VoI 1.688, Covering 0.590 on val.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MERGE_COSTS",
    "MERGE_THRESHOLD",
    "SUPERPIXEL_SIZE",
    "RegionHierarchy",
    "check_regions_flag",
    "check_threshold",
    "connected_regions",
    "merge_regions",
    "region_hierarchy",
]

MERGE_THRESHOLD = 0.15  # default cost at which merging stops
#: The merge costs :func:`region_hierarchy` knows: "learned" (the default) and "contrast" (the earlier rule).
MERGE_COSTS = ("learned", "contrast")
# The learned merge cost (cost="learned"): a logistic model of "the humans put both sides in different segments",
# fitted on BSDS500 train by the procedure of benchmarks/fit_merge_cost.py (which prints these lines): every pair
# priced while agglomerating the 100 train images of even index (k=12 memberships, seed 0), first with the
# "contrast" cost and then with a first fit of this one, at most 2000 pairs an image and round, each labelled by the
# chance that a pixel of one side and a pixel of the other fall in the same human segment (averaged over the
# humans); the cut was chosen on the other 100 train images (best PRI at P(different) = 0.575, of 0.45 to 0.65 by
# 0.025). These are the lines `python benchmarks/fit_merge_cost.py --jobs 1` printed (574 s for the cut). The
# features, in this order:
#   log(1 - BC)              membership distance (Bhattacharyya coefficient of the mean membership vectors)
#   log(floor + contrast)    mean colour contrast along the shared boundary (floor: CONTRAST_FLOOR)
#   texture                  total variation distance of the gradient-orientation histograms (0 to 1)
#   log(1 + Delta E)         distance of the mean Lab colours
#   log(smaller share)       the smaller side's share of the used pixels
#   log(larger share)        the larger side's share
#   log(length / sqrt(smaller pixels))  the shared boundary against the smaller side's size
LEARNED_WEIGHTS = (0.6876, 0.9257, 1.9293, -0.2742, 0.3523, 0.1348, -0.2249)
LEARNED_BIAS = 2.2248
# Added to the model's log-odds so that the cut chosen on BSDS500 train (where it scores best, by the same script)
# falls at MERGE_THRESHOLD: the cost is sigmoid(log-odds + LEARNED_SHIFT), so a cut at t is the model's probability
# sigmoid(logit(t) - LEARNED_SHIFT) of the two sides being different.
LEARNED_SHIFT = -2.0369
ORIENTATION_BINS = 8  # gradient orientation histogram bins over 0-180 degrees
# Sobel magnitude per pixel spread evenly over the bins of every histogram: a superpixel without gradients (a flat
# surface) gets a uniform histogram instead of none, and faint noise leans towards it, while real texture (tens of
# units) keeps its shape. 0, 0.5, 3, 6, 10 and 20 were tried on BSDS500 train: 0.5 scored best.
ORIENTATION_PRIOR = 0.5
SUPERPIXEL_SIZE = 150  # pixels per superpixel (about 12 x 12)
# The settings here are in pixels and were chosen on 0.15 MP photos (BSDS500): larger images are merged
# on a block-averaged copy of about this size, so regions come out alike at any resolution.
WORK_PIXELS = 160_000
CONTRAST_UNIT = 20.0  # Sobel magnitude of blurred Lab (8x the gradient in Delta E per pixel) counted as 1
CONTRAST_FLOOR = 0.05  # contrast added to every boundary, so smooth ramps between different regions still count
_BLUR = 1.0  # Gaussian sigma (pixels) before the Sobel filter: denoises without moving edges
_COMPACTNESS = 10.0  # SLIC's balance of colour against position (its default for Lab)
_FRAGMENT = 0.25  # superpixel pieces under this share of SUPERPIXEL_SIZE join a neighbour
_TILE_PIXELS = 1 << 18  # input pixels block-averaged per step (a quarter megapixel)


@dataclass(frozen=True, eq=False)
class RegionHierarchy:
    """Superpixels and the full greedy merge sequence over them.

    Made by :func:`region_hierarchy`; :meth:`labels` cuts it at a threshold.

    Attributes
    ----------
    superpixels : ndarray of int32 (h, w)
        Superpixel ids at the working resolution; -1 on unused pixels.
    merges : ndarray of float64 (m, 3)
        Rows ``(a, b, cost)`` in the order the merges happen: superpixel
        groups rooted at ``b`` join those rooted at ``a``.
    shape : tuple of int
        The (H, W) of the full-resolution image.
    mask : ndarray of bool (H, W) or None
        Used pixels at full resolution (None: all).
    factor : int
        Block size of the working copy (1: full resolution).
    """

    superpixels: np.ndarray
    merges: np.ndarray
    shape: tuple[int, int]
    mask: np.ndarray | None = None
    factor: int = 1

    @property
    def n_superpixels(self) -> int:
        return int(self.superpixels.max()) + 1

    def n_regions(self, threshold: float = MERGE_THRESHOLD) -> int:
        """How many regions :meth:`labels` gives at ``threshold``."""
        if self.factor > 1 and self.mask is not None:  # the mask can split regions when scaled back up
            return int(self.labels(threshold).max()) + 1
        return self.n_superpixels - self._n_merges(threshold)

    def _n_merges(self, threshold: float) -> int:
        threshold = check_threshold(threshold)
        over = np.flatnonzero(self.merges[:, 2] > threshold)
        return int(over[0]) if over.size else len(self.merges)

    def labels(self, threshold: float = MERGE_THRESHOLD) -> np.ndarray:
        """Region map at ``threshold``: int32 (H, W), ids 0..n-1, -1 on unused pixels.

        Merging stops at the first merge costing more than ``threshold``;
        0 gives the superpixels themselves.
        """
        n = self.n_superpixels
        if n == 0:  # nothing used
            return np.full(self.shape, -1, dtype=np.int32)
        parent = np.arange(n)
        done = self.merges[: self._n_merges(threshold)].astype(np.int64)
        parent[done[:, 1]] = done[:, 0]  # each superpixel is absorbed at most once, so order does not matter
        for _ in range(n):  # point every superpixel at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        _, ids = np.unique(parent, return_inverse=True)
        small = np.where(self.superpixels >= 0, ids[np.maximum(self.superpixels, 0)], -1).astype(np.int32)
        return _upscale(small, self.factor, self.shape, self.mask)

    @property
    def levels(self) -> np.ndarray:
        """Level of each merge: float64 (m,), the running maximum of the merge costs.

        A greedy merge can cost less than the one before it (a merged region
        can be closer to its neighbours than its parts were); :meth:`labels`
        stops at the first merge over the threshold, so merge ``i`` happens
        at every threshold >= ``levels[i]``. These are the levels of the
        ultrametric contour map (:meth:`ucm`).
        """
        return np.maximum.accumulate(self.merges[:, 2]) if len(self.merges) else np.empty(0)

    def ucm(self, bsds: bool = True) -> np.ndarray:
        """The hierarchy as an ultrametric contour map: each boundary's merge level.

        A boundary between two neighbouring pixels holds the level
        (:attr:`levels`) at which their regions merge; inside a superpixel it
        is 0. Cutting the map at ``t`` is one comparison: the regions of
        :meth:`labels` ``(t)`` are the connected parts where the boundaries
        are ``<= t``. Boundaries between used and unused pixels are
        ``inf`` (they never merge; those inside the unused pixels are 0), so
        with transparency a cut also holds the unused pixels as regions of
        their own, and it keeps crumbs that :meth:`labels` leaves with their
        region (a block-averaged image's pieces under a block) apart.

        Parameters
        ----------
        bsds : bool
            True: the BSDS500 ``ucm2`` layout, float32 ``(2H+1, 2W+1)``,
            which the BSDS boundary and region benchmarks read: pixel ``(r,
            c)`` is at ``[2r+1, 2c+1]`` (always 0), the boundary between it
            and its right neighbour at ``[2r+1, 2c+2]``, the one below at
            ``[2r+2, 2c+1]``, each corner ``[2r+2, 2c+2]`` holds the largest
            of its four boundaries, the outer frame is 0. The benchmark cuts it
            as the 8-connected components of ``ucm2 <= t`` and keeps
            ``[1::2, 1::2]``. False: float32 ``(H, W)``, ``ucm2[2::2, 2::2]``,
            a thin boundary map (the one the boundary benchmark thresholds),
            each pixel the largest level at its lower right corner.

        Returns
        -------
        ndarray of float32

        Examples
        --------
        >>> rgb = np.zeros((30, 30, 3)); rgb[:, 15:] = 1.0
        >>> p = np.stack([rgb[..., 0] < 0.5, rgb[..., 0] >= 0.5], -1).astype(float)
        >>> h = region_hierarchy(rgb, p, superpixel_size=50)
        >>> u = h.ucm()
        >>> u.shape, float(u[1::2, 1::2].max())
        ((61, 61), 0.0)
        >>> from scipy import ndimage
        >>> t = float(h.levels[-1]) * 0.99  # just below the last merge: two regions
        >>> ndimage.label(u <= t, np.ones((3, 3)))[1], h.n_regions(t)
        (2, 2)
        """
        H, W = self.shape
        ucm2 = np.empty((2 * H + 1, 2 * W + 1), np.float32) if bsds else None
        thin = None if bsds else np.empty((H, W), np.float32)
        for r0, band in self._ucm_bands():
            r1 = r0 + band.shape[0] // 2
            if ucm2 is None:
                thin[r0:r1] = band[1::2, 2::2]
                continue
            if r0 == 0:
                ucm2[0] = band[0]
            ucm2[2 * r0 + 1 : 2 * r1 + 1] = band
        return ucm2 if bsds else thin

    def _ucm_bands(self, rows: int = 32) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`ucm`'s ``ucm2`` a band at a time: ``(r0, ucm2[2 * r0 + 1 : 2 * r1 + 1])`` for pixel rows r0..r1-1.

        Each band (float32, two rows per pixel row, in one buffer reused for the next band)
        holds the rows through its pixels and the rows below them; the top frame row
        ``ucm2[0]`` is a copy of the first band's first row. So ``ucm.npy`` and
        ``boundaries.png`` are written without the image-sized map (four times the pixels)
        or the full-size boundary levels (:meth:`_full_edge_levels`).
        """
        H, W = self.shape
        buf = np.empty((min(rows, H), 2, 2 * W + 1), np.float32)
        if self.n_superpixels == 0:  # nothing used: no boundary anywhere
            buf.fill(0.0)
            for r0 in range(0, H, rows):
                yield r0, buf[: min(rows, H - r0)].reshape(-1, 2 * W + 1)
            return
        levels = self._full_edge_levels()
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            right, down = levels(r0, r1)
            out = buf[: r1 - r0]
            # the row through pixels r: 0 at the pixels and the frame, the boundary to the right between them
            odd, even = out[:, 0], out[:, 1]
            odd[:, 1::2] = 0.0
            odd[:, 0] = odd[:, -1] = 0.0
            odd[:, 2:-1:2] = right[: r1 - r0]
            # the row below pixels r: the boundaries below them and, between those, each corner holds the
            # largest of its four boundaries, so an 8-connected cut cannot slip through it
            m = down.shape[0]  # every row but the image's last has one below it
            even[:m, 1:-1:2] = down
            corner = np.maximum(np.maximum(right[:m], right[1 : m + 1]), np.maximum(down[:, :-1], down[:, 1:]))
            even[:m, 2:-1:2] = corner
            # the frame continues each boundary that meets it, as in BSDS500's ucm2 (else an 8-connected cut
            # would join the regions along the image's edge through the frame): its bottom row copies the last
            # row through the pixels
            even[:m, 0], even[:m, -1] = down[:, 0], down[:, -1]
            even[m:] = odd[m:]
            yield r0, out.reshape(-1, 2 * W + 1)

    def _full_edge_levels(self) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
        """Levels of the full-resolution boundaries, by rows: ``levels(r0, r1)`` gives ``(right, down)``.

        ``right`` holds the boundaries to the right of pixel rows r0..r1 (one row more than
        asked, for the corners below them, where the image has it), float32 (rows, W-1);
        ``down`` those below rows r0..r1-1 (not below the image's last row), (rows, W).
        Without a mask, a block-averaged hierarchy's boundaries lie between blocks only: the
        working copy's levels are spread onto the last column (row) of each block as rows are
        asked for, so a 12 MP photo costs no full-size superpixel map or level arrays.
        """
        H, W = self.shape
        if self.factor == 1 or self.mask is not None:
            right, down = self._edge_levels(self._full_superpixels())
            return lambda r0, r1: (right[r0 : r1 + 1], down[r0:r1])
        f = self.factor
        small_right, small_down = self._edge_levels(self.superpixels)
        cols = np.minimum(f, W - f * np.arange(self.superpixels.shape[1]))
        edge_cols = np.cumsum(cols)[:-1] - 1  # the last column of every block but the last

        def levels(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.arange(r0, min(H, r1 + 1))
            right = np.zeros((rows.size, W - 1), np.float32)
            right[:, edge_cols] = small_right[rows // f]
            down = np.zeros((max(0, min(r1, H - 1) - r0), W), np.float32)
            last = rows[: down.shape[0]]
            last = last[(last + 1) % f == 0]  # the last row of a block (not the image's last row)
            down[last - r0] = np.repeat(small_down[last // f], cols, axis=1)
            return right, down

        return levels

    def _full_superpixels(self) -> np.ndarray:
        """Superpixel ids at full resolution (blocks repeated), -1 off the used pixels."""
        sp = self.superpixels
        if self.factor > 1:
            f = self.factor
            rows, cols = (np.minimum(f, n - f * np.arange(m)) for n, m in zip(self.shape, sp.shape))
            sp = np.repeat(np.repeat(sp, rows, axis=0), cols, axis=1)
        if self.mask is not None:
            sp = np.where(self.mask, sp, -1)
        return sp

    def _edge_levels(self, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Levels of the boundaries to the right (H, W-1) and below (H-1, W) of each pixel of ``sp``."""
        n = self.n_superpixels
        keys, times = self._pair_times()
        level = np.r_[self.levels, np.inf].astype(np.float64)  # never merged: above every level

        def lookup(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            # the edge of the used pixels never merges: a cut cannot join regions through transparent pixels
            out = np.where((a >= 0) != (b >= 0), np.float32(np.inf), np.float32(0.0))
            edge = (a != b) & (a >= 0) & (b >= 0)
            lo, hi = np.minimum(a[edge], b[edge]).astype(np.int64), np.maximum(a[edge], b[edge]).astype(np.int64)
            where = np.searchsorted(keys, lo * n + hi)
            out[edge] = level[times[np.minimum(where, len(keys) - 1)]]
            return out

        return lookup(sp[:, :-1], sp[:, 1:]), lookup(sp[:-1, :], sp[1:, :])

    def _pair_times(self) -> tuple[np.ndarray, np.ndarray]:
        """Every 4-adjacent superpixel pair (key ``lo * n + hi``, sorted) and the merge that first joins them.

        Replays the merges with each group's neighbour groups and the pairs
        along each shared boundary (as the greedy merging keeps them), so
        every pair is touched once: the merge of two groups joins exactly
        the pairs on their shared boundary. Pairs never joined get ``m``
        (one past the last merge).
        """
        sp = self.superpixels
        n = self.n_superpixels
        a = np.concatenate([sp[:, :-1].ravel(), sp[:-1, :].ravel()]).astype(np.int64)
        b = np.concatenate([sp[:, 1:].ravel(), sp[1:, :].ravel()]).astype(np.int64)
        keep = (a != b) & (a >= 0) & (b >= 0)
        keys = np.unique(np.minimum(a[keep], b[keep]) * n + np.maximum(a[keep], b[keep]))
        times = np.full(len(keys), len(self.merges), np.int64)
        nbrs: list[dict[int, list[int]]] = [{} for _ in range(n)]
        for index, (lo, hi) in enumerate(zip((keys // n).tolist(), (keys % n).tolist())):
            nbrs[lo][hi] = nbrs[hi][lo] = [index]
        for step, (kept, gone) in enumerate(self.merges[:, :2].astype(np.int64).tolist()):
            times[nbrs[kept].pop(gone, [])] = step
            nbrs[gone].pop(kept, None)
            for x, pairs in nbrs[gone].items():
                del nbrs[x][gone]
                if x in nbrs[kept]:
                    nbrs[kept][x].extend(pairs)  # one list shared by both sides
                else:
                    nbrs[kept][x] = nbrs[x][kept] = pairs
            nbrs[gone] = {}
        return keys, times


def check_regions_flag(regions: object) -> None:
    """ValueError unless ``regions`` is True or False (a number here is most likely a threshold: say so)."""
    if not isinstance(regions, (bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - one error type for callers, as check_threshold
            f"regions must be True or False, got {regions!r}; pass the threshold as region_threshold="
        )


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or ValueError unless it is a finite number >= 0 (a bool is a mistake)."""
    try:
        if isinstance(threshold, (bool, np.bool_)):
            raise TypeError
        threshold = float(threshold)
    except (TypeError, ValueError):  # one error type for callers
        raise ValueError(f"region threshold must be a number, got {threshold!r}") from None
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"region threshold must be a finite number >= 0, got {threshold!r}")
    return threshold


def merge_regions(
    rgb: np.ndarray,
    probabilities: np.ndarray,
    threshold: float = MERGE_THRESHOLD,
    *,
    mask: np.ndarray | None = None,
    superpixel_size: int = SUPERPIXEL_SIZE,
    cost: str = "learned",
    texture: float = 0.0,
) -> np.ndarray:
    """Regions of an image from its soft memberships, merged along weak boundaries.

    Parameters
    ----------
    rgb : ndarray, float (H, W, 3)
        The image, sRGB in [0, 1].
    probabilities : ndarray, float (H, W, K)
        Memberships (NaN or anything on unused pixels).
    threshold : float
        Stop merging when the cheapest merge costs more than this (see the
        module docstring); higher gives fewer, larger regions. 0 gives the
        superpixels.
    mask : ndarray of bool (H, W), optional
        Used pixels; default: where the memberships are finite.
    superpixel_size : int
        Pixels per superpixel, the finest region possible.
    cost : str
        The merge cost: ``"learned"`` (default), the logistic model fitted on
        BSDS500 train, or ``"contrast"``, the earlier hand-set rule (see the
        module docstring).
    texture : float
        With ``cost="contrast"``: the weight of its texture cue
        (gradient-orientation histograms), >= 0; 0 (default) merges on
        memberships and colour contrast only (1.0 with ``threshold=0.175``
        was chosen on BSDS500 train). The learned cost has its own weight.

    Returns
    -------
    ndarray of int32 (H, W)
        Region ids 0..n-1; -1 on unused pixels.

    Examples
    --------
    Two flat halves with noise, memberships of a two-cluster fit:

    >>> rng = np.random.default_rng(0)
    >>> rgb = np.zeros((40, 60, 3)); rgb[:, 30:] = [0.9, 0.2, 0.1]
    >>> rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1)
    >>> p = np.zeros((40, 60, 2)); p[:, :30, 0] = 1; p[:, 30:, 1] = 1
    >>> regions = merge_regions(rgb, p)
    >>> int(regions.max()) + 1, bool((regions[:, :30] == regions[0, 0]).all())
    (2, True)
    """
    hierarchy = region_hierarchy(
        rgb, probabilities, mask=mask, superpixel_size=superpixel_size, cost=cost, texture=texture
    )
    return hierarchy.labels(threshold)


def region_hierarchy(
    rgb: np.ndarray,
    probabilities: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    superpixel_size: int = SUPERPIXEL_SIZE,
    cost: str = "learned",
    texture: float = 0.0,
    _observe: Callable[..., None] | None = None,
) -> RegionHierarchy:
    """Superpixels and every greedy merge, for regions at any threshold.

    Same arguments as :func:`merge_regions`, less the threshold.

    Examples
    --------
    >>> rgb = np.zeros((30, 30, 3)); rgb[:, 15:] = 1.0
    >>> p = np.stack([rgb[..., 0] < 0.5, rgb[..., 0] >= 0.5], -1).astype(float)
    >>> h = region_hierarchy(rgb, p, superpixel_size=50)
    >>> h.n_regions(0.0) == h.n_superpixels, h.n_regions(0.15), h.n_regions(1e9)
    (True, 2, 1)
    """
    from scipy import ndimage

    from .features import rgb_to_lab

    # no float32 copies here: the working copy converts a tile at a time (a full-size copy of (H, W, K) is big)
    rgb, probabilities = np.asarray(rgb), np.asarray(probabilities)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {rgb.shape}")
    if probabilities.ndim != 3 or probabilities.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"probabilities must be (H, W, K) with the image's H, W; got {probabilities.shape}")
    if superpixel_size < 1:
        raise ValueError(f"superpixel_size must be >= 1, got {superpixel_size}")
    bad_texture = f"texture must be a finite number >= 0, got {texture!r}"
    if isinstance(texture, (bool, np.bool_)):  # a flag here is a mistake; one error type for callers
        raise ValueError(bad_texture)  # noqa: TRY004
    try:
        texture = float(texture)
    except (TypeError, ValueError):
        raise ValueError(bad_texture) from None
    if not (0 <= texture < math.inf):
        raise ValueError(bad_texture)
    if not isinstance(cost, str) or cost not in MERGE_COSTS:
        raise ValueError(f"cost must be one of {', '.join(map(repr, MERGE_COSTS))}, got {cost!r}")
    if cost == "learned" and texture:
        raise ValueError("texture weighs the texture cue of cost='contrast'; the learned cost has its own weight")
    shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    if mask is not None and np.shape(mask) != shape:
        raise ValueError(f"mask must be (H, W) = {shape}, got {np.shape(mask)}")
    factor = work_factor(shape)
    rgb_w, p_w, share, used = _working_copy(rgb, probabilities, mask, factor)
    full_mask = None if used.all() else used
    used_w = share >= 0.5
    if not used_w.any():  # scattered pixels (dithered alpha): no block half used, so any use counts
        used_w = share > 0
    if not used_w.any():
        return RegionHierarchy(np.full(shape, -1, np.int32), np.empty((0, 3)), shape, full_mask, factor)
    h, w = used_w.shape
    lab = rgb_to_lab(rgb_w.reshape(-1, 3)).reshape(h, w, 3)
    seen = lab
    if not used_w.all():  # unused pixels take the nearest used colour, so the edge of a hole is no boundary
        _, (iy, ix) = ndimage.distance_transform_edt(~used_w, return_indices=True)
        seen = lab[iy, ix]
    contrast = np.zeros((h, w))
    for c in range(3):
        channel = ndimage.gaussian_filter(seen[..., c].astype(np.float64), _BLUR)
        gy, gx = ndimage.sobel(channel, 0), ndimage.sobel(channel, 1)
        contrast += gy**2 + gx**2
        if c == 0:  # lightness: its gradient orientations describe the texture
            magnitude = np.hypot(gx, gy)
            orientation = np.minimum((np.arctan2(gy, gx) % np.pi) * (ORIENTATION_BINS / np.pi), ORIENTATION_BINS - 1)
    contrast = np.sqrt(contrast) / CONTRAST_UNIT

    sp = _superpixels(rgb_w, lab, used_w, superpixel_size)
    n = int(sp.max()) + 1
    flat = sp[used_w]
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    p_used = p_w[used_w]
    sums = np.stack([np.bincount(flat, p_used[:, j], minlength=n) for j in range(p_w.shape[2])], axis=1)
    orient = lab_sums = None
    if texture > 0 or cost == "learned" or _observe is not None:
        # each superpixel's magnitude-weighted histogram of gradient orientations, and its summed Lab colour
        bins, weight = orientation[used_w].astype(np.int64), magnitude[used_w]
        orient = np.bincount(flat * ORIENTATION_BINS + bins, weight, minlength=n * ORIENTATION_BINS)
        orient = orient.reshape(n, ORIENTATION_BINS)
        lab_used = lab[used_w]
        lab_sums = np.stack([np.bincount(flat, lab_used[:, c], minlength=n) for c in range(3)], axis=1)
    merges = _greedy_merges(sp, sums, counts, contrast, orient, texture, cost=cost, lab_sums=lab_sums, observe=_observe)
    return RegionHierarchy(sp, merges, shape, full_mask, factor)


def work_factor(shape: tuple[int, int]) -> int:
    """Block size of the working copy an image of ``shape`` (H, W) is merged on: 1 up to
    :data:`WORK_PIXELS` pixels, else the smallest whole factor that brings it to about that size.

    A merge of the working copy as an image of its own is the merge of the image: nothing in
    :func:`region_hierarchy` but the copy depends on the factor (``SoftSegmentation`` relies on it).

    Examples
    --------
    >>> work_factor((321, 481)), work_factor((3000, 4000))
    (1, 9)
    """
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / WORK_PIXELS)))


def _working_copy(
    rgb: np.ndarray, p: np.ndarray, mask: np.ndarray | None, f: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image and memberships averaged over the used pixels of f x f blocks.

    Returns (rgb, memberships, share of used pixels) at the working
    resolution (float32) and the used pixels at full resolution (finite
    memberships, inside ``mask``). Works through tiles of whole blocks, about
    :data:`_TILE_PIXELS` each (many bands of f rows at once, or part of a
    band when the image is very wide), so a large image of any shape costs no
    full-size temporary and a number of steps proportional to its size. With
    ``f > 1``, ``rgb`` and ``p`` need only a ``shape`` and ``[rows, cols]``
    slicing: the memberships may be gathered a tile at a time from a
    per-colour table (:meth:`segsoft.segment.SoftSegmentation.hierarchy`).
    """
    H, W = p.shape[:2]
    K = p.shape[2]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
    if f == 1:
        rgb, p = np.asarray(rgb, dtype=np.float32), np.asarray(p, dtype=np.float32)
        used = np.isfinite(p).all(axis=-1)
        if mask is not None:
            used &= mask
        keep = used[..., None]
        rgb_w, p_w = np.where(keep, rgb, 0.0).astype(np.float32), np.where(keep, p, 0.0).astype(np.float32)
        return rgb_w, p_w, used.astype(np.float32), used
    h, w = -(-H // f), -(-W // f)
    rgb_w = np.zeros((h, w, 3), np.float32)
    p_w = np.zeros((h, w, K), np.float32)
    share = np.zeros((h, w), np.float32)
    used = np.empty((H, W), bool)
    # a tile: whole bands of f rows across the image, or (very wide images) one band cut into runs of blocks
    g = min(f, H)  # rows in a band (fewer when the whole image is thinner than a block)
    cols = W if g * W <= _TILE_PIXELS else max(1, _TILE_PIXELS // (f * g)) * f
    rows = max(1, _TILE_PIXELS // (f * cols)) * f
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        for c0 in range(0, W, cols):
            c1 = min(W, c0 + cols)
            pt = np.asarray(p[r0:r1, c0:c1], dtype=np.float32)
            rt = np.asarray(rgb[r0:r1, c0:c1], dtype=np.float32)
            starts = np.arange(0, c1 - c0, f)
            widths = np.diff(np.append(starts, c1 - c0))
            full = (r1 - r0) // f * f  # rows in whole bands; the image's last band may be shorter
            bands = [(b0, b1) for b0, b1 in ((0, full), (full, r1 - r0)) if b1 > b0]

            def band_sums(b0: int, b1: int, pt: np.ndarray = pt, width: int = c1 - c0) -> np.ndarray:
                # each band's rows summed (one after another, as numpy sums a leading axis); each block's
                # columns are summed below
                return pt[b0:b1].reshape(-1, min(f, b1 - b0), width, K).sum(axis=1, dtype=np.float64)

            # every pixel used (no mask, finite memberships) is the common case: the band sums are finite
            # exactly when the tile is (float32 values summed in float64 cannot overflow), so such a tile
            # needs no per-pixel check and no zeroed copies (half the time of a 12 MP working copy)
            sums = None
            if mask is None or mask[r0:r1, c0:c1].all():
                sums = [band_sums(b0, b1) for b0, b1 in bands]
                if not all(np.isfinite(s).all() for s in sums):
                    sums = None
            if sums is None:
                u = np.isfinite(pt).all(axis=-1)
                if mask is not None:
                    u &= mask[r0:r1, c0:c1]
                keep = u[..., None]
                pt = np.where(keep, pt, 0.0)
                rt = np.where(keep, rt, 0.0)
                sums = [band_sums(b0, b1, pt) for b0, b1 in bands]
                used[r0:r1, c0:c1] = u
            else:
                u = None
                used[r0:r1, c0:c1] = True
            for (b0, b1), band_p in zip(bands, sums):
                n = min(f, b1 - b0)  # rows per band here
                i0 = (r0 + b0) // f
                i1 = i0 + (b1 - b0) // n
                j0, j1 = c0 // f, c0 // f + len(starts)
                if u is None:  # the used pixels' count of every block: all of them
                    weight = np.broadcast_to(widths * n, (i1 - i0, len(starts)))
                else:
                    weight = np.add.reduceat(u[b0:b1].reshape(-1, n, c1 - c0).sum(axis=1), starts, axis=1)
                safe = np.maximum(weight, 1)[..., None]
                p_w[i0:i1, j0:j1] = np.add.reduceat(band_p, starts, axis=1) / safe
                band_rgb = rt[b0:b1].reshape(-1, n, c1 - c0, 3).sum(axis=1)
                rgb_w[i0:i1, j0:j1] = np.add.reduceat(band_rgb, starts, axis=1) / safe
                share[i0:i1, j0:j1] = weight / (widths * n)
            del pt, rt, sums, band_sums  # before the next tile is gathered: one tile's scratch at a time
    return rgb_w, p_w, share, used


def _upscale(small: np.ndarray, f: int, shape: tuple[int, int], mask: np.ndarray | None) -> np.ndarray:
    """Region map back to full size (nearest), -1 off ``mask``.

    Unused blocks that hold used pixels take the nearest region first (on the
    small map, cheap). Cut by the mask, a region can fall apart (a
    transparent line through it); its pieces of at least a block become
    regions of their own, as they would be at full resolution, while smaller
    crumbs (dithered alpha) stay with their region.
    """
    if f == 1:
        out = np.ascontiguousarray(small, dtype=np.int32)
        if mask is not None:
            out[~mask] = -1
        return out
    if mask is not None and (small < 0).any() and (small >= 0).any():
        from scipy import ndimage

        _, (iy, ix) = ndimage.distance_transform_edt(small < 0, return_indices=True)
        small = small[iy, ix]
    # each block repeated to its size (the last row and column of blocks may be smaller), so nothing is made
    # bigger than the image: repeating by f then cropping would make f times the pixels of a one-pixel-wide image
    rows, cols = (np.minimum(f, n - f * np.arange(m)) for n, m in zip(shape, small.shape))
    out = np.ascontiguousarray(np.repeat(np.repeat(small, rows, axis=0), cols, axis=1), np.int32)
    if mask is None:
        return out
    out[~mask] = -1
    from skimage.measure import label as components

    pieces = components(out + 1, connectivity=1, background=0)
    size = np.bincount(pieces.ravel())
    region = np.zeros(len(size), np.int64)
    region[pieces.ravel()] = out.ravel()  # the region of each piece (piece 0: unused)
    # each region's largest piece keeps its id; other pieces of at least a block get new ids
    order = np.lexsort((-size[1:], region[1:])) + 1
    first = np.r_[True, region[order][1:] != region[order][:-1]]
    new = np.zeros(len(size), np.int64)
    new[1:] = region[1:]
    split = order[~first & (size[order] >= f * f)]
    new[split] = out.max() + 1 + np.arange(split.size)
    present = np.flatnonzero(np.bincount(new[1:], minlength=int(new.max()) + 1))
    compact = np.full(int(new.max()) + 1, -1, np.int64)
    compact[present] = np.arange(present.size)  # ids 0..n-1 even if the mask removed a whole region
    new = np.r_[-1, compact[new[1:]]]
    return new[pieces].astype(np.int32)


def _superpixels(rgb: np.ndarray, lab: np.ndarray, used: np.ndarray, size: int) -> np.ndarray:
    """SLIC superpixels of the used pixels, connected, ids 0..n-1 (-1 elsewhere).

    SLIC's own clean-up gives each stray fragment to whichever neighbour it
    meets first, which can carry it across a strong edge; here fragments
    under a quarter of ``size`` join the neighbour closest in mean Lab colour
    instead (:func:`_absorb_fragments`). Images too thin for SLIC's grid fall
    back to connected blocks.
    """
    n_used = int(used.sum())
    h, w = used.shape
    n_segments = max(1, round(n_used / size))
    if min(h, w) >= 4 and n_segments > 1:
        from skimage.segmentation import slic

        sp = slic(
            rgb,
            n_segments=n_segments,
            compactness=_COMPACTNESS,
            start_label=1,
            mask=None if used.all() else used,
            channel_axis=-1,
            enforce_connectivity=False,
        ).astype(np.int64)
        sp -= 1
        sp[~used] = -1
    else:  # a strip under 4 pixels or a speck: runs of `size` pixels along it (square blocks if wider)
        side = max(1, math.isqrt(size)) if min(h, w) >= 4 else max(1, size)
        sp = (np.arange(h)[:, None] // side) * (w // side + 1) + np.arange(w)[None, :] // side
        sp = np.where(used, sp, -1)
    # split every superpixel into its connected pieces, numbered 0..n-1, then absorb the small ones
    from skimage.measure import label as components

    sp = components(sp + 1, connectivity=1, background=0).astype(np.int64) - 1
    return _absorb_fragments(sp, lab, used, _FRAGMENT * size).astype(np.int32)


def _absorb_fragments(sp: np.ndarray, lab: np.ndarray, used: np.ndarray, min_size: float) -> np.ndarray:
    """Merge pieces under ``min_size`` pixels into their neighbour of closest mean colour, round by round."""
    colors = lab[used]

    def closest_colour(pieces: np.ndarray, src: np.ndarray, dst: np.ndarray, shared: np.ndarray, sizes: np.ndarray):
        flat = pieces[used]
        means = np.stack([np.bincount(flat, colors[:, c], minlength=len(sizes)) for c in range(3)], axis=1)
        means /= np.maximum(sizes, 1)[:, None]
        return (-sizes[dst], ((means[src] - means[dst]) ** 2).sum(axis=1))  # nearest colour, then the larger

    return _join_small_pieces(sp, used, min_size, closest_colour, max_rounds=32)


def _join_small_pieces(
    pieces: np.ndarray, used: np.ndarray, min_size: float, rank: Callable[..., tuple], max_rounds: int | None = None
) -> np.ndarray:
    """Round by round, every piece under ``min_size`` pixels joins the 4-neighbour that ``rank`` puts first.

    ``pieces`` holds ids 0..n-1 (-1 unused). ``rank(pieces, src, dst, shared,
    sizes)`` gets each (small piece, neighbour) pair with their shared
    boundary length and the piece sizes, and returns sort keys, least
    significant first, lowest best; remaining ties go to the lower neighbour
    id. Two pieces choosing each other join under the higher id. Stops when a
    round changes nothing (or after ``max_rounds``); returns ids 0..m-1.
    """
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        rounds += 1
        n = int(pieces.max()) + 1
        sizes = np.bincount(pieces[used], minlength=n)
        small = sizes < min_size
        if n <= 1 or not small.any():
            break
        a = np.concatenate([pieces[:, :-1].ravel(), pieces[:-1, :].ravel()])
        b = np.concatenate([pieces[:, 1:].ravel(), pieces[1:, :].ravel()])
        edge = (a != b) & (a >= 0) & (b >= 0)
        a, b = np.concatenate([a[edge], b[edge]]), np.concatenate([b[edge], a[edge]])
        a, b = a[small[a]], b[small[a]]
        if a.size == 0:
            break  # the small pieces touch nothing they could join
        pairs, shared = np.unique(a * n + b, return_counts=True)
        src, dst = pairs // n, pairs % n
        order = np.lexsort((*rank(pieces, src, dst, shared, sizes), src))
        src, dst = src[order], dst[order]
        first = np.r_[True, src[1:] != src[:-1]]
        ids = np.arange(n)
        target = ids.copy()
        target[src[first]] = dst[first]
        cycle = (target[target] == ids) & (target < ids)
        target[cycle] = ids[cycle]
        for _ in range(64):  # follow chains of merges to their ends
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        merged = np.where(used, target[np.maximum(pieces, 0)], -1)
        if np.array_equal(merged, pieces):
            break
        _, merged[used] = np.unique(merged[used], return_inverse=True)
        pieces = merged
    return pieces


def _adjacency(sp: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs a < b of 4-adjacent superpixels, summed boundary contrast and boundary length."""
    a = np.concatenate([sp[:, :-1].ravel(), sp[:-1, :].ravel()])
    b = np.concatenate([sp[:, 1:].ravel(), sp[1:, :].ravel()])
    # a boundary pixel pair counts the stronger of its two contrasts
    e = np.concatenate(
        [np.maximum(contrast[:, :-1], contrast[:, 1:]).ravel(), np.maximum(contrast[:-1, :], contrast[1:, :]).ravel()]
    )
    keep = (a != b) & (a >= 0) & (b >= 0)
    a, b, e = a[keep].astype(np.int64), b[keep].astype(np.int64), e[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = int(sp.max()) + 1
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    return keys // n, keys % n, np.bincount(inverse, weights=e), np.bincount(inverse).astype(np.float64)


def _greedy_merges(
    sp: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    contrast: np.ndarray,
    orient: np.ndarray | None = None,
    texture: float = 0.0,
    *,
    cost: str = "contrast",
    lab_sums: np.ndarray | None = None,
    observe: Callable[..., None] | None = None,
) -> np.ndarray:
    """Merge the cheapest neighbouring pair until none is left; returns rows (kept, absorbed, cost).

    ``orient`` (n, bins): each superpixel's gradient-orientation histogram,
    summed like the memberships when regions merge; ``texture`` its weight
    in the "contrast" cost. ``cost="learned"`` needs ``orient`` and
    ``lab_sums`` (n, 3), each superpixel's summed Lab colour, and uses the
    fitted model (:data:`LEARNED_WEIGHTS`). ``observe`` (for
    ``benchmarks/fit_merge_cost.py``) is called as ``observe("pair", a, b,
    features)`` for every pair priced (``features``: the tuple
    :func:`_pair_features` gives) and ``observe("merge", a, b)`` for every
    merge, after ``observe("superpixels", sp)``.
    """
    n = len(counts)
    total = counts.sum()
    if observe is not None:
        observe("superpixels", sp)
    A, B, contrast_sum, length = _adjacency(sp, contrast)
    # boundary (contrast sum, length) per neighbour, one shared list object per pair
    nbrs: list[dict[int, list[float]]] = [{} for _ in range(n)]
    for a, b, s, ln in zip(A.tolist(), B.tolist(), contrast_sum.tolist(), length.tolist()):
        nbrs[a][b] = nbrs[b][a] = [s, ln]
    sums = sums.copy()
    counts = counts.copy()
    mean = sums / np.maximum(counts, 1e-12)[:, None]
    root = np.sqrt(np.maximum(mean, 0.0))  # sqrt of the mean memberships, for the Bhattacharyya coefficient
    version = [0] * n
    learned = cost == "learned"
    use_texture = orient is not None and texture > 0 and not learned  # the texture weight of the contrast cost
    track = orient is not None  # the orientation histograms kept up to date (the texture cue, the learned features)
    if track:
        orient = np.asarray(orient, dtype=np.float64).copy()
        orient += ORIENTATION_PRIOR * counts[:, None] / orient.shape[1]
        shape = orient / np.maximum(orient.sum(axis=1, keepdims=True), 1e-12)  # histograms summing to 1
    if learned or observe is not None:
        lab_sums = np.asarray(lab_sums, dtype=np.float64).copy()
        mean_lab = lab_sums / np.maximum(counts, 1e-12)[:, None]
    w_apart, w_contrast, w_texture, w_colour, w_small, w_large, w_length = LEARNED_WEIGHTS
    bias = LEARNED_BIAS + LEARNED_SHIFT

    def features(a: int, b: int) -> tuple[float, ...]:
        s, ln = nbrs[a][b]
        return _pair_features(
            counts[a], counts[b], total, float(root[a] @ root[b]), s / ln, ln,
            0.5 * float(np.abs(shape[a] - shape[b]).sum()), float(np.linalg.norm(mean_lab[a] - mean_lab[b])),
        )  # fmt: skip

    def price(a: int, b: int) -> float:
        if learned:
            x = features(a, b)
            if observe is not None:
                observe("pair", a, b, x)
            z = bias + (
                w_apart * x[0] + w_contrast * x[1] + w_texture * x[2] + w_colour * x[3]
                + w_small * x[4] + w_large * x[5] + w_length * x[6]
            )  # fmt: skip
            return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        if observe is not None:
            observe("pair", a, b, features(a, b))
        s, ln = nbrs[a][b]
        na, nb = counts[a], counts[b]
        size = math.sqrt(na * nb / (na + nb) / total)
        same = float(root[a] @ root[b])
        if use_texture:  # a different grain (total variation of the orientation histograms) lowers the likeness
            same *= math.exp(-texture * 0.5 * float(np.abs(shape[a] - shape[b]).sum()))
        apart = max(1.0 - same, 1e-9)
        return size * apart * (CONTRAST_FLOOR + s / ln)

    heap = [(price(a, b), a, b, 0, 0) for a, b in zip(A.tolist(), B.tolist())]
    heapq.heapify(heap)
    merges = []
    while heap:
        c, a, b, va, vb = heapq.heappop(heap)
        if version[a] != va or version[b] != vb:
            continue  # stale: one side has merged since this entry was made
        merges.append((a, b, c))
        if observe is not None:
            observe("merge", a, b)
        sums[a] += sums[b]
        counts[a] += counts[b]
        root[a] = np.sqrt(np.maximum(sums[a] / counts[a], 0.0))
        if track:
            orient[a] += orient[b]
            shape[a] = orient[a] / max(orient[a].sum(), 1e-12)
        if learned or observe is not None:
            lab_sums[a] += lab_sums[b]
            mean_lab[a] = lab_sums[a] / counts[a]
        version[a] += 1
        version[b] = -1  # b is gone for good
        for x, boundary in nbrs[b].items():
            if x == a:
                continue
            del nbrs[x][b]
            if x in nbrs[a]:
                nbrs[a][x][0] += boundary[0]
                nbrs[a][x][1] += boundary[1]
            else:
                nbrs[a][x] = nbrs[x][a] = boundary
        del nbrs[a][b]
        nbrs[b] = {}
        for x in nbrs[a]:
            lo, hi = (a, x) if a < x else (x, a)
            heapq.heappush(heap, (price(lo, hi), lo, hi, version[lo], version[hi]))
    return np.array(merges, dtype=np.float64).reshape(-1, 3)


def _pair_features(
    na: float, nb: float, total: float, likeness: float, contrast: float, length: float, grain: float, colour: float
) -> tuple[float, float, float, float, float, float, float]:
    """The learned cost's features of a neighbouring pair (see :data:`LEARNED_WEIGHTS`).

    ``na``, ``nb``: the two sizes in pixels of ``total``; ``likeness``: the
    Bhattacharyya coefficient of their mean memberships; ``contrast``: the
    mean colour contrast along the shared boundary of ``length`` pixel
    pairs; ``grain``: the total variation distance of their orientation
    histograms; ``colour``: the distance of their mean Lab colours.
    """
    small, large = (na, nb) if na <= nb else (nb, na)
    return (
        math.log(max(1.0 - likeness, 1e-4)),
        math.log(CONTRAST_FLOOR + contrast),
        grain,
        math.log1p(colour),
        math.log(small / total),
        math.log(large / total),
        math.log(length / math.sqrt(small)),
    )


def connected_regions(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Regions of a hard label map: its 4-connected components, small ones merged.

    A cluster label can cover many separate patches; region-based measures
    (and people) treat each patch as its own region. Components smaller than
    ``min_size`` pixels are merged, round by round, into the neighbouring
    component they share the longest boundary with (ties: the larger one).

    Parameters
    ----------
    labels : ndarray of int (H, W)
        Cluster labels; -1 marks unused pixels, which stay -1 and belong to
        no region.
    min_size : int
        Smallest region kept on its own.

    Returns
    -------
    ndarray of int32 (H, W)
        Region ids 0..n-1 (-1 where ``labels`` is -1).

    Examples
    --------
    >>> lab = np.array([[0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0]])
    >>> connected_regions(lab).tolist()
    [[0, 0, 1, 2], [0, 0, 1, 2], [1, 1, 1, 2]]
    >>> connected_regions(lab, min_size=4).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    """
    from skimage.measure import label as components

    labels = np.asarray(labels)
    used = labels >= 0
    regions = components(np.where(used, labels + 1, 0), connectivity=1, background=0).astype(np.int64) - 1
    if min_size > 1:

        def longest_boundary(pieces, src, dst, shared, sizes):
            return (-dst, -sizes[dst], -shared)  # longest shared boundary, then the larger, then the higher id

        regions = _join_small_pieces(regions, used, min_size, longest_boundary)
    return regions.astype(np.int32)
