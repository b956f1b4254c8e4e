"""Scoring segmentations against human ground truth, as the BSDS500 region benchmark does.

Three region measures compare a machine segmentation ``S`` (a label map) with
each of a set of human segmentations ``G_1 .. G_m`` of the same image, and
average over the humans. Everything is computed from the contingency table
``n[i, j] = |S_i ∩ G_j|`` of pixel counts (one ``np.bincount``), never from
pixel pairs, so a 481x321 image with 7 humans takes a few milliseconds.
With ``N`` the number of pixels, ``a_i = |S_i|`` and ``b_j = |G_j|``:

Probabilistic Rand Index (PRI; Unnikrishnan, Pantofaru & Hebert, TPAMI 2007)
    The mean over humans of the Rand index, the fraction of the ``N(N-1)/2``
    pixel pairs on which ``S`` and ``G`` agree (same region in both, or
    different regions in both)::

        RI = 1 - (sum_i a_i**2 / 2 + sum_j b_j**2 / 2 - sum_ij n_ij**2) / (N (N-1) / 2)

    The mean of the per-human Rand indices equals the PRI's definition
    through pair probabilities (the PRI is linear in them). In [0, 1], higher
    is better; 1 when ``S`` equals every human.
Variation of Information (VoI; Meila 2007), in bits
    The mean over humans of ``H(S | G) + H(G | S)``, with base-2 logarithms::

        VoI = sum_ij (n_ij / N) * (log2 a_i + log2 b_j - 2 log2 n_ij)

    0 when ``S`` equals ``G``; lower is better. Bits because the benchmark's
    ``match_segmentations2.m`` uses ``log2`` (from Allen Yang's
    ``compare_segmentations.m``); multiply by ``ln 2`` for nats.
Segmentation Covering (Arbelaez, Maire, Fowlkes & Malik, TPAMI 2011)
    The covering *of the ground truth by the segmentation* (what the
    benchmark reports as "Covering": its ``cntR / sumR``): every human region
    is matched to the machine region that overlaps it best, weighted by its
    size::

        C(S -> G) = (1 / N) * sum_j b_j * max_i n_ij / (a_i + b_j - n_ij)

    averaged over humans. In [0, 1], higher is better. Not symmetric: one
    region for the whole image covers a ground truth made of regions ``G_j``
    with ``sum_j (b_j / N)**2``.

Every function takes label maps of any integer labels (any shape, all the
same). A region is a label: a label split into separate patches counts as
one region (use ``seg.regions()`` to score connected regions instead). Negative labels (-1 by convention) mark unlabelled pixels, left out of
every measure for that pair of maps: a pixel masked in ``S`` is left out
against every human, one masked in ``G_h`` only against human ``h``.

Differences from the benchmark's MATLAB code (``match_segmentations.m``,
``match_segmentations2.m``, ``evaluation_reg_image.m`` in BSR/bench): it
ignores label 0 instead of negative labels (its ground truth labels start at
1, so this changes nothing there; segsoft's clusters start at 0); and for one
image it pools the covering over humans (``sum_h cnt_h / sum_h N_h``), which
is the mean over humans used here whenever the humans label the same pixels,
as in BSDS500. Over a data set, :class:`EvaluationReport` averages PRI and
VoI over images and pools the covering as the benchmark does (covered pixels
summed over images and humans over the pixels scored, i.e. each image weighted
by its pixels times its humans); ``--thresholds`` adds the benchmark's ODS and
OIS over cuts of one hierarchy per image, and ``--boundaries`` scores each
output folder's ``ucm.npy`` with the BSDS boundary benchmark
(:mod:`segsoft.contours`: precision, recall and F at each threshold, ODS, OIS
and AP).

Files
-----
Ground truth, one file per image ``<id>``: ``<id>.npz`` holding ``segs``, an
integer ``(n_humans, H, W)`` array (the layout of ``shared/data/bsds-dev``), or
a single human as ``<id>.npy`` (``(H, W)``, or ``(n_humans, H, W)``) or
``<id>.png``. Predictions, by the same ``<id>``: a segsoft output folder
``<id>/`` with (first found) ``regions.npy``, ``labels.npy``, ``labels.tif``
(its ``GDAL_NODATA`` value becomes -1), ``probabilities.npy`` or
``probabilities.tif`` (labels = the argmax; -1 where the memberships are
NaN, or all the nodata value, i.e. transparent pixels), or a label map
``<id>.npy`` or ``<id>.png``. A label PNG must be single-channel (palette
indices, 8- or 16-bit grey): RGB PNGs are taken to be pictures, not labels.

Every file's header is checked before its data is read: for each image the
ground truth first, then the prediction. A ``.npy`` (or ``.npz`` member)
must declare a bool, integer or float dtype (object arrays are never
unpickled) and exactly the number of bytes the file holds after its header
(a truncated file or a lying header is refused, not allocated); a PNG's
declared size is read before it is decoded. A prediction must declare the
``(H, W)`` of its ground truth (``(H, W, k)`` for float memberships, whose
NaN must fill all of a pixel's memberships or none); no image may declare
over ``2**27`` pixels. A refused or unreadable file is reported, one line
naming it, for its image, and the other images are still scored.
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
import re
import stat
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import SegsoftError
from .io import _pillow_limit_lifted, _reason, atomic_write_bytes

__all__ = [
    "EvaluationReport",
    "ImageScore",
    "cut_ucm",
    "evaluate_folder",
    "evaluate_labels",
    "evaluate_many",
    "find_ground_truth",
    "find_predictions",
    "load_ground_truth",
    "load_prediction",
    "parse_thresholds",
    "probabilistic_rand_index",
    "segmentation_covering",
    "variation_of_information",
]

#: Pillow modes read as label maps: palette indices, 1-bit, 8/16/32-bit grey.
_LABEL_MODES = frozenset({"P", "1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_GT_SUFFIXES = (".npz", ".npy", ".png")  # in order of preference for one id
_PRED_SUFFIXES = (".npy", ".png")
_SHOW_IDS = 10  # missing ids listed in a summary before "..."

LabelMaps = np.ndarray | Sequence[np.ndarray]
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------
# measures


def probabilistic_rand_index(seg: np.ndarray, gts: LabelMaps) -> float:
    """Probabilistic Rand Index of a segmentation against human segmentations.

    Parameters
    ----------
    seg : array of int
        The segmentation's label map; negative labels are unlabelled pixels.
    gts : array of int, or sequence of them
        One ground truth of ``seg``'s shape, a stack ``(n_humans, *seg.shape)``
        or a list of label maps.

    Returns
    -------
    float
        The mean over humans of the Rand index (module docstring), in [0, 1].

    Raises
    ------
    SegsoftError
        Labels that are not integers (float labels must be whole numbers in
        the int32 range; NaN is unlabelled), mismatched shapes, no ground
        truth, or no pixel labelled in both ``seg`` and a ground truth.

    Examples
    --------
    >>> seg = np.array([[0, 0, 1], [0, 1, 1]])
    >>> gt = np.array([[1, 1, 1], [2, 2, 2]])
    >>> round(probabilistic_rand_index(seg, [gt]), 6)  # 7 of the 15 pairs agree
    0.466667
    """
    return float(np.mean(_per_human(seg, gts)[:, 0]))


def variation_of_information(seg: np.ndarray, gts: LabelMaps) -> float:
    """Variation of Information, in bits, between a segmentation and human segmentations.

    Parameters
    ----------
    seg : array of int
        The segmentation's label map; negative labels are unlabelled pixels.
    gts : array of int, or sequence of them
        Ground truth label maps, as for :func:`probabilistic_rand_index`.

    Returns
    -------
    float
        The mean over humans of ``H(seg | gt) + H(gt | seg)`` with base-2
        logarithms (as the BSDS benchmark), >= 0.

    Raises
    ------
    SegsoftError
        As :func:`probabilistic_rand_index`.

    Examples
    --------
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> variation_of_information(np.zeros((1, 4), int), gt)  # one region: H(gt) = 1 bit
    1.0
    >>> variation_of_information(np.array([[5, 5, 7, 7]]), gt)
    0.0
    """
    return float(np.mean(_per_human(seg, gts)[:, 1]))


def segmentation_covering(seg: np.ndarray, gts: LabelMaps) -> float:
    """Covering of human segmentations by a segmentation (Arbelaez et al. 2011).

    Parameters
    ----------
    seg : array of int
        The segmentation's label map; negative labels are unlabelled pixels.
    gts : array of int, or sequence of them
        Ground truth label maps, as for :func:`probabilistic_rand_index`.

    Returns
    -------
    float
        The mean over humans of ``(1/N) sum_R |R| max_S |R ∩ S| / |R ∪ S|``,
        ``R`` over the human's regions and ``S`` over the segmentation's,
        in [0, 1].

    Raises
    ------
    SegsoftError
        As :func:`probabilistic_rand_index`.

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 2]])
    >>> segmentation_covering(np.zeros((1, 4), int), gt)  # (3/4)**2 + (1/4)**2
    0.625
    """
    return float(np.mean(_per_human(seg, gts)[:, 2]))


def evaluate_labels(seg: np.ndarray, gts: LabelMaps) -> dict[str, float]:
    """All three measures of a segmentation against human segmentations, in one pass.

    Parameters
    ----------
    seg : array of int
        The segmentation's label map; negative labels are unlabelled pixels.
    gts : array of int, or sequence of them
        Ground truth label maps, as for :func:`probabilistic_rand_index`.

    Returns
    -------
    dict
        ``{"pri": ..., "voi": ..., "covering": ...}``, each the mean over
        humans (VoI in bits).

    Raises
    ------
    SegsoftError
        As :func:`probabilistic_rand_index`.

    Examples
    --------
    >>> gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> evaluate_labels(gt * 10, [gt, gt])
    {'pri': 1.0, 'voi': 0.0, 'covering': 1.0}
    """
    pri, voi, cov = _per_human(seg, gts).mean(axis=0)
    return {"pri": float(pri), "voi": float(voi), "covering": float(cov)}


def _per_human(seg: np.ndarray, gts: LabelMaps) -> np.ndarray:
    """(n_humans, 3) array of Rand index, VoI (bits) and covering against each human."""
    s = _as_labels(seg, "segmentation")
    maps = _ground_truth_list(gts, s.shape)
    if s.size == 0:
        raise SegsoftError("the segmentation has no pixels")
    s = s.reshape(-1)
    s_used = s >= 0
    s_all = bool(s_used.all())
    s_dense = np.full(s.shape, -1, np.int64)
    s_dense[s_used], n_s = _dense(s[s_used])
    out = np.empty((len(maps), 3))
    for h, g in enumerate(maps):
        g = g.reshape(-1)
        g_used = g >= 0
        if s_all and bool(g_used.all()):
            a, b = s_dense, g
        else:
            both = s_used & g_used
            if not both.any():
                raise SegsoftError(f"no pixel is labelled in both the segmentation and ground truth {h + 1}")
            a, b = s_dense[both], g[both]
        out[h] = _scores(a, n_s, *_dense(b))
    return out


def _scores(a: np.ndarray, n_a: int, b: np.ndarray, n_b: int) -> tuple[float, float, float]:
    """Rand index, VoI (bits) and covering of ``b`` by ``a``; labels in 0..n-1, some maybe unused."""
    n = a.size
    codes = a * n_b + b
    if n_a * n_b <= 4 * n + 65536:
        table = np.bincount(codes, minlength=n_a * n_b)
        size_a = table.reshape(n_a, n_b).sum(axis=1)
        size_b = table.reshape(n_a, n_b).sum(axis=0)
        cells = np.flatnonzero(table)
        counts = table[cells]
    else:  # many regions on both sides: only the non-empty cells
        cells, counts = np.unique(codes, return_counts=True)
        size_a = np.bincount(cells // n_b, weights=counts, minlength=n_a).astype(np.int64)
        size_b = np.bincount(cells % n_b, weights=counts, minlength=n_b).astype(np.int64)
    rows, cols = np.divmod(cells, n_b)

    # exact in int64 up to N ~ 3e9 pixels, then one rounding to float
    same_a = int(np.dot(size_a, size_a))
    same_b = int(np.dot(size_b, size_b))
    same_ab = int(np.dot(counts, counts))
    ri = 1.0 - ((same_a + same_b) / 2 - same_ab) / (n * (n - 1) / 2) if n > 1 else 1.0

    # every term is >= 0 (n_ij <= a_i, b_j): no cancellation, exactly 0 for equal maps
    ra, cb, c = size_a[rows].astype(float), size_b[cols].astype(float), counts.astype(float)
    voi = float(np.dot(c, np.log2(ra) + np.log2(cb) - 2 * np.log2(c))) / n

    best = np.zeros(n_b)
    np.maximum.at(best, cols, c / (ra + cb - c))
    covering = float(np.dot(size_b, best)) / n
    return ri, max(voi, 0.0), covering


def _dense(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative labels as indices 0..n-1 (unused ones allowed), and n.

    Small labels are used as they are; large or sparse ones are renumbered
    so that the contingency table stays small.
    """
    if x.size == 0:
        return x, 0
    hi = int(x.max())
    if hi < 4 * x.size + 65536:
        return x, hi + 1
    values, inverse = np.unique(x, return_inverse=True)
    return inverse.reshape(-1), int(values.size)


