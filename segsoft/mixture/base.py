"""The shared EM machinery: quadratic-feature layouts, chunked passes, the EM loop.

See the package docstring for how the passes work. The model classes live in
:mod:`segsoft.mixture.gaussian` and :mod:`segsoft.mixture.relatives`.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

_LOG_2PI = math.log(2.0 * math.pi)
_EPS10 = 10.0 * np.finfo(np.float64).eps  # scikit-learn adds this to every N_k
_TINY = np.finfo(np.float64).tiny
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

ProgressFn = Callable[[int, float], None]


def _one_blas_thread(method: Callable) -> Callable:
    """Run ``method`` with single-threaded BLAS.

    The products here are skinny ((P, n) x (n, K) with K ~ 4): OpenBLAS's own
    threads make them 2-3x slower, so parallelism comes from our chunk
    threads instead.
    """
    import functools

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------
# Quadratic feature layouts


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

    def build(self, x: np.ndarray, center: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (P, n) with ``Q(x - center)`` for the rows of ``x``."""
        n, d = x.shape
        q = out[:, :n]
        q[0] = 1.0
        lin = q[1 : 1 + d]
        lin[...] = x.T  # float32 -> float64, exact
        lin -= center[:, None]
        quad = q[1 + d :]
        if self.kind == "full":
            for c, (i, j) in enumerate(self.pairs):
                np.multiply(lin[i], lin[j], out=quad[c])
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
    # chunked so the check never makes a full-size boolean temporary
    step = 1 << 20
    for s in range(0, X.shape[0], step):
        if not np.isfinite(X[s : s + step]).all():
            raise ValueError("X contains NaN or infinite values")


