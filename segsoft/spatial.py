"""A spatial prior on the membership grid: neighbourhood EM / mean-field Potts.

Plain mixtures treat pixels as independent, which gives speckled clusters.
Neighbourhood EM (Ambroise & Govaert 1998) maximises, over the memberships
``c`` (N, K) and the mixture parameters together,

    U(c, theta) = sum_i sum_k c_ik log(pi_k f_k(x_i)) - sum_i sum_k c_ik log c_ik
                  + beta * sum_{i~j} sum_k c_ik c_jk

where ``i~j`` runs over the 4-connected neighbour pairs of the pixel grid.
For fixed theta, the best ``c_i`` given its neighbours is the softmax of
``log(pi_k f_k(x_i)) + beta * sum_{j~i} c_jk`` -- the mean-field update of a
Potts Markov random field (Zhang, Brady & Smith 2001, HMRF-EM). On a
4-connected grid the pixels of one checkerboard colour have neighbours only
of the other colour, so updating a whole colour at once is exact coordinate
ascent: every half-sweep, and every M-step, can only raise ``U``. The EM
engine therefore reports a trace that never decreases. ``beta = 0`` is the
plain mixture.

The class here works on the grid only; the EM engine
(:mod:`segsoft.mixture`) calls it between its E- and M-steps.
"""

from __future__ import annotations

import numpy as np

from .regions import connected_regions  # its home until 0.1: kept importable from here

__all__ = ["PottsPrior", "connected_regions"]


# the four sub-lattices of the grid by (row, column) parity, as slices of a (K, H, W) array
_SUBLATTICES = (
    (slice(None), slice(0, None, 2), slice(0, None, 2)),  # A: even row, even column
    (slice(None), slice(0, None, 2), slice(1, None, 2)),  # B: even row, odd column
    (slice(None), slice(1, None, 2), slice(0, None, 2)),  # C: odd row, even column
    (slice(None), slice(1, None, 2), slice(1, None, 2)),  # D: odd row, odd column
)


