"""Gaussian mixtures with full, diagonal, spherical or tied covariances."""

from __future__ import annotations

import math

import numpy as np

from .base import _EPS10, _LOG_2PI, _TINY, COVARIANCE_TYPES, _EMBase, _LikelihoodMixin

__all__ = ["GaussianMixture"]

# --------------------------------------------------------------------------
# Gaussian mixture


class GaussianMixture(_LikelihoodMixin, _EMBase):
    """Gaussian mixture fitted by EM, with scikit-learn's API and conventions.

    Parameters
    ----------
    n_components : int
        Number of mixture components K.
    covariance : {"full", "diag", "spherical", "tied"}
        Covariance structure, as scikit-learn's ``covariance_type``.
    max_iter, tol : int, float
        Stop after ``max_iter`` EM iterations or when the mean log-likelihood
        per row changes by less than ``tol``.
    reg_covar : float
        Added to the covariance diagonals so they stay positive definite,
        relative to the mean variance of the features: the added amount is
        ``reg_covar_ = reg_covar * mean(var(X, axis=0))``, so a constant or
        near-constant cluster is handled the same whatever the data's units.
        (scikit-learn's ``reg_covar`` is absolute: pass it ``reg_covar_`` to
        compare.)
    init : {"k-means++", "random"}
        Starting means: k-means (seeded by k-means++) on up to 20,000 rows, or
        random rows. Every row then starts assigned to its nearest mean.
    n_init : int
        Restarts; the one with the highest log-likelihood is kept.
    seed : int or None
        Seed of every random choice: same data and seed, same result.
    sample_size : int or None
        Fit on this many random rows, then run ``polish_iter`` EM
        iterations on all rows so the answer does not drift from the
        full-data fit. None fits on every row.
    polish_iter : int
        Full-data iterations after a sample fit (default 1).
    chunk_size : int
        Rows per chunk in each pass; bounds the working memory.
    n_jobs : int or None
        Workers for the chunked passes (default 1); the results do not
        depend on it. On Linux, a pass over at least a million rows in a
        process with no other thread running forks ``n_jobs - 1`` children
        that share the rows and send back their chunks' sums
        (:mod:`segsoft.mixture.forked`: 1.5-1.7x an iteration on two cores,
        where threads measured 0.8-1.1x); elsewhere the passes use threads,
        each taking groups of consecutive chunks (about 32,768 rows). On a
        machine whose other cores are busy, more workers do not help.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_cholesky_ : ndarray
        As in scikit-learn. Components are sorted by their mean's first
        coordinate (then the second, ...), so numbering is reproducible.
    converged_ : bool
        Whether EM stopped on ``tol`` (with ``sample_size``: the sample fit).
    n_iter_ : int
        EM iterations (M-steps) done.
    log_likelihood_trace_ : ndarray
        Mean log-likelihood per row before each M-step; never decreases.
        With ``sample_size``, these are on the sample ...
    polish_trace_ : ndarray
        ... and these on all rows, for the polish iterations (empty without
        ``sample_size``).
    log_likelihood_ : float
        The last value recorded (like scikit-learn's ``lower_bound_``).
    reg_covar_ : float
        The absolute regularisation used.
    collapsed_ : ndarray of bool
        Components left with (almost) no membership after re-seeding failed,
        e.g. more components than distinct points.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(-3, 1, (200, 2)), rng.normal(3, 1, (200, 2))])
    >>> gm = GaussianMixture(2, seed=0).fit(X)
    >>> np.round(gm.means_[:, 0])
    array([-3.,  3.])
    >>> gm.predict_proba(X).sum(axis=1)[:3]
    array([1., 1., 1.])
    """

    def __init__(
        self,
        n_components: int = 4,
        *,
        covariance: str = "full",
        max_iter: int = 100,
        tol: float = 1e-4,
        reg_covar: float = 1e-6,
        init: str = "k-means++",
        n_init: int = 1,
        seed: int | None = 0,
        sample_size: int | None = None,
        polish_iter: int = 1,
        chunk_size: int = 8192,
        n_jobs: int | None = None,
    ):
        super().__init__(
            n_components,
            max_iter=max_iter,
            tol=tol,
            init=init,
            n_init=n_init,
            seed=seed,
            sample_size=sample_size,
            polish_iter=polish_iter,
            chunk_size=chunk_size,
            n_jobs=n_jobs,
        )
        self.covariance = covariance
        self.reg_covar = reg_covar

    @property
    def _layout_kind(self) -> str:  # type: ignore[override]
        return "full" if self.covariance in ("full", "tied") else "diag"

    def _min_count(self) -> float:
        # a full covariance needs d + 1 rows' worth of membership to exist
        return self._layout.d + 1.0 if self.covariance == "full" else 1.0

    def check_params(self) -> None:
        super().check_params()
        if self.covariance not in COVARIANCE_TYPES:
            raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {self.covariance!r}")
        if not (math.isfinite(self.reg_covar) and self.reg_covar >= 0):
            raise ValueError(f"reg_covar must be a finite number >= 0, got {self.reg_covar!r}")

    # internal state, in centred coordinates: _w (K,), _means (K, d), _cov
    # (K, d, d) | (d, d) tied | (K, d) diag | (K,) spherical, _nk (K,)

    def _m_step(self, s: np.ndarray, n: int) -> None:
        lay, reg = self._layout, self.reg_covar_
        d = lay.d
        nk = s[0] + _EPS10
        means = s[1 : 1 + d].T / nk[:, None]
        m2 = lay.second_moments(s)
        cov_type = self.covariance
        if cov_type == "full":
            cov = m2 / nk[:, None, None] - means[:, :, None] * means[:, None, :]
            cov[:, np.arange(d), np.arange(d)] += reg
        elif cov_type == "tied":
            cov = m2.sum(0) - np.einsum("k,ki,kj->ij", nk, means, means)
            cov /= nk.sum()
            cov[np.arange(d), np.arange(d)] += reg
        else:
            diag = m2 / nk[:, None] - means**2 + reg
            cov = diag if cov_type == "diag" else diag.mean(1)
        self._nk = nk
        collapsed = self._collapsed_mask()
        if collapsed.any():
            # keep a collapsed component's previous shape instead of one
            # estimated from (almost) nothing
            means[collapsed] = self._means[collapsed]
            if cov_type != "tied":
                prev = getattr(self, "_cov", None)
                if prev is None:
                    live = ~collapsed
                    pooled = np.average(cov[live], axis=0, weights=nk[live]) if live.any() else cov[0]
                    cov[collapsed] = pooled
                else:
                    cov[collapsed] = prev[collapsed]
        self._w = np.maximum(nk / nk.sum(), _TINY)
        self._means = means
        self._cov = self._make_pd(cov)

    def _make_pd(self, cov: np.ndarray) -> np.ndarray:
        if self.covariance in ("diag", "spherical"):
            floor = max(self.reg_covar_, 1e-12)
            return np.maximum(cov, floor)
        # Cholesky must succeed: raise the diagonal of the offending matrix
        # until it does (only collapsed or degenerate components get here)
        mats = cov[None] if cov.ndim == 2 else cov
        d = mats.shape[-1]
        for i in range(mats.shape[0]):
            bump = max(self.reg_covar_, 1e-12)
            while True:
                try:
                    np.linalg.cholesky(mats[i])
                    break
                except np.linalg.LinAlgError:
                    mats[i][np.arange(d), np.arange(d)] += bump
                    bump *= 10.0
        return cov

    def _prec_chol(self) -> np.ndarray:
        cov = self._cov
        d = self._layout.d
        if self.covariance in ("diag", "spherical"):
            return 1.0 / np.sqrt(cov)
        chol = np.linalg.cholesky(cov)
        eye = np.broadcast_to(np.eye(d), chol.shape)
        return np.swapaxes(np.linalg.solve(chol, eye), -1, -2)

    def _coefficients(self) -> np.ndarray:
        return self._coefficients_and_bound()[0]

    def _coefficients_and_bound(self) -> tuple[np.ndarray, np.ndarray]:
        # the bound: a component's log(weight) + log density at its own mean, the most it takes
        lay, means, k = self._layout, self._means, self.n_components
        d = lay.d
        pc = self._prec_chol()
        cov_type = self.covariance
        if cov_type in ("full", "tied"):
            pcs = np.broadcast_to(pc, (k, d, d))
            prec = pcs @ np.swapaxes(pcs, -1, -2)
            logdet = np.log(np.diagonal(pcs, axis1=1, axis2=2)).sum(1)
            lin = np.einsum("kij,kj->ki", prec, means)
            quad = prec
        elif cov_type == "diag":
            prec = pc**2
            logdet = np.log(pc).sum(1)
            lin = prec * means
            quad = prec
        else:
            prec = pc**2
            logdet = d * np.log(pc)
            lin = prec[:, None] * means
            quad = np.repeat(prec[:, None], d, axis=1)
        top = np.log(self._w) - 0.5 * d * _LOG_2PI + logdet
        const = top - 0.5 * np.einsum("kd,kd->k", lin, means)
        return lay.coefficients(const, lin, quad), top  # spherical uses the diag layout too

    def _reseed(self, k: int, point: np.ndarray, weight: float) -> None:
        self._means[k] = point
        live = ~self._collapsed_mask()
        if self.covariance != "tied":
            self._cov[k] = np.average(self._cov[live], axis=0, weights=self._w[live])
        self._w[k] = 0.0
        self._w *= (1.0 - weight) / self._w.sum()
        self._w[k] = weight

    def _permute(self, order: np.ndarray) -> None:
        self._w, self._means, self._nk = self._w[order], self._means[order], self._nk[order]
        if self.covariance != "tied":
            self._cov = self._cov[order]

    def _publish(self) -> None:
        self.weights_ = self._w.copy()
        self.means_ = self._means + self._center
        self.covariances_ = self._cov.copy()
        self.precisions_cholesky_ = self._prec_chol()
        if self.covariance in ("diag", "spherical"):
            self.precisions_ = self.precisions_cholesky_**2
        else:
            pc = self.precisions_cholesky_
            self.precisions_ = pc @ np.swapaxes(pc, -1, -2)
        self.collapsed_ = self._collapsed_mask().copy()

    def _from_published(self) -> None:
        self._w = np.asarray(self.weights_, dtype=np.float64)
        self._means = np.asarray(self.means_, dtype=np.float64)
        self._cov = np.asarray(self.covariances_, dtype=np.float64)
        for name in (
            "weights_",
            "means_",
            "covariances_",
            "precisions_cholesky_",
            "precisions_",
            "log_likelihood_trace_",
        ):
            if hasattr(self, name):
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        self.collapsed_ = np.asarray(getattr(self, "collapsed_", np.zeros(len(self._w))), dtype=bool)
        self._nk = np.where(self.collapsed_, 0.0, np.inf)

    def n_parameters(self) -> int:
        k, d = self.n_components, self.means_.shape[1]
        cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "tied": d * (d + 1) // 2, "spherical": k}
        return cov[self.covariance] + k * d + k - 1
