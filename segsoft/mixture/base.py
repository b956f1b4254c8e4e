"""The shared EM machinery: quadratic-feature layouts, chunked passes, the EM loop.

See the package docstring for how the passes work. The model classes live in
:mod:`segsoft.mixture.gaussian` and :mod:`segsoft.mixture.relatives`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from . import forked

_LOG_2PI = math.log(2.0 * math.pi)
_EPS10 = 10.0 * np.finfo(np.float64).eps  # scikit-learn adds this to every N_k
_TINY = np.finfo(np.float64).tiny
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

ProgressFn = Callable[[int, float], None]


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A context manager: BLAS on one thread inside it (threadpoolctl), the previous limit after.

    The libraries are looked up once per process, not on every call:
    ``threadpool_limits`` walks every loaded shared library each time (1.5 ms
    in a batch worker, four times an image: about 9 % of a small image's
    time). numpy's BLAS, the only one segsoft calls, is loaded with numpy,
    before the first lookup.

    Examples
    --------
    >>> import numpy as np
    >>> with one_blas_thread():
    ...     float(np.ones((2, 2)) @ np.ones(2) @ np.ones(2))
    4.0
    """
    return _controller().limit(limits=1, user_api="blas")


def _one_blas_thread(method: Callable) -> Callable:
    """Run ``method`` with single-threaded BLAS.

    The products here are skinny ((P, n) x (n, K) with K ~ 4): OpenBLAS's own
    threads make them 2-3x slower, so parallelism comes from our chunk
    threads instead.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return method(*args, **kwargs)

    return wrapper


# The threads the image-sized element-wise steps of one image (features, the
# smoothing sweeps, the log-sum-exp of the smoothed path) split their chunks over.
# A context variable rather than a parameter threaded through every call, so that
# segment() sets it once; the numbers do not depend on it.
_AMBIENT_JOBS: contextvars.ContextVar[int] = contextvars.ContextVar("segsoft_n_jobs", default=1)


@contextlib.contextmanager
def using_threads(n_jobs: int) -> Iterator[None]:
    """Split the image-sized element-wise steps into chunks on ``n_jobs`` threads.

    Within the block (in this thread and contexts copied from it), read with
    :func:`current_threads`: :func:`segsoft.features.extract`, the sweeps of
    :class:`segsoft.spatial.PottsPrior` and the smoothed memberships' log-sum-exp.
    The EM passes are not affected (they use the model's own ``n_jobs``). Results
    are bit-identical to one thread: every chunk is computed the same way and
    partial sums are added in chunk order. Combine with single-threaded BLAS.

    Examples
    --------
    >>> import numpy as np
    >>> from segsoft.features import extract
    >>> from segsoft.io import Image
    >>> img = Image.from_array(np.random.default_rng(0).random((1100, 1000, 3), dtype=np.float32))  # 2 chunks
    >>> with using_threads(2):
    ...     a = extract(img)
    >>> bool((a == extract(img)).all())
    True
    """
    if isinstance(n_jobs, bool) or not (isinstance(n_jobs, (int, np.integer)) and n_jobs >= 1):
        raise ValueError(f"n_jobs must be a whole number >= 1, got {n_jobs!r}")
    token = _AMBIENT_JOBS.set(int(n_jobs))
    try:
        yield
    finally:
        _AMBIENT_JOBS.reset(token)


def current_threads() -> int:
    """The thread count set by the innermost :func:`using_threads` (1 outside any).

    What image-sized steps outside the engine (features, smoothing) split their
    chunks over, so one setting governs the whole one-image path.

    Examples
    --------
    >>> with using_threads(3):
    ...     current_threads()
    3
    >>> current_threads()
    1
    """
    return _AMBIENT_JOBS.get()


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has no affinity), at least 1.

    Examples
    --------
    >>> available_cores() >= 1
    True
    """
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------
# Quadratic feature layouts


CHUNK_BYTES = 64 << 20  # the (P, rows) float64 buffer of one chunk pass stays below this
# with n_jobs > 1 a thread takes about this many rows at a time (consecutive chunks): numpy calls
# long enough that the two threads seldom wait for the GIL
GROUP_ROWS = 1 << 15
# a row whose every logit lies this far below the shift gets an exact log-sum-exp of its own
# (exp(-600) is a normal float, so a row's largest memberships keep full precision above it; only
# memberships some e^-100 or more below a row's largest can flush to 0, far under the float32 outputs)
_FAR = 600.0


_NO_CONTEXT = contextlib.nullcontext()


def _group_chunks(size: int, n_chunks: int, n_jobs: int) -> int:
    """Chunks a task takes at once: 1 on one thread; with threads, about :data:`GROUP_ROWS` rows
    but at least two tasks a thread."""
    if n_jobs <= 1:
        return 1
    return max(1, min(GROUP_ROWS // size, n_chunks // (2 * n_jobs)))


def _exact_rows(wt: np.ndarray, q: np.ndarray, resp: np.ndarray, score: np.ndarray, shift: float) -> None:
    """Redo the rows of one chunk whose shifted softmax under- or overflowed, by the per-row
    maximum (``wt``: shifted coefficients (K, P), ``q``: the chunk's features; fixes ``resp`` (K, n)
    and ``score`` (n,) in place)."""
    bad = np.flatnonzero(~((score >= shift - _FAR) & (score < np.inf)))  # NaN fails both
    logits = wt @ q[:, bad]
    top = logits.max(axis=0)
    logits -= top
    np.exp(logits, out=logits)
    total = logits.sum(axis=0)
    logits /= total
    resp[:, bad] = logits
    score[bad] = shift + (top + np.log(total))


class _Layout:
    """Column layout of the quadratic features ``Q(x)`` for one model family.

    ``kind`` is ``"full"`` (all products ``x_i x_j, i <= j``), ``"diag"``
    (squares ``x_i^2``) or ``"iso"`` (the squared norm ``|x|^2``).
    """

    def __init__(self, d: int, kind: str):
        self.d, self.kind = d, kind
        if kind == "full":
            self.pairs = [(i, j) for i in range(d) for j in range(i, d)]
            self.n_quad = len(self.pairs)
        elif kind == "diag":
            self.n_quad = d
        else:
            self.n_quad = 1
        self.p = 1 + d + self.n_quad

    def buffer(self, rows: int) -> np.ndarray:
        """A (P, rows) float64 buffer for :meth:`fill`, its constant row already set."""
        buf = np.empty((self.p, rows))
        buf[0] = 1.0
        return buf

    def build(self, x: np.ndarray, center: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (P, n) with ``Q(x - center)`` for the rows of ``x``."""
        out[0, : x.shape[0]] = 1.0
        return self.fill(x, center, out)

    def fill(self, x: np.ndarray, center: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`build` into a buffer from :meth:`buffer` (its constant row is left as it is).

        Seven numpy calls whatever ``d`` ("full": the products ``x_i x_j, j >= i`` of one
        ``i`` are one contiguous block of rows, filled by one broadcast multiply); every
        value is the same float64 operation as one product at a time.
        """
        n, d = x.shape
        q = out[:, :n]
        lin = q[1 : 1 + d]
        np.copyto(lin, x.T)  # float32 -> float64, exact; one strided read
        np.subtract(lin, center[:, None], out=lin)
        quad = q[1 + d :]
        if self.kind == "full":
            c = 0
            for i in range(d):
                np.multiply(lin[i:], lin[i], out=quad[c : c + d - i])
                c += d - i
        elif self.kind == "diag":
            np.multiply(lin, lin, out=quad)
        else:
            np.einsum("dn,dn->n", lin, lin, out=quad[0])
        return q

    def coefficients(self, const: np.ndarray, lin: np.ndarray, quad: np.ndarray) -> np.ndarray:
        """Pack per-component ``const + lin.x - 0.5 x^T A x`` into W (P, K).

        ``quad`` is ``A``: (K, d, d) for "full", (K, d) diagonals for "diag",
        (K,) scalars for "iso".
        """
        k, d = lin.shape
        w = np.empty((self.p, k))
        w[0] = const
        w[1 : 1 + d] = lin.T
        if self.kind == "full":
            for c, (i, j) in enumerate(self.pairs):
                # off-diagonal products appear once in Q but twice in x^T A x
                w[1 + d + c] = -0.5 * quad[:, i, i] if i == j else -quad[:, i, j]
        elif self.kind == "diag":
            w[1 + d :] = -0.5 * quad.T
        else:
            w[1 + d] = -0.5 * quad
        return w

    def second_moments(self, s: np.ndarray) -> np.ndarray:
        """Unpack the quadratic rows of the statistics ``S`` (P, K).

        Returns (K, d, d) for "full", (K, d) for "diag", (K,) for "iso".
        """
        d = self.d
        quad = s[1 + d :]
        if self.kind == "full":
            k = s.shape[1]
            m2 = np.empty((k, d, d))
            for c, (i, j) in enumerate(self.pairs):
                m2[:, i, j] = m2[:, j, i] = quad[c]
            return m2
        if self.kind == "diag":
            return quad.T.copy()
        return quad[0].copy()


# --------------------------------------------------------------------------
# Helpers


def _check_array(X: Any, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def _check_finite(X: np.ndarray) -> None:
    # chunked so the check never makes a full-size temporary; a float64 sum is finite only if
    # every term is (one read, no boolean array); only a sum that overflows looks further
    step = 1 << 18
    for s in range(0, X.shape[0], step):
        chunk = X[s : s + step]
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(chunk.sum(dtype=np.float64))
        if not math.isfinite(total) and not np.isfinite(chunk).all():
            raise ValueError("X contains NaN or infinite values")


def _check_weights(sample_weight: Any, n: int) -> np.ndarray | None:
    """``sample_weight`` as float64 (n,), or None; ValueError for a bad one."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numbers, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per row of X), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinite values")
    if (w < 0).any():
        raise ValueError("sample_weight must be >= 0")
    total = float(w.sum())
    if not total > 0:
        raise ValueError("sample_weight is zero for every row")
    if not math.isfinite(total):
        raise ValueError("sample_weight sums to infinity")
    return w


def _column_moments(X: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Column means and the mean column variance, in float64 chunks (weighted by ``sample_weight``)."""
    step = 1 << 20
    if sample_weight is not None:
        w = sample_weight
        wsum = float(w.sum())
        total = np.zeros(X.shape[1])
        for s in range(0, X.shape[0], step):
            total += w[s : s + step] @ X[s : s + step].astype(np.float64)
        mean = total / wsum
        sq = 0.0
        for s in range(0, X.shape[0], step):
            sq += float(w[s : s + step] @ np.square(X[s : s + step] - mean).sum(1))
        return mean, sq / (wsum * X.shape[1])
    # in blocks that stay in cache, each copied to float64 once: the column sums are a
    # product with ones, the deviations a subtraction of the tiled mean (numpy's reductions
    # and broadcasts over a short last axis cost ~70 ns a row; these ~10)
    n, d = X.shape
    small = min(n, max(256, (1 << 21) // (8 * d)))  # 2 MiB of float64 rows
    buf, ones = np.empty((small, d)), np.ones(small)
    total = np.zeros(d)
    for s in range(0, n, small):
        block = buf[: min(small, n - s)]
        np.copyto(block, X[s : s + small])
        total += ones[: block.shape[0]] @ block
    mean = total / n
    tiled = np.tile(mean, (small, 1))
    sq = 0.0
    for s in range(0, n, small):
        block = buf[: min(small, n - s)]
        np.copyto(block, X[s : s + small])
        np.subtract(block, tiled[: block.shape[0]], out=block)
        np.square(block, out=block)
        sq += float(block.sum())
    return mean, sq / X.size


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k) between rows of x and c."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _weighted_pick(cum: np.ndarray, rng: np.random.Generator) -> int:
    """One row drawn with probability proportional to its weight (``cum``: cumulative weights).

    With whole-number weights the draw is ``rng.integers(total)`` located in
    the cumulative weights: the same random number and the same row as
    ``rng.integers(n)`` on the data with each row repeated ``weight`` times
    (in that order), so a weighted fit on distinct rows with their counts
    starts where the fit on all the rows does.
    """
    total = cum[-1]
    if total < 2.0**53 and np.all(cum == np.round(cum)):
        r = float(rng.integers(int(total)))
    else:
        r = rng.random() * total
    return int(min(np.searchsorted(cum, r, side="right"), cum.size - 1))


def kmeans_plusplus(
    X: np.ndarray, k: int, rng: np.random.Generator, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on float64 rows.

    Like scikit-learn, each step draws ``2 + log(k)`` candidates in proportion
    to the squared distance to the nearest chosen centre and keeps the one
    that lowers the potential most. With ``sample_weight``, in proportion to
    weight times squared distance, and the potential is weighted.
    """
    if sample_weight is not None:
        return _kmeans_plusplus_weighted(X, k, rng, sample_weight)
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    centers = np.empty((k, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    closest = _sq_dist(X, centers[:1])[:, 0]
    for c in range(1, k):
        pot = closest.sum()
        if pot <= 0.0:  # every point already sits on a centre
            centers[c] = X[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * pot)
        cand = np.minimum(cand, n - 1)
        dist = np.minimum(closest[None, :], _sq_dist(X, X[cand]).T)
        best = int(np.argmin(dist.sum(1)))
        centers[c] = X[cand[best]]
        closest = dist[best]
    return centers


def _kmeans_plusplus_weighted(X: np.ndarray, k: int, rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    centers = np.empty((k, X.shape[1]))
    cum_w = np.cumsum(w)
    centers[0] = X[_weighted_pick(cum_w, rng)]
    closest = _sq_dist(X, centers[:1])[:, 0]
    for c in range(1, k):
        wc = w * closest
        pot = wc.sum()
        if pot <= 0.0:
            centers[c] = X[_weighted_pick(cum_w, rng)]
            continue
        cand = np.searchsorted(np.cumsum(wc), rng.random(trials) * pot)
        cand = np.minimum(cand, n - 1)
        dist = np.minimum(closest[None, :], _sq_dist(X, X[cand]).T)
        best = int(np.argmin(dist @ w))
        centers[c] = X[cand[best]]
        closest = dist[best]
    return centers


def kmeans(
    X: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 30, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; returns the centres (k, d).

    Used only to initialise EM, on a sample of the data. A cluster that
    empties keeps its previous centre. ``sample_weight`` weights the rows
    (seeding and centres).
    """
    w = sample_weight
    centers = kmeans_plusplus(X, k, rng, w)
    labels = None
    for _ in range(max_iter):
        new = np.argmin(_sq_dist(X, centers), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sums = np.zeros_like(centers)
        if w is None:
            counts = np.bincount(labels, minlength=k)
            np.add.at(sums, labels, X)
        else:
            counts = np.bincount(labels, weights=w, minlength=k)
            np.add.at(sums, labels, X * w[:, None])
        full = counts > 0
        centers[full] = sums[full] / counts[full, None]
    return centers


# --------------------------------------------------------------------------
# Sufficient statistics of a chunk (the E-step half of an EM iteration)


class EMStatistics:
    """What one E-step over some rows gives the M-step; additive over chunks.

    ``chunk_statistics`` computes one for a chunk of rows under the current
    parameters; ``a + b`` merges two (``sum()`` works too), so the statistics
    of a whole data set can be reduced as a tree over its chunks, and
    ``update_from_statistics`` does the M-step from the total. Plain numpy and
    Python numbers, so it pickles (to ship between processes) and is small:
    ``(P, K)`` floats with ``P = 1 + d + quadratic terms``.

    Attributes
    ----------
    s : ndarray (P, K) or None
        ``sum_n w_nk Q(x_n)`` in the model's centred coordinates (the M-step
        weights ``w`` are the memberships, or ``u^m`` for fuzzy c-means);
        None when only scores were asked for.
    score_sum : float
        Sum of the per-row scores: the log-likelihood (fuzzy c-means: ``-J``).
    n : int or float
        Rows seen (a weighted fit: their total weight, a float).
    worst_score, worst_row, worst_point :
        The lowest per-row score, a key of its row (lower key wins a tie:
        raster order, so the same row as in memory) and the row itself
        (float64, the input's units), used to re-seed a collapsed component.
        ``worst_point`` is None when there is none (no rows).

    Examples
    --------
    >>> import numpy as np
    >>> from segsoft.mixture import GaussianMixture
    >>> X = np.r_[np.zeros(50), np.ones(50)][:, None] + np.linspace(0, 0.1, 100)[:, None]
    >>> gm = GaussianMixture(2).fit(X)
    >>> whole = gm.chunk_statistics(X)
    >>> parts = gm.chunk_statistics(X[:30]) + gm.chunk_statistics(X[30:], offset=30)
    >>> bool(np.allclose(whole.s, parts.s, rtol=1e-13)), parts.n
    (True, 100)
    """

    __slots__ = ("n", "s", "score_sum", "worst_point", "worst_row", "worst_score")

    def __init__(
        self,
        s: np.ndarray | None,
        score_sum: float,
        n: int,
        worst_score: float = math.inf,
        worst_row: int = -1,
        worst_point: np.ndarray | None = None,
    ):
        self.s = s
        self.score_sum = float(score_sum)
        # rows seen, or their total weight in a weighted fit
        self.n = float(n) if isinstance(n, (float, np.floating)) else int(n)
        self.worst_score = float(worst_score)
        self.worst_row = int(worst_row)
        self.worst_point = worst_point

    @property
    def mean_score(self) -> float:
        """Mean score per row (the mean log-likelihood for mixtures)."""
        return self.score_sum / self.n

    def __add__(self, other: Any) -> EMStatistics:
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self
        if not isinstance(other, EMStatistics):
            return NotImplemented
        s = None if self.s is None or other.s is None else self.s + other.s
        a, b = self, other
        if (b.worst_point is not None and a.worst_point is None) or (
            b.worst_point is not None
            and (b.worst_score < a.worst_score or (b.worst_score == a.worst_score and b.worst_row < a.worst_row))
        ):
            a = b
        return EMStatistics(
            s, self.score_sum + other.score_sum, self.n + other.n, a.worst_score, a.worst_row, a.worst_point
        )

    __radd__ = __add__

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for k, v in zip(self.__slots__, state):
            setattr(self, k, v)

    def __repr__(self) -> str:
        shape = None if self.s is None else self.s.shape
        return f"EMStatistics(n={self.n}, score_sum={self.score_sum!r}, s={shape})"


# --------------------------------------------------------------------------
# The engine


class _EMBase:
    """EM loop, initialisation, chunked passes and scoring shared by all models."""

    _layout_kind = "full"

    def __init__(
        self,
        n_components: int = 4,
        *,
        max_iter: int = 100,
        tol: float = 1e-4,
        init: str = "k-means++",
        n_init: int = 1,
        seed: int | None = 0,
        sample_size: int | None = None,
        polish_iter: int = 1,
        chunk_size: int = 8192,
        n_jobs: int | None = None,
    ):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.n_init = n_init
        self.seed = seed
        self.sample_size = sample_size
        self.polish_iter = polish_iter
        self.chunk_size = chunk_size
        self.n_jobs = n_jobs

    # -- parameters ---------------------------------------------------------

    def _rows_per_chunk(self) -> int:
        """Rows per chunk: ``chunk_size``, fewer when the quadratic features of that many rows would
        pass :data:`CHUNK_BYTES` (a full covariance on hundreds of bands has ~D^2/2 of them a row)."""
        return int(min(self.chunk_size, max(64, CHUNK_BYTES // (8 * self._layout.p))))

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as in scikit-learn."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def check_params(self) -> None:
        """Raise ValueError for a bad constructor argument (done by ``fit`` too,
        but callers can fail fast before preparing data)."""
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_components must be a positive integer, got {k!r}")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a whole number >= 1, got {self.max_iter!r}")
        if not (isinstance(self.n_init, (int, np.integer)) and self.n_init >= 1):
            raise ValueError(f"n_init must be a whole number >= 1, got {self.n_init!r}")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++' or 'random', got {self.init!r}")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise ValueError(f"seed must be a whole number >= 0 or None, got {self.seed!r}")
        if self.sample_size is not None and self.sample_size < 0:
            raise ValueError(f"sample_size must be >= 0 or None, got {self.sample_size!r}")
        if not (isinstance(self.polish_iter, (int, np.integer)) and self.polish_iter >= 0):
            raise ValueError(f"polish_iter must be a whole number >= 0, got {self.polish_iter!r}")
        # every pass allocates a (P, chunk_size) buffer: 0 loops forever, a huge one exhausts memory
        if not (isinstance(self.chunk_size, (int, np.integer)) and 1 <= self.chunk_size <= 1 << 20):
            raise ValueError(f"chunk_size must be a whole number between 1 and {1 << 20}, got {self.chunk_size!r}")
        if self.n_jobs is not None and not (isinstance(self.n_jobs, (int, np.integer)) and self.n_jobs >= 1):
            raise ValueError(f"n_jobs must be a whole number >= 1 or None, got {self.n_jobs!r}")

    def _validate(self, X: np.ndarray) -> None:
        self.check_params()
        if X.shape[0] < self.n_components:
            raise ValueError(f"n_samples={X.shape[0]} is smaller than n_components={self.n_components}")

    def _check_input(self, X: Any) -> np.ndarray:
        """X for predict/score: the fitted number of features, finite."""
        self._check_fitted()
        X = _check_array(X)
        d = self.means_.shape[1]
        if X.shape[1] != d:
            raise ValueError(f"X has {X.shape[1]} features, but this model was fitted on {d}")
        _check_finite(X)
        return X

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X) first")

    # -- subclass hooks -----------------------------------------------------

    def _coefficients(self) -> np.ndarray:  # W (P, K) in centred coordinates
        raise NotImplementedError

    def _coefficients_and_bound(self) -> tuple[np.ndarray, np.ndarray | None]:
        """W and, per component, the largest value its logit takes over all x (or None: unknown).

        With a bound, the default softmax posterior shifts every logit by the largest bound
        instead of by each row's maximum: no pass for the maximum, none to subtract it.
        """
        return self._coefficients(), None

    def _m_step(self, s: np.ndarray, n: int) -> None:
        raise NotImplementedError

    def _posterior(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From logits (K, n), in place: (memberships (K, n), statistic weights, per-row score).

        Rows are laid out along the last axis so every reduction over the K
        components is an elementwise operation on long contiguous vectors
        (several times faster than reducing a short axis of length K).
        """
        m = logits.max(axis=0)
        logits -= m
        np.exp(logits, out=logits)
        total = logits.sum(axis=0)
        logits /= total
        np.log(total, out=total)
        total += m
        return logits, logits, total

    def _reseed(self, k: int, point: np.ndarray, weight: float) -> None:
        """Put component ``k`` at ``point`` (centred coordinates) with mixing ``weight``."""
        raise NotImplementedError

    def _permute(self, order: np.ndarray) -> None:
        raise NotImplementedError

    # -- chunked passes -----------------------------------------------------

    def _pass(
        self,
        X: np.ndarray,
        *,
        stats: bool = True,
        resp_out: np.ndarray | None = None,
        score_out: np.ndarray | None = None,
        coefficients: np.ndarray | None = None,
        posterior: Callable | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray | None, tuple[float, int]]:
        """One pass over X: E-step, and optionally M-step statistics.

        Returns (mean score, statistics S (P, K) or None, (worst score, its row)).
        With ``sample_weight`` the mean and the statistics are weighted.
        """
        total, s_tot, worst = self._pass_sums(
            X,
            stats=stats,
            resp_out=resp_out,
            score_out=score_out,
            coefficients=coefficients,
            posterior=posterior,
            sample_weight=sample_weight,
        )
        n = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        return total / n, s_tot, worst

    def _pass_sums(
        self,
        X: np.ndarray,
        *,
        stats: bool = True,
        resp_out: np.ndarray | None = None,
        score_out: np.ndarray | None = None,
        coefficients: np.ndarray | None = None,
        posterior: Callable | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray | None, tuple[float, int]]:
        """:meth:`_pass` with the score summed rather than averaged (weighted by ``sample_weight``).

        With weights, the statistics are ``sum_n w_n r_nk Q(x_n)``, the score
        sum is ``sum_n w_n score_n`` and the worst row is among those of
        positive weight.

        The rows go in chunks of :meth:`_rows_per_chunk`; every sum (the
        statistics, the score, the worst row) is formed per chunk and the
        chunks' sums are added in chunk order, so the numbers depend on the
        chunk size but not on ``n_jobs``. With threads, each task takes a
        group of consecutive chunks (:func:`_group_chunks`) and runs the
        row-by-row steps (features, exp, normalisation, log) over the whole
        group at once: fewer, longer numpy calls, so the GIL is free most of
        the time; those steps give every row the same value whatever the
        length of the array it sits in.
        """
        sw = sample_weight
        shift = None
        if coefficients is None:
            w, bound = self._coefficients_and_bound()
            if posterior is None and bound is not None and type(self)._posterior is _EMBase._posterior:
                top = float(np.max(bound))
                if math.isfinite(top):
                    # every logit is <= top: exp(logit - top) needs no per-row maximum
                    shift = top
                    w = w.copy()
                    w[0] -= shift
        else:
            w = coefficients
        wt = np.ascontiguousarray(w.T)
        post = self._posterior if posterior is None else posterior
        layout, center, size = self._layout, self._center, self._rows_per_chunk()
        k, n = wt.shape[0], X.shape[0]
        n_chunks = -(-n // size)
        # only an explicit n_jobs: the features, smoothing and batch paths decide for themselves
        n_jobs = min(self.n_jobs or 1, n_chunks)
        # processes where they can be had (see segsoft.mixture.forked): a chunk a task, as on one thread
        fork = n_jobs > 1 and n >= forked.FORK_MIN_ROWS and forked.can_fork()
        step = size * _group_chunks(size, n_chunks, 1 if fork else n_jobs)
        local = threading.local()
        starts = range(0, n, step)
        # a forked pass that writes memberships or scores: the children take the runs after the first of
        # forked.split (rows child0 onwards), write them to shared memory, and `received` copies them over
        writes = fork and (resp_out is not None or score_out is not None)
        child0 = forked.split(starts, n_jobs)[1][0] if writes else n
        child_resp = child_score = None
        if writes and resp_out is not None:
            child_resp = forked.shared_array((n - child0, k), resp_out.dtype)
        if writes and score_out is not None:
            child_score = forked.shared_array((n - child0,), score_out.dtype)

        def outputs() -> tuple[np.ndarray | None, np.ndarray | None, int]:
            """Where this process writes memberships and scores, and the row of their first line."""
            if fork and forked.in_child():
                return child_resp, child_score, child0
            return resp_out, score_out, 0

        def received(part: range) -> None:  # a child's rows: from the shared arrays into the outputs
            a, b, c = part[0], min(part[-1] + step, n), child0
            if resp_out is not None:
                resp_out[a:b] = child_resp[a - c : b - c]
            if score_out is not None:
                score_out[a:b] = child_score[a - c : b - c]

        def reduce(q: np.ndarray, weights: np.ndarray, score: np.ndarray, s: int, worst: int | None = None) -> tuple:
            if sw is None:
                worst = int(np.argmin(score)) if worst is None else worst
                return float(score.sum()), (q @ weights.T if stats else None), float(score[worst]), s + worst
            ws = sw[s : s + score.shape[0]]
            s_chunk = (q @ (weights * ws).T) if stats else None
            live = np.where(ws > 0, score, np.inf)
            worst = int(np.argmin(live))
            return float(score @ ws), s_chunk, float(live[worst]), s + worst

        def work(s0: int) -> list[tuple]:
            bufs = getattr(local, "bufs", None)
            if bufs is None:
                bufs = local.bufs = (layout.buffer(step), np.empty((k, step)), np.empty(step))
            e1 = min(s0 + step, n)
            m = e1 - s0
            q = layout.fill(X[s0:e1], center, bufs[0])
            logits = bufs[1][:, :m]
            cuts = [(a, min(a + size, m)) for a in range(0, m, size)]
            for a, b in cuts:
                np.matmul(wt, q[:, a:b], out=logits[:, a:b])
            out = []
            r_out, s_out, o = outputs()
            if shift is None:
                for a, b in cuts:
                    resp, weights, score = post(logits[:, a:b])
                    if r_out is not None:
                        r_out[s0 - o + a : s0 - o + b] = resp.T
                    if s_out is not None:
                        s_out[s0 - o + a : s0 - o + b] = score
                    out.append(reduce(q[:, a:b], weights, score, s0 + a))
                return out
            # the softmax, in place over the whole group: memberships in `logits`, scores in `score`
            # (under np.errstate(divide, over, invalid="ignore"), set by the caller)
            resp = np.exp(logits, out=logits)
            score = np.add.reduce(resp, axis=0, out=bufs[2][:m])
            np.divide(1.0, score, out=score)  # inf where every term underflowed: fixed below
            np.multiply(resp, score, out=resp)
            np.log(score, out=score)
            np.subtract(shift, score, out=score)  # shift + log(sum_k exp(logit_k - shift))
            worst = []
            for a, b in cuts:
                sc = score[a:b]
                i = int(np.argmin(sc))
                # also catches -inf and NaN; +inf (a sum of exps that overflowed) is checked too,
                # though the shift bounds every logit: only rounding could exceed it
                if not (sc[i] >= shift - _FAR and sc.max() < np.inf):
                    _exact_rows(wt, q[:, a:b], resp[:, a:b], sc, shift)
                    i = int(np.argmin(sc))
                worst.append(i)
            if r_out is not None:
                r_out[s0 - o : e1 - o] = resp.T
            if s_out is not None:
                s_out[s0 - o : e1 - o] = score
            for (a, b), i in zip(cuts, worst):
                out.append(reduce(q[:, a:b], resp[:, a:b], score[a:b], s0 + a, i))
            return out

        def task(s0: int) -> list[tuple]:
            if shift is None:
                return work(s0)
            # the shifted softmax divides by 0 where a row's every term underflowed (those rows
            # are redone exactly); the error state is per thread, so each task sets it
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                return work(s0)

        if n_jobs <= 1:
            with np.errstate(divide="ignore", over="ignore", invalid="ignore") if shift is not None else _NO_CONTEXT:
                results = [r for s0 in starts for r in work(s0)]
        elif fork:
            parts = forked.map_forked(task, starts, n_jobs, received if writes else None)
            results = [r for part in parts for r in part]
        else:
            # numpy releases the GIL in BLAS and ufuncs; partial sums are added
            # in chunk order, so the result does not depend on thread timing
            with ThreadPoolExecutor(n_jobs) as ex:
                results = [r for part in ex.map(task, starts) for r in part]
        total = sum(r[0] for r in results)
        s_tot = None
        if stats:
            s_tot = np.zeros((layout.p, self.n_components))
            for r in results:
                s_tot += r[1]
        worst = min(results, key=lambda r: r[2])
        return total, s_tot, (worst[2], worst[3])

    # -- fitting ------------------------------------------------------------

    @_one_blas_thread
    def fit(
        self,
        X: Any,
        means_init: Any = None,
        progress: ProgressFn | None = None,
        prior: Any = None,
        *,
        sample_weight: Any = None,
    ):
        """Fit the model to the rows of ``X`` by EM.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            float32 data are used as they are (no float64 copy is made).
        means_init : array-like, shape (n_components, n_features), optional
            Initial means. Each row of X starts assigned to its nearest mean
            and the first M-step sets weights and covariances from that.
            When given, ``n_init`` restarts are not used.
        progress : callable(iteration, log_likelihood), optional
            Called after every iteration.
        prior : optional
            A prior on the memberships between E- and M-steps, such as
            :class:`segsoft.spatial.PottsPrior`: anything with
            ``memberships(log_joint) -> (memberships, objective)`` and
            ``reset()``. EM then maximises the prior's objective, which is
            what ``log_likelihood_trace_`` records (per row). Every row is
            used (``sample_size`` is ignored). Not with ``sample_weight``.
        sample_weight : array-like, shape (n_samples,), optional
            Non-negative finite weights, not all zero: a row of weight w
            counts as w copies of it everywhere a row counts (the E-step
            statistics, the log-likelihood and its mean, k-means++ and
            k-means, the column moments, the collapsed-component threshold,
            BIC's n). Rows of weight 0 are dropped. With whole-number
            weights, the fit on distinct rows with their counts is the fit
            on all the rows (the same k-means++ draws when the repeated rows
            are grouped in the same order; to rounding otherwise). With
            ``sample_size`` smaller than the rows of positive weight, the
            sample is ``sample_size`` draws with replacement, each row with
            probability proportional to its weight, fitted with the draw
            counts as weights; the polish runs on all rows, weighted.

        Returns
        -------
        self
        """
        X = _check_array(X)
        weights = _check_weights(sample_weight, X.shape[0])
        if weights is not None:
            if prior is not None:
                raise ValueError("sample_weight cannot be combined with a prior on the memberships")
            if (weights == 0).any():
                keep = weights > 0
                X, weights = X[keep], weights[keep]
        self._validate(X)
        _check_finite(X)
        n, d = X.shape
        if prior is not None:
            if not hasattr(self, "n_parameters"):
                raise ValueError(f"a prior on the memberships needs a likelihood model, not {type(self).__name__}")
            if getattr(prior, "n_rows", n) != n:
                raise ValueError(f"the prior is for {prior.n_rows} rows but X has {n}")
        self._prior = prior

        def take_rows(idx: np.ndarray | None) -> np.ndarray:
            return X if idx is None else X[idx]

        return self._fit(
            n,
            d,
            _column_moments(X, weights),
            take_rows,
            lambda stats=True: self._statistics(X, stats, sample_weight=weights),
            means_init,
            progress,
            weights=weights,
        )

    # -- fitting from chunks (the out-of-core and cluster paths) -------------

    def sample_indices(self, n_rows: int) -> np.ndarray | None:
        """The sorted row indices ``fit`` on ``n_rows`` rows fits on before its polish.

        None when it fits on every row (no ``sample_size``, or one not
        smaller than ``n_rows``). A function of ``seed``, ``sample_size``,
        ``n_components`` and ``n_rows`` alone, so a chunked fit can gather
        exactly the rows the in-memory fit would use.

        Examples
        --------
        >>> from segsoft.mixture import GaussianMixture
        >>> GaussianMixture(2, sample_size=3, seed=0).sample_indices(10).tolist()
        [5, 6, 9]
        """
        self.check_params()
        return self._draw_sample(int(n_rows), np.random.default_rng(self.seed))

    def _draw_sample(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        size = self.sample_size
        if size is not None and 0 < size < n and size >= self.n_components:
            return np.sort(rng.choice(n, size=size, replace=False))
        return None

    def _draw_weighted_sample(
        self, weights: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``sample_size`` draws with replacement in proportion to ``weights``:
        (sorted distinct rows drawn, how often each was drawn), or None for no sample."""
        size, n = self.sample_size, weights.size
        if size is not None and 0 < size < n and size >= self.n_components:
            idx = rng.choice(n, size=size, replace=True, p=weights / weights.sum())
            rows, counts = np.unique(idx, return_counts=True)
            if rows.size >= self.n_components:
                return rows, counts.astype(np.float64)
        return None

    @_one_blas_thread
    def fit_from_chunks(
        self,
        n_rows: int,
        n_features: int,
        *,
        column_moments: tuple[np.ndarray, float],
        take_rows: Callable[[np.ndarray | None], np.ndarray],
        statistics: Callable[[bool], EMStatistics],
        means_init: Any = None,
        progress: ProgressFn | None = None,
    ):
        """``fit`` on data that are reached only through callbacks, chunk by chunk.

        ``fit(X)`` is this with in-memory callbacks; a chunked or distributed
        caller (``segsoft.cluster.em``) supplies its own and gets the same
        numbers: the same sample, the same fit on it, and the same full-data
        polish iterations, each an M-step from summed chunk statistics.

        Parameters
        ----------
        n_rows, n_features : int
            Shape of the whole data set X.
        column_moments : (ndarray (d,), float)
            Column means of X (float64) and the mean of the squared
            deviations from them over all entries (``((X - mean)**2).sum() / X.size``).
            The means centre the model; the variance scales ``reg_covar``.
        take_rows : callable(indices or None) -> ndarray (m, d)
            The rows of X at the given sorted indices (None: every row), in
            memory. Called once, with :meth:`sample_indices` ``(n_rows)``.
        statistics : callable(stats: bool) -> EMStatistics
            The total of :meth:`chunk_statistics` over all the chunks of X under
            the model's current parameters (``stats=False``: scores only).
            Called once per polish iteration (plus rarely, to re-seed).
        means_init, progress :
            As in :meth:`fit`.

        Returns
        -------
        self
        """
        self.check_params()
        n, d = int(n_rows), int(n_features)
        if n < self.n_components:
            raise ValueError(f"n_samples={n} is smaller than n_components={self.n_components}")
        self._prior = None
        center, mean_var = column_moments
        moments = (np.asarray(center, dtype=np.float64).reshape(d), float(mean_var))
        return self._fit(n, d, moments, take_rows, statistics, means_init, progress, check_rows=True)

    def _fit(
        self,
        n: int,
        d: int,
        moments: tuple[np.ndarray, float],
        take_rows: Callable[[np.ndarray | None], np.ndarray],
        statistics: Callable[[bool], EMStatistics],
        means_init: Any,
        progress: ProgressFn | None,
        check_rows: bool = False,
        weights: np.ndarray | None = None,
    ):
        prior = self._prior
        k = self.n_components
        self._layout = _Layout(d, self._layout_kind)
        self._center, mean_var = moments
        # regularisation in the data's own units: reg_covar is relative to the
        # mean feature variance (absolute for standardised features)
        self.reg_covar_ = getattr(self, "reg_covar", 0.0) * (mean_var if mean_var > 0 else 1.0)
        rng = np.random.default_rng(self.seed)

        fit_w = weights
        if weights is None:
            idx = self._draw_sample(n, rng) if prior is None else None
        else:
            drawn = self._draw_weighted_sample(weights, rng)
            idx, fit_w = (None, weights) if drawn is None else drawn
        sampled = idx is not None
        fit_rows = take_rows(idx)
        if check_rows:
            fit_rows = _check_array(fit_rows, "the sample")
            expected = (n if idx is None else idx.size, d)
            if fit_rows.shape != expected:
                raise ValueError(f"take_rows gave shape {fit_rows.shape}, expected {expected}")
            _check_finite(fit_rows)

        if means_init is not None:
            starts = [np.asarray(means_init, dtype=np.float64).reshape(k, d) - self._center]
        else:
            starts = [self._initial_means(fit_rows, rng, fit_w) for _ in range(self.n_init)]

        best = None
        for means0 in starts:
            if prior is not None:
                prior.reset()
            self._init_from_means(fit_rows, means0, fit_w)
            trace, converged, n_iter = self._em(fit_rows, self.max_iter, progress, sample_weight=fit_w)
            if best is None or trace[-1] > best[0][-1]:
                best = (trace, converged, n_iter, self._state(), means0)
        trace, converged, n_iter, state, means0 = best
        self._set_state(state)
        self._start_means = means0 + self._center  # the start EM ran from (private: not serialised)
        self.n_iter_sample_ = n_iter if sampled else 0
        polish: list[float] = []
        if sampled and self.polish_iter > 0:
            # converged_ keeps saying whether the sample fit converged: the
            # polish is a fixed, small number of full-data iterations. Its
            # values are on other rows, so they get a trace of their own
            polish, _, n_polish = self._em_loop(statistics, self.polish_iter, progress, start=n_iter)
            n_iter += n_polish
        self.log_likelihood_trace_ = np.asarray(trace)
        self.polish_trace_ = np.asarray(polish)
        self.log_likelihood_ = float((polish or trace)[-1])
        self.converged_ = bool(converged)
        self.n_iter_ = int(n_iter)
        self.n_features_in_ = d
        self._prior = None  # not part of the fitted state
        self._sort_components()
        return self

    def chunk_statistics(
        self,
        X: Any,
        *,
        offset: int = 0,
        stats: bool = True,
        resp_out: np.ndarray | None = None,
        score_out: np.ndarray | None = None,
    ) -> EMStatistics:
        """The E-step on a chunk of rows: its M-step statistics and score sum.

        Under the model's current parameters (during a fit, between its
        M-steps; after it, the fitted ones). Statistics of disjoint chunks
        add up (``a + b``) to those of their union, to rounding, in any
        grouping, so :meth:`update_from_statistics` on the total is one EM
        iteration over all the rows.

        Parameters
        ----------
        X : array-like (n, d)
            The chunk; may have no rows (an all-transparent tile).
        offset : int
            Added to the row numbers (``worst_row``): the chunk's first row
            in the whole data set, or any key in raster order.
        stats : bool
            False: scores only (``s`` is None); cheaper.
        resp_out : ndarray (n, K), optional
            Filled with the memberships (as :meth:`predict_proba`).
        score_out : ndarray (n,), optional
            Filled with the per-row scores (as :meth:`score_samples`).

        Returns
        -------
        EMStatistics
        """
        if not hasattr(self, "_layout"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X) first")
        X = np.asarray(X)
        d = self._layout.d
        if X.ndim == 2 and X.shape[0] == 0 and X.shape[1] == d:
            return EMStatistics(np.zeros((self._layout.p, self.n_components)) if stats else None, 0.0, 0)
        X = _check_array(X)
        if X.shape[1] != d:
            raise ValueError(f"X has {X.shape[1]} features, but this model has {d}")
        _check_finite(X)
        return self._statistics(X, stats, offset=offset, resp_out=resp_out, score_out=score_out)

    def update_from_statistics(self, stats: EMStatistics) -> None:
        """The M-step from summed :meth:`chunk_statistics`, exactly as ``fit`` does it
        (the same regularisation and handling of collapsed components).

        Leaves the parameters in the model's internal (unsorted, centred)
        state, as between two iterations of ``fit``; the chunked fit sorts
        and publishes them at the end.
        """
        if stats.s is None:
            raise ValueError("these statistics were computed with stats=False: no M-step is possible")
        self._m_step(stats.s, stats.n)

    def _statistics(
        self,
        X: np.ndarray,
        stats: bool = True,
        offset: int = 0,
        resp_out: np.ndarray | None = None,
        score_out: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> EMStatistics:
        total, s, (worst_score, worst_row) = self._pass_sums(
            X, stats=stats, resp_out=resp_out, score_out=score_out, sample_weight=sample_weight
        )
        point = X[worst_row].astype(np.float64)
        n = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        return EMStatistics(s, total, n, worst_score, offset + worst_row, point)

    def _initial_means(
        self, X: np.ndarray, rng: np.random.Generator, sample_weight: np.ndarray | None = None
    ) -> np.ndarray:
        if sample_weight is not None:
            return self._initial_means_weighted(X, rng, sample_weight)
        m = min(X.shape[0], 20000)
        idx = rng.choice(X.shape[0], size=m, replace=False) if m < X.shape[0] else np.arange(m)
        xs = X[idx].astype(np.float64) - self._center
        if self.init == "random":
            return xs[rng.choice(m, size=self.n_components, replace=False)]
        return kmeans(xs, self.n_components, rng)

    def _initial_means_weighted(self, X: np.ndarray, rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
        """k-means on all the rows with their weights (up to 20,000 rows; beyond, on
        20,000 draws with replacement in proportion to the weights, each distinct
        row drawn weighted by how often it was drawn)."""
        n, m = X.shape[0], 20000
        if n <= m:
            xs, ws = X.astype(np.float64) - self._center, w
        else:
            idx, counts = np.unique(rng.choice(n, size=m, replace=True, p=w / w.sum()), return_counts=True)
            xs, ws = X[idx].astype(np.float64) - self._center, counts.astype(np.float64)
        if self.init == "random":
            if np.count_nonzero(ws) < self.n_components:
                raise ValueError(f"fewer rows of positive weight than n_components={self.n_components}")
            return xs[rng.choice(xs.shape[0], size=self.n_components, replace=False, p=ws / ws.sum())]
        return kmeans(xs, self.n_components, rng, sample_weight=ws)

    def _init_from_means(self, X: np.ndarray, means: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        """Hard-assign every row to its nearest mean, then one M-step."""
        k, d = means.shape
        iso = _Layout(d, "iso")
        # -|x - mu|^2 / 2 as a linear model in the iso layout of this family
        sq = np.einsum("kd,kd->k", means, means)
        w_iso = iso.coefficients(-0.5 * sq, means, np.ones(k))
        w = np.zeros((self._layout.p, k))
        w[: 1 + d] = w_iso[: 1 + d]

        # the |x|^2 term is the same for every component: it does not change argmin
        def hard(logits: np.ndarray):
            # argmax over the K rows (the first of equal maxima), one elementwise pass a component
            best, label = logits[0].copy(), np.zeros(logits.shape[1], dtype=np.intp)
            for c in range(1, logits.shape[0]):
                better = logits[c] > best
                np.copyto(label, c, where=better)
                np.copyto(best, logits[c], where=better)
            onehot = (label == np.arange(logits.shape[0])[:, None]).astype(np.float64)
            return onehot, onehot, np.zeros(logits.shape[1])

        _, s, _ = self._pass(X, coefficients=w, posterior=hard, sample_weight=sample_weight)
        # fresh state for this start: a component no row is nearest to keeps its mean
        self._means, self._cov = means.copy(), None
        self._m_step(s, X.shape[0] if sample_weight is None else float(sample_weight.sum()))

    def _em(
        self,
        X: np.ndarray,
        max_iter: int,
        progress: ProgressFn | None,
        start: int = 0,
        sample_weight: np.ndarray | None = None,
    ):
        if self._prior is not None:
            statistics = lambda stats=True: self._prior_step(X)
        else:
            statistics = lambda stats=True: self._statistics(X, stats, sample_weight=sample_weight)
        return self._em_loop(statistics, max_iter, progress, start)

    def _em_loop(
        self, statistics: Callable[[bool], EMStatistics], max_iter: int, progress: ProgressFn | None, start: int = 0
    ):
        """EM iterations, each an M-step from ``statistics(True)`` (the E-step over all rows)."""
        trace: list[float] = []
        converged = False
        n_iter = 0
        reseeds_left = 3 * self.n_components
        for it in range(max_iter):
            st = statistics(True)
            ll = st.mean_score
            trace.append(ll)
            self.update_from_statistics(st)
            n_iter = it + 1
            dead = np.flatnonzero(self._collapsed_mask())
            point = st.worst_point
            if dead.size and reseeds_left > 0 and point is not None and self._far_from_means(point):
                reseeds_left -= 1
                if self._try_reseed(statistics, st.n, int(dead[0]), point.astype(np.float64) - self._center, trace[-1]):
                    self.n_reseeds_ = getattr(self, "n_reseeds_", 0) + 1
                    continue
            if progress is not None:
                progress(start + n_iter, ll)
            if len(trace) > 1 and abs(trace[-1] - trace[-2]) < self.tol:
                converged = True
                break
        return trace, converged, n_iter

    def _try_reseed(
        self, statistics: Callable[[bool], EMStatistics], n: int, k: int, point: np.ndarray, floor: float
    ) -> bool:
        """Re-seed collapsed component ``k`` on ``point`` (the worst-explained row)
        rather than leave it at weight 0 -- but only with a weight at which the
        objective is at least ``floor`` (the last one recorded), so the trace
        still never decreases. Costs a pass per weight tried; it is rare."""
        saved = self._state()
        for weight in (1.0 / self.n_components, 1.0 / math.sqrt(self.n_components * n), 1.0 / n):
            self._set_state(saved)
            self._reseed(k, point, weight)
            if statistics(False).mean_score >= floor:
                return True
        self._set_state(saved)
        return False

    def _prior_step(self, X: np.ndarray) -> EMStatistics:
        """E-step through the prior: the objective (summed over rows) and the M-step
        statistics; no worst row (no re-seeding under a prior)."""
        log_joint = self._log_joint(X)
        resp, objective = self._prior.memberships(log_joint)
        return EMStatistics(self._stats(X, resp), objective, X.shape[0])

    def _log_joint(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((X.shape[0], self.n_components))
        raw = lambda logits: (logits, logits, np.zeros(logits.shape[1]))
        self._pass(X, stats=False, resp_out=out, posterior=raw)
        return out

    def _stats(self, X: np.ndarray, resp: np.ndarray) -> np.ndarray:
        """Sufficient statistics ``sum_n resp_nk Q(x_n)`` for given memberships (N, K)."""
        layout, size = self._layout, self._rows_per_chunk()
        starts = list(range(0, X.shape[0], size))
        n_jobs = min(self.n_jobs or 1, len(starts))
        local = threading.local()

        def work(a: int) -> np.ndarray:
            if not hasattr(local, "buf"):
                local.buf = layout.buffer(size)
            return layout.fill(X[a : a + size], self._center, local.buf) @ resp[a : a + size]

        if n_jobs <= 1:
            parts = map(work, starts)
        else:
            ex = ThreadPoolExecutor(n_jobs)
            parts = ex.map(work, starts)
        s = np.zeros((layout.p, self.n_components))
        try:
            for part in parts:  # in chunk order, as one thread would add them
                s += part
        finally:
            if n_jobs > 1:
                ex.shutdown()
        return s

    def _far_from_means(self, point: np.ndarray) -> bool:
        live = ~self._collapsed_mask()
        if not live.any():
            return False
        p = point.astype(np.float64) - self._center
        d2 = ((self._means[live] - p) ** 2).sum(1)
        return bool(d2.min() > 1e-12 * (1.0 + (p * p).sum()))

    def _min_count(self) -> float:
        """Membership mass below which a component counts as collapsed."""
        return 1.0

    def _collapsed_mask(self) -> np.ndarray:
        return self._nk < self._min_count()

    def _sort_components(self) -> None:
        # stable numbering: by the mean's first coordinate (L* for Lab), then the rest
        means = self._means + self._center
        order = np.lexsort(means.T[::-1])
        self._permute(order)
        self._publish()

    # -- prediction ---------------------------------------------------------

    @_one_blas_thread
    def predict_proba(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Posterior memberships (n_samples, n_components); each row sums to 1.

        float32 input gives float32 output (half the memory for images).
        """
        X = self._check_input(X)
        if out is None:
            out = np.empty((X.shape[0], self.n_components), dtype=X.dtype)
        self._pass(X, stats=False, resp_out=out)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Index of the most probable component for each row."""
        return np.argmax(self.predict_proba(X), axis=1)

    @_one_blas_thread
    def score_samples(self, X: Any) -> np.ndarray:
        """Per-row score: the log-likelihood log p(x) (for fuzzy c-means, minus
        the row's weighted squared distances)."""
        X = self._check_input(X)
        out = np.empty(X.shape[0])
        self._pass(X, stats=False, score_out=out)
        return out

    @_one_blas_thread
    def score(self, X: Any, sample_weight: Any = None) -> float:
        """Mean of :meth:`score_samples` (the mean log-likelihood for mixtures),
        weighted by ``sample_weight`` if given."""
        X = self._check_input(X)
        return self._pass(X, stats=False, sample_weight=_check_weights(sample_weight, X.shape[0]))[0]

    @_one_blas_thread
    def predict_proba_and_score(
        self, X: Any, out: np.ndarray | None = None, sample_weight: Any = None
    ) -> tuple[np.ndarray, float]:
        """Memberships and the mean score (weighted by ``sample_weight``) in a single pass over X."""
        X = self._check_input(X)
        if out is None:
            out = np.empty((X.shape[0], self.n_components), dtype=X.dtype)
        w = _check_weights(sample_weight, X.shape[0])
        mean, _, _ = self._pass(X, stats=False, resp_out=out, sample_weight=w)
        return out, mean

    # -- state --------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in self.__dict__.items()
            if k.startswith("_") and not k.startswith("__")
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})

    def _publish(self) -> None:
        raise NotImplementedError

    # -- serialisation ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted parameters as plain JSON-able Python objects."""
        self._check_fitted()
        fitted = {
            name: (v.tolist() if isinstance(v, np.ndarray) else v)
            for name, v in vars(self).items()
            if name.endswith("_") and not name.startswith("_")
        }
        return {"type": type(self).__name__, "params": self.get_params(), "fitted": fitted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild a fitted model from :meth:`to_dict` output.

        Raises ValueError for an unknown parameter, a bad parameter value, or a
        fitted name that is not a public attribute name (``setattr`` would
        otherwise let a file replace a method), TypeError when ``params`` or
        ``fitted`` is not a dict. The fitted values themselves are checked by
        :func:`segsoft.modelfile.check_record`.
        """
        params, fitted = data["params"], data["fitted"]
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise TypeError("params and fitted must be objects")
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for name in params:
            if name not in known:
                raise ValueError(f"{name!r} is not a {cls.__name__} parameter")
        for name in fitted:
            if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_")) or hasattr(cls, name):
                raise ValueError(f"{name!r} is not a fitted attribute of {cls.__name__}")
        if "means_" not in fitted:
            raise ValueError("the fitted means_ are missing")
        model = cls(**params)
        model.check_params()
        fitted = {k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v) for k, v in fitted.items()}
        model._restore(fitted)
        return model

    def _restore(self, fitted: dict[str, Any]) -> None:
        for name, v in fitted.items():
            setattr(self, name, v)
        d = np.asarray(self.means_).shape[1]
        self._layout = _Layout(d, self._layout_kind)
        self._center = np.zeros(d)
        self._from_published()

    def _from_published(self) -> None:
        raise NotImplementedError


class _LikelihoodMixin:
    """BIC and AIC for the models that have a likelihood."""

    def n_parameters(self) -> int:
        """Number of free parameters (what BIC and AIC count)."""
        raise NotImplementedError

    @_one_blas_thread
    def weighted_log_prob(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``log(weight_k) + log p(x | component k)`` for every row and component, (N, K).

        What a prior on the memberships (e.g. the spatial one) combines
        with. float64 unless ``out`` (e.g. float32, to save memory) is given.
        """
        return self._log_joint(self._check_input(X), out)

    def bic(self, X: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion on X (lower is better); with
        ``sample_weight``, n is the total weight."""
        X = _check_array(X)
        w = _check_weights(sample_weight, X.shape[0])
        n = X.shape[0] if w is None else float(w.sum())
        return -2.0 * self.score(X, sample_weight=w) * n + self.n_parameters() * math.log(n)

    def aic(self, X: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion on X (lower is better), weighted like :meth:`bic`."""
        X = _check_array(X)
        w = _check_weights(sample_weight, X.shape[0])
        n = X.shape[0] if w is None else float(w.sum())
        return -2.0 * self.score(X, sample_weight=w) * n + 2.0 * self.n_parameters()