def _as_labels(arr: object, what: str) -> np.ndarray:
    """An int64 label map; floats must hold whole numbers in the int32 range (NaN becomes -1).

    ``what`` starts every message (a file name, or "segmentation").
    """
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise SegsoftError(f"{what}: labels too large for int64 (at most {np.iinfo(np.int64).max})")
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "f":
        return _float_labels(a, what)
    raise SegsoftError(f"{what}: has dtype {a.dtype}, not integer region labels")


#: The labels a float label map may hold: whole numbers in the int32 range, all
#: exact in float32 and float64 alike (float16 stops at 65504, well inside it).
_FLOAT_LABEL_RANGE = (float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max))


def _float_labels(a: np.ndarray, what: str) -> np.ndarray:
    """Whole-number float labels as int64, -1 where NaN; every check before the cast.

    The checks run in the array's own dtype and compare with Python floats
    only after ``min``/``max`` (a float16 map compared with 2**53 would
    overflow the scalar and print numpy's RuntimeWarning), so no value can
    reach the int64 cast that the cast would not represent exactly.
    """
    nan = np.isnan(a)
    finite = np.where(nan, a.dtype.type(0), a)
    infinite = np.isinf(finite)
    if infinite.any():
        raise SegsoftError(f"{what}: float labels must be whole numbers, not infinite ({_first(infinite)})")
    fraction = finite != np.round(finite)
    if fraction.any():
        at = tuple(np.argwhere(fraction)[0])
        raise SegsoftError(
            f"{what}: float labels must be whole numbers (non-integer {float(finite[at])!r} {_first(fraction)})"
        )
    lo, hi = _FLOAT_LABEL_RANGE
    small, large = float(finite.min(initial=0)), float(finite.max(initial=0))
    if small < lo or large > hi:
        bad = small if small < lo else large
        raise SegsoftError(f"{what}: float labels must be within the int32 range {lo:.0f} to {hi:.0f}, got {bad:.10g}")
    return np.where(nan, -1, finite.astype(np.int64))


def _first(mask: np.ndarray) -> str:
    """Where a bad value is: "at N pixels, first at row r, column c" (or its index for other shapes)."""
    at = tuple(int(i) for i in np.argwhere(mask)[0])
    where = f"row {at[-2]}, column {at[-1]}" if len(at) >= 2 else f"index {at}"
    count = int(mask.sum())
    return f"at {_pixels(count)}, first at {where}" if count > 1 else f"at {where}"


def _ground_truth_list(gts: LabelMaps, shape: tuple[int, ...]) -> list[np.ndarray]:
    if isinstance(gts, np.ndarray) and gts.ndim == len(shape):
        items: list = [gts]
    elif isinstance(gts, np.ndarray) and gts.ndim == len(shape) + 1:
        items = list(gts)
    elif isinstance(gts, np.ndarray):
        raise SegsoftError(f"ground truth of shape {gts.shape} does not match the segmentation's {shape}")
    else:
        items = list(gts)
    if not items:
        raise SegsoftError("no ground truth segmentations to compare with")
    maps = []
    for h, g in enumerate(items):
        g = _as_labels(g, f"ground truth {h + 1}")
        if g.shape != shape:
            raise SegsoftError(f"segmentation of shape {shape} does not match ground truth {h + 1} of shape {g.shape}")
        maps.append(g)
    return maps


# --------------------------------------------------------------------------
# files


def load_ground_truth(path: str | os.PathLike) -> list[np.ndarray]:
    """Read the human segmentations of one image.

    The file's header is checked before any of its data is read (see
    *Files* in the module docstring), so a corrupt or lying header is a
    one-line error, not an allocation of what it claims.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` with an integer array ``segs`` of shape ``(n_humans, H, W)``
        (or ``(H, W)``); ``.npy`` with ``(H, W)`` or ``(n_humans, H, W)``;
        or a single-channel ``.png`` label map (one human).

    Returns
    -------
    list of ndarray of int64 (H, W)
        One label map per human; negative labels mark unlabelled pixels.

    Raises
    ------
    SegsoftError
        ``"<path>: <problem>"``: no such file, unreadable or corrupt, no
        ``segs`` array, wrong shape or dtype, a header that does not match
        the file's size, too many pixels, no humans, unknown extension.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     name = os.path.join(folder, "1.npz")
    ...     np.savez_compressed(name, segs=np.ones((3, 4, 5), np.uint16))
    ...     gts = load_ground_truth(name)
    >>> len(gts), gts[0].shape, gts[0].dtype
    (3, (4, 5), dtype('int64'))
    """
    name = os.fsdecode(path)
    suffix = Path(name).suffix.lower()

    def check(shape: tuple[int, ...], dtype: np.dtype | None = None) -> None:
        if len(shape) not in (2, 3) or 0 in shape:
            raise SegsoftError(f"{name}: ground truth of shape {shape} (expected (n_humans, H, W) or (H, W))")
        _check_pixels(name, shape[-2:])

    if suffix == ".npz":
        arr = _read_npz(name, "segs", check)
    elif suffix == ".npy":
        arr = _read_npy(name, check)
    elif suffix == ".png":
        arr = _read_label_png(name, check)
    else:
        raise SegsoftError(f"{name}: unknown ground truth format (expected .npz, .npy or .png)")
    if arr.ndim == 2:
        arr = arr[None]
    labels = _labels_of_file(arr, name)
    return list(labels)


