"""EM out of core: features, fit and memberships chunk by chunk on dask arrays.

The engine (:mod:`segsoft.mixture`) stays plain numpy; this module maps its
E-step half (:meth:`~segsoft.mixture.GaussianMixture.chunk_statistics`) over
the chunks of a dask array, sums the statistics as a tree, and calls the M-step
half (``update_from_statistics``) in the driver, through the engine's
:meth:`~segsoft.mixture.GaussianMixture.fit_from_chunks`, the very code that
``fit(X)`` runs in memory. So on data that fit in memory the numbers are the
in-memory ones: the same seed draws the same sample rows (gathered from the
chunks), the sample fit is the in-memory fit, and each full-data polish
iteration differs only by the order of floating-point sums (~1e-15 relative).

Data come in two shapes:

* ``(N, D)``: rows chunked along axis 0 (every column in one chunk), in order;
* ``(H, W, D)``: an image's features chunked in tiles, with an optional
  ``(H, W)`` boolean ``mask`` (True = used). Its rows are the used pixels in
  raster order, as :func:`segsoft.features.extract` makes them; memberships
  come back as ``(H, W, K)`` with NaN where masked, like
  :func:`segsoft.segment.segment`'s.

Whatever scheduler is active computes: a ``distributed.Client``, or
``dask.config.set(scheduler="threads" | "synchronous")``.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import types
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..mixture import EMStatistics

__all__ = [
    "column_moments_chunked",
    "extract_chunked",
    "fit_chunked",
    "image_to_dask",
    "memberships_chunked",
    "predict_proba_chunked",
    "statistics_chunked",
]

SPLIT_EVERY = 8  # fan-in of the tree reductions


# --------------------------------------------------------------------------
# The chunk grid


class _Grid:
    """A (H, W, D) feature array (an (N, D) one is (N, 1, D)), its mask, and its tiles."""

    def __init__(self, X: Any, mask: Any = None):
        X = X if isinstance(X, da.Array) else da.asarray(X)
        self.flat = X.ndim == 2
        if self.flat:
            if len(X.chunks[1]) != 1:
                X = X.rechunk({1: -1})
            X = X[:, None, :]
            if mask is not None:
                mask = (mask if isinstance(mask, da.Array) else da.asarray(mask))[:, None]
        elif X.ndim != 3:
            raise ValueError(f"X must be (N, D) or (H, W, D), got shape {X.shape}")
        if len(X.chunks[2]) != 1:
            X = X.rechunk({2: -1})
        self.X = X
        self.H, self.W, self.D = (int(v) for v in X.shape)
        if mask is not None:
            mask = mask if isinstance(mask, da.Array) else da.asarray(mask)
            if tuple(mask.shape) != (self.H, self.W):
                raise ValueError(f"the mask has shape {mask.shape}, the data {(self.H, self.W)}")
            mask = mask.astype(bool).rechunk(X.chunks[:2])
        self.mask = mask
        self._row_counts: np.ndarray | None = None

    @property
    def y0s(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.X.chunks[0])]

    @property
    def x0s(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.X.chunks[1])]

    def tiles(self) -> list[tuple[Any, Any, int, int]]:
        """(features block, mask block or None, y0, x0) for every tile, as delayed objects."""
        fb = self.X.to_delayed()
        mb = None if self.mask is None else self.mask.to_delayed()
        y0s, x0s = self.y0s, self.x0s
        out = []
        for i in range(fb.shape[0]):
            for j in range(fb.shape[1]):
                out.append((fb[i, j, 0], None if mb is None else mb[i, j], int(y0s[i]), int(x0s[j])))
        return out

    def row_counts(self) -> np.ndarray:
        """Used pixels per image row (H,)."""
        if self._row_counts is None:
            if self.mask is None:
                self._row_counts = np.full(self.H, self.W, dtype=np.int64)
            else:
                self._row_counts = np.asarray(self.mask.sum(axis=1, dtype=np.int64).compute())
        return self._row_counts

    @property
    def n_used(self) -> int:
        return self.H * self.W if self.mask is None else int(self.row_counts().sum())

    def pixels_of_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) of the used rows ``idx`` (sorted indices into the raster-ordered used pixels)."""
        return _pixels_of_rows(self.mask, self.W, self.row_counts() if self.mask is not None else None, idx)


