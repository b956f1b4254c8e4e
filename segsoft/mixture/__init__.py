"""The EM engine: soft clustering of plain ``(N, D)`` arrays.

Nothing here knows about images. Three models share one engine:

* :class:`GaussianMixture` -- full, diagonal, spherical or tied covariances;
* :class:`SoftKMeans` -- equal weights and one shared isotropic variance
  (MacKay's soft k-means; the stiffness is ``beta = 1 / (2 variance)``);
* :class:`FuzzyCMeans` -- Bezdek's fuzzy c-means with fuzzifier ``m``.

How it is fast
--------------
Every component's log-density is a quadratic form in ``x``, so for all ``K``
components at once it is one matrix product ``Q(x) @ W`` where
``Q(x) = [1, x_i, x_i x_j (i <= j)]`` (P columns) and ``W`` (P x K) holds
each component's constant, linear and quadratic coefficients. The M-step
needs only the sufficient statistics ``sum_n r_nk Q(x_n)``, which is the
second product ``Q^T R``. One pass over the data per iteration, two BLAS
calls per chunk of rows. ``Q`` is built per chunk in float64 from the float32
data, so memory stays bounded and the cancellation between the quadratic and
linear terms (large when a variance is small) stays harmless. The data are
centred on their mean first (an exact symmetry of every model here) to keep
those terms small.

Per chunk the E-step is about a dozen numpy calls, each over the whole chunk:
the features in seven (one strided copy, one centring, one broadcast product
per row of the upper triangle), then the logits, one ``exp``, one sum over the
components, a reciprocal, one product for the memberships and one ``log`` for
the scores. The softmax needs no per-row maximum: every component's logit is at
most its log weight plus its log density at its mean, so the logits are shifted
by the largest of those bounds (folded into W's constant row). A row whose every
logit lies more than 600 below the shift (``exp`` would lose it) is redone with
its own maximum. With ``n_jobs`` > 1, a pass over a million rows or more is shared
with ``n_jobs - 1`` forked child processes that share the rows (Linux, and only while
no other thread runs: see :mod:`segsoft.mixture.forked`; threads hand the GIL back and
forth at every one of a pass's short numpy calls and gain nothing). Otherwise each thread takes
several consecutive chunks at a time and runs the row-by-row steps over all of them
at once. Either way every sum is formed per chunk and added in chunk order, so the
numbers are the same for any ``n_jobs``.
"""

from __future__ import annotations

from typing import Any

from .base import (
    COVARIANCE_TYPES,
    EMStatistics,
    available_cores,
    current_threads,
    kmeans,
    kmeans_plusplus,
    one_blas_thread,
    using_threads,
)
from .gaussian import GaussianMixture
from .relatives import FuzzyCMeans, SoftKMeans

__all__ = [
    "COVARIANCE_TYPES",
    "EMStatistics",
    "FuzzyCMeans",
    "GaussianMixture",
    "SoftKMeans",
    "available_cores",
    "current_threads",
    "kmeans",
    "kmeans_plusplus",
    "model_from_dict",
    "one_blas_thread",
    "using_threads",
]

_MODELS = {cls.__name__: cls for cls in (GaussianMixture, SoftKMeans, FuzzyCMeans)}


def model_from_dict(data: dict[str, Any]) -> GaussianMixture | SoftKMeans | FuzzyCMeans:
    """Rebuild any fitted segsoft model from its ``to_dict()`` output.

    Examples
    --------
    >>> import numpy as np
    >>> gm = GaussianMixture(2).fit(np.r_[np.zeros(5), np.ones(5)][:, None] + np.arange(10)[:, None] * 1e-2)
    >>> model_from_dict(gm.to_dict()).means_.shape
    (2, 1)
    """
    try:
        cls = _MODELS[data["type"]]
    except KeyError as exc:
        raise ValueError(f"unknown model type {data.get('type')!r}") from exc
    return cls.from_dict(data)