def _lattice_neighbour_sum(t: int, A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Sum of the 4-connected neighbours' memberships for every pixel of sub-lattice ``t``.

    A pixel of A at (2a, 2b) has B[a, b-1], B[a, b] left and right and
    C[a-1, b], C[a, b] above and below; the other three follow the same
    pattern. Off-grid neighbours count as 0 (the slices stop at the edge).
    """
    ah, aw = A.shape[1:]
    ch, bw = C.shape[1], B.shape[2]
    if t == 0:  # A (ah, aw): left/right in B, up/down in C
        s = np.zeros_like(A)
        s[:, :, 1:] += B[:, :, : aw - 1]
        s[:, :, :bw] += B
        s[:, 1:, :] += C[:, : ah - 1, :]
        s[:, :ch, :] += C
    elif t == 3:  # D (ch, bw): left/right in C, up/down in B
        s = np.zeros_like(D)
        s += C[:, :, :bw]
        s[:, :, : aw - 1] += C[:, :, 1:]
        s += B[:, :ch, :]
        s[:, : ah - 1, :] += B[:, 1:, :]
    elif t == 1:  # B (ah, bw): left/right in A, up/down in D
        s = np.zeros_like(B)
        s += A[:, :, :bw]
        s[:, :, : aw - 1] += A[:, :, 1:]
        s[:, 1:, :] += D[:, : ah - 1, :]
        s[:, :ch, :] += D
    else:  # C (ch, aw): left/right in D, up/down in A
        s = np.zeros_like(C)
        s[:, :, 1:] += D[:, :, : aw - 1]
        s[:, :, :bw] += D
        s += A[:, :ch, :]
        s[:, : ah - 1, :] += A[:, 1:, :]
    return s


class PottsPrior:
    """Neighbourhood-EM smoothing of memberships on an (H, W) pixel grid.

    Parameters
    ----------
    shape : (int, int)
        Grid height and width.
    beta : float
        Smoothing strength: the reward, in log-likelihood units, for each
        neighbour that shares a pixel's cluster. 0 disables smoothing.
    mask : ndarray of bool (H, W), optional
        Pixels that are rows of the data (True); others (transparent) are not
        part of the grid and have no memberships.
    sweeps : int
        Checkerboard sweeps per E-step inside EM.

    Examples
    --------
    >>> prior = PottsPrior((2, 2), beta=1.0)
    >>> log_joint = np.log([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    >>> c, objective = prior.memberships(log_joint)
    >>> bool(c[3, 0] > 0.5)  # outvoted by its neighbours
    True
    """

    def __init__(self, shape: tuple[int, int], beta: float, mask: np.ndarray | None = None, sweeps: int = 1):
        if not beta >= 0:
            raise ValueError(f"smoothing must be >= 0, got {beta!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.beta = float(beta)
        self.mask = None if mask is None or mask.all() else np.asarray(mask, dtype=bool)
        self.sweeps = int(sweeps)
        self._c: np.ndarray | None = None  # (K, H, W), warm start between EM iterations
        # used pixels of the four sub-lattices (see _sweep); None where all are used
        self._sub_mask = [None if self.mask is None else self.mask[sl[1:]] for sl in _SUBLATTICES]

    @property
    def n_rows(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.shape[0] * self.shape[1]

    def reset(self) -> None:
        """Forget the memberships kept from the last call (a new EM start)."""
        self._c = None

    def _to_grid(self, rows: np.ndarray) -> np.ndarray:
        """(N, K) rows -> (K, H, W), zero where masked."""
        h, w = self.shape
        k = rows.shape[1]
        if self.mask is None:
            return np.ascontiguousarray(rows.T.reshape(k, h, w))
        grid = np.zeros((k, h, w), dtype=rows.dtype)
        grid[:, self.mask] = rows.T
        return grid

    def _to_rows(self, grid: np.ndarray) -> np.ndarray:
        k = grid.shape[0]
        if self.mask is None:
            return grid.reshape(k, -1).T
        return grid[:, self.mask].T

    def _sweep(self, c: np.ndarray, log_joint: np.ndarray) -> None:
        """One checkerboard sweep: all pixels of one colour, then all of the other.

        The grid splits into four sub-lattices by row and column parity: A
        (even, even) and D (odd, odd) form one colour, B (even, odd) and C
        (odd, even) the other. A pixel's 4 neighbours all lie in the other
        colour's two sub-lattices, so each colour is updated from strided
        views, with no work on the other half of the grid.
        """
        A, B, C, D = (c[sl] for sl in _SUBLATTICES)
        for targets in ((0, 3), (1, 2)):
            for t in targets:
                view = (A, B, C, D)[t]
                logits = _lattice_neighbour_sum(t, A, B, C, D)
                logits *= self.beta
                logits += log_joint[_SUBLATTICES[t]]
                logits -= logits.max(axis=0)
                np.exp(logits, out=logits)
                logits /= logits.sum(axis=0)
                if self._sub_mask[t] is not None:
                    logits *= self._sub_mask[t]  # unused pixels stay 0
                view[...] = logits

    def objective(self, c: np.ndarray, log_joint: np.ndarray) -> float:
        """``U`` for memberships and log-joint on the grid (K, H, W)."""
        used = c if self.mask is None else c[:, self.mask]
        lj = log_joint if self.mask is None else log_joint[:, self.mask]
        safe = np.where(used > 0, used, 1.0)
        data = float(np.sum(used * lj) - np.sum(used * np.log(safe)))
        pairs = float(np.sum(c[:, 1:] * c[:, :-1]) + np.sum(c[:, :, 1:] * c[:, :, :-1]))
        return data + self.beta * pairs

    def memberships(self, log_joint: np.ndarray, sweeps: int | None = None) -> tuple[np.ndarray, float]:
        """Smoothed memberships for the rows' log-joint ``log(pi_k f_k(x_i))``.

        Starts from the memberships of the previous call (or, the first time,
        from the plain posterior) and runs ``sweeps`` checkerboard sweeps.

        Parameters
        ----------
        log_joint : ndarray (N, K)
            One row per grid pixel in raster order (masked pixels left out);
            float32 halves the memory on big images, float64 keeps the
            objective exact.
        sweeps : int, optional
            Defaults to the ``sweeps`` given at construction.

        Returns
        -------
        c : ndarray (N, K)
            Memberships; each row sums to 1.
        objective : float
            ``U(c, theta)`` (see the module docstring), summed over the rows.
        """
        lj = np.asarray(log_joint)
        lj = self._to_grid(lj if lj.dtype in (np.float32, np.float64) else lj.astype(np.float64))
        if self._c is None or self._c.shape != lj.shape:
            c = lj - lj.max(axis=0)
            np.exp(c, out=c)
            c /= c.sum(axis=0)
            if self.mask is not None:
                c[:, ~self.mask] = 0.0
        else:
            c = self._c
        if self.beta > 0:
            for _ in range(self.sweeps if sweeps is None else sweeps):
                self._sweep(c, lj)
        self._c = c
        return np.ascontiguousarray(self._to_rows(c)), self.objective(c, lj)
