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

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .mixture.base import current_threads
from .regions import connected_regions  # its home until 0.1: kept importable from here

__all__ = ["PottsPrior", "connected_regions"]


# the four sub-lattices of the grid by (row, column) parity, as slices of a (K, H, W) array
_SUBLATTICES = (
    (slice(None), slice(0, None, 2), slice(0, None, 2)),  # A: even row, even column
    (slice(None), slice(0, None, 2), slice(1, None, 2)),  # B: even row, odd column
    (slice(None), slice(1, None, 2), slice(0, None, 2)),  # C: odd row, even column
    (slice(None), slice(1, None, 2), slice(1, None, 2)),  # D: odd row, odd column
)


def _lattice_neighbour_sum(
    t: int,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray,
    r0: int = 0,
    r1: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of the 4-connected neighbours' memberships for the pixels of sub-lattice ``t``
    in its rows ``r0:r1`` (default: all of them).

    A pixel of A at (2a, 2b) has B[a, b-1], B[a, b] left and right and
    C[a-1, b], C[a, b] above and below; the other three follow the same
    pattern. Off-grid neighbours count as 0 (the slices stop at the edge).
    Each pixel's four terms are added in the same order whatever the row
    range, so a band's sums are bit-identical to the same rows of the whole.
    The first term is copied rather than added to zeros (``0 + x == x`` and
    ``x + y == y + x``: the same numbers, one pass fewer), and it is always
    the unshifted one: numpy copies between arrays offset by one element
    several times slower than it adds them. ``out`` (K, rows, columns of ``t``) is
    written instead of a new array -- the sweep passes the band of ``t``
    itself, which no term reads.
    """
    ah, aw = A.shape[1:]  # A and B have ah rows; A and C have aw columns
    ch, bw = C.shape[1], B.shape[2]  # C and D have ch rows; B and D have bw columns
    rows = (ah, ah, ch, ch)[t]
    r1 = rows if r1 is None else min(r1, rows)
    n = r1 - r0
    shape = (A.shape[0], n, (aw, bw, aw, bw)[t])
    s = np.empty(shape, dtype=A.dtype) if out is None else out
    if t == 0:  # A: left/right in B (same row), up/down in C (rows a-1 and a)
        s[:, :, :bw] = B[:, r0:r1]
        s[:, :, bw:] = 0
        s[:, :, 1:] += B[:, r0:r1, : aw - 1]
        lo = max(r0, 1)
        s[:, lo - r0 :, :] += C[:, lo - 1 : r1 - 1, :]
        hi = min(r1, ch)
        s[:, : max(hi - r0, 0), :] += C[:, r0:hi, :]
    elif t == 3:  # D: left/right in C (same row), up/down in B (rows d and d+1)
        s[...] = C[:, r0:r1, :bw]
        s[:, :, : aw - 1] += C[:, r0:r1, 1:]
        s += B[:, r0:r1, :]
        hi = min(r1, ah - 1)
        s[:, : max(hi - r0, 0), :] += B[:, r0 + 1 : hi + 1, :]
    elif t == 1:  # B: left/right in A (same row), up/down in D (rows b-1 and b)
        s[...] = A[:, r0:r1, :bw]
        s[:, :, : aw - 1] += A[:, r0:r1, 1:]
        lo = max(r0, 1)
        s[:, lo - r0 :, :] += D[:, lo - 1 : r1 - 1, :]
        hi = min(r1, ch)
        s[:, : max(hi - r0, 0), :] += D[:, r0:hi, :]
    else:  # C: left/right in D (same row), up/down in A (rows c and c+1)
        s[:, :, :bw] = D[:, r0:r1]
        s[:, :, bw:] = 0
        s[:, :, 1:] += D[:, r0:r1, : aw - 1]
        s += A[:, r0:r1, :]
        hi = min(r1, ah - 1)
        s[:, : max(hi - r0, 0), :] += A[:, r0 + 1 : hi + 1, :]
    return s


#: Bytes of one band's (K, rows, W/2) working arrays in a sweep: small enough to stay in a core's
#: cache through the dozen element-wise passes of its update, large enough that numpy's per-call
#: overhead stays small.
_BAND_BYTES = 1 << 20


def _split(grid: np.ndarray, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The four sub-lattices of a (K, H, W) grid (see :data:`_SUBLATTICES`), each a contiguous
    copy (written into ``out``, four arrays of the right shapes, when given)."""
    if out is None:
        return [np.ascontiguousarray(grid[sl]) for sl in _SUBLATTICES]
    for sl, sub in zip(_SUBLATTICES, out):
        sub[...] = grid[sl]
    return out


def _merge(lat: list[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Write the four sub-lattices back into their places in ``grid`` (K, H, W); returns ``grid``."""
    for sl, sub in zip(_SUBLATTICES, lat):
        grid[sl] = sub
    return grid


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
        # contiguous sub-lattices of the memberships and the log-joint, reused by every E-step
        self._buffers: list[np.ndarray] | None = None
        # used pixels of the four sub-lattices (see _sweep); None where all are used
        self._sub_mask = [None if self.mask is None else self.mask[sl[1:]] for sl in _SUBLATTICES]

    @property
    def n_rows(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.shape[0] * self.shape[1]

    def reset(self) -> None:
        """Forget the memberships kept from the last call (a new EM start)."""
        self._c = None
        self._buffers = None

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

    def _sweep(self, c: np.ndarray, log_joint: np.ndarray, pool: ThreadPoolExecutor | None = None) -> None:
        """One checkerboard sweep of the grid ``c`` (K, H, W) in place: all pixels of one colour,
        then all of the other (:meth:`_sweep_lattices` on contiguous copies of the sub-lattices)."""
        lat = _split(c)
        self._sweep_lattices(lat, _split(log_joint), pool)
        _merge(lat, c)

    def _sweep_lattices(
        self, lat: list[np.ndarray], lj: list[np.ndarray], pool: ThreadPoolExecutor | None = None
    ) -> None:
        """One checkerboard sweep on the four sub-lattices (see :func:`_split`), in place.

        The grid splits into four sub-lattices by row and column parity: A
        (even, even) and D (odd, odd) form one colour, B (even, odd) and C
        (odd, even) the other. A pixel's 4 neighbours all lie in the other
        colour's two sub-lattices, so each colour is updated from the other
        colour alone, with no work on the other half of the grid, in bands of
        rows that stay in cache (on ``pool``'s threads when given). Each
        sub-lattice is its own contiguous array: every pass below runs on
        unit-stride memory (numpy's SIMD loops), where strided views of one
        grid made the sweep about 1.5x slower at 12 MP.
        """
        A, B, C, D = lat
        k, w = A.shape[0], max(A.shape[2], 1)
        band = max(1, _BAND_BYTES // (k * w * A.itemsize))
        beta = A.dtype.type(self.beta)

        def update(t: int, r0: int) -> None:
            # rows r0:r0+band of sub-lattice t, from the other colour's two sub-lattices only
            r1 = r0 + band
            # computed in place in t's own band: the neighbour sums read only the other colour
            logits = _lattice_neighbour_sum(t, A, B, C, D, r0, r1, out=lat[t][:, r0:r1])
            if beta != 1:  # x * 1 == x: the default strength skips a pass
                logits *= beta
            logits += lj[t][:, r0:r1]
            top = logits.max(axis=0)
            logits -= top
            np.exp(logits, out=logits)
            logits /= np.sum(logits, axis=0, out=top)
            if self._sub_mask[t] is not None:
                logits *= self._sub_mask[t][r0:r1]  # unused pixels stay 0

        for targets in ((0, 3), (1, 2)):
            # one colour at a time: its pixels read only the other colour, so its bands are
            # independent of each other (any order, any thread gives the same numbers)
            # the two sub-lattices' bands interleaved: A's rows r0:r1 and D's read the same rows of
            # B and C (and B's and C's the same of A and D), so the second finds them in cache
            tasks = sorted((r0, t) for t in targets for r0 in range(0, lat[t].shape[1], band))
            tasks = [(t, r0) for r0, t in tasks]
            if pool is None:
                for t, r0 in tasks:
                    update(t, r0)
            else:
                list(pool.map(lambda task: update(*task), tasks))

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
        c, lj = self._run(log_joint, sweeps)
        return np.ascontiguousarray(self._to_rows(c)), self.objective(c, lj)

    def _run(self, log_joint: np.ndarray, sweeps: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The sweeps of :meth:`memberships`: (memberships, log-joint), both on the grid (K, H, W)."""
        lj = np.asarray(log_joint)
        lj = self._to_grid(lj if lj.dtype in (np.float32, np.float64) else lj.astype(np.float64))
        return self._run_grid(lj, sweeps), lj

    def _run_grid(self, lj: np.ndarray, sweeps: int | None) -> np.ndarray:
        """The sweeps on a log-joint already on the grid (K, H, W), zero where masked: the memberships."""
        if self._c is None or self._c.shape != lj.shape:
            c = lj - lj.max(axis=0)
            np.exp(c, out=c)
            c /= c.sum(axis=0)
            if self.mask is not None:
                c[:, ~self.mask] = 0.0
        else:
            c = self._c
        if self.beta > 0:
            n_sweeps = self.sweeps if sweeps is None else sweeps
            jobs = min(current_threads(), max(1, c.shape[1] // 2))
            if n_sweeps > 0:
                # split once, sweep on contiguous copies of the sub-lattices, merge once: even for an
                # E-step's one sweep the copies cost less than sweeping strided views. The copies go
                # into buffers kept from the last call (EM calls this every iteration on the same
                # grid): fresh ones are often fresh pages from the system, zeroed on first touch
                bufs = self._buffers
                same = bufs is not None and bufs[0].shape[0] == c.shape[0]
                if not (same and bufs[0].dtype == c.dtype and bufs[4].dtype == lj.dtype):
                    bufs = self._buffers = _split(c) + _split(lj)
                else:
                    _split(c, bufs[:4])
                    _split(lj, bufs[4:])
                lat, ljl = bufs[:4], bufs[4:]
                with ThreadPoolExecutor(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
                    for _ in range(n_sweeps):
                        self._sweep_lattices(lat, ljl, pool)
                _merge(lat, c)
        self._c = c
        return c

    def smooth(self, log_joint: np.ndarray, sweeps: int | None = None) -> np.ndarray:
        """:meth:`memberships` without the objective: the same memberships, a full pass
        over the grid cheaper (what the final smoothing step needs).

        Examples
        --------
        >>> prior = PottsPrior((2, 2), beta=1.0)
        >>> log_joint = np.log([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
        >>> bool((prior.smooth(log_joint) == PottsPrior((2, 2), beta=1.0).memberships(log_joint)[0]).all())
        True
        """
        c = self._run(log_joint, sweeps)[0]  # the grid copy of the log-joint freed before the rows are made
        self._buffers = None  # a final step: the E-step's sub-lattice copies are not needed again
        return np.ascontiguousarray(self._to_rows(c))

    def smooth_grid(self, log_joint: np.ndarray | list, sweeps: int | None = None) -> np.ndarray:
        """:meth:`smooth` for a log-joint already on the grid, ``(K, H, W)`` float32 or float64,
        zero where masked (the layout :meth:`smooth` makes from rows): the same memberships,
        as rows (N, K), without an image-sized copy of the log-joint. Given as a one-item
        list, which is emptied, the grid is freed before the rows are made.

        Examples
        --------
        >>> prior = PottsPrior((2, 2), beta=1.0)
        >>> log_joint = np.log([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
        >>> grid = np.ascontiguousarray(log_joint.T.reshape(2, 2, 2))
        >>> bool((PottsPrior((2, 2), beta=1.0).smooth_grid(grid) == prior.smooth(log_joint)).all())
        True
        """
        lj = np.asarray(log_joint.pop() if isinstance(log_joint, list) else log_joint)
        if lj.ndim != 3 or lj.shape[1:] != tuple(self.shape) or lj.dtype not in (np.float32, np.float64):
            raise ValueError(
                f"log_joint must be a float (K, {self.shape[0]}, {self.shape[1]}) grid, got {lj.dtype} {lj.shape}"
            )
        # on the sub-lattices from the start, the grid freed as soon as it is split: two
        # image-sized arrays alive at any time, as on the grid (log-joint and memberships,
        # then memberships and rows)
        ljl = _split(lj)
        del lj
        lat = [self._posterior(sub, self._sub_mask[t]) for t, sub in enumerate(ljl)]
        n_sweeps = self.sweeps if sweeps is None else sweeps
        if self.beta > 0 and n_sweeps > 0:
            jobs = min(current_threads(), max(1, self.shape[0] // 2))
            with ThreadPoolExecutor(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
                for _ in range(n_sweeps):
                    self._sweep_lattices(lat, ljl, pool)
        del ljl
        self._c = None  # a final step: nothing to warm-start from later, so nothing kept
        h, w = self.shape
        pixels = np.empty((h, w, lat[0].shape[0]), dtype=lat[0].dtype)
        for sl, sub in zip(_SUBLATTICES, lat):
            pixels[sl[1:]] = sub.transpose(1, 2, 0)  # straight into (H, W, K): no grid, no transpose
        del lat, sub
        rows = pixels.reshape(h * w, -1)
        return rows if self.mask is None else rows[self.mask.ravel()]

    @staticmethod
    def _posterior(lj: np.ndarray, used: np.ndarray | None) -> np.ndarray:
        """The plain posterior (softmax over axis 0) of a log-joint (K, ...), 0 where not ``used``:
        pixel by pixel the same numbers as :meth:`_run_grid`'s start on the whole grid."""
        c = lj - lj.max(axis=0)
        np.exp(c, out=c)
        c /= c.sum(axis=0)
        if used is not None:
            c *= used
        return c