def load_prediction(path: str | os.PathLike, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a predicted segmentation as a label map.

    The file's header is checked before any of its data is read (see
    *Files* in the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        A segsoft output folder (``regions.npy`` if it was written with
        ``--regions``, else ``labels.npy``, else ``labels.tif``, else
        ``probabilities.npy`` or ``probabilities.tif`` whose argmax gives
        the labels and whose transparent pixels become -1), a ``.npy``
        label map ``(H, W)`` (or memberships ``(H, W, K)``), a
        single-channel ``.png`` label map, or a ``.tif`` as segsoft writes
        them (``(H, W)`` labels, ``(k, H, W)`` memberships).
    shape : (int, int), optional
        The ``(H, W)`` the prediction must have (its ground truth's): a
        file that declares another is refused before its data is read.

    Returns
    -------
    ndarray of int64 (H, W)
        Region labels; -1 where unlabelled.

    Raises
    ------
    SegsoftError
        ``"<path>: <problem>"``.

    Examples
    --------
    >>> import os, tempfile
    >>> p = np.array([[[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan]]], np.float32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     np.save(os.path.join(folder, "probabilities.npy"), p)
    ...     load_prediction(folder).tolist()
    [[0, 1, -1]]
    """
    return _load_prediction(os.fsdecode(path), shape, None)


def _prediction_file(name: str) -> str:
    """The file a prediction path stands for: a segsoft output folder's regions, labels or memberships."""
    p = Path(name)
    if p.is_dir():
        for f in _PRED_FILES:
            if (p / f).is_file():
                return str(p / f)
        raise SegsoftError(
            f"{name}: folder has no labels.npy or probabilities.npy (nor regions.npy, labels.tif, probabilities.tif)"
        )
    return name


def _load_prediction(name: str, shape: tuple[int, ...] | None, gt_name: str | None) -> np.ndarray:
    name = _prediction_file(name)
    suffix = Path(name).suffix.lower()

    def check(declared: tuple[int, ...], dtype: np.dtype | None = None) -> None:
        # float memberships, or segsoft's --probabilities-dtype uint8 encoding (membership x 254, 255 transparent)
        memberships = len(declared) == 3 and dtype is not None and (dtype.kind == "f" or dtype == np.uint8)
        if not (len(declared) == 2 or memberships) or 0 in declared:
            raise SegsoftError(
                f"{name}: label map of shape {declared} (expected (H, W) labels or (H, W, k) memberships, "
                "float or segsoft's uint8)"
            )
        if shape is not None and tuple(declared[:2]) != tuple(shape):
            against = f" ({gt_name})" if gt_name else ""
            raise SegsoftError(f"{name}: shape {declared} does not match the ground truth's {tuple(shape)}{against}")
        _check_pixels(name, declared[:2])

    if suffix == ".npy":
        arr = _read_npy(name, check)
        if arr.ndim == 3:  # memberships, as check() let through
            if arr.dtype == np.uint8:  # 255 marks a transparent pixel, in every plane
                arr = np.where(arr == 255, np.float32(np.nan), arr.astype(np.float32))
            return _argmax_labels(arr, name)
    elif suffix == ".png":
        arr = _read_label_png(name, check)
    elif suffix in (".tif", ".tiff"):
        return _read_tiff_prediction(name, check)
    else:
        raise SegsoftError(f"{name}: unknown prediction format (expected a folder, .npy, .png or .tif)")
    return _labels_of_file(arr, name)


def _read_tiff_prediction(name: str, check: HeaderCheck) -> np.ndarray:
    """Labels of a segsoft TIFF: ``labels.tif`` (H, W) or ``probabilities.tif`` (k, H, W), one page.

    The ``GDAL_NODATA`` value marks transparent pixels (-1). The page's
    shape and dtype are checked before its strips are decoded.
    """
    _check_regular(name)
    try:
        import tifffile

        with tifffile.TiffFile(name) as tif:
            if len(tif.pages) != 1:
                raise SegsoftError(
                    f"{name}: has {len(tif.pages)} pages (expected one: (H, W) labels or (k, H, W) memberships)"
                )
            page = tif.pages[0]
            axes, shape, dtype = page.axes, tuple(int(d) for d in page.shape), page.dtype
            if dtype is None or dtype.kind not in "biuf":
                raise SegsoftError(f"{name}: holds {dtype} samples, not integer labels or memberships")
            if int(page.photometric) not in (0, 1, 3):  # grey (white or black is zero) and palette
                raise SegsoftError(
                    f"{name}: a {page.photometric.name} picture, not labels or memberships "
                    "(expected grey or palette samples)"
                )
            nodata = _tiff_nodata(page)
            # probabilities.tif of one cluster is a plain grey page: memberships all the same
            memberships = len(axes) == 3 or (Path(name).stem == "probabilities" and dtype.kind == "f")
            if axes not in ("YX", "SYX", "YXS"):
                raise SegsoftError(
                    f"{name}: TIFF of axes {axes} {shape} (expected (H, W) labels or (k, H, W) memberships)"
                )
            hw = shape[1:] if axes == "SYX" else shape[:2]
            k = 1 if axes == "YX" else (shape[0] if axes == "SYX" else shape[2])
            check((*hw, k) if memberships else hw, np.dtype(np.float32) if memberships else dtype)
            memory = _physical_memory()
            need = math.prod(shape) * (dtype.itemsize + 4 + 8)  # the data, float memberships, int64 labels
            if memory is not None and need > memory:
                raise SegsoftError(
                    f"{name}: would need {_size(need)} of memory, more than this machine's {_size(memory)}"
                )
            arr = page.asarray()  # palette images give their indices, not colours
    except SegsoftError:
        raise
    except MemoryError:
        raise SegsoftError(f"{name}: not enough memory to decode it") from None
    except OSError as e:
        raise _open_error(name, e) from None
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on bad data
        raise SegsoftError(f"{name}: not a TIFF tifffile can read ({_reason(e)})") from None
    if memberships:
        p = arr.reshape(*hw, 1) if axes == "YX" else (np.moveaxis(arr, 0, -1) if axes == "SYX" else arr)
        # float32 or float64 kept as they are: float64 memberships above float32's range would
        # overflow the cast (numpy's RuntimeWarning, then "infinite memberships" for a finite file)
        p = p if p.dtype.kind == "f" and p.dtype.itemsize >= 4 else p.astype(np.float32)
        if nodata is not None and not math.isnan(nodata):
            p[_equals(p, nodata).all(axis=-1)] = np.nan  # a transparent pixel has the nodata value in every band
        return _argmax_labels(p, name)
    mask = _equals(arr, nodata) if nodata is not None and not math.isnan(nodata) else None
    if mask is not None and arr.dtype.kind == "f":
        arr = np.where(mask, np.nan, arr)  # nodata pixels are unlabelled, not labels that must be whole
    labels = _labels_of_file(arr, name)
    if mask is not None:
        labels[mask] = -1
    return labels


def _equals(arr: np.ndarray, value: float) -> np.ndarray:
    """``arr == value`` without numpy's overflow warning: a value the dtype cannot hold matches nothing.

    ``float32_array == 1e300`` casts 1e300 to float32 (inf, with "overflow
    encountered in cast"); a GDAL_NODATA tag can hold any number. A value
    the float dtype only rounds ("0.1" for float32) still matches, as GDAL
    means it; one it overflows or flushes to 0 does not.
    """
    if arr.dtype.kind == "f":
        with np.errstate(all="ignore"):  # the cast is checked just below, not trusted
            cast = np.asarray(value).astype(arr.dtype)
        lost = (math.isinf(float(cast)) and not math.isinf(value)) or (float(cast) == 0 and value != 0)
        return np.zeros(arr.shape, bool) if lost else arr == cast
    if arr.dtype.kind in "iu" and (not float(value).is_integer() or not _fits(int(value), arr.dtype)):
        return np.zeros(arr.shape, bool)
    return arr == (int(value) if arr.dtype.kind in "iu" else value)


def _fits(value: int, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _tiff_nodata(page: Any) -> float | None:
    """The page's GDAL_NODATA (tag 42113) value, None without one (or one that is not a number)."""
    tag = page.tags.get(42113)
    if tag is None:
        return None
    try:
        return float(str(tag.value).strip().rstrip("\x00"))
    except ValueError:
        return None


def _argmax_labels(p: np.ndarray, name: str) -> np.ndarray:
    """Labels of (H, W, k) memberships: the argmax; -1 where all of a pixel's memberships are NaN."""
    nan = np.isnan(p)
    transparent = nan.all(axis=-1)  # how segsoft writes a transparent pixel
    partial = nan.any(axis=-1) & ~transparent
    if partial.any():
        r, c = np.argwhere(partial)[0]
        raise SegsoftError(
            f"{name}: NaN in some but not all memberships of {_pixels(int(partial.sum()))} "
            f"(first at row {r}, column {c}); only a transparent pixel may be NaN, in all of them"
        )
    if transparent.all():
        raise SegsoftError(f"{name}: every membership is NaN: no pixel to score")
    infinite = np.isinf(p).any(axis=-1)
    if infinite.any():
        r, c = np.argwhere(infinite)[0]
        raise SegsoftError(
            f"{name}: infinite memberships at {_pixels(int(infinite.sum()))} (first at row {r}, column {c})"
        )
    labels = np.argmax(np.where(nan, -np.inf, p), axis=-1).astype(np.int64)
    labels[transparent] = -1
    return labels


def _pixels(n: int) -> str:
    return f"{n} pixel{'s' * (n != 1)}"


def _labels_of_file(arr: np.ndarray, name: str) -> np.ndarray:
    return _as_labels(arr, name)


def _open_error(name: str, e: BaseException) -> SegsoftError:
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return SegsoftError(f"{name}: no such file")
    if isinstance(e, IsADirectoryError):
        return SegsoftError(f"{name}: is a directory")
    if isinstance(e, PermissionError):
        return SegsoftError(f"{name}: permission denied")
    return SegsoftError(f"{name}: cannot read ({_reason(e)})")


# what numpy raises on a truncated, corrupt or foreign file
_NUMPY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error)

#: The most pixels (H * W) of an image evaluated: 2**27, about 11600 x 11600
#: or 870 BSDS images. A header declaring more is taken as corrupt or hostile
#: (scoring needs several int64 copies of every map), and it keeps PNGs under
#: Pillow's own decompression-bomb limit.
_MAX_PIXELS = 1 << 27

#: Deflate expands at most ~1032 times: an .npz member claiming more is lying.
_MAX_DEFLATE_RATIO = 1100

# a header check: raises SegsoftError; gets the declared shape and, for arrays, dtype
HeaderCheck = Callable[..., None]


def _size(n: int) -> str:
    """A byte count for a message: '129 bytes', '80.0 GB'."""
    if n < 1000:
        return f"{n} byte{'s' * (n != 1)}"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on every platform
        return None


def _check_pixels(name: str, hw: Sequence[int]) -> None:
    h, w = int(hw[0]), int(hw[1])
    if h * w > _MAX_PIXELS:
        raise SegsoftError(
            f"{name}: declares {h}x{w} pixels, more than the {_MAX_PIXELS:,} that evaluate reads (corrupt header?)"
        )


def _check_header(
    name: str, shape: tuple[int, ...], dtype: np.dtype, available: int, what: str = "the file holds"
) -> None:
    """Refuse a .npy header before its data is read: non-numeric dtype, a size the file does not have, too big.

    ``available`` is the number of bytes after the header.
    """
    if dtype.hasobject:
        raise SegsoftError(f"{name}: holds Python objects (dtype {dtype}), which are never unpickled; expected numbers")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise SegsoftError(f"{name}: holds {dtype} values, not integer labels or float memberships")
    if any(d < 0 for d in shape):
        raise SegsoftError(f"{name}: header declares an impossible shape {shape}")
    count = math.prod(shape)  # Python ints: no overflow whatever the header says
    claimed = count * dtype.itemsize
    if claimed != available:
        said, held = _size(claimed), _size(available)
        if said == held:  # a few bytes off: rounding would hide the difference
            said, held = f"{claimed} bytes", f"{available} bytes"
        raise SegsoftError(
            f"{name}: header claims {said} of data ({shape} {dtype}) but {what} {held} after its header "
            "(truncated or corrupt)"
        )
    memory = _physical_memory()
    need = claimed + 8 * count  # the data, then its int64 labels
    if memory is not None and need > memory:
        raise SegsoftError(
            f"{name}: a {shape} {dtype} array would need {_size(need)} of memory, "
            f"more than this machine's {_size(memory)}"
        )


def _read_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the .npy stream ``f``, leaving it at the start of the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):  # 3.0 only differs in utf-8 field names, refused as non-numeric anyway
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    return tuple(int(d) for d in shape), dtype


def _check_regular(name: str) -> None:
    """Refuse what is not a plain file before opening it: a FIFO would block, a device never end."""
    try:
        mode = os.stat(name).st_mode
    except OSError as e:
        raise _open_error(name, e) from None
    if stat.S_ISDIR(mode):
        raise SegsoftError(f"{name}: is a directory")
    if not stat.S_ISREG(mode):
        raise SegsoftError(f"{name}: not a regular file")


def _read_npy(name: str, check: HeaderCheck) -> np.ndarray:
    _check_regular(name)
    try:
        with open(name, "rb") as f:
            magic = f.read(4)
            if magic.startswith(b"PK"):
                raise SegsoftError(f"{name}: an .npz archive, not a .npy array")
            f.seek(0)
            shape, dtype = _read_header(f)
            _check_header(name, shape, dtype, os.fstat(f.fileno()).st_size - f.tell())
            check(shape, dtype)
            f.seek(0)  # the same open file: what was checked is what is read
            return np.lib.format.read_array(f, allow_pickle=False)
    except SegsoftError:
        raise
    except MemoryError:
        raise SegsoftError(f"{name}: not enough memory to load it") from None
    except _NUMPY_ERRORS as e:
        raise _open_error(name, e) from None


def _read_npz(name: str, key: str, check: HeaderCheck) -> np.ndarray:
    _check_regular(name)
    try:
        with open(name, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise SegsoftError(f"{name}: a .npy array, not an .npz archive")
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                members = {m.removesuffix(".npy"): m for m in z.namelist()}
                if key not in members:
                    raise SegsoftError(f"{name}: no '{key}' array (has: {', '.join(members) or 'nothing'})")
                info = z.getinfo(members[key])
                stored = info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
                inflated = info.compress_type == zipfile.ZIP_DEFLATED and (
                    info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024
                )
                if stored or inflated:
                    raise SegsoftError(
                        f"{name}: its '{key}' member claims {_size(info.file_size)} from "
                        f"{_size(info.compress_size)} compressed (corrupt archive)"
                    )
                with z.open(info) as member:
                    shape, dtype = _read_header(member)
                    _check_header(name, shape, dtype, info.file_size - member.tell(), f"its '{key}' member holds")
                check(shape, dtype)
                with z.open(info) as member:
                    return np.lib.format.read_array(member, allow_pickle=False)
    except SegsoftError:
        raise
    except MemoryError:
        raise SegsoftError(f"{name}: not enough memory to load its '{key}' array") from None
    except _NUMPY_ERRORS as e:
        raise _open_error(name, e) from None


def _read_label_png(name: str, check: HeaderCheck) -> np.ndarray:
    _check_regular(name)
    try:
        # Pillow reads only the header here; its bomb limit is replaced by check() on the declared size
        with _pillow_limit_lifted(), warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(name) as im:
                if im.mode not in _LABEL_MODES:
                    raise SegsoftError(
                        f"{name}: a {im.mode} picture, not a label map (expected a palette or greyscale PNG)"
                    )
                w, h = im.size
                check((h, w))
                im.load()
                return np.array(im)
    except SegsoftError:
        raise
    except MemoryError:
        raise SegsoftError(f"{name}: not enough memory to decode it") from None
    except UnidentifiedImageError:
        raise SegsoftError(f"{name}: not an image Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, EOFError, PILImage.DecompressionBombError) as e:
        raise _open_error(name, e) from None


def _is_label_png(path: Path) -> bool:
    """False only for PNGs that open as pictures (RGB, RGBA, ...); broken or huge ones count as labels."""
    if not path.is_file():
        return True  # a FIFO would block Pillow: loading refuses it with its name
    try:
        with _pillow_limit_lifted(), warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                return im.mode in _LABEL_MODES
    except (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, PILImage.DecompressionBombError):
        return True  # let loading report what is wrong with it


def _natural_key(text: str) -> list:
    # "2092" before "22090"; alternate (str, int) chunks keep keys comparable
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _as_folder(path: str | os.PathLike, what: str) -> Path:
    p = Path(os.fsdecode(path))
    if not p.exists():
        raise SegsoftError(f"{p}: no such folder")
    if not p.is_dir():
        raise SegsoftError(f"{p}: not a folder of {what}")
    return p


def _entries(folder: Path) -> list[Path]:
    try:
        # hidden names: temporary files of an interrupted atomic write, .DS_Store, ...
        return sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as e:
        raise _open_error(str(folder), e) from None


def find_ground_truth(gt_dir: str | os.PathLike) -> dict[str, Path]:
    """Ground truth files of a folder, by image id.

    Parameters
    ----------
    gt_dir : str or os.PathLike
        A folder of ``<id>.npz``, ``<id>.npy`` or ``<id>.png`` files (for one
        id, the first in that order is used), or a data set folder whose
        ``gt/`` subfolder holds them (as ``shared/data/bsds-dev``).

    Returns
    -------
    dict of str to Path
        In natural order of the ids (``"2092"`` before ``"22090"``).

    Raises
    ------
    SegsoftError
        The folder does not exist, is a file, or holds no ground truth.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for i in ("10", "9"):
    ...         np.save(Path(folder, i + ".npy"), np.ones((2, 2), int))
    ...     list(find_ground_truth(folder))
    ['9', '10']
    """
    folder = _as_folder(gt_dir, "ground truth")
    found = _by_id(folder, _GT_SUFFIXES, folders=False)
    if not found and (folder / "gt").is_dir():
        found = _by_id(folder / "gt", _GT_SUFFIXES, folders=False)
    if not found:
        raise SegsoftError(f"{folder}: no ground truth files (<id>.npz, <id>.npy or <id>.png)")
    return found


def find_predictions(pred_dir: str | os.PathLike) -> dict[str, Path]:
    """Predictions in a folder, by image id.

    Parameters
    ----------
    pred_dir : str or os.PathLike
        A folder of segsoft output folders ``<id>/`` (with ``regions.npy``,
        ``labels.npy``, ``labels.tif``, ``probabilities.npy`` or
        ``probabilities.tif``) and/or label maps ``<id>.npy``, ``<id>.png``
        (single-channel PNGs only: RGB ones are pictures). For one id, a
        folder comes first, then ``.npy``, then ``.png``.

    Returns
    -------
    dict of str to Path
        In natural order of the ids; empty when the folder holds none (a
        folder of photos, for instance).

    Raises
    ------
    SegsoftError
        The folder does not exist or is a file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     Path(folder, "cat").mkdir()
    ...     np.save(Path(folder, "cat", "labels.npy"), np.zeros((2, 2), int))
    ...     np.save(Path(folder, "dog.npy"), np.zeros((2, 2), int))
    ...     {k: v.name for k, v in find_predictions(folder).items()}
    {'cat': 'cat', 'dog': 'dog.npy'}
    """
    return _by_id(_as_folder(pred_dir, "predictions"), _PRED_SUFFIXES, folders=True)


# what makes a folder a segsoft output, in order of preference: labels.tif before the memberships,
# as it is the argmax exactly (uint8 memberships can tie) and smaller to read
_PRED_FILES = ("regions.npy", "labels.npy", "labels.tif", "probabilities.npy", "probabilities.tif")


def _by_id(folder: Path, suffixes: tuple[str, ...], folders: bool) -> dict[str, Path]:
    found: dict[str, tuple[int, Path]] = {}
    for entry in _entries(folder):
        if entry.is_dir():
            if not folders or not any((entry / f).is_file() for f in _PRED_FILES):
                continue
            key, rank = entry.name, -1
        else:
            suffix = entry.suffix.lower()
            if suffix not in suffixes or (suffix == ".png" and not _is_label_png(entry)):
                continue
            key, rank = entry.stem, suffixes.index(suffix)
        if key not in found or rank < found[key][0]:
            found[key] = (rank, entry)
    return {k: found[k][1] for k in sorted(found, key=_natural_key)}


# --------------------------------------------------------------------------
# many images


@dataclass(frozen=True)
class ImageScore:
    """The scores of one image: each measure is the mean over its humans."""

    id: str
    pri: float
    voi: float
    covering: float
    n_regions: int  #: distinct labels in the prediction (unlabelled pixels not counted)
    n_humans: int
    #: pixels scored, summed over the humans: the image's weight in the pooled covering (0: not known)
    weight: int = 0


@dataclass
class EvaluationReport:
    """Scores of predictions against ground truth, image by image.

    Attributes
    ----------
    rows : list of ImageScore
        The images scored, in natural order of their ids.
    missing : list of str
        Ids with ground truth but no prediction.
    errors : dict of str to str
        Ids whose prediction or ground truth could not be read or compared,
        with a one-line message naming the file.
    extra : list of str
        Ids with a prediction but no ground truth (not scored).
    allow_missing : bool
        Scoring a subset on purpose: ids in ``missing`` do not make the
        report fail (``ok``), and the summary counts them in one line.
    thresholds : tuple of float
        The cuts of ``evaluate_directory(..., thresholds=)``, ascending
        (empty: none).
    sweeps : dict of str to ndarray
        Per scored id, a ``(len(thresholds), 5)`` array: PRI, VoI, covering,
        regions and covering weight of each cut (:attr:`ods`, :attr:`ois`).
    boundaries : dict of str to segsoft.contours.BoundaryCounts
        Per scored id, the boundary benchmark's counts of its ``ucm.npy``
        (``evaluate_directory(..., boundaries=True)``; :attr:`boundary_scores`).

    Examples
    --------
    >>> r = EvaluationReport([ImageScore("1", 0.8, 1.5, 0.6, 4, 5), ImageScore("2", 0.6, 2.5, 0.4, 6, 5)],
    ...                      missing=["3"])
    >>> {k: round(v, 6) for k, v in r.means.items()}
    {'pri': 0.7, 'voi': 2.0, 'covering': 0.5, 'n_regions': 5.0}
    >>> r.n_images, r.ok
    (3, False)
    """

    rows: list[ImageScore] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    allow_missing: bool = False
    thresholds: tuple[float, ...] = ()
    sweeps: dict[str, np.ndarray] = field(default_factory=dict)
    boundaries: dict[str, Any] = field(default_factory=dict)

    @property
    def boundary_scores(self) -> Any:
        """The boundary benchmark over the scored images (:func:`segsoft.contours.ods_ois`), or None.

        ODS, OIS and AP of the images in :attr:`rows` that have boundary
        counts; None without ``boundaries`` or scored images.
        """
        counts = [self.boundaries[r.id] for r in self.rows if r.id in self.boundaries]
        if not counts:
            return None
        from .contours import ods_ois

        return ods_ois(counts)

    @property
    def means(self) -> dict[str, float]:
        """Each measure over the scored images (NaN when none was).

        PRI, VoI and the region count are means over images; Covering is
        pooled as the benchmark pools it: the covered pixels summed over
        images and humans, divided by the pixels scored (each image weighs
        its pixels times its humans). Rows without a weight (made by hand)
        fall back to the plain mean.
        """
        keys = ("pri", "voi", "covering", "n_regions")
        if not self.rows:
            return {k: math.nan for k in keys}
        means = {k: float(np.mean([getattr(r, k) for r in self.rows])) for k in keys}
        weights = np.array([r.weight for r in self.rows], np.float64)
        if (weights > 0).all():
            means["covering"] = float(np.dot(weights, [r.covering for r in self.rows]) / weights.sum())
        return means

    @property
    def ods(self) -> dict[str, tuple[float, float]]:
        """Optimal data set scale: per measure, its best value with one threshold for every image, and that threshold.

        Over :attr:`thresholds` (``evaluate_directory(..., thresholds=)``),
        each threshold scored as :attr:`means` scores one cut (PRI and VoI
        averaged over images, Covering pooled); the best threshold is chosen
        for each measure on its own, as the benchmark's ODS. Empty without
        thresholds or scored images.
        """
        table = self._sweep_table()
        if table is None:
            return {}
        sweep, weights = table
        pri, voi = sweep[..., 0].mean(axis=0), sweep[..., 1].mean(axis=0)
        cov = (sweep[..., 2] * weights).sum(axis=0) / weights.sum(axis=0)
        t = self.thresholds
        i, j, c = int(np.argmax(pri)), int(np.argmin(voi)), int(np.argmax(cov))
        return {"pri": (float(pri[i]), t[i]), "voi": (float(voi[j]), t[j]), "covering": (float(cov[c]), t[c])}

    @property
    def ois(self) -> dict[str, float]:
        """Optimal image scale: each image at its own best threshold, per measure, then combined as :attr:`means`.

        An upper bound for any rule that picks the cut per image; empty
        without thresholds or scored images.
        """
        table = self._sweep_table()
        if table is None:
            return {}
        sweep, weights = table
        best = np.argmax(sweep[..., 2], axis=1)
        rows = np.arange(len(sweep))
        cov = float((sweep[rows, best, 2] * weights[rows, best]).sum() / weights[rows, best].sum())
        return {
            "pri": float(sweep[..., 0].max(axis=1).mean()),
            "voi": float(sweep[..., 1].min(axis=1).mean()),
            "covering": cov,
        }

    def _sweep_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(images, thresholds, 4) scores of the scored images and their covering weights, or None."""
        ids = [r.id for r in self.rows if r.id in self.sweeps]
        if not self.thresholds or not ids:
            return None
        sweep = np.stack([self.sweeps[i] for i in ids])
        weights = sweep[..., 4] if (sweep[..., 4] > 0).all() else np.ones(sweep.shape[:2])
        return sweep, weights

    @property
    def n_images(self) -> int:
        """Images with ground truth: scored, missing or failed."""
        return len(self.rows) + len(self.missing) + len(self.errors)

    @property
    def ok(self) -> bool:
        """Every image with ground truth was scored (with ``allow_missing``: every one with a prediction)."""
        return bool(self.rows) and not self.errors and (self.allow_missing or not self.missing)

    def summary(self) -> str:
        """A few aligned lines for a terminal: counts, the means, then what is missing or failed.

        A long list of missing ids is cut to its first few and a count.

        Examples
        --------
        >>> print(EvaluationReport([ImageScore("1", 0.8, 1.5, 0.6, 4, 5)], missing=["3"]).summary())
        images    1 scored, 1 missing, 0 failed (2 with ground truth)
        PRI       0.8000
        VoI       1.5000 bits
        Covering  0.6000
        regions   4.0 per image
        missing   3 (1 without a prediction; --allow-missing scores only the images that have one)
        >>> report = EvaluationReport([ImageScore("1", 0.8, 1.5, 0.6, 4, 5)], missing=["3", "4"], allow_missing=True)
        >>> print(report.summary().splitlines()[-1])
        subset    scored 1 of 3 ground-truth images (2 without a prediction, --allow-missing)
        """
        m = self.means
        lines = [
            (
                f"images    {len(self.rows)} scored, {len(self.missing)} missing, {len(self.errors)} failed "
                f"({self.n_images} with ground truth)"
            )
        ]
        if self.rows:
            lines += [
                f"PRI       {m['pri']:.4f}",
                f"VoI       {m['voi']:.4f} bits",
                f"Covering  {m['covering']:.4f}",
                f"regions   {m['n_regions']:.1f} per image",
            ]
            ods, ois = self.ods, self.ois
            if ods:
                t = self.thresholds
                lines += [
                    (
                        f"ODS       PRI {ods['pri'][0]:.4f} (t={ods['pri'][1]:g}), VoI {ods['voi'][0]:.4f} bits "
                        f"(t={ods['voi'][1]:g}), Covering {ods['covering'][0]:.4f} (t={ods['covering'][1]:g})"
                    ),
                    f"OIS       PRI {ois['pri']:.4f}, VoI {ois['voi']:.4f} bits, Covering {ois['covering']:.4f}",
                    f"cuts      {len(t)} thresholds from {min(t):g} to {max(t):g}, one segmentation per image",
                ]
            bdry = self.boundary_scores
            if bdry is not None:
                o, i, t = bdry.ods, bdry.ois, bdry.thresholds
                lines += [
                    (
                        f"boundary  ODS F {o['f']:.4f} (P {o['precision']:.4f}, R {o['recall']:.4f}, "
                        f"t={o['threshold']:.4g}), OIS F {i['f']:.4f} (P {i['precision']:.4f}, "
                        f"R {i['recall']:.4f}), AP {bdry.ap:.4f}"
                    ),
                    (
                        f"          BSDS boundary benchmark of ucm.npy, {len(t)} thresholds from {t.min():g} "
                        f"to {t.max():g}, {bdry.n_images} image{'s' * (bdry.n_images != 1)}"
                    ),
                ]
        else:  # "nan" reads as a score; say that there is none
            lines += [f"{k:<10}n/a (no image scored)" for k in ("PRI", "VoI", "Covering")]
        if self.missing and self.allow_missing:
            lines.append(
                f"subset    scored {len(self.rows)} of {self.n_images} ground-truth images "
                f"({len(self.missing)} without a prediction, --allow-missing)"
            )
        elif self.missing:
            shown = " ".join(self.missing[:_SHOW_IDS]) + (" ..." if len(self.missing) > _SHOW_IDS else "")
            lines.append(
                f"missing   {shown} ({len(self.missing)} without a prediction; "
                "--allow-missing scores only the images that have one)"
            )
        lines += [f"failed    {message}" for message in self.errors.values()]
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one line per image with ground truth, atomically.

        Columns ``id, pri, voi, covering, n_regions, n_humans, error``; a
        missing or failed image has empty scores and its reason in ``error``
        (``missing prediction`` or the message). Ids in natural order. With
        :attr:`boundaries`, four more columns before ``error``:
        ``bdry_threshold, bdry_recall, bdry_precision, bdry_f``, each image at
        its own best threshold (the benchmark's per-image best, as in OIS).

        Parameters
        ----------
        path : str or os.PathLike
            The CSV file; its folder is created if needed.

        Returns
        -------
        Path

        Raises
        ------
        SegsoftError
            ``"<path>: cannot write (<reason>)"``.

        Examples
        --------
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     out = EvaluationReport([ImageScore("1", 0.75, 1.5, 0.5, 4, 5)], ["2"]).to_csv(Path(folder, "s.csv"))
        ...     print(out.read_text(), end="")
        id,pri,voi,covering,n_regions,n_humans,error
        1,0.75,1.5,0.5,4,5,
        2,,,,,,missing prediction
        """
        bdry = bool(self.boundaries)
        blank = [""] * (9 if bdry else 5)

        def best(image_id: str) -> list[str]:
            if not bdry:
                return []
            c = self.boundaries.get(image_id)
            if c is None:
                return ["", "", "", ""]
            k = int(np.argmax(c.f))
            return [repr(float(v[k])) for v in (c.thresholds, c.recall, c.precision, c.f)]

        lines: list[tuple[str, list]] = [
            (r.id, [r.id, repr(r.pri), repr(r.voi), repr(r.covering), r.n_regions, r.n_humans, *best(r.id), ""])
            for r in self.rows
        ]
        lines += [(i, [i, *blank, "missing prediction"]) for i in self.missing]
        lines += [(i, [i, *blank, message]) for i, message in self.errors.items()]
        buf = _io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        head = ["id", "pri", "voi", "covering", "n_regions", "n_humans"]
        head += ["bdry_threshold", "bdry_recall", "bdry_precision", "bdry_f"] if bdry else []
        out.writerow([*head, "error"])
        out.writerows(row for _, row in sorted(lines, key=lambda item: _natural_key(item[0])))
        target = Path(os.fsdecode(path))
        atomic_write_bytes(target, buf.getvalue().encode("utf-8"))
        return target


def evaluate_many(
    predictions: Mapping[str, str | os.PathLike | np.ndarray],
    ground_truth: Mapping[str, str | os.PathLike | LabelMaps],
    progress: Progress | None = None,
    *,
    allow_missing: bool = False,
) -> EvaluationReport:
    """Score predictions against ground truth, matched by image id.

    Each image's ground truth is read first, so that a prediction file
    whose header declares another size is refused before its data is read.

    Parameters
    ----------
    predictions : mapping of id to path or label map
        Anything :func:`load_prediction` reads, or a label map already in
        memory (e.g. ``seg.labels`` of a :func:`segsoft.segment` result).
    ground_truth : mapping of id to path or label maps
        Anything :func:`load_ground_truth` reads, or the label maps.
    progress : callable(done, total, id), optional
        Called after each image with ground truth.
    allow_missing : bool
        Scoring a subset on purpose: ground truth without a prediction does
        not make the report fail (:attr:`EvaluationReport.allow_missing`).

    Returns
    -------
    EvaluationReport
        Every id of ``ground_truth`` is in exactly one of ``rows``,
        ``missing`` and ``errors``; ids only in ``predictions`` are listed
        in ``extra``.

    Examples
    --------
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> report = evaluate_many({"a": gt - 1, "x": gt}, {"a": [gt], "b": [gt]})
    >>> report.rows[0].pri, report.missing, report.extra
    (1.0, ['b'], ['x'])
    """
    ids = sorted(ground_truth, key=_natural_key)
    report = EvaluationReport(
        extra=sorted((set(predictions) - set(ground_truth)), key=_natural_key), allow_missing=allow_missing
    )
    for done, image_id in enumerate(ids, 1):
        if image_id not in predictions:
            report.missing.append(image_id)
        else:
            try:
                report.rows.append(_score_one(image_id, predictions[image_id], ground_truth[image_id]))
            except SegsoftError as e:
                report.errors[image_id] = str(e)
        if progress is not None:
            progress(done, len(ids), image_id)
    return report


def evaluate_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    progress: Progress | None = None,
    *,
    allow_missing: bool = False,
) -> EvaluationReport:
    """Score a folder of predictions against a folder of ground truth.

    Parameters
    ----------
    pred_dir : str or os.PathLike
        Predictions as :func:`find_predictions` finds them.
    gt_dir : str or os.PathLike
        Ground truth as :func:`find_ground_truth` finds it.
    progress : callable(done, total, id), optional
        Called after each image with ground truth.
    allow_missing : bool
        As for :func:`evaluate_many`.

    Returns
    -------
    EvaluationReport
        Ids with ground truth but no prediction are in ``missing``; ones
        whose files are unreadable or whose shapes differ are in ``errors``.

    Raises
    ------
    SegsoftError
        A folder is missing, or ``gt_dir`` holds no ground truth.

    Examples
    --------
    >>> import tempfile
    >>> gt = np.array([[1, 1, 2, 2]], np.uint16)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     np.savez(Path(folder, "7.npz"), segs=gt[None])
    ...     np.save(Path(folder, "7.npy"), gt)  # a prediction in the same folder
    ...     report = evaluate_folder(folder, folder)
    >>> report.means["covering"], report.missing
    (1.0, [])
    """
    predictions = find_predictions(pred_dir)
    return evaluate_many(predictions, find_ground_truth(gt_dir), progress, allow_missing=allow_missing)


def evaluate_directory(
    path: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    min_region: float | None = 0.01,
    segment_kwargs: Mapping[str, Any] | None = None,
    regions: float | None = None,
    progress: Progress | None = None,
    allow_missing: bool = False,
    thresholds: Sequence[float] | None = None,
    scheduler: str | None = None,
    jobs: int | None = None,
    boundaries: bool = False,
) -> EvaluationReport:
    """Score a folder of predictions -- or of images, segmented first.

    What ``segsoft evaluate`` runs. When :func:`find_predictions` finds
    predictions in ``path`` they are scored; otherwise every image in
    ``path`` whose id has ground truth is segmented with
    :func:`segsoft.segment` (``segment_kwargs``) and scored, nothing written.

    Image by image, the ground truth is read first and then the prediction,
    whose header must declare the ground truth's size (nothing else of it is
    read otherwise). A file that cannot be read or scored is reported for its
    image, in ``errors``, and the other images are still scored.

    Parameters
    ----------
    path : str or os.PathLike
        Predictions (segsoft output folders, label maps) or images.
    gt_dir : str or os.PathLike
        Ground truth as :func:`find_ground_truth` finds it.
    min_region : float or None
        Score regions rather than cluster labels: each connected patch of a
        label is a region and patches under this share of the pixels are
        merged into a neighbour (:func:`segsoft.regions.connected_regions`).
        None scores the labels as they are. Region maps (``regions.npy`` in
        an output folder, or ``regions`` below) are scored as they are.
    segment_kwargs : mapping, optional
        Arguments of :func:`segsoft.segment` for folders of images.
    regions : float or None
        For folders of images: score ``seg.regions(regions)`` (boundary-aware
        merged regions at this threshold, :mod:`segsoft.regions`) instead of
        the cluster labels.
    progress : callable(done, total, id), optional
    allow_missing : bool
        Score a subset: the images that have both a prediction and ground
        truth. Those without a prediction are counted (one summary line)
        and do not make the report fail. Off, they do, and the summary
        lists the first few.
    thresholds : sequence of float, optional
        Also cut each image's one segmentation at every threshold, for the
        report's :attr:`~EvaluationReport.ods` and
        :attr:`~EvaluationReport.ois`: for a folder of images with
        ``regions``, its region hierarchy (``seg.hierarchy``); for a folder
        of predictions, each output folder's ``ucm.npy`` (written by
        ``--regions``), cut as the BSDS benchmark cuts it (:func:`cut_ucm`).
        The rows still hold the scores at ``regions`` (images) or of the
        prediction itself.
    scheduler, jobs : optional
        For folders of images: segment and score them on Dask (``"local"``,
        ``"threads"`` or a scheduler address, see :mod:`segsoft.cluster`),
        ``jobs`` workers; the same scores as without.
    boundaries : bool
        For a folder of predictions: also score each output folder's
        ``ucm.npy`` with the BSDS500 boundary benchmark
        (:func:`segsoft.contours.boundary_pr`) at ``thresholds``, or the
        benchmark's 99 (0.01 to 0.99) without them, for the report's
        :attr:`~EvaluationReport.boundary_scores`. An image without a
        readable ``ucm.npy`` of its ground truth's size fails as a whole.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    SegsoftError
        A folder is missing or holds nothing to score; no prediction (or
        image) has the id of a ground truth file; ``regions`` given for a
        folder of predictions; ``min_region`` not None nor a number in
        [0, 1); ``thresholds`` for a folder of images without ``regions``;
        ``boundaries`` for a folder of images.

    Examples
    --------
    >>> report = evaluate_directory("outputs", "../shared/data/bsds-dev/gt")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    from .io import find_images
    from .regions import connected_regions

    _check_min_region(min_region)  # before any file is read: a NaN would fail only at the first image
    ground_truth = find_ground_truth(gt_dir)
    found = find_predictions(path)
    if found and regions is not None:
        raise SegsoftError(
            f"{path}: holds predictions, which are scored as they are (regions.npy first); "
            "--regions applies to a folder of images"
        )
    if thresholds is not None:
        from .regions import check_threshold

        thresholds = tuple(sorted({check_threshold(t) for t in thresholds}))
        if not thresholds:
            raise SegsoftError("--thresholds: no threshold given")
        if not found and regions is None:
            raise SegsoftError(
                f"{path}: --thresholds cuts region hierarchies; add --regions to segment the images into regions"
            )
    if boundaries and not found:
        raise SegsoftError(
            f"{path}: holds no predictions; --boundaries scores the ucm.npy of segsoft output folders "
            "(write them with segsoft run or batch --regions)"
        )
    report = EvaluationReport(allow_missing=allow_missing, thresholds=thresholds or ())

    def post(seg: np.ndarray, as_is: bool) -> np.ndarray:
        if min_region is None or as_is:
            return seg
        return connected_regions(seg, max(1, round(min_region * int((seg >= 0).sum()))))

    if found:
        if not set(found) & set(ground_truth):
            raise SegsoftError(
                f"{path}: no prediction matches a ground truth id in {gt_dir} "
                f"(predictions: {_few_ids(found)}; ground truth: {_few_ids(ground_truth)})"
            )
        ids = list(ground_truth)
        for done, image_id in enumerate(ids, 1):
            if image_id not in found:
                report.missing.append(image_id)
            else:
                name = os.fsdecode(found[image_id])
                try:
                    name = _prediction_file(name)
                    gts, gt_name = _ground_truth_maps(image_id, ground_truth[image_id])
                    seg = _load_prediction(name, gts[0].shape, gt_name)
                    seg = post(seg, as_is=Path(name).name == "regions.npy")  # region maps are scored as they are
                    ucm = None
                    why = "to score with --boundaries" if boundaries else "to cut at --thresholds"
                    if thresholds:  # the hierarchy first: an image without one fails as a whole
                        ucm = _load_ucm(found[image_id], gts[0].shape, gt_name, why)
                        cuts = (cut_ucm(ucm, t) for t in thresholds)
                        report.sweeps[image_id] = _sweep(image_id, cuts, name, gts, gt_name)
                    if boundaries:
                        if ucm is None:
                            ucm = _load_ucm(found[image_id], gts[0].shape, gt_name, why)
                        counts = _boundary_counts(ucm, gts, thresholds, os.fsdecode(Path(found[image_id]) / "ucm.npy"))
                    row = _score(image_id, seg, name, gts, gt_name)
                    if boundaries:
                        report.boundaries[image_id] = counts
                    report.rows.append(row)
                except SegsoftError as e:
                    report.errors[image_id] = str(e)
                except MemoryError:  # not the CLI's advice about --sample: name the image
                    report.errors[image_id] = f"{name}: out of memory scoring it"
            if progress is not None:
                progress(done, len(ids), image_id)
        report.extra = sorted(set(found) - set(ground_truth), key=_natural_key)
        return report

    listed = find_images([path])
    if not listed:
        raise SegsoftError(
            f"{path}: holds no predictions (segsoft output folders, <id>.npy or <id>.png label maps) and no images"
        )
    images = {stem.name: image for image, stem in listed if stem.name in ground_truth}
    if not images:
        raise SegsoftError(
            f"{path}: no image matches a ground truth id in {gt_dir} "
            f"(images: {_few_ids({stem.name: 0 for _, stem in listed})}; ground truth: {_few_ids(ground_truth)})"
        )
    ids = sorted(images, key=_natural_key)
    report.missing = [i for i in ground_truth if i not in images]
    calls = [
        (image_id, images[image_id], ground_truth[image_id], dict(segment_kwargs or {}), regions, thresholds, min_region)
        for image_id in ids
    ]
    if scheduler is None:
        results: Any = ((i, _segment_and_score(*call)) for i, call in enumerate(calls))
    else:
        from .cluster.client import execute

        # absolute paths: a cluster's workers have their own working folder
        calls = [(c[0], Path(os.path.abspath(c[1])), _absolute(c[2]), *c[3:]) for c in calls]
        results = execute(_segment_and_score, calls, scheduler, jobs, set())
    for done, (i, result) in enumerate(results, 1):
        image_id = ids[i]
        if isinstance(result, BaseException):  # a worker that died, a result that could not come back
            report.errors[image_id] = f"{os.fsdecode(images[image_id])}: {' '.join(str(result).split())}"
        else:
            row, sweep, error = result
            if error is not None:
                report.errors[image_id] = error
            else:
                report.rows.append(row)
                if sweep is not None:
                    report.sweeps[image_id] = sweep
        if progress is not None:
            progress(done, len(ids), image_id)
    report.rows.sort(key=lambda r: _natural_key(r.id))
    return report


def _absolute(gt: object) -> object:
    return Path(os.path.abspath(gt)) if isinstance(gt, (str, os.PathLike)) else gt


def _segment_and_score(
    image_id: str,
    image: Path,
    gt: object,
    segment_kwargs: dict[str, Any],
    regions: float | None,
    thresholds: Sequence[float] | None,
    min_region: float | None,
) -> tuple[ImageScore | None, Any, str | None]:
    """One image of a folder: segmented and scored, here or on a worker; (row, sweep, error line)."""
    from .regions import connected_regions
    from .segment import segment

    name = os.fsdecode(image)
    try:
        # the ground truth first: a broken one is reported without segmenting the image for nothing
        gts, gt_name = _ground_truth_maps(image_id, gt)
        seg = segment(image, **segment_kwargs)
        labels = seg.labels if regions is None else seg.regions(regions)
        sweep = None
        if thresholds:  # one segmentation, one hierarchy, cut at every threshold
            cuts = (seg.hierarchy.labels(t) for t in thresholds)
            sweep = _sweep(image_id, cuts, name, gts, gt_name)
        if regions is None and min_region is not None:
            labels = connected_regions(labels, max(1, round(min_region * int((labels >= 0).sum()))))
        return _score(image_id, labels, name, gts, gt_name), sweep, None
    except SegsoftError as e:
        return None, None, str(e)


def _boundary_counts(ucm: np.ndarray, gts: list[np.ndarray], thresholds: Sequence[float] | None, name: str) -> Any:
    """The boundary benchmark's counts of one ucm2 against its humans (:func:`segsoft.contours.boundary_pr`)."""
    from .contours import boundary_pr

    try:
        return boundary_pr(ucm, gts, thresholds or None)
    except SegsoftError as e:
        raise SegsoftError(f"{name}: {e}") from None


def _load_ucm(pred: Path, shape: tuple[int, ...], gt_name: str, why: str = "to cut at --thresholds") -> np.ndarray:
    """The ``ucm.npy`` of a segsoft output folder, checked by its header: float (2H+1, 2W+1) for an (H, W) image."""
    name = os.fsdecode(Path(pred) / "ucm.npy") if Path(pred).is_dir() else os.fsdecode(pred)
    if not name.endswith("ucm.npy") or not Path(name).is_file():
        raise SegsoftError(f"{name}: no ucm.npy {why} (write one with segsoft run --regions)")
    want = (2 * shape[0] + 1, 2 * shape[1] + 1)

    def check(declared: tuple[int, ...], dtype: np.dtype | None = None) -> None:
        if dtype is None or dtype.kind != "f" or tuple(declared) != want:
            raise SegsoftError(
                f"{name}: a {declared} {dtype} array; expected float {want}, the ucm2 of the "
                f"{tuple(shape)} ground truth ({gt_name})"
            )

    ucm = _read_npy(name, check)
    if np.isnan(ucm).any():  # inf is allowed: segsoft's boundary of transparent pixels, which never merges
        raise SegsoftError(f"{name}: holds NaN levels")
    return ucm


def _check_min_region(min_region: object) -> None:
    """Refuse a ``min_region`` that is not None or a finite share of the image in [0, 1).

    Named as the command line's ``--min-region``, which passes it through.
    NaN and inf would only fail in ``round()`` at the first image (a
    ValueError or OverflowError, not a SegsoftError); a negative share or
    one of 1 or more would be accepted and merge every region into one.
    """
    if min_region is None:
        return
    ok = isinstance(min_region, (int, float, np.integer, np.floating)) and not isinstance(min_region, (bool, np.bool_))
    if not (ok and math.isfinite(min_region) and 0 <= min_region < 1):
        shown = repr(float(min_region)) if ok else repr(min_region)  # "nan", not "np.float64(nan)"
        raise SegsoftError(f"--min-region must be a number >= 0 and < 1 (a share of the image), got {shown}")


def _few_ids(ids: Mapping[str, object] | Sequence[str], n: int = 5) -> str:
    """'2092, 3096, ... (12 in all)': the first few ids for a one-line message."""
    listed = sorted(ids, key=_natural_key)
    text = ", ".join(listed[:n])
    return text + (f", ... ({len(listed)} in all)" if len(listed) > n else "")


def _ground_truth_maps(image_id: str, gt: object) -> tuple[list[np.ndarray], str]:
    """One image's human label maps, from a file or memory, and the name to give in messages."""
    if isinstance(gt, (str, os.PathLike)):
        gt_name = os.fsdecode(gt)
        return load_ground_truth(gt_name), gt_name
    gt_name = f"ground truth {image_id}"
    gts = [_as_labels(g, gt_name) for g in (gt[None] if isinstance(gt, np.ndarray) and gt.ndim == 2 else gt)]
    if not gts:
        raise SegsoftError(f"{gt_name}: no human segmentations")
    return gts, gt_name


def _score_one(image_id: str, pred: object, gt: object) -> ImageScore:
    gts, gt_name = _ground_truth_maps(image_id, gt)
    if isinstance(pred, (str, os.PathLike)):
        pred_name = _prediction_file(os.fsdecode(pred))
        seg = _load_prediction(pred_name, gts[0].shape, gt_name)
    else:
        pred_name = f"prediction {image_id}"
        seg = _as_labels(pred, pred_name)
    return _score(image_id, seg, pred_name, gts, gt_name)


def _score(image_id: str, seg: np.ndarray, pred_name: str, gts: list[np.ndarray], gt_name: str) -> ImageScore:
    if any(g.shape != seg.shape for g in gts):
        shape = next(g.shape for g in gts if g.shape != seg.shape)
        raise SegsoftError(f"{pred_name}: shape {seg.shape} does not match the ground truth's {shape} ({gt_name})")
    try:
        per_human = _per_human(seg, gts)
    except SegsoftError as e:
        raise SegsoftError(f"{pred_name}: {e}") from None
    pri, voi, cov = per_human.mean(axis=0)
    n_regions = int(np.unique(seg[seg >= 0]).size)
    return ImageScore(image_id, float(pri), float(voi), float(cov), n_regions, len(gts), _weight(seg, gts))


def _weight(seg: np.ndarray, gts: list[np.ndarray]) -> int:
    """Pixels labelled in both ``seg`` and each human, summed over the humans (the pooled covering's weight)."""
    used = np.asarray(seg) >= 0
    return int(sum(int((used & (np.asarray(g) >= 0)).sum()) for g in gts))


def _sweep(
    image_id: str, cuts: Iterable[np.ndarray], pred_name: str, gts: list[np.ndarray], gt_name: str
) -> np.ndarray:
    """(thresholds, 5) array of PRI, VoI, covering, regions and covering weight of each cut of one image."""
    rows = []
    for seg in cuts:
        r = _score(image_id, seg, pred_name, gts, gt_name)
        rows.append((r.pri, r.voi, r.covering, r.n_regions, r.weight))
    return np.array(rows, np.float64).reshape(-1, 5)


def parse_thresholds(text: str) -> tuple[float, ...]:
    """Thresholds from ``START:STOP:STEP`` (STOP included) or a comma-separated list, sorted, each >= 0.

    Parameters
    ----------
    text : str
        ``"0.05:0.4:0.025"`` or ``"0.1,0.15,0.2"``.

    Returns
    -------
    tuple of float

    Raises
    ------
    SegsoftError
        Naming ``--thresholds`` and what is wrong.

    Examples
    --------
    >>> parse_thresholds("0.1:0.2:0.05")
    (0.1, 0.15, 0.2)
    >>> parse_thresholds("0.3, 0.1")
    (0.1, 0.3)
    """
    from .regions import check_threshold

    bad = f"--thresholds {text!r}: expected START:STOP:STEP (e.g. 0.05:0.4:0.025) or a list such as 0.1,0.15,0.2"
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not (step > 0 and stop >= start and math.isfinite(stop)):
                raise SegsoftError(f"{bad} (STEP must be > 0 and STOP >= START)")
            n = math.floor((stop - start) / step + 1e-9) + 1
            if n > 1000:
                raise SegsoftError(f"--thresholds {text!r}: {n} thresholds, more than the 1000 that evaluate cuts")
            # rounded to the step's decimals: 0.05 + 3 * 0.025 is 0.125, not 0.12500000000000003
            values = [round(start + i * step, 12) for i in range(n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
        values = [check_threshold(v) for v in values]
    except ValueError:
        raise SegsoftError(bad) from None
    if not values:
        raise SegsoftError(bad)
    return tuple(sorted(set(values)))


def cut_ucm(ucm2: np.ndarray, threshold: float) -> np.ndarray:
    """Regions of a BSDS-style ultrametric contour map cut at ``threshold``, as the BSDS benchmark cuts it.

    The 8-connected components of ``ucm2 <= threshold``, kept on the pixel
    grid ``[1::2, 1::2]``.

    Parameters
    ----------
    ucm2 : ndarray of float (2H+1, 2W+1)
        Boundary levels between pixels (segsoft's ``ucm.npy``, BSDS500's ``ucm2``).
    threshold : float

    Returns
    -------
    ndarray of int32 (H, W)
        Region ids from 0.

    Examples
    --------
    >>> u = np.zeros((5, 7)); u[:, 4] = 0.5  # one vertical boundary between pixel columns 1 and 2
    >>> cut_ucm(u, 0.4).tolist(), cut_ucm(u, 0.5).tolist()
    ([[0, 0, 1], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]])
    """
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(ucm2) <= threshold, structure=np.ones((3, 3), bool))
    return (labels[1::2, 1::2] - 1).astype(np.int32)
