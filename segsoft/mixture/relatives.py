"""The Gaussian mixture's relatives: soft k-means and fuzzy c-means."""

from __future__ import annotations

import math

import numpy as np

from .base import _EPS10, _LOG_2PI, _EMBase, _LikelihoodMixin

__all__ = ["FuzzyCMeans", "SoftKMeans"]

# --------------------------------------------------------------------------
# Soft k-means


class SoftKMeans(_LikelihoodMixin, _EMBase):
    """Soft k-means: memberships ``r_k(x) ~ exp(-beta |x - mu_k|^2)``.

    This is EM for a mixture of K isotropic Gaussians with equal weights and
    one shared variance ``1 / (2 beta)`` (MacKay, *Information Theory,
    Inference, and Learning Algorithms*, ch. 20-22), so it has a
    log-likelihood, a monotone trace, BIC and AIC.

    Parameters
    ----------
    beta : float or None
        Stiffness. None learns it (the shared variance is re-estimated in every
        M-step); a number keeps it fixed: large beta approaches hard k-means.
    Other parameters are as in :class:`GaussianMixture`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> skm = SoftKMeans(2, beta=2.0).fit(X)
    >>> np.round(skm.means_.ravel(), 2)
    array([0.05, 5.05])
    """

    _layout_kind = "iso"

    def __init__(
        self,
        n_components: int = 4,
        *,
        beta: float | None = None,
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
        self.beta = beta
        self.reg_covar = reg_covar

    def check_params(self) -> None:
        super().check_params()
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta!r}")

    def _m_step(self, s: np.ndarray, n: int) -> None:
        d = self._layout.d
        nk = s[0] + _EPS10
        means = s[1 : 1 + d].T / nk[:, None]
        self._nk = nk
        empty = self._collapsed_mask()
        means[empty] = self._means[empty]
        self._means = means
        if self.beta is None:
            sse = s[1 + d].sum() - np.einsum("k,kd,kd->", nk, means, means)
            self._var = max(sse / (nk.sum() * d), 0.0) + self.reg_covar_
        else:
            self._var = 1.0 / (2.0 * self.beta)
        self._var = max(self._var, 1e-12)

    def _coefficients(self) -> np.ndarray:
        return self._coefficients_and_bound()[0]

    def _coefficients_and_bound(self) -> tuple[np.ndarray, np.ndarray]:
        k, d = self.n_components, self._layout.d
        prec = 1.0 / self._var
        top = -math.log(k) - 0.5 * d * (_LOG_2PI + math.log(self._var))  # the log density at a mean
        const = top - 0.5 * prec * np.einsum("kd,kd->k", self._means, self._means)
        return self._layout.coefficients(const, prec * self._means, np.full(k, prec)), np.full(k, top)

    def _reseed(self, k: int, point: np.ndarray, weight: float) -> None:
        self._means[k] = point  # equal weights: only the position changes

    def _permute(self, order: np.ndarray) -> None:
        self._means, self._nk = self._means[order], self._nk[order]

    def _publish(self) -> None:
        k = self.n_components
        self.means_ = self._means + self._center
        self.weights_ = np.full(k, 1.0 / k)
        self.covariances_ = np.full(k, self._var)
        self.beta_ = 1.0 / (2.0 * self._var)
        self.collapsed_ = self._collapsed_mask().copy()

    def _from_published(self) -> None:
        self._means = np.asarray(self.means_, dtype=np.float64)
        self.means_ = self._means.copy()
        self._var = 1.0 / (2.0 * float(self.beta_))
        self.collapsed_ = np.asarray(self.collapsed_, dtype=bool)
        self._nk = np.where(self.collapsed_, 0.0, np.inf)

    def n_parameters(self) -> int:
        return self.n_components * self.means_.shape[1] + (1 if self.beta is None else 0)


# --------------------------------------------------------------------------
# Fuzzy c-means


class FuzzyCMeans(_EMBase):
    """Fuzzy c-means (Bezdek 1981) with fuzzifier ``m``.

    Alternates memberships ``u_k(x) ~ |x - c_k|^(-2/(m-1))`` and centres
    ``c_k = sum u^m x / sum u^m``, which lowers ``J = sum_x sum_k u^m |x - c_k|^2``
    at every step. There is no likelihood: :meth:`score` and the trace are
    ``-J`` per row (higher is better, never decreasing), and there is no BIC.

    Parameters
    ----------
    m : float
        Fuzzifier, > 1. Near 1 the memberships approach hard k-means; 2 is
        the usual choice.
    Other parameters are as in :class:`GaussianMixture`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.2], [5.0], [5.2]])
    >>> fcm = FuzzyCMeans(2, m=2.0).fit(X)
    >>> np.round(fcm.means_.ravel(), 1)
    array([0.1, 5.1])
    """

    _layout_kind = "iso"

    def __init__(
        self,
        n_components: int = 4,
        *,
        m: float = 2.0,
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
        self.m = m

    def check_params(self) -> None:
        super().check_params()
        if not self.m > 1.0:
            raise ValueError(f"the fuzzifier m must be > 1, got {self.m!r}")

    def _coefficients(self) -> np.ndarray:
        # logits = -|x - c|^2
        k = self.n_components
        return self._layout.coefficients(
            -np.einsum("kd,kd->k", self._means, self._means), 2.0 * self._means, np.full(k, 2.0)
        )

    def _posterior(self, logits: np.ndarray):
        d2 = np.maximum(np.negative(logits, out=logits), 1e-300, out=logits)
        # u_k ~ d2_k^(-1/(m-1)): a softmax of -log(d2)/(m-1), exact when a row sits on a centre
        a = np.log(d2) * (-1.0 / (self.m - 1.0))
        a -= a.max(axis=0)
        u = np.exp(a, out=a)
        u /= u.sum(axis=0)
        um = u**self.m
        score = -np.einsum("kn,kn->n", um, d2)
        return u, um, score

    def _m_step(self, s: np.ndarray, n: int) -> None:
        d = self._layout.d
        nk = s[0] + _EPS10
        means = s[1 : 1 + d].T / nk[:, None]
        self._nk = nk
        empty = self._collapsed_mask()
        means[empty] = self._means[empty]
        self._means = means

    def _min_count(self) -> float:
        return 1e-8

    def _reseed(self, k: int, point: np.ndarray, weight: float) -> None:
        self._means[k] = point  # equal weights: only the position changes

    def _permute(self, order: np.ndarray) -> None:
        self._means, self._nk = self._means[order], self._nk[order]

    def _publish(self) -> None:
        self.means_ = self._means + self._center
        self.collapsed_ = self._collapsed_mask().copy()

    def _from_published(self) -> None:
        self._means = np.asarray(self.means_, dtype=np.float64)
        self.means_ = self._means.copy()
        self.collapsed_ = np.asarray(self.collapsed_, dtype=bool)
        self._nk = np.where(self.collapsed_, 0.0, np.inf)