def _pixels_of_rows(mask: Any, W: int, row_counts: np.ndarray | None, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(idx, dtype=np.int64)
    if mask is None:
        return idx // W, idx % W
    cum = np.r_[0, np.cumsum(row_counts)]
    ys = np.searchsorted(cum, idx, side="right") - 1
    ranks = idx - cum[ys]
    xs = np.empty_like(idx)
    # the x of the rank-th used pixel of row y: one task per band of mask rows holding some
    bounds = np.r_[0, np.cumsum(mask.chunks[0])]
    band_of = np.searchsorted(bounds, ys, side="right") - 1
    tasks, where = [], []
    for b in np.unique(band_of):
        sel = np.flatnonzero(band_of == b)
        a, e = int(bounds[b]), int(bounds[b + 1])
        band = mask[a:e].rechunk({1: -1}).to_delayed().ravel()[0]
        tasks.append(dask.delayed(_band_xs, pure=True)(band, ys[sel] - a, ranks[sel]))
        where.append(sel)
    for sel, got in zip(where, dask.compute(*tasks)):
        xs[sel] = got
    return ys, xs


def _band_xs(band: np.ndarray, ys: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    out = np.empty(ys.size, dtype=np.int64)
    for y in np.unique(ys):
        sel = ys == y
        out[sel] = np.flatnonzero(band[y])[ranks[sel]]
    return out


def _gather(arr: da.Array, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``arr[ys, xs]`` (points, trailing axes whole) in memory, one task per tile holding some."""
    arr = arr.rechunk({2: -1}) if len(arr.chunks[2]) != 1 else arr
    yb = np.r_[0, np.cumsum(arr.chunks[0])]
    xb = np.r_[0, np.cumsum(arr.chunks[1])]
    bi = np.searchsorted(yb, ys, side="right") - 1
    bj = np.searchsorted(xb, xs, side="right") - 1
    blocks = arr.to_delayed()
    out = np.empty((ys.size, arr.shape[2]), dtype=arr.dtype)
    key = bi * len(xb) + bj
    tasks, where = [], []
    for kk in np.unique(key):
        sel = np.flatnonzero(key == kk)
        i, j = int(bi[sel[0]]), int(bj[sel[0]])
        tasks.append(dask.delayed(_take, pure=True)(blocks[i, j, 0], ys[sel] - yb[i], xs[sel] - xb[j]))
        where.append(sel)
    for sel, got in zip(where, dask.compute(*tasks)):
        out[sel] = got
    return out


def _take(block: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return np.asarray(block)[ys, xs]


def _rows(f: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    rows = np.asarray(f).reshape(-1, f.shape[-1])
    return rows if m is None else rows[np.asarray(m).ravel()]


def _sum_list(parts: Sequence[Any]) -> Any:
    return functools.reduce(operator.add, parts)


def _tree_sum(parts: list[Any], split_every: int = SPLIT_EVERY) -> Any:
    """A delayed sum of delayed parts, as a tree of fan-in ``split_every``."""
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    while len(parts) > 1:
        parts = [
            dask.delayed(_sum_list, pure=True)(parts[i : i + split_every]) for i in range(0, len(parts), split_every)
        ]
    return parts[0]


# --------------------------------------------------------------------------
# The two passes over the data that the fit needs


def _moment_sums(f: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    rows = _rows(f, m)
    return np.r_[rows.shape[0], rows.sum(axis=0, dtype=np.float64)]


def _square_sums(f: np.ndarray, m: np.ndarray | None, mean: np.ndarray) -> np.ndarray:
    return np.array([float(np.square(_rows(f, m) - mean).sum())])


def column_moments_chunked(X: Any, *, mask: Any = None, split_every: int = SPLIT_EVERY) -> tuple[np.ndarray, float]:
    """Column means (float64) and mean squared deviation of the used rows: what ``fit``
    centres on and scales ``reg_covar`` by. Two passes, each a tree sum."""
    g = X if isinstance(X, _Grid) else _Grid(X, mask)
    tiles = g.tiles()
    first = _tree_sum([dask.delayed(_moment_sums, pure=True)(f, m) for f, m, _, _ in tiles], split_every)
    (total,) = dask.compute(first)
    n = total[0]
    mean = total[1:] / n
    second = _tree_sum([dask.delayed(_square_sums, pure=True)(f, m, mean) for f, m, _, _ in tiles], split_every)
    (sq,) = dask.compute(second)
    return mean, float(sq[0]) / (n * g.D)


def _tile_moments_and_rows(
    f: np.ndarray, m: np.ndarray | None, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(count, column sums, sum of squared deviations from the tile's own mean) and the rows at (ys, xs)."""
    rows = _rows(f, m)
    cnt = rows.shape[0]
    sums = rows.sum(axis=0, dtype=np.float64)
    m2 = float(np.square(rows - sums / cnt).sum()) if cnt else 0.0
    return np.r_[cnt, m2, sums], np.asarray(f)[ys, xs]


def _moments_and_sample(
    g: _Grid, ys: np.ndarray, xs: np.ndarray, split_every: int = SPLIT_EVERY
) -> tuple[tuple[np.ndarray, float], np.ndarray]:
    """Column moments (as :func:`column_moments_chunked`) and the rows at pixels (ys, xs), in one pass.

    The tiles' squared deviations are combined with Chan et al.'s pairwise
    formula (exact algebraically; within rounding of the two-pass value)."""
    yb, xb = g.y0s, g.x0s
    bi = np.searchsorted(yb, ys, side="right") - 1
    bj = np.searchsorted(xb, xs, side="right") - 1
    key = bi * len(xb) + bj
    order = np.argsort(key, kind="stable")
    tasks, where = [], []
    ncols = len(xb) - 1
    bounds = np.searchsorted(key[order], np.arange((len(yb) - 1) * len(xb) + 1))
    for t, (f, m, y0, x0) in enumerate(g.tiles()):
        i, j = divmod(t, ncols)
        kk = i * len(xb) + j
        sel = order[bounds[kk] : bounds[kk + 1]]
        tasks.append(dask.delayed(_tile_moments_and_rows, pure=True)(f, m, ys[sel] - y0, xs[sel] - x0))
        where.append(sel)
    parts = dask.compute(*tasks)
    D = g.D
    picked = np.empty((ys.size, D), dtype=g.X.dtype)
    n, total = 0.0, np.zeros(D)
    stats = []
    for sel, (st, rows) in zip(where, parts):
        picked[sel] = rows
        stats.append(st)
        n += st[0]
        total += st[2:]
    mean = total / n
    m2 = 0.0
    for st in stats:
        if st[0]:
            m2 += st[1] + st[0] * float(np.square(st[2:] / st[0] - mean).sum())
    return (mean, m2 / (n * D)), picked


def _tile_statistics(
    model: Any, f: np.ndarray, m: np.ndarray | None, y0: int, x0: int, W: int, stats: bool
) -> EMStatistics:
    rows = _rows(f, m)
    st = model.chunk_statistics(rows, stats=stats)
    if st.n:
        # the worst row's key: its pixel's raster index (ties go to the first in raster order, as in memory)
        p = st.worst_row if m is None else int(np.flatnonzero(np.asarray(m).ravel())[st.worst_row])
        w = f.shape[1]
        st.worst_row = (y0 + p // w) * W + x0 + p % w
    return st


def statistics_chunked(
    model: Any, X: Any, *, mask: Any = None, stats: bool = True, split_every: int = SPLIT_EVERY
) -> EMStatistics:
    """One E-step over all the (used) rows of X under the model's current parameters:
    :meth:`chunk_statistics` per tile, summed as a tree. Computes."""
    g = X if isinstance(X, _Grid) else _Grid(X, mask)
    snapshot = dask.delayed(copy.deepcopy(model), name=f"segsoft-model-{uuid.uuid4().hex}")
    parts = [
        dask.delayed(_tile_statistics, pure=True)(snapshot, f, m, y0, x0, g.W, stats) for f, m, y0, x0 in g.tiles()
    ]
    (total,) = dask.compute(_tree_sum(parts, split_every))
    return total


def fit_chunked(
    model: Any,
    X: Any,
    *,
    mask: Any = None,
    sample: int | None | str = "model",
    seed: int | None | str = "model",
    polish_iter: int | str = "model",
    means_init: Any = None,
    progress: Callable[[int, float], None] | None = None,
    split_every: int = SPLIT_EVERY,
):
    """Fit ``model`` on a dask array as ``model.fit`` would on it in memory.

    1. column moments over all rows (two tree-reduced passes);
    2. the sample: ``model.sample_indices(N)`` (the rows ``fit`` draws from
       ``seed`` and ``sample_size``), gathered from the chunks, one task per
       tile; the in-memory fit on it;
    3. ``polish_iter`` full-data EM iterations, each the per-tile statistics
       summed as a tree (:func:`statistics_chunked`) and the M-step in the driver.

    Parameters
    ----------
    model : GaussianMixture, SoftKMeans or FuzzyCMeans (unfitted or not; it is refitted)
    X : dask array (N, D) chunked along rows, or (H, W, D) tiles (see the module docstring)
    mask : dask or numpy array (H, W) of bool, optional (with (H, W, D) X): used pixels
    sample, seed, polish_iter :
        Override the model's ``sample_size``, ``seed`` and ``polish_iter``
        (set on it); the default ``"model"`` keeps them. Out of core, set a
        sample: without one every row is gathered into memory for the fit.
    means_init, progress : as in ``fit``.

    Returns
    -------
    the model, fitted (``model.log_likelihood_``, ``polish_trace_`` ... as in memory)
    """
    if sample != "model":
        model.sample_size = sample
    if seed != "model":
        model.seed = seed
    if polish_iter != "model":
        model.polish_iter = polish_iter
    model.check_params()
    g = _Grid(X, mask)
    n = g.n_used
    # the rows fit() will draw depend only on n and the seed: gathered in the same pass as the
    # column moments, so the data are read once for both
    drawn = model.sample_indices(n) if getattr(model, "_prior", None) is None else None
    if drawn is not None:
        ys, xs = g.pixels_of_rows(drawn)
        moments, picked = _moments_and_sample(g, ys, xs, split_every)
    else:
        moments, picked = column_moments_chunked(g, split_every=split_every), None

    def take_rows(idx: np.ndarray | None) -> np.ndarray:
        if picked is not None and idx is not None and np.array_equal(idx, drawn):
            return picked
        if idx is None:
            idx = np.arange(n)
        ys, xs = g.pixels_of_rows(idx)
        return _gather(g.X, ys, xs)

    def statistics(stats: bool = True) -> EMStatistics:
        return statistics_chunked(model, g, stats=stats, split_every=split_every)

    return model.fit_from_chunks(
        n,
        g.D,
        column_moments=moments,
        take_rows=take_rows,
        statistics=statistics,
        means_init=means_init,
        progress=progress,
    )


# --------------------------------------------------------------------------
# Memberships


def _tile_memberships(
    f: np.ndarray, m: np.ndarray | None = None, *, model: Any, k: int, with_score: bool, out_dtype: Any
) -> np.ndarray:
    h, w = f.shape[:2]
    m2 = None if m is None else np.asarray(m)[..., 0]
    rows = _rows(f, m2)
    width = k + 1 if with_score else k
    out = np.full((h * w, width), np.nan, dtype=out_dtype)
    if rows.shape[0]:
        resp = np.empty((rows.shape[0], k), dtype=np.float32 if not with_score else np.float64)
        score = np.empty(rows.shape[0]) if with_score else None
        model.chunk_statistics(rows, stats=False, resp_out=resp, score_out=score)
        if m2 is None:
            out[:, :k] = resp
            if with_score:
                out[:, k] = score
        else:
            sel = m2.ravel()
            out[sel, :k] = resp
            if with_score:
                out[sel, k] = score
    return out.reshape(h, w, width)


def _memberships_array(model: Any, g: _Grid, with_score: bool, dtype: Any) -> da.Array:
    if not hasattr(model, "means_"):
        raise RuntimeError(f"this {type(model).__name__} is not fitted yet: call fit_chunked(model, X) first")
    k = model.n_components
    width = k + 1 if with_score else k
    args = [g.X] if g.mask is None else [g.X, g.mask[:, :, None]]
    return da.map_blocks(
        _tile_memberships,
        *args,
        model=copy.deepcopy(model),
        k=k,
        with_score=with_score,
        out_dtype=dtype,
        dtype=dtype,
        chunks=(g.X.chunks[0], g.X.chunks[1], (width,)),
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"segsoft-memberships-{uuid.uuid4().hex}",
    )


def predict_proba_chunked(model: Any, X: Any, *, mask: Any = None, dtype: Any = np.float32) -> da.Array:
    """Memberships as a lazy dask array, one ``map_blocks`` task per chunk.

    (N, D) X gives (N, K); (H, W, D) gives (H, W, K), NaN where ``mask`` is
    False. float32 (the default) are the in-memory ``predict_proba`` values
    of float32 features bit for bit up to the E-step's rounding.
    """
    g = _Grid(X, mask)
    probs = _memberships_array(model, g, with_score=False, dtype=np.dtype(dtype))
    return probs[:, 0, :] if g.flat else probs


def memberships_chunked(model: Any, X: Any, *, mask: Any = None, dtype: Any = np.float32) -> tuple[da.Array, Any]:
    """(memberships, mean score) from one pass: both lazy; compute them together
    (``dask.compute(probs, mean)``, or the zarr write and ``mean``) so the
    E-step runs once. The mean is ``segment``'s ``log_likelihood`` (mean
    log-likelihood per used pixel; fuzzy c-means: ``-J`` per pixel)."""
    g = _Grid(X, mask)
    k = model.n_components
    both = _memberships_array(model, g, with_score=True, dtype=np.float64)
    probs = both[..., :k].astype(dtype)
    scores = both[..., k]
    total = da.nansum(scores) if g.mask is not None else scores.sum()
    mean = total / g.n_used
    return (probs[:, 0, :] if g.flat else probs), mean


# --------------------------------------------------------------------------
# Features per chunk


def _fake_image(n_bands: int, is_color: bool, is_gray: bool, band_names: Sequence[str] | None, name: str) -> Any:
    names = tuple(band_names) if band_names is not None else tuple(f"b{i}" for i in range(n_bands))
    return types.SimpleNamespace(
        n_bands=n_bands,
        _band_rows=lambda: np.empty((0, n_bands), dtype=np.float32),
        is_color=is_color,
        is_gray=is_gray,
        band_names=names,
        path=name,
    )


def _tile_features(
    block: np.ndarray,
    m: np.ndarray | None = None,
    *,
    spec: Any,
    cols: tuple[int, ...] | None,
    eight_bit: bool,
    grey: bool,
    H: int,
    W: int,
    block_info: Any = None,
) -> np.ndarray:
    from ..features import _columns

    (y0, _), (x0, _) = block_info[0]["array-location"][:2]
    h, w, c = block.shape
    nc = spec.n_color
    flat = np.asarray(block).reshape(-1, c)
    sel = None if m is None else np.asarray(m)[..., 0].ravel()
    src = flat if sel is None else flat[sel]
    if grey:
        src = np.broadcast_to(src, (src.shape[0], 3))
    out = np.zeros((h * w, spec.n_features), dtype=np.float32)
    if src.shape[0]:
        color = _columns(spec, src, cols, eight_bit)
        if spec.standardize:
            off = np.asarray(spec.offset, dtype=np.float32)
            inv = (1.0 / np.asarray(spec.scale)).astype(np.float32)
            if color is src or not color.flags.writeable:
                color = color - off
            else:
                color -= off
            color *= inv
        if sel is None:
            out[:, :nc] = color
        else:
            out[sel, :nc] = color
    out = out.reshape(h, w, -1)
    if spec.spatial_weight > 0:
        # as features.extract: centred coordinates of the whole image, this tile's slice of them
        k = spec.spatial_weight * math.sqrt(12.0) / max(H, W)
        xs = ((np.arange(x0, x0 + w) - (W - 1) / 2.0) * k).astype(np.float32)
        ys = ((np.arange(y0, y0 + h) - (H - 1) / 2.0) * k).astype(np.float32)
        out[:, :, nc] = xs[None, :]
        out[:, :, nc + 1] = ys[:, None]
        if sel is not None:
            out.reshape(h * w, -1)[~sel] = 0.0
    return out


def extract_chunked(
    bands: Any,
    spec: Any = None,
    *,
    mask: Any = None,
    bit_depth: int = 8,
    is_color: bool | None = None,
    is_gray: bool | None = None,
    band_names: Sequence[str] | None = None,
    name: str = "image",
    return_spec: bool = False,
):
    """:func:`segsoft.features.extract` per tile: lazy (H, W, D) float32 features.

    Parameters
    ----------
    bands : dask array (H, W, C)
        The image's bands as :class:`segsoft.io.Image` holds them (float32 in
        [0, 1]), chunked in tiles (the band axis is made one chunk).
    spec : FeatureSpec, optional
        An unfitted spec is fitted here as ``extract`` fits it: offset and
        scale from the same evenly strided sample of the used pixels
        (gathered from the tiles); then every tile is standardised with it.
    mask : (H, W) bool, optional
        Used pixels; masked ones get zero features (and no row: pass the same
        mask to :func:`fit_chunked` and :func:`memberships_chunked`).
    bit_depth, is_color, is_gray, band_names, name :
        The image's metadata (``Image`` fields); defaults: 3 bands are
        colour, 1 band is grey.

    Returns
    -------
    X : dask array (H, W, spec.n_features) float32; the used pixels in raster
        order are ``extract``'s rows, exactly (position features use each
        tile's offset in the whole image)
    spec : FeatureSpec, only when ``return_spec``

    Notes
    -----
    A band that is constant on the standardisation sample is refused here
    even if it varies elsewhere (``extract`` looks at every pixel then).
    """
    from ..features import _STATS_SAMPLE, FeatureSpec, _fit_standardization, _resolve

    bands = bands if isinstance(bands, da.Array) else da.asarray(bands)
    if bands.ndim == 2:
        bands = bands[:, :, None]
    if len(bands.chunks[2]) != 1:
        bands = bands.rechunk({2: -1})
    H, W, C = (int(v) for v in bands.shape)
    spec = FeatureSpec() if spec is None else spec
    info = _fake_image(
        C, C == 3 if is_color is None else is_color, C == 1 if is_gray is None else is_gray, band_names, name
    )
    spec, _, cols = _resolve(info, spec)
    grey = spec.color != "bands" and not info.is_color and info.is_gray
    eight_bit = bit_depth == 8
    if mask is not None:
        mask = (mask if isinstance(mask, da.Array) else da.asarray(mask)).astype(bool).rechunk(bands.chunks[:2])
    if spec.standardize and spec.offset is None:
        g = _Grid(bands, mask)
        n = g.n_used
        step = max(1, n // _STATS_SAMPLE)
        ys, xs = g.pixels_of_rows(np.arange(0, n, step))
        picked = _gather(bands, ys, xs)
        if grey:
            picked = np.broadcast_to(picked, (picked.shape[0], 3))
        spec = _fit_standardization(spec, info, picked, cols, None, eight_bit)
    if spec.standardize and len(spec.offset) != spec.n_color:
        from ..errors import SegsoftError

        raise SegsoftError(f"{name}: the feature spec has {len(spec.offset)} offsets for {spec.n_color} channels")
    args = [bands] if mask is None else [bands, mask[:, :, None]]
    X = da.map_blocks(
        _tile_features,
        *args,
        spec=spec,
        cols=cols,
        eight_bit=eight_bit,
        grey=grey,
        H=H,
        W=W,
        dtype=np.float32,
        chunks=(bands.chunks[0], bands.chunks[1], (spec.n_features,)),
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"segsoft-features-{uuid.uuid4().hex}",
    )
    return (X, spec) if return_spec else X


def image_to_dask(image: Any, chunks: tuple[int, int] = (1024, 1024)) -> tuple[da.Array, da.Array | None]:
    """An in-memory :class:`segsoft.io.Image` as (bands, mask) dask arrays in tiles of ``chunks``."""
    hc, wc = chunks
    bands = da.from_array(image.bands, chunks=(hc, wc, -1))
    mask = None if image.mask is None else da.from_array(image.mask, chunks=(hc, wc))
    return bands, mask


def segment_image(
    image: Any,
    spec: Any,
    model: Any,
    scheduler: str,
    *,
    jobs: int | None = None,
    chunks: tuple[int, int] = (1024, 1024),
    progress: Callable[[int, float], None] | None = None,
    smoothing: float = 0.0,
) -> tuple[np.ndarray, float, Any, Any]:
    """One in-memory image through the chunked passes on ``scheduler``: features, fit, memberships.

    The same numbers as :func:`segsoft.segment` in memory (same seed, same
    sample; memberships equal to float rounding), computed tile by tile on
    the scheduler's workers.

    Returns
    -------
    probabilities : ndarray, float32 (H, W, k), NaN where masked
    mean : float
        The mean log-likelihood (score) per used pixel.
    spec : FeatureSpec
        The fitted feature transform.
    model
        ``model``, fitted.
    """
    from .client import dask_client

    with dask_client(scheduler, jobs):
        bands, mask = image_to_dask(image, chunks)
        F, spec = extract_chunked(
            bands,
            spec,
            mask=mask,
            bit_depth=image.bit_depth,
            is_color=image.is_color,
            is_gray=image.is_gray,
            band_names=image.band_names,
            name="image" if image.path is None else str(image.path),
            return_spec=True,
        )
        F = F.persist()  # every polish pass and the memberships read the features again
        if smoothing > 0:
            from .large import _smoothed_both, fit_smoothed

            fit_smoothed(model, F, mask, smoothing, progress)
            both = _smoothed_both(model, _Grid(F, mask), smoothing)
            k = model.n_components
            probs, total = dask.compute(both[..., :k].astype(np.float32), da.nansum(both[..., k]))
            mean = total / (image.n_used or 1)
        else:
            fit_chunked(model, F, mask=mask, progress=progress)
            probs, mean = memberships_chunked(model, F, mask=mask)
            probs, mean = dask.compute(probs, mean)
    return np.asarray(probs, dtype=np.float32), float(mean), spec, model