def _column_moments(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Column means and the mean column variance, in float64 chunks."""
    step = 1 << 20
    total = np.zeros(X.shape[1])
    for s in range(0, X.shape[0], step):
        total += X[s : s + step].sum(axis=0, dtype=np.float64)
    mean = total / X.shape[0]
    sq = 0.0
    for s in range(0, X.shape[0], step):
        sq += float(np.square(X[s : s + step] - mean).sum())
    return mean, sq / X.size


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k) between rows of x and c."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def kmeans_plusplus(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on float64 rows.

    Like scikit-learn, each step draws ``2 + log(k)`` candidates in proportion
    to the squared distance to the nearest chosen centre and keeps the one
    that lowers the potential most.
    """
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


def kmeans(X: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 30) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; returns the centres (k, d).

    Used only to initialise EM, on a sample of the data. A cluster that
    empties keeps its previous centre.
    """
    centers = kmeans_plusplus(X, k, rng)
    labels = None
    for _ in range(max_iter):
        new = np.argmin(_sq_dist(X, centers), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X)
        full = counts > 0
        centers[full] = sums[full] / counts[full, None]
    return centers


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
    ) -> tuple[float, np.ndarray | None, tuple[float, int]]:
        """One pass over X: E-step, and optionally M-step statistics.

        Returns (mean score, statistics S (P, K) or None, (worst score, its row)).
        """
        w = self._coefficients() if coefficients is None else coefficients
        wt = np.ascontiguousarray(w.T)
        post = self._posterior if posterior is None else posterior
        layout, center, size = self._layout, self._center, self.chunk_size
        n = X.shape[0]
        starts = list(range(0, n, size))

        def work(s: int, buf: np.ndarray) -> tuple[float, np.ndarray | None, float, int]:
            e = min(s + size, n)
            q = layout.build(X[s:e], center, buf)
            logits = wt @ q  # (K, n)
            resp, weights, score = post(logits)
            if resp_out is not None:
                resp_out[s:e] = resp.T
            if score_out is not None:
                score_out[s:e] = score
            worst = int(np.argmin(score))
            return float(score.sum()), (q @ weights.T if stats else None), float(score[worst]), s + worst

        n_jobs = min(self.n_jobs or 1, len(starts))
        if n_jobs <= 1:
            buf = np.empty((layout.p, size))
            results = [work(s, buf) for s in starts]
        else:
            # numpy releases the GIL in BLAS and ufuncs; partial sums are added
            # in chunk order, so the result does not depend on thread timing
            local = threading.local()

            def threaded(s: int):
                if not hasattr(local, "buf"):
                    local.buf = np.empty((layout.p, size))
                return work(s, local.buf)

            with ThreadPoolExecutor(n_jobs) as ex:
                results = list(ex.map(threaded, starts))
        total = sum(r[0] for r in results)
        s_tot = None
        if stats:
            s_tot = np.zeros((layout.p, self.n_components))
            for r in results:
                s_tot += r[1]
        worst = min(results, key=lambda r: r[2])
        return total / n, s_tot, (worst[2], worst[3])

    # -- fitting ------------------------------------------------------------

    @_one_blas_thread
    def fit(self, X: Any, means_init: Any = None, progress: ProgressFn | None = None, prior: Any = None):
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
            used (``sample_size`` is ignored).

        Returns
        -------
        self
        """
        X = _check_array(X)
        self._validate(X)
        _check_finite(X)
        n, d = X.shape
        if prior is not None:
            if not hasattr(self, "n_parameters"):
                raise ValueError(f"a prior on the memberships needs a likelihood model, not {type(self).__name__}")
            if getattr(prior, "n_rows", n) != n:
                raise ValueError(f"the prior is for {prior.n_rows} rows but X has {n}")
        self._prior = prior
        k = self.n_components
        self._layout = _Layout(d, self._layout_kind)
        self._center, mean_var = _column_moments(X)
        # regularisation in the data's own units: reg_covar is relative to the
        # mean feature variance (absolute for standardised features)
        self.reg_covar_ = getattr(self, "reg_covar", 0.0) * (mean_var if mean_var > 0 else 1.0)
        rng = np.random.default_rng(self.seed)

        fit_rows = X
        sampled = prior is None and self.sample_size is not None and 0 < self.sample_size < n and self.sample_size >= k
        if sampled:
            idx = np.sort(rng.choice(n, size=self.sample_size, replace=False))
            fit_rows = X[idx]

        if means_init is not None:
            starts = [np.asarray(means_init, dtype=np.float64).reshape(k, d) - self._center]
        else:
            starts = [self._initial_means(fit_rows, rng) for _ in range(self.n_init)]

        best = None
        for means0 in starts:
            if prior is not None:
                prior.reset()
            self._init_from_means(fit_rows, means0)
            trace, converged, n_iter = self._em(fit_rows, self.max_iter, progress)
            if best is None or trace[-1] > best[0][-1]:
                best = (trace, converged, n_iter, self._state())
        trace, converged, n_iter, state = best
        self._set_state(state)
        self.n_iter_sample_ = n_iter if sampled else 0
        polish: list[float] = []
        if sampled and self.polish_iter > 0:
            # converged_ keeps saying whether the sample fit converged: the
            # polish is a fixed, small number of full-data iterations. Its
            # values are on other rows, so they get a trace of their own
            polish, _, n_polish = self._em(X, self.polish_iter, progress, start=n_iter)
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

    def _initial_means(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = min(X.shape[0], 20000)
        idx = rng.choice(X.shape[0], size=m, replace=False) if m < X.shape[0] else np.arange(m)
        xs = X[idx].astype(np.float64) - self._center
        if self.init == "random":
            return xs[rng.choice(m, size=self.n_components, replace=False)]
        return kmeans(xs, self.n_components, rng)

    def _init_from_means(self, X: np.ndarray, means: np.ndarray) -> None:
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
            onehot = np.zeros_like(logits)
            onehot[np.argmax(logits, axis=0), np.arange(logits.shape[1])] = 1.0
            return onehot, onehot, np.zeros(logits.shape[1])

        _, s, _ = self._pass(X, coefficients=w, posterior=hard)
        # fresh state for this start: a component no row is nearest to keeps its mean
        self._means, self._cov = means.copy(), None
        self._m_step(s, X.shape[0])

    def _em(self, X: np.ndarray, max_iter: int, progress: ProgressFn | None, start: int = 0):
        trace: list[float] = []
        converged = False
        n_iter = 0
        reseeds_left = 3 * self.n_components
        for it in range(max_iter):
            if self._prior is not None:
                ll, s, worst_row = *self._prior_step(X), None
            else:
                ll, s, (_, worst_row) = self._pass(X)
            trace.append(ll)
            self._m_step(s, X.shape[0])
            n_iter = it + 1
            dead = np.flatnonzero(self._collapsed_mask())
            if dead.size and reseeds_left > 0 and worst_row is not None and self._far_from_means(X[worst_row]):
                reseeds_left -= 1
                if self._try_reseed(X, int(dead[0]), X[worst_row].astype(np.float64) - self._center, trace[-1]):
                    self.n_reseeds_ = getattr(self, "n_reseeds_", 0) + 1
                    continue
            if progress is not None:
                progress(start + n_iter, ll)
            if len(trace) > 1 and abs(trace[-1] - trace[-2]) < self.tol:
                converged = True
                break
        return trace, converged, n_iter

    def _try_reseed(self, X: np.ndarray, k: int, point: np.ndarray, floor: float) -> bool:
        """Re-seed collapsed component ``k`` on ``point`` (the worst-explained row)
        rather than leave it at weight 0 -- but only with a weight at which the
        objective is at least ``floor`` (the last one recorded), so the trace
        still never decreases. Costs a pass per weight tried; it is rare."""
        saved = self._state()
        n = X.shape[0]
        for weight in (1.0 / self.n_components, 1.0 / math.sqrt(self.n_components * n), 1.0 / n):
            self._set_state(saved)
            self._reseed(k, point, weight)
            if self._pass(X, stats=False)[0] >= floor:
                return True
        self._set_state(saved)
        return False

    def _prior_step(self, X: np.ndarray) -> tuple[float, np.ndarray]:
        """E-step through the prior: (objective per row, M-step statistics)."""
        log_joint = self._log_joint(X)
        resp, objective = self._prior.memberships(log_joint)
        return objective / X.shape[0], self._stats(X, resp)

    def _log_joint(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((X.shape[0], self.n_components))
        raw = lambda logits: (logits, logits, np.zeros(logits.shape[1]))  # noqa: E731
        self._pass(X, stats=False, resp_out=out, posterior=raw)
        return out

    def _stats(self, X: np.ndarray, resp: np.ndarray) -> np.ndarray:
        """Sufficient statistics ``sum_n resp_nk Q(x_n)`` for given memberships (N, K)."""
        layout, size = self._layout, self.chunk_size
        buf = np.empty((layout.p, size))
        s = np.zeros((layout.p, self.n_components))
        for a in range(0, X.shape[0], size):
            q = layout.build(X[a : a + size], self._center, buf)
            s += q @ resp[a : a + size]
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
    def score(self, X: Any) -> float:
        """Mean of :meth:`score_samples` (the mean log-likelihood for mixtures)."""
        X = self._check_input(X)
        return self._pass(X, stats=False)[0]

    @_one_blas_thread
    def predict_proba_and_score(self, X: Any, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Memberships and the mean score in a single pass over X."""
        X = self._check_input(X)
        if out is None:
            out = np.empty((X.shape[0], self.n_components), dtype=X.dtype)
        mean, _, _ = self._pass(X, stats=False, resp_out=out)
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

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        X = _check_array(X)
        return -2.0 * self.score(X) * X.shape[0] + self.n_parameters() * math.log(X.shape[0])

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        X = _check_array(X)
        return -2.0 * self.score(X) * X.shape[0] + 2.0 * self.n_parameters()
