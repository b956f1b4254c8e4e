"""The BSDS500 boundary benchmark: precision, recall and F of a soft boundary map (ODS, OIS, AP).

A soft boundary map (segsoft's ``ucm.npy``, gPb-owt-ucm's ``ucm2``, or any
``(H, W)`` map whose larger values are stronger boundaries) is scored against
the boundaries of each human segmentation of the image, as the BSDS500
benchmark does it (Martin, Fowlkes & Malik, TPAMI 2004; Arbelaez, Maire,
Fowlkes & Malik, TPAMI 2011; the MATLAB/C++ code of BSR ``bench``:
``evaluation_bdry_image.m``, ``seg2bdry.m``, ``collect_eval_bdry.m`` and
``correspondPixels`` / ``match.cc``). Step by step, and where this module
follows each:

1. **The machine's boundaries at threshold t.** A ``ucm2`` (``(2H+1, 2W+1)``)
   is read on the pixel grid as the benchmark reads it,
   ``pb = ucm2(3:2:end, 3:2:end)`` in MATLAB, i.e. ``ucm2[2::2, 2::2]``
   (each pixel takes the level at its lower right corner); an ``(H, W)`` map
   is ``pb`` itself. ``bmap = pb >= t``, then thinned to one pixel,
   ``bwmorph(bmap, 'thin', inf)``: :func:`skimage.morphology.thin` implements
   the same two-subiteration algorithm (Guo & Hall 1989, with MATLAB's
   look-up tables). The default thresholds are the benchmark's
   ``linspace(1/(n+1), 1-1/(n+1), n)`` with ``n = 99``.
2. **The humans' boundaries**: ``seg2bdry(seg, 'imageSize')`` of each human
   segmentation (:func:`human_boundaries`), the ``groundTruth{i}.Boundaries``
   of BSDS500's ``.mat`` files; never thinned.
3. **Correspondence** (:func:`correspond_pixels`): a minimum-cost matching
   between the machine's and one human's boundary pixels, each pair within
   ``max_dist`` (0.0075) of the image diagonal, costing its distance, with
   an outlier cost for every pixel left unmatched; the same integer costs
   as the C++ code's CSA solver (distances times 100, rounded; outlier cost
   ``ceil(100 * 100 * max_dist * diagonal)``), solved exactly.
4. **Counts per threshold** (``evaluation_bdry_image.m``): for each human,
   ``sumR += |human boundary|``, ``cntR += |human pixels matched|``; a
   machine pixel is correct when it is matched to *any* human:
   ``sumP = |bmap|``, ``cntP = |union over humans of the matched machine
   pixels|`` (:func:`boundary_pr`).
5. **Over a data set** (``collect_eval_bdry.m``; :func:`ods_ois`): ``R =
   cntR / sumR`` and ``P = cntP / sumP`` (0 where the sum is 0), ``F = 2PR /
   (P + R)``. ODS: the counts are summed over the images, and the best F
   along the curve, interpolated linearly between neighbouring thresholds
   (100 steps, as ``maxF``). OIS: each image's best threshold (the first
   with its largest F, not interpolated), its counts summed over images.
   AP: the area under the interpolated precision-recall curve on recall
   ``0:0.01:1`` (0 outside the recalls reached).

Deviations from the benchmark's code: the matching is solved exactly
(:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`), where the
C++ code solves it on a sparse graph with 6 random outlier links per pixel,
which can leave it a little short of the optimum and varies from call to
call. Checked against the compiled C++ code (``match.cc`` and ``csa.cc``) on
16 thresholded gPb-owt-ucm maps of 4 BSDS500 val images, each against its
5 humans: the same machine and human pixels, and here 0 to 5 more pixels
matched per pair (at most 0.15 %, never fewer), and where the costs were
compared a lower cost in the C++ code's own objective. Among matchings of equal cost the two can pick different
pixels, which moves ``cntP`` when a machine pixel is matched in one human
and not another. AP takes, for recalls repeated along the curve, the
precision of the highest threshold (MATLAB's ``unique`` before R2013a, for
which the benchmark was written). The human boundaries are made from the
segmentations with ``seg2bdry``; BSDS500's stored ``Boundaries`` are taken
to be the same (not checked: the ``.mat`` files are not used here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SegsoftError

__all__ = [
    "BSDS_THRESHOLDS",
    "MAX_DIST",
    "OUTLIER_COST",
    "BoundaryCounts",
    "BoundaryScores",
    "boundary_pr",
    "correspond_pixels",
    "human_boundaries",
    "ods_ois",
    "pixel_grid",
]

#: The benchmark's tolerance: matched pixels are at most this share of the image diagonal apart.
MAX_DIST = 0.0075
#: The cost of an unmatched pixel, as a multiple of the tolerance (``correspondPixels``'s default).
OUTLIER_COST = 100.0
#: The benchmark's thresholds for a soft map in [0, 1]: ``linspace(1/100, 99/100, 99)``.
BSDS_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(1 / 100, 1 - 1 / 100, 99).tolist())

_MULTIPLIER = 100  # match.cc: CSA needs integer weights, distances are scaled by this and rounded


# --------------------------------------------------------------------------
# boundaries


def human_boundaries(seg: np.ndarray) -> np.ndarray:
    """Boundary pixels of a segmentation, as the benchmark's ``seg2bdry(seg, 'imageSize')``.

    A pixel is on the boundary when the label changes between it and its
    neighbour below or to its right, or between the pixels below and to
    the right of it (the 2x2 block it is the top left of); the last row
    and column copy the boundaries that reach them (BSDS500's
    ``groundTruth{i}.Boundaries``).

    Parameters
    ----------
    seg : ndarray of int (H, W)
        A label map.

    Returns
    -------
    ndarray of bool (H, W)

    Examples
    --------
    >>> seg = np.array([[1, 1, 2, 2]] * 3)
    >>> human_boundaries(seg).astype(int).tolist()
    [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    """
    s = np.asarray(seg)
    if s.ndim != 2 or s.size == 0:
        raise SegsoftError(f"a segmentation must be a non-empty 2-D label map, got shape {s.shape}")
    h, w = s.shape
    # seg2bdry.m step by step, 0-based: the doubleSize map (2H+1, 2W+1), then its [2::2, 2::2]
    edgels_v = np.zeros((h, w), bool)
    edgels_v[:-1] = s[:-1] != s[1:]
    edgels_h = np.zeros((h, w), bool)
    edgels_h[:, :-1] = s[:, :-1] != s[:, 1:]
    b = np.zeros((2 * h + 1, 2 * w + 1), bool)
    b[2::2, 1::2] = edgels_v
    b[1::2, 2::2] = edgels_h
    b[2:-1:2, 2:-1:2] = (edgels_h[:-1, :-1] | edgels_h[1:, :-1]) | (edgels_v[:-1, :-1] | edgels_v[:-1, 1:])
    b[0, :] = b[1, :]
    b[:, 0] = b[:, 1]
    b[-1, :] = b[-2, :]
    b[:, -1] = b[:, -2]
    return np.ascontiguousarray(b[2::2, 2::2])


def pixel_grid(boundary_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The soft boundary map on the pixel grid that the benchmark thresholds.

    Parameters
    ----------
    boundary_map : ndarray of float, (H, W) or ucm2 (2H+1, 2W+1)
        A ucm2 is read as ``ucm2[2::2, 2::2]`` (MATLAB ``ucm2(3:2:end,
        3:2:end)`` in ``evaluation_bdry_image.m``); an (H, W) map as it is.
    shape : (H, W)
        The image's shape (its ground truth's).

    Returns
    -------
    ndarray of float64 (H, W)
        A new array; ``boundary_map`` is not changed.

    Examples
    --------
    >>> u = np.zeros((5, 7)); u[:, 4] = 0.3
    >>> pixel_grid(u, (2, 3)).tolist()
    [[0.0, 0.3, 0.0], [0.0, 0.3, 0.0]]
    """
    u = np.asarray(boundary_map)
    h, w = (int(n) for n in shape)
    if u.dtype.kind not in "biuf":
        raise SegsoftError(f"a boundary map must hold numbers, got dtype {u.dtype}")
    if u.shape == (2 * h + 1, 2 * w + 1):
        pb = u[2::2, 2::2]
    elif u.shape == (h, w):
        pb = u
    else:
        raise SegsoftError(
            f"a boundary map of shape {u.shape} does not fit a {h}x{w} image: "
            f"expected ({h}, {w}) or a ucm2 of shape ({2 * h + 1}, {2 * w + 1})"
        )
    pb = pb.astype(np.float64)  # always a copy
    if np.isnan(pb).any():
        raise SegsoftError("a boundary map must not hold NaN")
    return pb


# --------------------------------------------------------------------------
# correspondence


def correspond_pixels(
    bmap1: np.ndarray,
    bmap2: np.ndarray,
    max_dist: float = MAX_DIST,
    outlier_cost: float = OUTLIER_COST,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimum-cost correspondence of two boundary maps, as the benchmark's ``correspondPixels``.

    Pixels of ``bmap1`` and ``bmap2`` at most ``max_dist * diagonal``
    apart (``diagonal = sqrt(H**2 + W**2)``) may be matched, one to one, at
    the cost of their distance; an unmatched pixel costs ``outlier_cost *
    max_dist * diagonal``. As in ``match.cc``, distances are scaled by 100
    and rounded to integers, the outlier cost scaled by 100 and rounded up,
    and the matching minimises ``sum(matched distances) + (n1 + n2 - k) *
    outlier`` over matchings of ``k`` pairs (CSA's graph: every unmatched
    pixel is paired with an outlier node, and the outlier nodes left over
    pair with each other, each pairing at the outlier cost). Solved
    exactly, with :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`
    on a graph with one outlier node per pixel, so a perfect matching
    always exists.

    Parameters
    ----------
    bmap1, bmap2 : ndarray of bool (H, W)
        Boundary maps (nonzero is boundary), of the same shape.
    max_dist : float
        Largest distance of a match, as a share of the image diagonal (> 0).
    outlier_cost : float
        Cost of an unmatched pixel, as a multiple of the largest distance (> 1).

    Returns
    -------
    match1, match2 : ndarray of int64 (H, W)
        For each boundary pixel, the flat (row-major) index of the pixel it
        is matched to in the other map; -1 where unmatched or off the
        boundary (the benchmark gives 1-based column-major indices and 0).
    cost : float
        As ``correspondPixels``: half the distance of each matched pixel of
        either map, plus the outlier cost for each unmatched one (pixels).

    Examples
    --------
    >>> a = np.zeros((20, 20), bool); a[:, 5] = True
    >>> b = np.zeros((20, 20), bool); b[:, 6] = True  # one pixel to the right
    >>> m1, m2, cost = correspond_pixels(a, b, max_dist=0.05)  # 0.05 * 28.3 = 1.4 pixels
    >>> bool((m1[:, 5] >= 0).all()), int((m2 >= 0).sum()), cost
    (True, 20, 20.0)
    """
    b1 = _as_bool_map(bmap1, "bmap1")
    b2 = _as_bool_map(bmap2, "bmap2")
    if b1.shape != b2.shape:
        raise SegsoftError(f"bmap1 and bmap2 must have the same shape, got {b1.shape} and {b2.shape}")
    max_dist, outlier_cost = _check_match_params(max_dist, outlier_cost)
    h, w = b1.shape
    radius = max_dist * math.hypot(h, w)
    oc = outlier_cost * radius
    p1 = np.flatnonzero(b1)
    p2 = np.flatnonzero(b2)
    i, j = _match(p1, p2, (h, w), radius, oc)
    m1 = np.full(h * w, -1, np.int64)
    m2 = np.full(h * w, -1, np.int64)
    m1[p1[i]] = p2[j]
    m2[p2[j]] = p1[i]
    dy = p1[i] // w - p2[j] // w
    dx = p1[i] % w - p2[j] % w
    cost = float(np.sqrt(dx * dx + dy * dy).sum()) + oc * (p1.size + p2.size - 2 * i.size)
    return m1.reshape(h, w), m2.reshape(h, w), cost


def _check_match_params(max_dist: float, outlier_cost: float) -> tuple[float, float]:
    if not (isinstance(max_dist, (int, float, np.floating)) and math.isfinite(max_dist) and max_dist > 0):
        raise SegsoftError(f"max_dist must be a number > 0 (a share of the image diagonal), got {max_dist!r}")
    if not (isinstance(outlier_cost, (int, float, np.floating)) and math.isfinite(outlier_cost) and outlier_cost > 1):
        raise SegsoftError(f"outlier_cost must be a number > 1, got {outlier_cost!r}")
    return float(max_dist), float(outlier_cost)


def _as_bool_map(arr: object, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise SegsoftError(f"{what} must be a 2-D boundary map, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise SegsoftError(f"{what} must hold numbers or booleans, got dtype {a.dtype}")
    return a != 0


def _offsets(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, d2) of every integer offset with dy**2 + dx**2 <= radius**2 (match.cc's window)."""
    r = math.ceil(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = dy * dy + dx * dx
    keep = d2 <= radius * radius
    return dy[keep], dx[keep], d2[keep]


def _match(
    p1: np.ndarray, p2: np.ndarray, shape: tuple[int, int], radius: float, oc: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into p1 and p2 (flat pixel indices) of the matched pairs of the benchmark's matching."""
    empty = np.empty(0, np.int64)
    if p1.size == 0 or p2.size == 0:
        return empty, empty
    h, w = shape
    node2 = np.full(h * w, -1, np.int64)
    node2[p2] = np.arange(p2.size)
    y1, x1 = np.divmod(p1, w)
    ii, jj, dd = [], [], []
    for dy, dx, d2 in zip(*_offsets(radius)):
        y, x = y1 + dy, x1 + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        at = np.flatnonzero(ok)
        j = node2[y[at] * w + x[at]]
        hit = j >= 0
        if hit.any():
            ii.append(at[hit])
            jj.append(j[hit])
            dd.append(np.full(int(hit.sum()), d2))
    if not ii:
        return empty, empty
    ei = np.concatenate(ii)
    ej = np.concatenate(jj)
    weight = np.rint(np.sqrt(np.concatenate(dd).astype(np.float64)) * _MULTIPLIER).astype(np.int64)
    # only the pixels with a partner in reach take part (match.cc's "matchable" nodes)
    u1, ei = np.unique(ei, return_inverse=True)
    u2, ej = np.unique(ej, return_inverse=True)
    n1, n2 = u1.size, u2.size
    ow = math.ceil(oc * _MULTIPLIER)
    r, c = _min_cost_matching(ei, ej, weight, n1, n2, ow)
    return u1[r], u2[c]


def _min_cost_matching(
    ei: np.ndarray, ej: np.ndarray, weight: np.ndarray, n1: int, n2: int, ow: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j) of a matching minimising ``sum(weight) + (n1 + n2 - k) * ow`` over its ``k`` pairs.

    CSA's graph in match.cc pairs every unmatched pixel with an outlier
    node and the outlier nodes left over with each other, each at ``ow``;
    whichever outlier nodes pair up, a perfect matching there costs
    ``sum(w) + (n1 + n2 - k) * ow``. Here the smaller side's nodes (rows)
    each get one outlier column of their own at ``ow``: a full matching of
    the rows costs ``sum(w) + (rows - k) * ow``, the same objective less a
    constant, so the minima are the same matchings; one always exists.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    swap = n2 < n1
    if swap:
        ei, ej, n1, n2 = ej, ei, n2, n1
    a1 = np.arange(n1)
    rows = np.concatenate([ei, a1])
    cols = np.concatenate([ej, n2 + a1])
    # +1 on every edge (n1 of them in every full matching) keeps zero-distance pairs from reading as no edge
    costs = np.concatenate([weight, np.full(n1, ow)]).astype(np.float64) + 1.0
    graph = coo_matrix((costs, (rows, cols)), shape=(n1, n1 + n2)).tocsr()
    r, c = min_weight_full_bipartite_matching(graph)
    real = c < n2
    r, c = r[real], c[real]
    return (c, r) if swap else (r, c)


# --------------------------------------------------------------------------
# counts


@dataclass(frozen=True)
class BoundaryCounts:
    """One image's boundary counts at each threshold (``evaluation_bdry_image.m``'s output).

    Attributes
    ----------
    thresholds : ndarray of float (n,)
        Ascending.
    cnt_r, sum_r : ndarray of int64 (n,)
        Human boundary pixels matched, and all human boundary pixels,
        summed over the humans: recall is ``cnt_r / sum_r``.
    cnt_p, sum_p : ndarray of int64 (n,)
        Machine boundary pixels matched in at least one human, and all
        machine boundary pixels (thinned): precision is ``cnt_p / sum_p``.
    """

    thresholds: np.ndarray
    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.cnt_r, self.sum_r)

    @property
    def precision(self) -> np.ndarray:
        return _ratio(self.cnt_p, self.sum_p)

    @property
    def f(self) -> np.ndarray:
        return _fmeasure(self.recall, self.precision)


def boundary_pr(
    boundary_map: np.ndarray,
    ground_truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Sequence[float] | None = None,
    *,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    gt_boundaries: bool = False,
) -> BoundaryCounts:
    """Boundary counts of one soft boundary map against its humans, as ``evaluation_bdry_image.m``.

    At each threshold ``t``: the machine's boundary is ``pixel_grid(map) >=
    t``, thinned; it is matched to each human's boundary in turn
    (:func:`correspond_pixels`); recall counts the matched human pixels
    over every human's boundary pixels, precision the machine pixels
    matched in any human over the machine's pixels.

    Parameters
    ----------
    boundary_map : ndarray of float, (H, W) or ucm2 (2H+1, 2W+1)
        Larger is a stronger boundary (segsoft's ``ucm.npy``, a ``ucm2``,
        a boundary probability map, or a bool map). Not changed.
    ground_truths : ndarray (n_humans, H, W) or (H, W), or a sequence of (H, W)
        The human segmentations (label maps), or with ``gt_boundaries``
        their boundary maps.
    thresholds : sequence of float, optional
        Sorted ascending, duplicates dropped. Default :data:`BSDS_THRESHOLDS`
        (the benchmark's 99).
    max_dist : float
        Matching tolerance, a share of the image diagonal (benchmark: 0.0075).
    thin : bool
        Thin the thresholded map (the benchmark's ``thinpb``, on by default).
    gt_boundaries : bool
        ``ground_truths`` are boundary maps (nonzero is boundary), used as
        they are, instead of segmentations.

    Returns
    -------
    BoundaryCounts

    Raises
    ------
    SegsoftError
        No human, shapes that do not fit, NaN in the map, bad thresholds.

    Examples
    --------
    >>> seg = np.zeros((30, 30), int); seg[:, 15:] = 1
    >>> ucm2 = np.zeros((61, 61)); ucm2[:, 30] = 0.8  # the boundary between columns 14 and 15
    >>> c = boundary_pr(ucm2, [seg], [0.5, 0.9])
    >>> c.recall.tolist(), c.precision.tolist()
    ([1.0, 0.0], [1.0, 0.0])
    """
    from skimage.morphology import thin as thin_map

    gts = _ground_truth_stack(ground_truths)
    shape = gts[0].shape
    max_dist, _ = _check_match_params(max_dist, OUTLIER_COST)
    ts = _check_thresholds(thresholds)
    pb = pixel_grid(boundary_map, shape)
    humans = [np.asarray(g) != 0 for g in gts] if gt_boundaries else [human_boundaries(g) for g in gts]
    h, w = shape
    radius = max_dist * math.hypot(h, w)
    oc = OUTLIER_COST * radius
    human_pixels = [np.flatnonzero(b) for b in humans]
    sum_r_all = sum(p.size for p in human_pixels)
    out = np.zeros((4, ts.size), np.int64)
    seen: dict[bytes, np.ndarray] = {}
    for k, t in enumerate(ts):
        bmap = pb >= t
        key = np.packbits(bmap).tobytes()
        if key not in seen:  # a ucm has few levels: many thresholds give the same map
            if thin and bmap.any():
                bmap = thin_map(bmap)
            p1 = np.flatnonzero(bmap)
            matched = np.zeros(p1.size, bool)
            cnt_r = 0
            for p2 in human_pixels:
                i, _ = _match(p1, p2, shape, radius, oc)
                matched[i] = True
                cnt_r += i.size
            seen[key] = np.array([cnt_r, sum_r_all, int(matched.sum()), p1.size])
        out[:, k] = seen[key]
    return BoundaryCounts(ts, out[0], out[1], out[2], out[3])


def _ground_truth_stack(ground_truths: object) -> list[np.ndarray]:
    if isinstance(ground_truths, np.ndarray):
        g = ground_truths
        maps = [g] if g.ndim == 2 else list(g) if g.ndim == 3 else None
        if maps is None:
            raise SegsoftError(f"ground truth must be (H, W) or (n_humans, H, W), got shape {g.shape}")
    else:
        maps = [np.asarray(g) for g in ground_truths]  # type: ignore[union-attr]
    if not maps:
        raise SegsoftError("no ground truth given")
    shape = maps[0].shape
    for i, g in enumerate(maps):
        if g.ndim != 2 or g.size == 0:
            raise SegsoftError(f"ground truth {i + 1} must be a non-empty 2-D map, got shape {g.shape}")
        if g.shape != shape:
            raise SegsoftError(f"ground truth {i + 1} has shape {g.shape}, ground truth 1 {shape}")
        if g.dtype.kind not in "biuf":
            raise SegsoftError(f"ground truth {i + 1} must hold labels, got dtype {g.dtype}")
    return maps


def _check_thresholds(thresholds: Sequence[float] | None) -> np.ndarray:
    if thresholds is None:
        return np.asarray(BSDS_THRESHOLDS)
    try:
        ts = np.asarray(list(thresholds), dtype=np.float64)
    except (TypeError, ValueError):
        raise SegsoftError(f"thresholds must be numbers, got {thresholds!r}") from None
    if ts.ndim != 1 or ts.size == 0:
        raise SegsoftError("thresholds: give at least one number")
    if not np.isfinite(ts).all():
        raise SegsoftError(f"thresholds must be finite, got {ts.tolist()}")
    return np.unique(ts)


# --------------------------------------------------------------------------
# over a data set


@dataclass(frozen=True)
class BoundaryScores:
    """The benchmark's summary of a data set (``collect_eval_bdry.m``'s ``eval_bdry.txt``).

    Attributes
    ----------
    ods : dict
        ``{"threshold", "recall", "precision", "f"}`` at the best single
        threshold for the data set (interpolated between thresholds).
    ois : dict
        ``{"recall", "precision", "f"}`` from each image's best threshold.
    ap : float
        Area under the precision-recall curve.
    thresholds, recall, precision, f : ndarray (n,)
        The data set's curve (counts summed over the images).
    n_images : int
    """

    ods: dict[str, float]
    ois: dict[str, float]
    ap: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    n_images: int


def ods_ois(counts: Sequence[BoundaryCounts]) -> BoundaryScores:
    """ODS, OIS and AP over a data set from each image's counts, as ``collect_eval_bdry.m``.

    Parameters
    ----------
    counts : sequence of BoundaryCounts
        One per image (:func:`boundary_pr`), all over the same thresholds.

    Returns
    -------
    BoundaryScores

    Examples
    --------
    >>> seg = np.zeros((30, 30), int); seg[:, 15:] = 1
    >>> ucm2 = np.zeros((61, 61)); ucm2[:, 30] = 0.8
    >>> s = ods_ois([boundary_pr(ucm2, [seg])])
    >>> round(s.ods["f"], 3), round(s.ois["f"], 3)
    (1.0, 1.0)
    """
    items = list(counts)
    if not items:
        raise SegsoftError("no image to score")
    ts = items[0].thresholds
    for c in items:
        if not isinstance(c, BoundaryCounts):
            raise SegsoftError(f"expected BoundaryCounts, got {type(c).__name__}")
        if c.thresholds.shape != ts.shape or not np.array_equal(c.thresholds, ts):
            raise SegsoftError("every image must be scored over the same thresholds")
    stack = np.stack([np.stack([c.cnt_r, c.sum_r, c.cnt_p, c.sum_p]) for c in items]).astype(np.float64)
    total = stack.sum(axis=0)
    r = _ratio(total[0], total[1])
    p = _ratio(total[2], total[3])
    f = _fmeasure(r, p)
    best_t, best_r, best_p, best_f = _max_f(ts, r, p)
    # OIS: each image at the first threshold of its largest F (ff = find(F == max(F)); ff(1))
    per_f = _fmeasure(_ratio(stack[:, 0], stack[:, 1]), _ratio(stack[:, 2], stack[:, 3]))
    pick = np.argmax(per_f, axis=1)
    at = stack[np.arange(len(items)), :, pick].sum(axis=0)
    r_max = float(_ratio(at[0], at[1]))
    p_max = float(_ratio(at[2], at[3]))
    return BoundaryScores(
        ods={"threshold": best_t, "recall": best_r, "precision": best_p, "f": best_f},
        ois={"recall": r_max, "precision": p_max, "f": float(_fmeasure(r_max, p_max))},
        ap=_area_pr(r, p),
        thresholds=ts.copy(),
        recall=r,
        precision=p,
        f=f,
        n_images=len(items),
    )


def _ratio(cnt: np.ndarray, total: np.ndarray) -> np.ndarray:
    """cnt ./ (sum + (sum == 0)), as the benchmark."""
    total = np.asarray(total, dtype=np.float64)
    return np.asarray(cnt, dtype=np.float64) / (total + (total == 0))


def _fmeasure(r: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    """2PR / (P + R + ((P + R) == 0)), as the benchmark."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    s = p + r
    return 2 * p * r / (s + (s == 0))


def _max_f(ts: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """collect_eval_bdry.m's maxF: the best F along the curve, linear between neighbouring thresholds.

    The MATLAB loop visits threshold 1, then for each i >= 2 the 100 points
    ``d = linspace(0, 1)`` from threshold i-1 to i, keeping a point only if
    its F is strictly larger: the first largest in that order.
    """
    d = np.linspace(0.0, 1.0, 100)
    tt = [ts[:1]]
    rr = [r[:1]]
    pp = [p[:1]]
    if ts.size > 1:
        tt.append((ts[1:, None] * d + ts[:-1, None] * (1 - d)).ravel())
        rr.append((r[1:, None] * d + r[:-1, None] * (1 - d)).ravel())
        pp.append((p[1:, None] * d + p[:-1, None] * (1 - d)).ravel())
    t_all, r_all, p_all = np.concatenate(tt), np.concatenate(rr), np.concatenate(pp)
    f_all = _fmeasure(r_all, p_all)
    k = int(np.argmax(f_all))
    return float(t_all[k]), float(r_all[k]), float(p_all[k]), float(f_all[k])


def _area_pr(r: np.ndarray, p: np.ndarray) -> float:
    """collect_eval_bdry.m's Area_PR: interp1(unique R, P, 0:0.01:1), 0 outside, summed times 0.01.

    MATLAB's ``unique`` (before R2013a) gives the last index of each
    repeated value: the precision of the highest threshold with that recall.
    """
    n = r.size
    ru, first_in_reversed = np.unique(r[::-1], return_index=True)
    if ru.size <= 1:
        return 0.0
    pu = p[n - 1 - first_in_reversed]
    ri = np.round(np.arange(101) * 0.01, 10)
    inside = (ri >= ru[0]) & (ri <= ru[-1])
    pi = np.where(inside, np.interp(ri, ru, pu), 0.0)
    return float(pi.sum() * 0.01)
