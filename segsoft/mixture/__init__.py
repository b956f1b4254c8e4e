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
